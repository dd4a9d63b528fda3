"""A real redis-server for the cluster tests (Debian package redis-server).

`run_redis()` starts redis-server on a free 127.0.0.1 port in a temp dir (no
persistence, no protected mode), waits until it answers PING and yields a
RedisServer; on exit it stops it by pid. `stop()` / `start()` stop and start
the same server again on the same port (Redis restarted under load), and
`client()` is a redis-py client on it. Tests skip with `SKIP_REDIS` when the
binary is missing, with `SKIP_SCHEMAS` when db_redis's schema files are
(./run_tests.sh installs both).
"""
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from asyncd.modules.db_redis import DEFAULT_SCHEMA_PATH
from bench.servers import free_tcp_port
from tests.helpers.kamailio import KAMCMD, SKIP_KAMAILIO_REDIS, SKIP_KAMCMD, kamailio_has_module

REDIS_SERVER = shutil.which("redis-server") or (
    "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None)
SKIP_REDIS = "redis-server is not installed (./run_tests.sh installs the Debian package redis-server)"
# db_redis's table schemas (asyncd reads Kamailio's, as Kamailio does: schema_path)
HAVE_SCHEMAS = os.path.isdir(DEFAULT_SCHEMA_PATH)
SKIP_SCHEMAS = "db_redis's schema files are not installed (Debian package kamailio-redis-modules)"


def redis_marks(kamcmd=False, schemas=False, kamailio_module=None):
    """A test module's pytestmark when it runs redis-server: skip without it, and as
    asked without kamcmd, without db_redis's schema files, or without Kamailio's
    module `kamailio_module` ("db_redis", "ndb_redis"; the module is then marked
    `kamailio` too)."""
    marks = [pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REDIS)]
    if kamcmd:
        marks.append(pytest.mark.skipif(KAMCMD is None, reason=SKIP_KAMCMD))
    if schemas:
        marks.append(pytest.mark.skipif(not HAVE_SCHEMAS, reason=SKIP_SCHEMAS))
    if kamailio_module:
        marks += [pytest.mark.kamailio, pytest.mark.skipif(not kamailio_has_module(kamailio_module),
                                                           reason=SKIP_KAMAILIO_REDIS)]
    return marks


def _pings(port, timeout=0.2):
    """True when a Redis on 127.0.0.1:port answers an inline PING with +PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(self, port, workdir):
        self.port = port
        self.workdir = workdir
        self.proc = None
        self.url = f"redis://127.0.0.1:{port}"

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def log(self):
        p = Path(self.workdir, "redis.log")
        return p.read_text(errors="replace") if p.exists() else ""

    def start(self, ready_timeout=10.0):
        """Start redis-server (again) on this port; returns when it answers PING."""
        cmd = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--protected-mode", "no", "--dir", self.workdir,
               "--logfile", os.path.join(self.workdir, "redis.log"), "--daemonize", "no"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, cwd=self.workdir)
        end = time.monotonic() + ready_timeout
        while not _pings(self.port):
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"redis-server did not start (rc {self.proc.poll()}):\n"
                                   f"{self.log()[-2000:]}")
            time.sleep(0.02)
        return self

    def stop(self, sig=signal.SIGTERM):
        """Stop it by pid (SIGKILL for a crash); waits until the process is gone."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None

    def client(self, db=0):
        import redis        # the test extra's client; imported here so helpers load without it
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, decode_responses=True)


@contextlib.contextmanager
def run_redis(port=None):
    """A fresh redis-server on a free port (or `port`), stopped on exit."""
    workdir = tempfile.mkdtemp(prefix="redis-test-")
    srv = RedisServer(port or free_tcp_port(), workdir)
    try:
        yield srv.start()
    finally:
        srv.stop()
        shutil.rmtree(workdir, ignore_errors=True)
