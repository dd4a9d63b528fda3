"""Helpers for the ASYNC integration tests, and the process-model test.

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


# ---- the process model (docs/kamailio-async.md §1.1) --------------------------------------

def test_process_titles_follow_kamailio():
    text = cfg("request_route {\n" + PRE + "    sl_send_reply(\"200\", \"OK\");\n}\n",
               core='async_workers=2\nasync_workers_group="name=g1;workers=1"\n'
                    'async_workers_group="name=g2;workers=1;nonblock=1"',
               params='modparam("async", "workers", 2)\nmodparam("async", "ms_timer", 10)\n')
    with run_server(text) as srv:
        titles = [t.replace("asyncd: ", "", 1) for t in srv.titles()]
        workers = [t for t in titles if t.startswith("Async Task Worker - ")]
        # later groups are inserted right after the head "default" (docs/kamailio-async.md §4.2)
        assert workers == ["Async Task Worker - default"] * 2 + \
            ["Async Task Worker - g2", "Async Task Worker - g1"]
        assert titles.count("ASYNC MOD TIMER") == 2
        assert titles.count("ASYNC MOD MS TIMER") == 1
        assert titles.index("ASYNC MOD TIMER") > titles.index("Async Task Worker - g1")
        # no ZeroMQ context (it starts an I/O thread) in the main process: contexts are
        # made after fork, per process (contracts §7)
        assert srv.processes()[0].num_threads() == 1
        for p in srv.processes()[1:]:
            assert p.num_threads() >= 2        # each child made its own context


def test_no_timer_processes_without_workers_or_ms_timer():
    text = cfg("request_route {\n" + PRE + "    sl_send_reply(\"200\", \"OK\");\n}\n",
               core="async_workers=1", params='modparam("async", "workers", 0)\n')
    with run_server(text) as srv:
        titles = " | ".join(srv.titles())
        assert "ASYNC MOD TIMER" not in titles and "ASYNC MOD MS TIMER" not in titles
        assert titles.count("Async Task Worker - default") == 1
