"""nathelper's NAT pinger in process: the startup checks of nathelper.c
mod_init, the "TIMER NH" rows, one interval's ticks pinging every NATed
contact exactly once over real UDP sockets (SIP ping or 4 zero bytes), and
the filter that absorbs replies to our pings.

Runs in: the pytest process.
"""
import re
import socket

import pytest

from asyncd.cfg.compiler import compile_cfg
from asyncd.core.context import ProcState
from asyncd.core.errors import CfgError
from asyncd.core.procs import PROC_TIMER
from asyncd.modules import nathelper_ping, usrloc
from asyncd.sip import parse_msg
from shm.arena import ShmArena
from shm.usrloc import new_contact

HEAD = '''
loadmodule "pv.so"
loadmodule "sl.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "nathelper.so"
modparam("usrloc", "nat_bflag", 6)
modparam("usrloc", "hash_size", 4)
modparam("nathelper", "natping_interval", 2)
modparam("nathelper", "ping_nated_only", 1)
modparam("nathelper", "sipping_bflag", 7)
modparam("nathelper", "sipping_from", "sip:pinger@example.org")
'''
ROUTE = 'request_route { save("location"); }\n'


def _script(head):
    s = compile_cfg(text=head + ROUTE)
    s.shm = ShmArena.create(8 << 20)
    s.init_modules()
    return s


@pytest.fixture
def script():
    s = _script(HEAD)
    yield s
    s.shm.destroy()


def _udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.2)
    return s


def _drain(s):
    out = []
    try:
        while True:
            out.append(s.recv(65535))
    except socket.timeout:
        return out


@pytest.mark.parametrize("extra, text", [
    ('modparam("usrloc", "nat_bflag", -1)', "ping_nated_only enabled, but no nat bflag"),
    ('modparam("nathelper", "sipping_from", "")', "SIP ping FROM is empty"),
    ('modparam("nathelper", "natping_processes", -1)', "natping_processes must be >= 0"),
])
def test_mod_init_refuses_what_kamailio_refuses(extra, text):
    s = compile_cfg(text=HEAD + extra + "\n" + ROUTE)
    s.shm = ShmArena.create(4 << 20)
    try:
        with pytest.raises(CfgError, match=text):
            s.init_modules()
    finally:
        s.shm.destroy()


def test_one_timer_nh_process_per_natping_processes(script):
    rows = nathelper_ping.procs(script)
    assert [(r.title, r.rank, r.count) for r in rows] == [("TIMER NH", PROC_TIMER, 1)]


def test_an_interval_of_ticks_pings_each_nated_contact_once(script):
    listen, sip_ue, udp_ue, plain_ue = _udp(), _udp(), _udp(), _udp()
    lport = listen.getsockname()[1]
    script.sock_addrs = [("udp", "127.0.0.1", lport)]
    proc = ProcState(script=script)
    proc.sockets = [listen]
    d = usrloc.S.domains["location"]
    sock = f"udp:127.0.0.1:{lport}"
    ues = [(f"s{i}", sip_ue, (1 << 6) | (1 << 7)) for i in range(6)] + \
          [(f"u{i}", udp_ue, 1 << 6) for i in range(6)] + [(f"p{i}", plain_ue, 0) for i in range(6)]
    for aor, ue, cflags in ues:
        rcv = "sip:127.0.0.1:%d" % ue.getsockname()[1]
        c = new_contact(f"sip:{aor}@192.168.0.9:5060", 0, cflags=cflags, received=rcv, sock=sock,
                        ruid=f"r-{aor}")
        d.update(aor, lambda cs, c=c: ([c], None))
    for _ in range(2):                  # natping_interval ticks: every slot once
        nathelper_ping.tick(proc, 0)
    sips, zeros, plain = _drain(sip_ue), _drain(udp_ue), _drain(plain_ue)
    assert zeros == [b"\x00\x00\x00\x00"] * 6 and plain == []
    assert len(sips) == 6
    users = sorted(re.match(rb"OPTIONS sip:(s\d)@", m).group(1) for m in sips)
    assert users == [b"s%d" % i for i in range(6)]
    text = sips[0].decode()
    assert re.fullmatch(
        r"OPTIONS (sip:s\d@192\.168\.0\.9:5060) SIP/2\.0\r\n"
        rf"Via: SIP/2\.0/UDP 127\.0\.0\.1:{lport};branch=z9hG4bK\d{{7}}\r\n"
        r"From: sip:pinger@example\.org;tag=r-s\d-[0-9a-f]{1,8}-[0-9a-f]{1,8}\r\n"
        r"To: \1\r\nCall-ID: [0-9a-f]{1,8}-[0-9a-f]{1,8}-[0-9a-f]{1,8}@127\.0\.0\.1\r\n"
        r"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n", text), text
    for s in (listen, sip_ue, udp_ue, plain_ue):
        s.close()


def _reply(callid, cseq="1 OPTIONS", vias=1):
    via = "".join(f"Via: SIP/2.0/UDP 127.0.0.1:{5060 + i};branch=z9hG4bK{i}\r\n" for i in range(vias))
    return parse_msg((f"SIP/2.0 200 OK\r\n{via}From: sip:pinger@example.org;tag=x\r\n"
                      f"To: sip:a@b;tag=y\r\nCall-ID: {callid}\r\nCSeq: {cseq}\r\n"
                      "Content-Length: 0\r\n\r\n").encode(), ("127.0.0.1", 9), ("127.0.0.1", 5060))


def test_replies_to_our_pings_are_absorbed(script):
    proc = ProcState(script=script)
    ours = nathelper_ping.S.callid + "-1-2@127.0.0.1"

    def absorbed(msg):
        return nathelper_ping.reply_in(script.new_ctx(msg, proc))
    assert absorbed(_reply(ours))
    assert not absorbed(_reply("zz" + ours))
    assert not absorbed(_reply(ours, cseq="1 INFO"))
    assert not absorbed(_reply(ours, vias=2))


def test_reverse_hex_is_kamailios():
    assert nathelper_ping.rhex(0) == "0"
    assert nathelper_ping.rhex(0x1a2b) == "b2a1"
