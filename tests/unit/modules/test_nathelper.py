"""nathelper in process: the private ranges (nathelper.c nh_nets_1918),
nat_uac_test bits on parsed messages, a second Contact rewrite refused,
handle_ruri_alias on a TCP alias.

Runs in: the pytest process.
"""
import pytest

from asyncd.cfg.compiler import compile_cfg
from asyncd.core.context import ProcState
from asyncd.modules import nathelper
from asyncd.sip import parse_msg

pytestmark = pytest.mark.unit

REQ = ("OPTIONS {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bK-1\r\n"
       "From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: c-1\r\n"
       "CSeq: 1 OPTIONS\r\nContact: {contact}\r\nContent-Length: 0\r\n\r\n")


def msg(via="192.168.0.9:5060", contact="<sip:u@192.168.0.9>", ruri="sip:bob@example.com",
        src=("203.0.113.5", 40000), proto="udp"):
    return parse_msg(REQ.format(via=via, contact=contact, ruri=ruri).encode(), src,
                     ("127.0.0.1", 5060), proto=proto)


@pytest.mark.parametrize("ip,private", [("10.1.1.1", True), ("172.31.0.1", True), ("172.32.0.1", False),
                                        ("192.168.255.1", True), ("100.64.0.1", True),
                                        ("100.128.0.1", False), ("192.0.0.7", True),
                                        ("192.0.0.200", True), ("8.8.8.8", False),
                                        ("example.com", False), ("::1", False)])
def test_rfc1918_ranges(ip, private):
    assert nathelper.is1918(ip) is private


def test_nat_uac_test_bits():
    m = msg()
    assert [nathelper.nat_uac_test(m, b) for b in (1, 2, 4, 8, 16, 32, 64, 128)] == \
        [1, 1, 1, -1, 1, -1, -1, 1]
    m = msg(via="203.0.113.5:40000", contact="<sip:u@203.0.113.5:40000>")
    assert nathelper.nat_uac_test(m, 0xFF) == -1
    assert nathelper.nat_uac_test(msg(src=("10.0.0.1", 5060), via="10.0.0.1",
                                      contact="<sip:u@10.0.0.1>"), 32) == 1


def run(body, m):
    s = compile_cfg(text='loadmodule "pv.so"\nloadmodule "nathelper.so"\nrequest_route {\n%s\n}\n' % body)
    s.init_modules()
    proc = ProcState(script=s)
    ctx = s.new_ctx(m, proc)
    s.run_request_route(ctx)
    return proc.vars, ctx.msg


def test_a_second_contact_rewrite_is_refused():
    v, m = run("$var(a) = fix_nated_contact(); $var(b) = set_contact_alias(); $var(ct) = $ct;", msg())
    assert v["a"] == 1 and v["b"] == -1
    assert v["ct"] == "<sip:u@203.0.113.5:40000>"


def test_handle_ruri_alias_sets_du_with_the_transport():
    v, m = run("$var(r) = handle_ruri_alias(); $var(du) = $du; $var(ru) = $ru;",
               msg(ruri="sip:bob@198.51.100.1;alias=198.51.100.1~5070~2;lr"))
    assert v["r"] == 1 and v["du"] == "sip:198.51.100.1:5070;transport=tcp"
    assert v["ru"] == "sip:bob@198.51.100.1;lr"
    v, _ = run("$var(r) = handle_ruri_alias();", msg())
    assert v["r"] == 2
