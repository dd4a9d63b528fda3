"""The sanity module in process: each check of Kamailio 5.6's bitmask with the
reply code and reason sanity.c sends (src/modules/sanity/sanity.c), the
uri_checks mask, the modparams (proxy_require, autodrop, noreply,
default_checks) and sanity_reply()."""
import gc

import pytest

from asyncd.cfg.compiler import compile_cfg
from asyncd.core.context import ProcState
from asyncd.modules import sanity
from asyncd.sip import parse_msg
from shm.arena import ShmArena

pytestmark = pytest.mark.unit

HEAD = 'loadmodule "sl.so"\nloadmodule "sanity.so"\nloadmodule "xlog.so"\n'
ROUTE = """
request_route {
    if (!sanity_check("%s", "%s")) {
        sl_send_reply("299", "after");
        exit;
    }
    sl_send_reply("200", "passed");
}
"""

GOOD = ("OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\n"
        "From: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\n"
        "Max-Forwards: 70\r\n{extra}Content-Length: {cl}\r\n\r\n{body}")


def request(extra="", body="", cl=None, ruri="sip:a@127.0.0.1", frm="<sip:x@y>;tag=1", to="<sip:a@b>"):
    text = GOOD.format(extra=extra, body=body, cl=len(body) if cl is None else cl)
    text = text.replace("sip:a@127.0.0.1 SIP", f"{ruri} SIP").replace("From: <sip:x@y>;tag=1", f"From: {frm}")
    return text.replace("To: <sip:a@b>", f"To: {to}").encode()


class Env:
    def __init__(self, params="", msg_checks="65535", uri_checks="15", route=None):
        self.script = compile_cfg(text=HEAD + params + (route or ROUTE % (msg_checks, uri_checks)))
        self.arena = ShmArena.create(8 << 20)
        self.script.shm = self.arena
        self.script.init_modules()
        self.script.stats.allocate(self.arena, 2)
        self.proc = ProcState(script=self.script)
        self.proc.cnt = self.script.stats.row(1)
        self.sent = []
        self.proc.send = lambda data, addr, sock=0: self.sent.append(data) or True

    def run(self, raw):
        self.sent.clear()
        msg = parse_msg(raw, ("127.0.0.1", 9), ("127.0.0.1", 5060))
        ctx = self.script.new_ctx(msg, self.proc)
        self.script.run_request_route(ctx)
        return [d.split(b"\r\n", 1)[0].decode()[8:] for d in self.sent]

    def close(self):
        # drop every view of the segment (counters rows, messages) before it closes
        self.proc = self.script = None
        gc.collect()
        self.arena.destroy()


@pytest.fixture
def env():
    made = []

    def make(**kw):
        e = Env(**kw)
        made.append(e)
        return e
    yield make
    for e in made:
        e.close()


def test_good_request_passes_every_check(env):
    e = env(msg_checks="32767", uri_checks="15")
    assert e.run(request()) == ["200 passed"]


@pytest.mark.parametrize("extra,body,cl,want", [
    ("Proxy-Require: foo, bar\r\n", "", None, "420 Bad Proxy Require Extension"),
    ("Expires: abc\r\n", "", None, "400 Expires value is illegal"),
    ("Expires: 4294967297\r\n", "", None, "400 Expires value is illegal"),
    ("Expires: 4294967296\r\n", "", None, "200 passed"),        # str2valid_uint's edge
    ("Expires: 60 ;x\r\n", "", None, "200 passed"),
    ("", "junk", 0, "400 Content-Length mis-match"),
    ("Authorization: Digest username=\"a\", realm=\"r\"\r\n", "", None, "400 Bad Auth Credentials"),
    ("Authorization: Digest username=\"a\", realm=\"r\", nonce=\"\", uri=\"sip:a\", response=\"x\"\r\n",
     "", None, "400 Auth Empty Nonce"),
    ("Authorization: Digest username=\"\", realm=\"r\", nonce=\"n\", uri=\"sip:a\", response=\"x\"\r\n",
     "", None, "400 Auth Empty User"),
    ("Authorization: Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"sip:a\", response=\"x\", "
     "qop=auth\r\n", "", None, "400 Bad Auth Credentials"),         # qop needs cnonce and nc
    ("Contact: <isbn:2983792873>\r\n", "", None, "400 Bad Contact URI"),
])
def test_check_replies_as_kamailio(env, extra, body, cl, want):
    """autodrop 1 (default): a failure replies and ends the script (no 299)."""
    e = env(msg_checks="32767", uri_checks="15")
    assert e.run(request(extra, body, cl)) == [want]


def test_proxy_require_unsupported_header_and_known_tags(env):
    e = env(msg_checks="512", uri_checks="1")
    e.run(request("Proxy-Require: foo, bar\r\n"))
    assert b"\r\nUnsupported: foo\r\n" in e.sent[0]
    e2 = env(params='modparam("sanity", "proxy_require", "foo ,bar")\n', msg_checks="512", uri_checks="1")
    assert e2.run(request("Proxy-Require: foo, bar\r\n")) == ["200 passed"]
    assert e2.run(request("Proxy-Require: foo, baz\r\n")) == ["420 Bad Proxy Require Extension"]


@pytest.mark.parametrize("kw,uri_checks,want", [
    ({"ruri": "isbn:1234"}, "1", "400 Bad Request URI"),
    ({"frm": "<isbn:1>;tag=1"}, "2", "400 Invalid From Header"),
    ({"to": "<name:x>"}, "4", "400 Ivalid To Header"),           # Kamailio's spelling
    ({"to": "<name:x>"}, "3", "200 passed"),                       # To not in the uri mask
    ({"ruri": "urn:service:sos"}, "1", "200 passed"),
])
def test_parse_uris_and_uri_mask(env, kw, uri_checks, want):
    e = env(msg_checks="1024", uri_checks=uri_checks)
    assert e.run(request(**kw)) == [want]


def test_ruri_scheme_is_400_as_kamailio(env):
    """Kamailio 5.6 answers an unknown scheme 400 Bad Request URI (parse_uri fails first)."""
    e = env(msg_checks="2", uri_checks="1")
    assert e.run(request(ruri="soap.beep://192.0.2.103:3002")) == ["400 Bad Request URI"]


def test_duplicate_tags(env):
    e = env(msg_checks="4096", uri_checks="1")
    assert e.run(request(frm="<sip:x@y>;tag=1;tag=2")) == ["400 Many From Tag Params"]
    assert e.run(request(to="<sip:a@b>;tag=1;TAG=2")) == ["400 Many To Tag Params"]
    assert e.run(request(to="sip:a@b;tag=1")) == ["200 passed"]


def test_digest_other_scheme(env):
    """Bit 2048 fails a non-Digest scheme without a reply; bit 8192 lets it pass."""
    basic = request("Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n")
    assert env(msg_checks="2048", uri_checks="1").run(basic) == []
    assert env(msg_checks="8192", uri_checks="1").run(basic) == ["200 passed"]


def test_autodrop_0_returns_false_and_script_goes_on(env):
    e = env(params='modparam("sanity", "autodrop", 0)\n', msg_checks="256", uri_checks="1")
    assert e.run(request("Expires: x\r\n")) == ["400 Expires value is illegal", "299 after"]


def test_noreply_and_sanity_reply(env):
    route = """request_route {
        if (!sanity_check("256", "1")) { sanity_reply(); exit; }
        sanity_reply();
        sl_send_reply("200", "passed");
    }"""
    e = env(params='modparam("sanity", "noreply", 1)\nmodparam("sanity", "autodrop", 0)\n', route=route)
    assert e.run(request("Expires: x\r\n")) == ["400 Expires value is illegal"]
    # no failure recorded for this message: sanity_reply() sends Kamailio's 500
    assert e.run(request()) == ["500 Server Sanity Failure", "200 passed"]


def test_default_checks_and_out_of_range(env):
    route = """request_route {
        sanity_check(); $var(a) = $rc;
        sanity_check("65536"); $var(b) = $rc;
        sl_send_reply("200", "$var(a) $var(b)");
    }"""
    e = env(params='modparam("sanity", "autodrop", 0)\n', route=route)
    assert e.run(request()) == ["200 1 -1"]
    assert sanity.S.default_checks == sanity.DEFAULT_CHECKS == 3047


def test_str2valid_uint():
    assert sanity.str2valid_uint("0") and sanity.str2valid_uint("4294967296")
    assert not sanity.str2valid_uint("4294967297")
    assert not sanity.str2valid_uint("12345678901") and not sanity.str2valid_uint("-1")
    assert not sanity.str2valid_uint("")


def test_reply_checks_as_the_stock_reply_route(env):
    """The stock reply_route's sanity_check("17604", "6") on replies: request-only checks
    are not in that mask; a failure never answers a reply (sanity.c sanity_reply)."""
    e = env()
    ok = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\n"
          b"From: <sip:x@y>;tag=1\r\nTo: <sip:a@b>;tag=2\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\n"
          b"Content-Length: 0\r\n\r\n")
    for raw, want in ((ok, 1), (ok.replace(b"To: <sip:a@b>", b"To: <name:x>"), 0),
                      (ok.replace(b"\r\n\r\n", b"\r\n\r\nabc"), 0)):
        ctx = e.script.new_ctx(parse_msg(raw, ("127.0.0.1", 9), ("127.0.0.1", 5060)), e.proc)
        e.sent.clear()
        assert sanity.w_sanity_check(ctx, 17604, 6) == want
        assert e.sent == []
    # every bit on a reply: the R-URI and CSeq-method checks pass there
    ctx = e.script.new_ctx(parse_msg(ok, ("127.0.0.1", 9), ("127.0.0.1", 5060)), e.proc)
    assert sanity.w_sanity_check(ctx, 32767, 15) == 1
