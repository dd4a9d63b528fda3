"""The core: statistics a receiver counts, in process: one Receiver on a real
loopback socket, messages handed to handle() as recvfrom would, the counts
read from the shm rows (Kamailio's places: src/modules/kex/core_stats.c
km_cb_req_stats / km_cb_rpl_stats / km_cb_rpl_stats_by_method, bad_msg_hdr
for what does not parse, fwd_replies / drop_replies in forward_reply)."""
import socket

import pytest

from asyncd.cfg.compiler import compile_cfg
from asyncd.core.context import ProcState
from shm.arena import ShmArena
from workers.receiver import Receiver


def _req(method, port, cseq_method=None):
    return (f"{method} sip:x@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port + 1};branch=z9hG4bK{method}\r\n"
            "From: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: c@d\r\n"
            f"CSeq: 1 {cseq_method or method}\r\nContent-Length: 0\r\n\r\n").encode()


def _rpl(code, cseq_method, via_port):
    return (f"SIP/2.0 {code} Whatever\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{via_port};branch=z9hG4bKx\r\n"
            "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKy\r\n"
            "From: <sip:a@b>;tag=1\r\nTo: <sip:x@y>;tag=2\r\nCall-ID: c@d\r\n"
            f"CSeq: 1 {cseq_method}\r\nContent-Length: 0\r\n\r\n").encode()


@pytest.fixture
def rx():
    script = compile_cfg(text='loadmodule "sl.so"\nrequest_route { exit; }')
    arena = ShmArena.create(8 << 20)
    script.shm = arena
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        script.init_modules()
        script.stats.allocate(arena, 3)
        proc = ProcState(script=script)
        proc.sockets = [sock]
        proc.cnt = script.stats.row(1)
        yield Receiver(proc, 0), script.stats
    finally:
        sock.close()
        arena.destroy()


def test_requests_by_method(rx):
    r, stats = rx
    port = r.local[1]
    for m in ("INVITE", "OPTIONS", "OPTIONS", "FOO", "KDMQ"):
        r.handle(_req(m, port), ("127.0.0.1", port + 1))
    core = {n: v for _g, n, v in stats.items("core") if v}
    # KDMQ is a method Kamailio knows and counts nowhere but in rcv_requests
    assert core == {"rcv_requests": 5, "rcv_requests_invite": 1, "rcv_requests_options": 2,
                    "unsupported_methods": 1}


def test_replies_by_class_code_and_method_and_their_forwarding(rx):
    r, stats = rx
    port = r.local[1]
    r.handle(_rpl(183, "INVITE", port), ("127.0.0.1", 9))     # ours: forwarded to the 2nd Via
    r.handle(_rpl(486, "INVITE", port), ("127.0.0.1", 9))
    r.handle(_rpl(200, "REGISTER", 1), ("127.0.0.1", 9))      # top Via not ours: dropped
    r.handle(_rpl(202, "SUBSCRIBE", port), ("127.0.0.1", 9))  # no per-method counter
    core = {n: v for _g, n, v in stats.items("core") if v}
    assert core == {"rcv_replies": 4, "rcv_replies_1xx": 1, "rcv_replies_18x": 1,
                    "rcv_replies_4xx": 1, "rcv_replies_486": 1, "rcv_replies_2xx": 2,
                    "rcv_replies_1xx_invite": 1, "rcv_replies_4xx_invite": 1,
                    "rcv_replies_2xx_reg": 1, "fwd_replies": 3, "drop_replies": 1}


def test_what_does_not_parse_is_bad_msg_hdr(rx):
    r, stats = rx
    port = r.local[1]
    r.handle(b"garbage!", ("127.0.0.1", 9))                            # a runt
    r.handle(b"\r\n\r\n", ("127.0.0.1", 9))                            # a keepalive: nothing
    r.handle(_req("OPTIONS", port).replace(b"CSeq: 1", b"CSeq: x"), ("127.0.0.1", port + 1))
    r.handle(b"INVITE nonsense that is not SIP at all\r\n\r\n", ("127.0.0.1", 9))
    core = {n: v for _g, n, v in stats.items("core") if v}
    assert core == {"bad_msg_hdr": 3}
