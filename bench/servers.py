"""Starting and stopping the servers under test, the same way for both.

Runs in: the bench harness process (servers are child processes).

Both servers get the same cfg file and the same flags: foreground (-DD),
log to stderr (-E), shared memory size (-m MB), and the listening port as a
preprocessor define (-A LPORT=PORT; every bench cfg guards it with
``#!ifndef LPORT``). Kamailio also gets -M 16 (private memory per process;
asyncd has no such pool). A server is ready when it answers an OPTIONS
whose R-URI user is "ping" (every bench cfg answers it first thing), so
the harness never measures a server that is still forking its children.
A TCP case's cfg listens on TCP only, so its probe goes over one TCP
connection (bench/tcp.py), reconnecting until the server accepts.

Stopping is by pid: SIGTERM to the main process (both stop their own
children), SIGKILL to the whole tree if it is not gone within a few
seconds. stderr goes to a file: a pipe that nobody reads would block a
chatty server.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import psutil

from bench import tcp
from bench.sipp import version_output

REPO = Path(__file__).resolve().parent.parent
SERVERS = ("asyncd", "kamailio")


class ServerStartError(RuntimeError):
    """The server exited or never answered; .log_tail says why."""

    def __init__(self, msg: str, log_tail: str = ""):
        super().__init__(msg)
        self.log_tail = log_tail


def kamailio_binary() -> Optional[str]:
    return shutil.which("kamailio") or (
        "/usr/sbin/kamailio" if os.access("/usr/sbin/kamailio", os.X_OK) else None)


def kamailio_version() -> Optional[str]:
    out = version_output(kamailio_binary())
    first = out.splitlines()[0] if out else ""
    return first.replace("version:", "").replace("kamailio", "").strip() or None


def asyncd_version() -> Optional[str]:
    try:
        code = "import asyncd; print(getattr(asyncd, '__version__', ''))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                             cwd=str(REPO))
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _free_port(kind, exclude) -> int:
    """A port free on 127.0.0.1 for sockets of `kind` (bind to 0 and let the kernel choose)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in exclude:
            return port
    raise RuntimeError(f"no free {'UDP' if kind == socket.SOCK_DGRAM else 'TCP'} port")


def free_udp_port(exclude=()) -> int:
    """A port free for UDP on 127.0.0.1."""
    return _free_port(socket.SOCK_DGRAM, exclude)


def free_tcp_port(exclude=()) -> int:
    """A port free for TCP on 127.0.0.1 (a TCP case's server, SIPp's -p over TCP)."""
    return _free_port(socket.SOCK_STREAM, exclude)


def free_port(transport: str, exclude=()) -> int:
    return free_tcp_port(exclude) if transport == "tcp" else free_udp_port(exclude)


def server_command(kind: str, cfg: str, port: int, mem_mb: int, defines=None, extra=()) -> list:
    """The command line of a server; `extra` (a case's `args`, already formatted) goes last."""
    defs = [f"LPORT={port}"] + [f"{k}={v}" for k, v in (defines or {}).items()]
    if kind == "asyncd":
        cmd = [sys.executable, "-m", "asyncd", "-DD", "-E", "-m", str(mem_mb), "-f", cfg]
    elif kind == "kamailio":
        exe = kamailio_binary() or "kamailio"
        cmd = [exe, "-DD", "-E", "-m", str(mem_mb), "-M", "16", "-f", cfg]
    else:
        raise ValueError(f"unknown server {kind!r}")
    for d in defs:
        cmd += ["-A", d]
    return cmd + list(extra)


def ping_request(port: int, lport: int, n: int, user: str = "ping", transport: str = "UDP") -> bytes:
    return (f"OPTIONS sip:{user}@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} 127.0.0.1:{lport};branch=z9hG4bK-benchping-{os.getpid()}-{n};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:bench@127.0.0.1>;tag=bp{os.getpid()}\r\n"
            f"To: <sip:{user}@127.0.0.1>\r\n"
            f"Call-ID: benchping-{os.getpid()}-{n}-{time.monotonic_ns()}@127.0.0.1\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def query(port: int, user: str, timeout: float = 0.5, transport: str = "udp") -> Optional[bytes]:
    """One OPTIONS to sip:user@127.0.0.1:port; the first final reply, or None."""
    if transport == "tcp":
        return tcp_query(port, user, timeout)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(timeout)
        lport = s.getsockname()[1]
        s.sendto(ping_request(port, lport, 0, user), ("127.0.0.1", port))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data, _ = s.recvfrom(65535)
            except (socket.timeout, ConnectionRefusedError):
                return None
            if data[8:9] != b"1":          # skip provisional replies
                return data
    return None


def tcp_query(port: int, user: str, timeout: float = 0.5) -> Optional[bytes]:
    """query() over a new TCP connection (its Via names the connection's local port)."""
    try:
        with tcp.connect(port, timeout) as s:
            s.sendall(ping_request(port, s.getsockname()[1], 0, user, transport="TCP"))
            framer = tcp.Framer()
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                for msg in tcp.recv_messages(s, framer, end - time.monotonic()):
                    if msg[8:9] != b"1":          # skip provisional replies
                        return msg
    except OSError:
        return None
    return None


@dataclass
class Server:
    kind: str
    cfg: str
    port: int
    mem_mb: int
    workdir: Path
    defines: Optional[dict] = None
    transport: str = "udp"          # what the cfg listens on: the probe's transport
    args: tuple = ()                # a case's extra options: "{port}", "{run_dir}" filled in
    proc: Optional[subprocess.Popen] = None
    start_s: Optional[float] = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.kind}-{self.port}.log"

    def log_tail(self, nbytes: int = 2500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-nbytes:]
        except OSError:
            return ""

    @property
    def run_dir(self) -> Path:
        """-Y for a case that names it: control sockets of its own, not /run/kamailio."""
        return self.workdir / f"run-{self.kind}-{self.port}"

    def command(self) -> list:
        extra = [a.format(port=self.port, run_dir=self.run_dir) for a in self.args]
        return server_command(self.kind, self.cfg, self.port, self.mem_mb, self.defines, extra)

    def start(self, timeout_s: float = 30.0) -> None:
        cmd = self.command()
        self.workdir.mkdir(parents=True, exist_ok=True)
        if any("{run_dir}" in a for a in self.args):
            self.run_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=str(REPO))
        if self._wait_ready(t0 + timeout_s):
            self.start_s = round(time.monotonic() - t0, 3)
            return
        if self.proc.poll() is not None:
            raise ServerStartError(f"{self.kind} exited with {self.proc.returncode} at startup",
                                   self.log_tail())
        self.stop()
        raise ServerStartError(f"{self.kind} did not answer on 127.0.0.1:{self.port} "
                               f"within {timeout_s:.0f} s", self.log_tail())

    def _wait_ready(self, deadline: float) -> bool:
        """Probe every 0.3 s from one socket; any reply to any probe means ready.

        One socket for all probes, so a cfg that answers late (a cfg without
        the "ping" shortcut that suspends every request) is still seen.
        """
        if self.transport == "tcp":
            return self._wait_ready_tcp(deadline)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.settimeout(0.3)
            lport = s.getsockname()[1]
            n = 0
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    return False
                n += 1
                try:
                    s.sendto(ping_request(self.port, lport, n), ("127.0.0.1", self.port))
                    s.recvfrom(65535)
                    return True
                except (socket.timeout, ConnectionRefusedError):
                    continue
        return False

    def _wait_ready_tcp(self, deadline: float) -> bool:
        """The same over TCP: connect until the server accepts, then probe every 0.3 s on
        that one connection (a new one if the server closes it); any reply means ready.
        Accepting is not enough: the listening socket exists before the processes that
        read it (Kamailio's tcp main is forked last)."""
        conn, framer, n = None, None, 0
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    return False
                if conn is None:
                    try:
                        conn, framer = tcp.connect(self.port, timeout=0.3), tcp.Framer()
                    except OSError:
                        time.sleep(0.1)
                        continue
                n += 1
                try:
                    conn.sendall(ping_request(self.port, conn.getsockname()[1], n, transport="TCP"))
                    if tcp.recv_messages(conn, framer, 0.3):
                        return True
                except OSError:         # ConnectionError included: closed by the server
                    conn.close()
                    conn = None
            return False
        finally:
            if conn is not None:
                conn.close()

    def stop(self, grace_s: float = 8.0) -> Optional[int]:
        """SIGTERM to the main pid, then SIGKILL to whatever of its tree is left."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            return self.proc.returncode
        try:
            tree = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            tree = []
        try:
            self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            for p in tree:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            self.proc.kill()
            return self.proc.wait(timeout=5)
        finally:
            for p in tree:     # children that outlived their parent
                try:
                    if p.is_running():
                        p.kill()
                except psutil.Error:
                    pass
