"""Functions Kamailio's stock kamailio.cfg calls under WITH_NAT / WITH_PSTN, in
process: rr's add_rr_param, check_route_param, is_direction (record.c,
loose.c), siputils' is_first_hop (sipops.c), textops' starts_with, tmx's
t_is_branch_route."""
import gc
import socket

import pytest

from asyncd.cfg.compiler import compile_cfg
from asyncd.core.context import ProcState
from asyncd.sip import parse_msg
from shm.arena import ShmArena

pytestmark = pytest.mark.unit

HEAD = "".join(f'loadmodule "{m}.so"\n' for m in ("sl", "tm", "tmx", "rr", "siputils", "textops", "pv"))
HEAD += 'modparam("rr", "append_fromtag", 1)\n'


class Env:
    def __init__(self, body):
        self.script = compile_cfg(text=HEAD + body)
        self.arena = ShmArena.create(8 << 20)
        self.script.shm = self.arena
        self.script.init_modules()
        self.script.stats.allocate(self.arena, 2)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.proc = ProcState(script=self.script)
        self.proc.cnt = self.script.stats.row(1)
        self.proc.sockets = [self.sock]
        self.sent = []
        self.proc.send = lambda data, addr, sock=0: self.sent.append(data) or True

    def run(self, headers="", ruri=None, method="OPTIONS", frm_tag="1", to="<sip:a@b>"):
        ruri = ruri or f"sip:00123@127.0.0.1:{self.port}"
        raw = (f"{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n{headers}"
               f"From: <sip:x@y>;tag={frm_tag}\r\nTo: {to}\r\nCall-ID: c1\r\nCSeq: 1 {method}\r\n"
               "Content-Length: 0\r\n\r\n").encode()
        msg = parse_msg(raw, ("127.0.0.1", 5070), ("127.0.0.1", self.port))
        ctx = self.script.new_ctx(msg, self.proc)
        self.sent.clear()
        self.script.run_request_route(ctx)
        return msg, [d.split(b"\r\n", 1)[0].decode()[8:] for d in self.sent]

    def close(self):
        self.proc = self.script = None
        gc.collect()
        self.sock.close()
        self.arena.destroy()


@pytest.fixture
def env():
    made = []

    def make(body):
        e = Env(body)
        made.append(e)
        return e
    yield make
    for e in made:
        e.close()


def test_starts_with_and_t_is_branch_route(env):
    e = env("""request_route {
        $var(a) = 0; $var(b) = 0;
        if (starts_with("$rU", "00")) $var(a) = 1;
        if (t_is_branch_route()) $var(b) = 1;
        sl_send_reply("200", "a=$var(a) b=$var(b)");
    }""")
    assert e.run()[1] == ["200 a=1 b=0"]
    assert e.run(ruri=f"sip:0@127.0.0.1:{e.port}")[1] == ["200 a=0 b=0"]


def test_is_first_hop_request(env):
    e = env("""request_route {
        if (is_first_hop()) sl_send_reply("200", "first"); else sl_send_reply("200", "not first");
    }""")
    assert e.run()[1] == ["200 first"]
    assert e.run("Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK2\r\n")[1] == ["200 not first"]


def test_add_rr_param_before_and_after_record_route(env):
    e = env("""request_route {
        add_rr_param(";a=1");
        record_route();
        add_rr_param(";nat=yes");
        sl_send_reply("200", "ok");
    }""")
    msg, _ = e.run(method="INVITE")
    rr = [h for h in msg.hdr_adds if h.startswith("Record-Route")]
    assert rr == [f"Record-Route: <sip:127.0.0.1:{e.port};lr;ftag=1;a=1;nat=yes>\r\n"]


def test_check_route_param_and_is_direction(env):
    e = env("""request_route {
        if (!loose_route()) { sl_send_reply("404", "no route"); exit; }
        $var(n) = 0; $var(d) = "?";
        if (check_route_param("NAT=yes")) $var(n) = 1;
        if (is_direction("downstream")) $var(d) = "down";
        if (is_direction("upstream")) $var(d) = "up";
        sl_send_reply("200", "n=$var(n) d=$var(d)");
    }""")
    # in-dialog requests (To tag), the answers Kamailio 5.6.3 gives on the same route
    dlg = {"ruri": "sip:b@192.0.2.9", "to": "<sip:a@b>;tag=tt"}
    ours = f"Route: <sip:127.0.0.1:{e.port};lr;nat=yes;ftag=1>\r\n"
    assert e.run(ours, **dlg)[1] == ["200 n=1 d=down"]
    assert e.run(ours, frm_tag="2", **dlg)[1] == ["200 n=1 d=up"]
    plain = f"Route: <sip:127.0.0.1:{e.port};lr>\r\n"
    assert e.run(plain, **dlg)[1] == ["200 n=0 d=down"]
    # the top Route is not ours: no routed params
    assert e.run("Route: <sip:192.0.2.7;lr;nat=yes>\r\n", **dlg)[1] == ["200 n=0 d=down"]


def test_loose_route_preloaded_route_to_us_is_false(env):
    """Kamailio 5.6.3 (loose.c after_loose): our Route as the whole preloaded route set of
    an initial request returns RR_PRELOADED (-3): false, the Route removed."""
    e = env("""request_route {
        loose_route(); $var(rc) = $rc;
        sl_send_reply("200", "rc=$var(rc)");
    }""")
    ours = f"Route: <sip:127.0.0.1:{e.port};lr>\r\n"
    msg, replies = e.run(ours, ruri="sip:b@192.0.2.9")
    assert replies == ["200 rc=-3"] and "route" in msg.hdr_removes
    assert e.run(ours, ruri="sip:b@192.0.2.9", to="<sip:a@b>;tag=tt")[1] == ["200 rc=1"]
    # a preloaded set that goes on past us is routed (RR_DRIVEN)
    two = ours + "Route: <sip:192.0.2.7;lr>\r\n"
    assert e.run(two, ruri="sip:b@192.0.2.9")[1] == ["200 rc=1"]
