"""Kamailio 5.6 as the reference, and its operator tools as our clients.

`run_kamailio(cfg_text)` starts the real Kamailio on a cfg (foreground,
`-Y` a private runtime dir, so its ctl socket, jsonrpcs FIFO and datagram
socket land there) and stops it by process group; `kamcmd(sock, ...)` runs
the real kamcmd against any BINRPC socket (Kamailio's or asyncd's).
Tests skip with `SKIP_KAMAILIO` / `SKIP_KAMCMD` when the Debian package
kamailio is missing (./run_tests.sh installs it).
"""
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from bench.servers import free_udp_port, kamailio_binary

KAMCMD = shutil.which("kamcmd") or ("/usr/sbin/kamcmd" if os.access("/usr/sbin/kamcmd", os.X_OK) else None)
KAMCTL = shutil.which("kamctl") or ("/usr/sbin/kamctl" if os.access("/usr/sbin/kamctl", os.X_OK) else None)
SKIP_KAMAILIO = "Kamailio is not installed (./run_tests.sh installs the Debian package kamailio)"
SKIP_KAMCMD = "kamcmd is not installed (./run_tests.sh installs the Debian package kamailio)"
KAMAILIO_MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules"
SKIP_KAMAILIO_REDIS = "kamailio-redis-modules is not installed (./run_tests.sh installs it)"


def kamailio_has_module(name):
    """True when Kamailio's module `name`.so is installed (db_redis and ndb_redis come
    with the Debian package kamailio-redis-modules)."""
    return os.path.exists(os.path.join(KAMAILIO_MODULES, f"{name}.so"))


def kamcmd(sock, *args, timeout=10.0):
    """Run `kamcmd -s SOCK ARGS...` -> CompletedProcess (text)."""
    return subprocess.run([KAMCMD, "-s", sock, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


class Kamailio:
    def __init__(self, proc, port, workdir, rundir, log_path):
        self.proc = proc
        self.pid = proc.pid
        self.port = port
        self.workdir = workdir
        self.rundir = rundir
        self.log_path = log_path
        self.ctl = f"unix:{rundir}/kamailio_ctl"

    def log(self):
        return Path(self.log_path).read_text(errors="replace")


@contextlib.contextmanager
def run_kamailio(cfg_text, port=None, ready_file="kamailio_ctl", ready_timeout=15.0, args=()):
    """Start Kamailio on `cfg_text` (it should listen on udp:127.0.0.1:LPORT; the port is
    passed as `-A LPORT=<port>`; a cfg without LPORT, e.g. the stock one, gets its
    sockets from `args`: `("-l", f"udp:127.0.0.1:{port}")`), wait until `ready_file`
    exists in its runtime dir (the ctl socket by default), yield a Kamailio; SIGTERM its
    process group on exit. `args` go last on Kamailio's command line."""
    port = port or free_udp_port()
    workdir = tempfile.mkdtemp(prefix="kamailio-test-")
    rundir = os.path.join(workdir, "run")
    cfg = os.path.join(workdir, "kamailio.cfg")
    Path(cfg).write_text(cfg_text)
    log_path = os.path.join(workdir, "kamailio.log")
    cmd = [kamailio_binary(), "-DD", "-E", "-m", "64", "-M", "8", "-Y", rundir, "-f", cfg,
           "-A", f"LPORT={port}", *map(str, args)]
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                cwd=workdir, start_new_session=True)
    k = Kamailio(proc, port, workdir, rundir, log_path)
    try:
        end = time.monotonic() + ready_timeout
        while not os.path.exists(os.path.join(rundir, ready_file)):
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"kamailio did not start (rc {proc.poll()}); log:\n{k.log()[-3000:]}")
            time.sleep(0.05)
        time.sleep(0.3)         # the ctl handler forks after the socket exists
        yield k
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        shutil.rmtree(workdir, ignore_errors=True)
