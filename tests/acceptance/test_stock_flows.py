"""Kamailio 5.6.3's stock kamailio.cfg, unchanged, end to end with real SIPp
over UDP and TCP, on asyncd and (the twin) on Kamailio itself.

Runs in: the pytest process (asyncd or Kamailio, SIPp UACs and UASes and
kamcmd run as real processes on loopback, free ports, a temp runtime dir).

The cfg is tests/acceptance/stock/kamailio.cfg, a byte-exact copy of the
Debian package's /etc/kamailio/kamailio.cfg (README.md beside it). Only the
command line differs from a packaged install: `-l udp:127.0.0.1:P -l
tcp:127.0.0.1:P` (the stock cfg has no listen), `-Y DIR` (its ctl socket and
jsonrpcs FIFO land in a temp dir). Per transport (users are per transport):

- OPTIONS to the server: `200 Keepalive` (REQINIT); Max-Forwards 0: 483;
- INVITE to a user with no binding: `404 Not Found` (route LOCATION);
- REGISTER: 200 with the binding (Contact + expires, capped at the stock
  max_expires 3600); `kamcmd ul.dump` shows it; an INVITE to that user
  reaches the SIPp UAS registered as that user: 180/200/ACK/BYE/200;
- re-REGISTER (same Call-ID, higher CSeq, Expires 1): the same binding
  refreshed, its expires raised to registrar's min_expires (60);
- REGISTER Expires 0: 200 with no binding, and the INVITE is a 404 again;
- two contacts for one AOR: the INVITE forks to both SIPp UASes (one
  answers 200, the other 486 and gets the proxy's ACK), the call completes.

Expiry is waited for only when ASYNCD_STOCK_EXPIRY=1: the stock cfg sets no
min_expires, so the shortest binding lasts registrar's default 60 s (an
Expires under it is raised to it, which is always checked above), longer
than this whole file may take in the suite.
"""
import hashlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from bench.servers import free_udp_port, kamailio_binary
from tests.helpers.kamailio import KAMCMD, SKIP_KAMAILIO, SKIP_KAMCMD, kamcmd, run_kamailio
from tests.helpers.server import run_server
from tests.helpers.sipp import SippUas, run_sipp

STOCK = Path(__file__).resolve().parent / "stock" / "kamailio.cfg"
TRANSPORTS = {"udp": None, "tcp": "t1"}       # SIPp's -t per transport
SIPP_TIMEOUT = 10

STOCK_SHA256 = "6a79e3a2863a7dda991b2ec2760066f833f931b5414aebab792161deb7e0519b"
EXPIRY = os.environ.get("ASYNCD_STOCK_EXPIRY") == "1"


def sipp_flow(fn):
    """A flow test: runs SIPp and kamcmd (skipped when either is missing)."""
    for mark in (pytest.mark.skipif(KAMCMD is None, reason=SKIP_KAMCMD),
                 pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp not installed"),
                 pytest.mark.sipp):
        fn = mark(fn)
    return fn


def listen_args(port):
    return ["-l", f"udp:127.0.0.1:{port}", "-l", f"tcp:127.0.0.1:{port}"]


class Target:
    """The server under test: its address, its ctl socket and its SIPp transport mode."""

    def __init__(self, port, ctl, transport):
        self.addr = ("127.0.0.1", port)
        self.ctl = ctl
        self.tr = transport
        self.mode = TRANSPORTS[transport]

    def sipp(self, scenario, user, extra=()):
        """One SIPp UAC call of `scenario` to `user`, its messages kept."""
        return run_sipp(self.addr, scenario, service=user, transport=self.mode, extra=extra,
                        trace_msg=True, timeout=SIPP_TIMEOUT)

    def register(self, user, cport, expires, cseq=1, cid=None):
        """REGISTER user -> the received 200's Contact header value ('' when none)."""
        extra = ["-key", "cport", str(cport), "-key", "ctr", self.tr, "-key", "expires",
                 str(expires), "-key", "regcseq", str(cseq), "-cid_str", cid or f"reg-{user}-{cport}-%u"]
        r = self.sipp("stock_register", user, extra)
        assert r.rc == 0 and r.successful == 1, r.summary()
        return reply_contact(r.messages)

    def ul_dump(self):
        p = kamcmd(self.ctl, "ul.dump")
        assert p.returncode == 0, p.stderr
        return p.stdout


def reply_contact(messages):
    """The Contact header of the last 200 SIPp received."""
    last = messages.rsplit("SIP/2.0 200 ", 1)[-1].split("\n\n", 1)[0]
    found = re.findall(r"^(?:Contact|m)\s*:\s*(.*)$", last, re.M | re.I)
    return ", ".join(v.strip() for v in found)


def status_line(messages, code):
    m = re.search(rf"^SIP/2\.0 {code} .*$", messages, re.M)
    return m.group(0).strip() if m else None


def binding(user, port, tr):
    return f"<sip:{user}@127.0.0.1:{port};transport={tr}>"


def local_replies(t):
    """Answers the server gives on its own: keepalive, 483, 404 for no binding."""
    r = t.sipp("stock_options", "x")
    assert r.rc == 0, r.summary()
    assert status_line(r.messages, 200) == "SIP/2.0 200 Keepalive"
    r = t.sipp("stock_uac_483", "x")
    assert r.rc == 0, r.summary()
    assert status_line(r.messages, 483) == "SIP/2.0 483 Too Many Hops"
    r = t.sipp("stock_uac_404", f"nobody-{t.tr}")
    assert r.rc == 0, r.summary()
    assert status_line(r.messages, 404) == "SIP/2.0 404 Not Found"


def register_call_refresh_unregister(t, uas):
    user = f"alice-{t.tr}"
    a = uas("stock_uas_call.xml", transport=t.mode, trace_msg=True)
    cid = f"reg-{user}-fixed"
    contact = t.register(user, a.port, 7200, cseq=1, cid=cid)
    assert contact.startswith(binding(user, a.port, t.tr)), contact
    assert re.search(r";expires=(3600|359\d)\b", contact), contact       # max_expires 3600
    dump = t.ul_dump()
    assert f"AoR: {user}" in dump and f"sip:{user}@127.0.0.1:{a.port};transport={t.tr}" in dump, dump
    r = t.sipp("stock_uac_call", user)
    assert r.rc == 0 and r.successful == 1, r.summary()
    got = a.messages()
    assert "INVITE sip:" in got and "ACK sip:" in got and "BYE sip:" in got, got[-2000:]
    # refresh: same Call-ID, higher CSeq, Expires under min_expires -> raised to 60
    contact = t.register(user, a.port, 1, cseq=2, cid=cid)
    assert re.fullmatch(re.escape(binding(user, a.port, t.tr)) + r";expires=(60|59)", contact), contact
    dump = t.ul_dump()
    assert dump.count(f"sip:{user}@127.0.0.1:{a.port}") == 1 and re.search(r"CSeq: 2\b", dump), dump
    # de-registration: no binding left, the INVITE is a 404 again
    assert t.register(user, a.port, 0, cseq=3, cid=cid) == ""
    assert f"AoR: {user}" not in t.ul_dump()
    r = t.sipp("stock_uac_404", user)
    assert r.rc == 0, r.summary()


def forked_call(t, uas):
    user = f"carol-{t.tr}"
    b = uas("stock_uas_call.xml", transport=t.mode, trace_msg=True)
    c = uas("stock_uas_busy.xml", transport=t.mode, trace_msg=True)
    t.register(user, b.port, 600)
    contact = t.register(user, c.port, 600)
    assert binding(user, b.port, t.tr) in contact and binding(user, c.port, t.tr) in contact, contact
    r = t.sipp("stock_uac_call", user)
    assert r.rc == 0 and r.successful == 1, r.summary()
    assert "BYE sip:" in b.messages(), b.messages()[-2000:]
    busy = c.messages()
    assert "INVITE sip:" in busy and "ACK sip:" in busy, busy[-2000:]


def run_flows(t, uas):
    local_replies(t)
    register_call_refresh_unregister(t, uas)
    forked_call(t, uas)


@pytest.fixture
def uas():
    made = []

    def make(scenario, **kw):
        u = SippUas(scenario, **kw)
        made.append(u)
        return u
    yield make
    for u in made:
        u.stop()


@pytest.fixture(scope="module")
def asyncd_stock():
    port = free_udp_port()
    run = tempfile.mkdtemp(prefix="asyncd-stock-run-")
    try:
        with run_server(cfg_path=str(STOCK), port=port, args=[*listen_args(port), "-Y", run]) as srv:
            yield srv, f"unix:{run}/kamailio_ctl"
            log = srv.log()
            assert "Traceback" not in log, log[-3000:]
    finally:
        shutil.rmtree(run, ignore_errors=True)


@pytest.fixture(scope="module")
def kamailio_stock():
    if kamailio_binary() is None:
        pytest.skip(SKIP_KAMAILIO)
    port = free_udp_port()
    with run_kamailio(STOCK.read_text(), port=port, args=listen_args(port)) as k:
        yield k, k.ctl


@pytest.mark.unit
def test_stock_copy_is_debians_file():
    """The copy is the file its README names, byte for byte (never edited)."""
    digest = hashlib.sha256(STOCK.read_bytes()).hexdigest()
    assert digest == STOCK_SHA256
    assert STOCK_SHA256 in (STOCK.parent / "README.md").read_text()


@sipp_flow
@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_stock_cfg_flows_on_asyncd(asyncd_stock, transport, uas):
    srv, ctl = asyncd_stock
    run_flows(Target(srv.port, ctl, transport), uas)


@sipp_flow
@pytest.mark.kamailio
@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_stock_cfg_flows_on_kamailio(kamailio_stock, transport, uas):
    """The twin: the same flows and codes on Kamailio 5.6.3 with the same copy."""
    k, ctl = kamailio_stock
    run_flows(Target(k.port, ctl, transport), uas)


@sipp_flow
@pytest.mark.slow
@pytest.mark.skipif(not EXPIRY, reason="waits registrar's min_expires (60 s): set ASYNCD_STOCK_EXPIRY=1")
def test_stock_cfg_binding_expires_on_asyncd(asyncd_stock):
    """A binding registered with Expires 1 lives min_expires (60 s), then lookup() misses it:
    the INVITE gets the stock 404 again."""
    srv, ctl = asyncd_stock
    t = Target(srv.port, ctl, "udp")
    user = "dave-udp"
    contact = t.register(user, 9, 1)
    assert contact.endswith(";expires=60"), contact
    time.sleep(55)
    addr = f"sip:{user}@127.0.0.1:9"
    assert addr in kamcmd(ctl, "ul.lookup", "location", user).stdout
    end = time.monotonic() + 10
    while time.monotonic() < end and addr in kamcmd(ctl, "ul.lookup", "location", user).stdout:
        time.sleep(0.5)
    out = kamcmd(ctl, "ul.lookup", "location", user).stdout
    assert addr not in out and "error: " in out, out    # a fault: no valid contact left
    r = t.sipp("stock_uac_404", user)
    assert r.rc == 0 and status_line(r.messages, 404) == "SIP/2.0 404 Not Found", r.summary()
