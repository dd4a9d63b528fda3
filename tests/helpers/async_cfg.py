"""Cfg text and processes for the ASYNC integration tests: `cfg()` builds a complete cfg
around routes, `PRE` absorbs ACKs and retransmissions, `line_of` finds a cfg line, `check_cfg`
runs `asyncd -c`, `title_of`/`resumed_by` name the process that ran a route, `Uas` answers
requests, `servers` starts several servers at once, `final` sends and returns the final reply,
`server_fixture` is a file's one shared server, `finals` keeps the final replies.

Runs in: the pytest process (servers and a tiny UAS are started from here).

Which process ran a resumed route is learned the way an operator would: the
route logs `$pp` and the test maps that pid to its process title (psutil),
which must be Kamailio's description (docs/kamailio-async.md §1.1).
"""
import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.helpers import REPO_ROOT, run_server
from tests.helpers.server import _wait_ready

MODS = ("tm", "tmx", "sl", "pv", "xlog", "textops", "siputils", "cfgutils", "htable", "async")


def cfg(body, core="async_workers=2", params="", mods=MODS, children=1):
    """A complete cfg: listen on LPORT, load modules, then `body` (routes)."""
    head = ["#!ifndef LPORT", "#!define LPORT 5071", "#!endif",
            "debug=2", "log_stderror=yes", f"children={children}",
            "listen=udp:127.0.0.1:LPORT", core]
    head += [f'loadmodule "{m}.so"' for m in mods]
    return "\n".join(head) + "\n" + params + "\n" + body + "\n"


# absorbs ACKs and retransmissions as TESTING-NOTES asks of every async cfg
PRE = """    if (is_method("ACK")) { t_check_trans(); exit; }
    if (t_precheck_trans()) { t_check_trans(); exit; }
    t_check_trans();
"""


def line_of(text, needle, nth=1):
    """1-based line number of the nth line containing needle."""
    k = 0
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            k += 1
            if k == nth:
                return i
    raise AssertionError(f"{needle!r} not in cfg")


def check_cfg(text):
    """`asyncd -c` on text: (exit code, stderr+stdout)."""
    import tempfile
    d = tempfile.mkdtemp(prefix="asyncd-chk-")
    path = os.path.join(d, "test.cfg")
    with open(path, "w") as f:
        f.write(text)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    p = subprocess.run([sys.executable, "-m", "asyncd", "-c", "-f", path], capture_output=True,
                       text=True, env=env, timeout=30, cwd=d)
    os.unlink(path)
    os.rmdir(d)
    return p.returncode, p.stdout + p.stderr


def title_of(srv, pid):
    for p in srv.processes():
        if p.pid == int(pid):
            return " ".join(p.cmdline()).strip()
    return None


def resumed_by(srv, tag, timeout=3.0):
    """Title of the process that logged `RES <tag> pid=<pid>`."""
    m = srv.wait_log(rf"RES {re.escape(tag)} pid=(\d+)", timeout)
    return title_of(srv, m.group(1))


class Uas:
    """Answers every request it gets with 200 OK (a stand-in for a SIP phone)."""

    def __init__(self, code=200):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.code = code
        self.got = []
        self._stop = False
        self.t = threading.Thread(target=self._loop, daemon=True)
        self.t.start()

    def uri(self, user="uas"):
        return f"sip:{user}@127.0.0.1:{self.port}"

    def _loop(self):
        while not self._stop:
            try:
                data, src = self.sock.recvfrom(65535)
            except (socket.timeout, OSError):
                continue
            head = data.split(b"\r\n\r\n", 1)[0].decode(errors="replace").split("\r\n")
            self.got.append((time.monotonic(), head[0]))
            if head[0].startswith("SIP/") or head[0].startswith("ACK "):
                continue
            keep = [h for h in head[1:] if h.split(":", 1)[0].strip().lower()
                    in ("via", "v", "from", "f", "to", "t", "call-id", "i", "cseq")]
            keep = [h + ";tag=uas1" if h.lower().startswith(("to:", "t:")) and "tag=" not in h
                    else h for h in keep]
            rpl = f"SIP/2.0 {self.code} OK\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n"
            self.sock.sendto(rpl.encode(), src)

    def close(self):
        self._stop = True
        self.t.join(1)
        self.sock.close()


@contextlib.contextmanager
def servers(cfgs, **kw):
    """Start several servers at once (their startups overlap); yields a list."""
    with contextlib.ExitStack() as st:
        out = [st.enter_context(run_server(c, wait_ready=False, **kw)) for c in cfgs]
        for s in out:
            _wait_ready(s, 30.0)
        yield out


def final(client, timeout=3.0, **kw):
    """Send a request; the final reply (or None) and all replies."""
    rs = client.request(timeout=timeout, **kw)
    fin = rs[-1] if rs and rs[-1].status and rs[-1].status >= 200 else None
    return fin, rs


def server_fixture(text, **kw):
    """A module-scoped fixture: one real server on `text`, shared by a file's tests."""
    @pytest.fixture(scope="module")
    def srv():
        with run_server(text, **kw) as s:
            yield s
    return srv


def finals(rs):
    """The final replies (status >= 200) among those collected."""
    return [r for r in rs if r.status and r.status >= 200]
