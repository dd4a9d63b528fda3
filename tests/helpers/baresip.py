"""A real softphone for the tests: Debian's headless baresip, driven over ctrl_tcp.

Runs in: the pytest process (baresip is a real child process on loopback).

`run_baresip(user, proxy)` writes a private config dir, starts `baresip -4
-s -f DIR` in its own session, connects to its ctrl_tcp port, creates the
account and yields a Baresip that has seen REGISTER_OK. Only what a headless
phone needs is loaded: `menu` (the `uanew` / `dial` / `accept` / `hangup`
commands), `ctrl_tcp` (commands, responses and events as netstring-framed
JSON on a loopback TCP port: baresip's modules/ctrl_tcp/ctrl_tcp.c), `g711`
and `ausine` (a 440 Hz tone as the audio source; it only runs at 48 kHz
stereo, hence ausrc_srate/ausrc_channels). No sound card, video, STUN/ICE,
stdio or contact module; the audio player is "none" (nothing is played).

SIP binds 127.0.0.1 port 0 (baresip picks its UDP/TCP ports itself; a fixed
port would also need port+1 free, for the TLS listener it always opens).
The account line is the one a user would put in `~/.baresip/accounts`:
`<sip:USER@HOST:PORT;transport=T>;auth_pass=...;outbound="sip:HOST:PORT;
transport=T";regint=...`, the proxy as registrar and outbound proxy, so
REGISTER, INVITE, ACK and BYE all go through the server under test. It is
given with `uanew` after the ctrl_tcp connection is up (an `accounts` file
would register before anyone listens for the REGISTER_OK event).

Events (`REGISTER_OK`, `CALL_INCOMING`, `CALL_RINGING`, `CALL_ESTABLISHED`,
`CALL_CLOSED`, ...) are read by a thread into `events`; `wait_event(type)`
returns the next one of that type. `trace()` parses baresip's SIP trace
(`-s`, in `log()`) into the messages it sent and received. Tests skip with
`SKIP_BARESIP` when the binary is missing (./run_tests.sh installs the
Debian package baresip-core).
"""
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench.servers import free_tcp_port

BARESIP = shutil.which("baresip") or ("/usr/bin/baresip" if os.access("/usr/bin/baresip", os.X_OK) else None)
MODULE_PATH = "/usr/lib/baresip/modules"
SKIP_BARESIP = "baresip is not installed (./run_tests.sh installs the Debian package baresip-core)"

CONFIG = """\
poll_method\t\tepoll
sip_listen\t\t127.0.0.1:0
call_local_timeout\t30
call_max_calls\t\t4
audio_source\t\tausine,440
ausrc_srate\t\t48000
ausrc_channels\t\t2
audio_player\t\tnone,none
audio_alert\t\tnone,none
net_interface\t\t127.0.0.1
module_path\t\t{module_path}
module\t\t\tg711.so
module\t\t\tausine.so
module_app\t\tmenu.so
module_app\t\tctrl_tcp.so
ctrl_tcp_listen\t\t127.0.0.1:{ctrl_port}
"""


TRACE_RX = re.compile(r"\x1b\[36;1m#\n(\w+) (\S+) -> (\S+)\n(.*?)\x1b\[;m", re.S)


class BaresipError(AssertionError):
    pass


class Traced:
    """One SIP message from baresip's trace: `proto`, `src`, `dst` ("ip:port"), `text`."""

    def __init__(self, proto, src, dst, text):
        self.proto, self.src, self.dst, self.text = proto, src, dst, text
        self.first_line = text.split("\n", 1)[0].strip()

    @property
    def method(self):
        return None if self.first_line.startswith("SIP/2.0") else self.first_line.split(" ", 1)[0]

    @property
    def status(self):
        """'180 Ringing' for a reply, None for a request."""
        return self.first_line[8:] if self.first_line.startswith("SIP/2.0 ") else None

    def header(self, name):
        """The first value of header `name` (long form, case-insensitive) or None."""
        m = re.search(rf"^{re.escape(name)}\s*:\s*(.*)$", self.text, re.M | re.I)
        return m.group(1).strip() if m else None

    def cseq_method(self):
        v = self.header("CSeq")
        return v.split()[-1] if v else None

    def __repr__(self):
        return f"<{self.proto} {self.src} -> {self.dst} {self.first_line!r}>"


def netstrings(buf):
    """Split complete netstrings (`LEN:payload,`) off `buf` -> (payloads, rest)."""
    out = []
    while True:
        colon = buf.find(b":")
        if colon < 0:
            return out, buf
        size = int(buf[:colon])
        end = colon + 1 + size
        if len(buf) < end + 1:
            return out, buf
        out.append(buf[colon + 1:end])
        buf = buf[end + 1:]


def netstring(payload):
    return b"%d:%s," % (len(payload), payload)


class Baresip:
    """One running baresip: `aor`, `pid`, `command()`, `wait_event()`, `trace()`, `stop()`."""

    def __init__(self, user, proxy, password="secret", transport="udp", regint=600):
        self.user = user
        self.proxy = proxy                      # (host, port) of the SIP server under test
        self.transport = transport
        self.password = password
        self.regint = regint
        self.ctrl_port = free_tcp_port()
        self.dir = tempfile.mkdtemp(prefix=f"baresip-{user}-")
        self.proc = None
        self.sock = None
        self.events = []
        self._consumed = 0
        self._responses = []
        self._cond = threading.Condition()
        self._reader = None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def aor(self):
        return f"sip:{self.user}@{self.proxy[0]}:{self.proxy[1]}"

    def uri(self, user):
        """The request URI of `user` on the same proxy (what a phone user dials)."""
        return f"sip:{user}@{self.proxy[0]}:{self.proxy[1]}"

    def account_line(self):
        host, port = self.proxy
        outbound = f"sip:{host}:{port};transport={self.transport}"
        return (f"<{self.aor};transport={self.transport}>;auth_pass={self.password};"
                f'outbound="{outbound}";regint={self.regint};answermode=manual\n')

    def write_config(self):
        Path(self.dir, "config").write_text(CONFIG.format(ctrl_port=self.ctrl_port, module_path=MODULE_PATH))
        Path(self.dir, "contacts").write_text("")

    def log(self):
        try:
            return Path(self.dir, "baresip.log").read_text(errors="replace")
        except OSError:
            return ""

    def trace(self):
        """Every SIP message baresip sent or received so far (its `-s` trace), in order."""
        return [Traced(*m.groups()) for m in TRACE_RX.finditer(self.log())]

    def wait_trace(self, pred, timeout=5.0):
        """Poll the trace until `pred(messages)` is true -> the messages (the trace is
        written as messages go; an event can come before the message that ends it)."""
        end = time.monotonic() + timeout
        while True:
            msgs = self.trace()
            if pred(msgs):
                return msgs
            if time.monotonic() > end:
                raise BaresipError(f"{self.user}: trace condition not met within {timeout}s; "
                                   f"log:\n{self.log()[-4000:]}")
            time.sleep(0.02)

    def proxy_addr(self):
        return f"{self.proxy[0]}:{self.proxy[1]}"

    def incoming(self, msg):
        """True for a message baresip received. Every request it sends goes to the proxy
        (outbound); a reply comes in from the proxy's address, also over a TCP connection
        baresip opened; a request over a connection the proxy opened has its ephemeral port."""
        proxy = self.proxy_addr()
        return msg.src == proxy or (msg.method is not None and msg.dst != proxy)

    def sent(self):
        return [m for m in self.trace() if not self.incoming(m)]

    def received(self):
        return [m for m in self.trace() if self.incoming(m)]

    # -- process ----------------------------------------------------------
    def start(self, timeout=10.0):
        self.write_config()
        with open(os.path.join(self.dir, "baresip.log"), "wb") as logf:
            self.proc = subprocess.Popen([BARESIP, "-4", "-s", "-f", self.dir],
                                         stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                         cwd=self.dir, start_new_session=True)
        end = time.monotonic() + timeout
        while self.sock is None:
            if self.proc.poll() is not None or time.monotonic() > end:
                raise BaresipError(f"baresip did not start (rc {self.proc.poll()}); "
                                   f"log:\n{self.log()[-3000:]}")
            with contextlib.suppress(OSError):
                self.sock = socket.create_connection(("127.0.0.1", self.ctrl_port), timeout=0.5)
            if self.sock is None:
                time.sleep(0.05)
        self.sock.settimeout(None)
        self._reader = threading.Thread(target=self._read, name=f"baresip-{self.user}", daemon=True)
        self._reader.start()
        return self

    def add_account(self):
        """Create the UA over ctrl_tcp (`uanew`), so its REGISTER_OK is an event we see."""
        resp = self.command("uanew", self.account_line().strip())
        if not resp.get("ok"):
            raise BaresipError(f"{self.user}: uanew failed: {resp}; log:\n{self.log()[-3000:]}")

    def stop(self, timeout=5.0):
        """SIGTERM baresip by pid (it unregisters and exits); SIGKILL if it lingers."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        if self._reader is not None:
            self._reader.join(2)

    # -- ctrl_tcp ---------------------------------------------------------
    def _read(self):
        buf = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                return
            msgs, buf = netstrings(buf + chunk)
            with self._cond:
                for raw in msgs:
                    msg = json.loads(raw)
                    (self.events if msg.get("event") else self._responses).append(msg)
                self._cond.notify_all()

    def command(self, command, params=None, timeout=5.0):
        """Send one ctrl_tcp command -> its response dict (`ok`, `data`)."""
        token = f"t{time.monotonic_ns()}"
        msg = {"command": command, "token": token}
        if params is not None:
            msg["params"] = params
        self.sock.sendall(netstring(json.dumps(msg).encode()))
        with self._cond:
            def answered():
                return any(r.get("token") == token for r in self._responses)
            if not self._cond.wait_for(answered, timeout):
                raise BaresipError(f"{self.user}: no response to {command!r}; log:\n{self.log()[-3000:]}")
            resp = next(r for r in self._responses if r.get("token") == token)
            self._responses.remove(resp)
        return resp

    def wait_event(self, etype, timeout=5.0):
        """The next event of type `etype` after the last one consumed (skipping others)."""
        def find():
            for i in range(self._consumed, len(self.events)):
                if self.events[i].get("type") == etype:
                    return i
            return None
        with self._cond:
            if not self._cond.wait_for(lambda: find() is not None, timeout):
                seen = [e.get("type") for e in self.events]
                raise BaresipError(f"{self.user}: no {etype} within {timeout}s (events: {seen}); "
                                   f"log:\n{self.log()[-4000:]}")
            i = find()
            self._consumed = i + 1
            return self.events[i]

    def types(self):
        with self._cond:
            return [e.get("type") for e in self.events]

    # -- phone verbs (baresip's menu module) -------------------------------
    def dial(self, uri):
        resp = self.command("dial", uri)
        assert resp.get("ok"), resp
        return resp

    def accept(self):
        resp = self.command("accept")
        assert resp.get("ok"), resp
        return resp

    def hangup(self):
        return self.command("hangup")


@contextlib.contextmanager
def run_baresip(user, proxy, register=True, **kw):
    """A started baresip for `user` at `proxy` ((host, port)); with `register` it has
    seen REGISTER_OK. Stopped (by pid) and its config dir removed on exit."""
    phone = Baresip(user, proxy, **kw)
    try:
        phone.start()
        phone.add_account()
        if register:
            phone.wait_event("REGISTER_OK", timeout=10.0)
        yield phone
    finally:
        phone.stop()
        shutil.rmtree(phone.dir, ignore_errors=True)
