"""Start the real `python -m asyncd` on a cfg, wait until it is up, stop it, check cleanup.

Runs in: the pytest process.

As gunicorn's integration tests do: the real entry point under `setsid` on a
free port, stopped through its process group, so a test that fails half-way
never leaves a receiver behind.  "Up" means the supervisor wrote its pid file
(`-P`), which it does only once every child has finished `child_init` and
entered its loop.
"""
import contextlib
import os
import shutil
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from tests.helpers.net import free_udp_port


def _pid_max():
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 22          # Linux's upper bound for pid_max


_PID_MAX = _pid_max()

REPO_ROOT = Path(__file__).resolve().parents[2]
SHM_DIR = "/dev/shm"


class ServerFailed(AssertionError):
    pass


def _shm_entries():
    try:
        return set(os.listdir(SHM_DIR))
    except OSError:
        return set()


class Server:
    """A running asyncd: `pid`, `port`, `addr`, `log()`, `titles()`, `stop()`."""

    def __init__(self, proc, port, host, workdir, cfg_path, log_path, pid_path):
        self.proc = proc
        self.pid = proc.pid
        self.port = port
        self.host = host
        self.addr = (host, port)
        self.workdir = workdir
        self.cfg_path = cfg_path
        self.log_path = log_path
        self.pid_path = pid_path
        self.returncode = None
        self.stop_elapsed = None
        self.final_log = None       # the log as it was when run_server removed its workdir

    # -- output ---------------------------------------------------------
    def log(self):
        if self.final_log is not None:
            return self.final_log
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def log_lines(self):
        return self.log().splitlines()

    def wait_log(self, pattern, timeout=5.0):
        """Wait until a log line matches the regex `pattern`; return the match."""
        rx = re.compile(pattern)
        end = time.monotonic() + timeout
        while True:
            m = rx.search(self.log())
            if m:
                return m
            if time.monotonic() > end:
                raise ServerFailed(f"no log line matching {pattern!r} within {timeout}s; log:\n{self.log()[-4000:]}")
            time.sleep(0.02)

    # -- processes ------------------------------------------------------
    def processes(self):
        """The main process and all its descendants (psutil.Process), main first, then
        in fork order: psutil lists them by pid, and pids wrap at pid_max, so a child
        forked after the wrap is put back after those forked before it (each is
        ordered by how far past main's pid it was allocated)."""
        try:
            main = psutil.Process(self.pid)
            kids = main.children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [main] + sorted(kids, key=lambda p: (p.pid - self.pid) % _PID_MAX)

    def titles(self):
        """Process titles as `ps` shows them (setproctitle rewrites the cmdline)."""
        out = []
        for p in self.processes():
            try:
                out.append(" ".join(p.cmdline()).strip())
            except psutil.Error:
                pass
        return out

    def find(self, title_part):
        """psutil.Process objects whose title contains `title_part`."""
        res = []
        for p in self.processes():
            try:
                if title_part in " ".join(p.cmdline()):
                    res.append(p)
            except psutil.Error:
                pass
        return res

    def group_alive(self):
        """Live (non-zombie) processes still in the server's process group."""
        alive = []
        for p in psutil.process_iter(["pid", "status"]):
            try:
                if os.getpgid(p.pid) == self.pid and p.info["status"] != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except (ProcessLookupError, psutil.Error, OSError):
                pass
        return alive

    def alive(self):
        return self.proc.poll() is None

    # -- stopping -------------------------------------------------------
    def wait(self, timeout=5.0):
        """Wait for the main process to exit by itself; return its exit code."""
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ServerFailed(f"server still running after {timeout}s; log:\n{self.log()[-4000:]}")
        return self.returncode

    def stop(self, sig=signal.SIGTERM, timeout=5.0):
        """Send `sig` to the main process and wait; return the exit code (elapsed in stop_elapsed)."""
        if self.returncode is not None:
            return self.returncode
        t0 = time.monotonic()
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            self.returncode = self.proc.wait(5)
            raise ServerFailed(f"server did not stop within {timeout}s of signal {sig}; log:\n{self.log()[-4000:]}")
        finally:
            self.stop_elapsed = time.monotonic() - t0
        return self.returncode

    def kill_group(self):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)


def _cmd(cfg_path, port, pid_path, defines, args):
    cmd = [sys.executable, "-m", "asyncd", "-DD", "-E", "-P", pid_path]
    if cfg_path is not None:
        cmd += ["-f", cfg_path]
    cmd += ["-A", f"LPORT={port}"]
    for k, v in (defines or {}).items():
        cmd += ["-A", k if v is None else f"{k}={v}"]
    return cmd + list(args)


@contextlib.contextmanager
def run_server(cfg_text=None, defines=None, args=(), port=None, host="127.0.0.1", cfg_path=None,
               ready_timeout=20.0, wait_ready=True, check_clean=True, stop_timeout=5.0, env=None):
    """Start asyncd on `cfg_text` (or `cfg_path`, or the embedded default cfg when both are None).

    The cfg should listen on `udp:127.0.0.1:LPORT` (the port is passed as `-A LPORT=<port>`).
    Yields a Server. On exit: SIGTERM, then asserts exit 0 within `stop_timeout`, no process left
    in the group and no new /dev/shm segment (when check_clean). A test that stopped or killed
    the server itself keeps its own expectations: only the leftovers are checked then.
    """
    port = port or free_udp_port(host)
    workdir = tempfile.mkdtemp(prefix="asyncd-test-")
    if cfg_text is not None:
        cfg_path = os.path.join(workdir, "test.cfg")
        Path(cfg_path).write_text(cfg_text)
    log_path = os.path.join(workdir, "server.log")
    pid_path = os.path.join(workdir, "asyncd.pid")
    shm_before = _shm_entries()
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env["PYTHONUNBUFFERED"] = "1"
    full_env.update(env or {})
    logf = open(log_path, "wb")
    proc = subprocess.Popen(_cmd(cfg_path, port, pid_path, defines, args), stdin=subprocess.DEVNULL,
                            stdout=logf, stderr=subprocess.STDOUT, cwd=workdir, env=full_env,
                            start_new_session=True)
    logf.close()
    srv = Server(proc, port, host, workdir, cfg_path, log_path, pid_path)
    try:
        if wait_ready:
            _wait_ready(srv, ready_timeout)
        yield srv
        if srv.returncode is None and check_clean:
            rc = srv.stop(timeout=stop_timeout)
            assert rc == 0, f"asyncd exited {rc} on SIGTERM; log:\n{srv.log()[-4000:]}"
    finally:
        if srv.returncode is None:
            with contextlib.suppress(ServerFailed):
                srv.stop(timeout=stop_timeout)
        leftovers = _reap_group(srv)
        new_shm = _new_shm(shm_before, srv.pid)
        srv.final_log = srv.log()                       # tests may still read it after the block
        shutil.rmtree(workdir, ignore_errors=True)     # cfg, log and pid file: no /tmp leftovers
        if check_clean:
            assert not leftovers, f"processes left in the server's group: {leftovers}"
            assert not new_shm, f"shared memory left behind in {SHM_DIR}: {sorted(new_shm)}"


def _wait_ready(srv, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.path.exists(srv.pid_path):
            return
        if srv.proc.poll() is not None:
            srv.returncode = srv.proc.returncode
            raise ServerFailed(f"asyncd exited {srv.returncode} while starting; log:\n{srv.log()[-4000:]}")
        time.sleep(0.02)
    raise ServerFailed(f"asyncd not ready after {timeout}s; log:\n{srv.log()[-4000:]}")


def _reap_group(srv):
    """Kill whatever is left in the group (a failed test must not leak); report what was left."""
    end = time.monotonic() + 1.0
    left = srv.group_alive()
    while left and time.monotonic() < end:
        time.sleep(0.05)
        left = srv.group_alive()
    desc = []
    for p in left:
        with contextlib.suppress(psutil.Error):
            desc.append(f"{p.pid} {' '.join(p.cmdline())}")
    if left:
        srv.kill_group()
    return desc


def _mapped_shm():
    """/dev/shm names some live process maps (other tests may run beside us on this machine)."""
    names = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    i = line.find(SHM_DIR + "/")
                    if i >= 0:
                        names.add(line[i + len(SHM_DIR) + 1:].split()[0])
        except OSError:
            pass
    return names


def _new_shm(before, pid):
    """Segments the server leaked: its arena (`asyncd_<main pid>_<n>`), or any other segment
    that appeared during the run and that no live process maps. Other `asyncd_*` names
    belong to other processes (tests of the shm layer may run beside us on this machine)."""
    mine = f"asyncd_{pid}_"
    end = time.monotonic() + 1.0
    while True:
        new = _shm_entries() - before
        leaked = {n for n in new if n.startswith(mine)}
        others = {n for n in new if not n.startswith("asyncd_")}
        if others:
            others -= _mapped_shm()
        if not (leaked or others) or time.monotonic() > end:
            return leaked | others
        time.sleep(0.05)
