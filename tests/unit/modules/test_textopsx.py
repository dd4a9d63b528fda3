"""textopsx on a compiled cfg, in process: msg_apply_changes makes textops'
pending changes visible, header values added and removed, keep_hf's 5.6
return code, fnmatch, change_reply_status's class rule.

Runs in: the pytest process.
"""
import pytest

from asyncd.cfg.compiler import compile_cfg
from asyncd.core.context import ProcState
from asyncd.core.errors import CfgError
from asyncd.core.route_types import TM_ONREPLY_ROUTE
from asyncd.sip import parse_msg

pytestmark = pytest.mark.unit

REQ = (b"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1\r\n"
       b"From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: c-1\r\n"
       b"CSeq: 1 INVITE\r\nSupported: timer, path\r\nX-A: 1\r\nX-B: 2\r\nContent-Type: text/plain\r\n"
       b"Content-Length: 4\r\n\r\nbody")
RPL = (b"SIP/2.0 404 Not Here\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1\r\n"
       b"From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>;tag=2\r\nCall-ID: c-1\r\n"
       b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")


def run(body, buf=REQ, route_type=None):
    req, rpl = (body, "") if route_type is None else ("", body)
    s = compile_cfg(text='loadmodule "textops.so"\nloadmodule "textopsx.so"\nloadmodule "pv.so"\n'
                         'request_route {\n%s\n}\nonreply_route[R] {\n%s\n}\n' % (req, rpl))
    proc = ProcState(script=s)
    ctx = s.new_ctx(parse_msg(buf, ("10.0.0.1", 5060), ("127.0.0.1", 5060)), proc)
    if route_type is None:
        s.run_request_route(ctx)
    else:
        ctx.route_type = route_type
        s.run_onreply_route("R", ctx)
    return proc.vars, ctx.msg


def test_msg_apply_changes_makes_pending_header_changes_visible():
    v, m = run('remove_hf("X-A"); append_hf("X-C: 3\\r\\n"); $rU = "carol";'
               '$var(before) = $hdr(X-A); $var(r) = msg_apply_changes();'
               '$var(after) = $hdr(X-A); $var(c) = $hdr(X-C); $var(ou) = $ou;')
    assert v["before"] == "1" and v["r"] == 1
    assert v["after"] == 0 and m.hdr("X-A") is None       # $var() = $null is 0
    assert v["c"] == "3"
    assert m.body == b"body" and m.hdr("Content-Length") == "4"
    assert not m.hdr_adds and not m.hdr_removes
    assert m.hdr("X-B") == "2"
    assert v["ou"] == "sip:carol@example.com" and m.new_uri is None   # the request line took it


def test_append_and_remove_hf_value():
    v, m = run('append_hf_value("Supported[-1]", "gruu"); $var(s) = $hdr(Supported);'
               '$var(r1) = remove_hf_value("Supported"); $var(s2) = $hdr(Supported);'
               '$var(r2) = remove_hf_value("X-None"); append_hf_value("X-N", "v");'
               '$var(r3) = remove_hf_value("X-B[*]"); $var(b) = $hdr(X-B);')
    assert v["s"] == "timer, path, gruu"
    assert v["r1"] == 1 and v["s2"] == "path, gruu"
    assert v["r2"] == -1
    assert "X-N: v" in m.hdr_adds
    assert v["r3"] == 1 and v["b"] == 0 and m.hdr("X-B") is None


def test_append_hf_value_refuses_an_asterisk_at_startup():
    with pytest.raises(CfgError):
        run('append_hf_value("Supported[*]", "x");')


def test_keep_hf_removes_the_others_and_returns_false_as_5_6_does():
    v, m = run('$var(r) = keep_hf("^X-A$"); msg_apply_changes();')
    assert v["r"] == -1
    assert m.hdr("X-A") == "1" and m.hdr("X-B") is None and m.hdr("Supported") is None
    assert m.hdr("Content-Type") == "text/plain"


def test_fnmatch():
    v, _ = run('$var(a) = fnmatch("sip:alice@x", "sip:a*"); $var(b) = fnmatch("ABC", "a*");'
               '$var(c) = fnmatch("ABC", "a*", "i");')
    assert (v["a"], v["b"], v["c"]) == (1, -1, 1)


def test_change_reply_status_keeps_the_class_rule():
    v, m = run('$var(a) = change_reply_status(200, "OK"); $var(b) = change_reply_status(488, "No");'
               '$var(rs) = $rs; $var(rr) = $rr;', buf=RPL, route_type=TM_ONREPLY_ROUTE)
    assert v["a"] == -1 and v["b"] == 1
    assert (v["rs"], v["rr"]) == (488, "No")
    assert m.buf.startswith(b"SIP/2.0 488 No\r\n")
