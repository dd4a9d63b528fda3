"""Two real softphones (Debian's baresip) through Kamailio 5.6.3's stock
kamailio.cfg, unchanged, on asyncd and (the reference) on Kamailio itself.

Runs in: the pytest process (asyncd or Kamailio and two headless baresips are
real processes on loopback; baresip is driven over its ctrl_tcp socket,
tests/helpers/baresip.py).

The cfg is tests/acceptance/stock/kamailio.cfg (byte-exact Debian copy, no
auth, usrloc db_mode 0), started as tests/acceptance/test_stock_flows.py does:
`-l udp:127.0.0.1:P -l tcp:127.0.0.1:P -Y DIR`. Per transport (UDP, TCP):

- alice and bob register (REGISTER_OK: the stock registrar's 200);
- alice dials bob: bob's phone rings (CALL_INCOMING), alice sees 180 then,
  once bob accepts, 200; both phones report CALL_ESTABLISHED for the same
  Call-ID; the 200 carries the proxy's Record-Route, so alice's ACK and BYE
  go to the proxy and reach bob with the proxy's Via on top;
- alice hangs up: the BYE's 200 comes back through the proxy, both phones
  report CALL_CLOSED ("Connection reset by user" / "... by peer");
- alice dials a user with no binding: CALL_CLOSED "404 Not Found" (the stock
  route LOCATION), and the 404 is ACKed to the proxy;
- alice dials `sip:bob@127.0.0.1` (no port: 5060, which the server does not
  listen on, so not `myself`): "403 Not relaying" (route AUTH);
- alice dials bob and hangs up while it rings: her CANCEL reaches bob through
  the proxy, she gets 200 for the CANCEL and 487 for the INVITE, both phones
  report the call closed.

The same flow runs against Kamailio 5.6.3 and the two transcripts (event
sequences, status lines, Record-Route and Route with the port masked) must be
equal. Media is not checked: RTP flows phone to phone, not through the proxy.
"""
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from bench.servers import kamailio_binary
from tests.helpers.baresip import BARESIP, SKIP_BARESIP, run_baresip
from tests.helpers.kamailio import SKIP_KAMAILIO, run_kamailio
from tests.helpers.net import free_udp_port
from tests.helpers.server import run_server

STOCK = Path(__file__).resolve().parents[1] / "acceptance" / "stock" / "kamailio.cfg"
CALL_EVENTS = ("REGISTER_OK", "CALL_INCOMING", "CALL_RINGING", "CALL_PROGRESS", "CALL_ESTABLISHED",
               "CALL_CLOSED")
TRANSPORTS = ("udp", "tcp")
EV_TIMEOUT = 8.0

pytestmark = pytest.mark.skipif(BARESIP is None, reason=SKIP_BARESIP)


def listen_args(port):
    return ["-l", f"udp:127.0.0.1:{port}", "-l", f"tcp:127.0.0.1:{port}"]


@pytest.fixture(scope="module")
def asyncd_stock():
    port = free_udp_port()
    run = tempfile.mkdtemp(prefix="asyncd-softphone-run-")
    try:
        with run_server(cfg_path=str(STOCK), port=port, args=[*listen_args(port), "-Y", run]) as srv:
            yield srv.addr
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
        yield ("127.0.0.1", k.port)


def masked(value, proxy):
    """`value` with the proxy's port replaced by PORT (the two servers listen on different ports)."""
    return None if value is None else value.replace(f"127.0.0.1:{proxy[1]}", "127.0.0.1:PORT")


def established_call(a, b):
    """alice dials bob, bob accepts -> (alice's, bob's) CALL_ESTABLISHED events."""
    a.dial(a.uri("bob"))
    incoming = b.wait_event("CALL_INCOMING", EV_TIMEOUT)
    assert incoming["peeruri"] == a.aor, incoming
    a.wait_event("CALL_RINGING", EV_TIMEOUT)
    b.accept()
    return a.wait_event("CALL_ESTABLISHED", EV_TIMEOUT), b.wait_event("CALL_ESTABLISHED", EV_TIMEOUT)


def invite_transcript(a, b, call_id, proxy):
    """What the proxy did to the call, as the phones saw it (ports masked)."""
    a_in = [m for m in a.received() if m.header("Call-ID") == call_id]
    a_out = [m for m in a.sent() if m.header("Call-ID") == call_id]
    b_in = [m for m in b.received() if m.header("Call-ID") == call_id and m.method]
    ok = next(m for m in a_in if m.status and m.status.startswith("200") and m.cseq_method() == "INVITE")
    return {
        "a_invite_replies": [m.status for m in a_in if m.cseq_method() == "INVITE"],
        "a_sent": [(m.method or m.status, m.dst == a.proxy_addr(), masked(m.header("Route"), proxy))
                   for m in a_out],
        "record_route": masked(ok.header("Record-Route"), proxy),
        "b_got": [(m.method, masked(m.header("Via"), proxy).split(";")[0]) for m in b_in],
        "bye_reply": [m.status for m in a_in if m.cseq_method() == "BYE"],
    }


def cancelled_call(a, b):
    """alice dials bob and hangs up while it rings: her CANCEL goes through the proxy."""
    a.dial(a.uri("bob"))
    cid = b.wait_event("CALL_INCOMING", EV_TIMEOUT)["id"]
    a.wait_event("CALL_RINGING", EV_TIMEOUT)
    a.hangup()
    ca, cb = a.wait_event("CALL_CLOSED", EV_TIMEOUT), b.wait_event("CALL_CLOSED", EV_TIMEOUT)
    for phone in (a, b):        # alice ACKs the 487; the proxy ACKs bob's (hop by hop, 17.1.1.3)
        phone.wait_trace(lambda ms: any(m.method == "ACK" and m.header("Call-ID") == cid for m in ms))
    return {
        "closed": (ca["param"], cb["param"]),
        "a_got": [(m.status, m.cseq_method()) for m in a.received() if m.header("Call-ID") == cid],
        "a_sent": [m.method for m in a.sent() if m.header("Call-ID") == cid],
        "b_got": [m.method for m in b.received() if m.header("Call-ID") == cid and m.method],
    }


def call_flow(proxy, transport):
    """The whole flow on one server -> its transcript (see the module docstring)."""
    with run_baresip("alice", proxy, transport=transport) as a, \
            run_baresip("bob", proxy, transport=transport) as b:
        ea, eb = established_call(a, b)
        a.hangup()
        ca, cb = a.wait_event("CALL_CLOSED", EV_TIMEOUT), b.wait_event("CALL_CLOSED", EV_TIMEOUT)
        a.dial(a.uri("nobody"))
        nf = a.wait_event("CALL_CLOSED", EV_TIMEOUT)
        a.wait_trace(lambda ms: sum(1 for m in ms if m.method == "ACK" and m.header("Call-ID") == nf["id"]))
        a.wait_trace(lambda ms: any(a.incoming(m) and m.cseq_method() == "BYE" and m.status for m in ms))
        a.dial("sip:bob@127.0.0.1")                     # no port: 5060, not `myself`
        nr = a.wait_event("CALL_CLOSED", EV_TIMEOUT)
        cancelled = cancelled_call(a, b)
        nf_out = [m for m in a.sent() if m.header("Call-ID") == nf["id"]]
        nf_in = [m for m in a.received() if m.header("Call-ID") == nf["id"]]
        return {
            "ids": (ea["id"], eb["id"], ca["id"], cb["id"]),
            "a_events": [t for t in a.types() if t in CALL_EVENTS],
            "b_events": [t for t in b.types() if t in CALL_EVENTS],
            "closed": (ca["param"], cb["param"], nf["param"], nr["param"]),
            "call": invite_transcript(a, b, ea["id"], proxy),
            "not_found": ([m.status for m in nf_in], [m.method for m in nf_out]),
            "cancelled": cancelled,
        }


_cache = {}


def transcript(server, proxy, transport):
    """One flow per (server, transport), shared by the checks and the comparison."""
    key = (server, transport)
    if key not in _cache:
        _cache[key] = call_flow(proxy, transport)
    return _cache[key]


def check_flow(t):
    ea, eb, ca, cb = t["ids"]
    assert ea == eb == ca == cb, t["ids"]                 # one dialog, seen by both phones
    assert t["a_events"] == ["REGISTER_OK", "CALL_RINGING", "CALL_ESTABLISHED", "CALL_CLOSED",
                             "CALL_CLOSED", "CALL_CLOSED", "CALL_RINGING", "CALL_CLOSED"], t
    assert t["b_events"] == ["REGISTER_OK", "CALL_INCOMING", "CALL_ESTABLISHED", "CALL_CLOSED",
                             "CALL_INCOMING", "CALL_CLOSED"], t
    assert t["closed"] == ("Connection reset by user", "Connection reset by peer", "404 Not Found",
                           "403 Not relaying"), t
    call = t["call"]
    assert [s.split(" ", 1)[0] for s in call["a_invite_replies"]] == ["100", "180", "200"], call
    assert re.fullmatch(r"<sip:127\.0\.0\.1:PORT(;transport=tcp)?;lr>", call["record_route"]), call
    # ACK and BYE: to the proxy, routed by its Record-Route; bob gets them with the proxy's Via
    assert [(s[0], s[1]) for s in call["a_sent"]] == [("INVITE", True), ("ACK", True), ("BYE", True)], call
    assert call["a_sent"][1][2] == call["a_sent"][2][2] == call["record_route"], call
    assert [m for m, _ in call["b_got"]] == ["INVITE", "ACK", "BYE"], call
    assert all(v.endswith(" 127.0.0.1:PORT") for _, v in call["b_got"]), call
    assert call["bye_reply"] == ["200 OK"], call
    assert t["not_found"][0][-1] == "404 Not Found" and t["not_found"][1] == ["INVITE", "ACK"], t
    c = t["cancelled"]
    assert c["a_sent"] == c["b_got"] == ["INVITE", "CANCEL", "ACK"], c
    assert [(code.split(" ", 1)[0], m) for code, m in c["a_got"]] == [
        ("100", "INVITE"), ("180", "INVITE"), ("200", "CANCEL"), ("487", "INVITE")], c


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_call_through_stock_cfg_on_asyncd(asyncd_stock, transport):
    check_flow(transcript("asyncd", asyncd_stock, transport))


@pytest.mark.kamailio
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_call_through_stock_cfg_on_kamailio(kamailio_stock, transport):
    check_flow(transcript("kamailio", kamailio_stock, transport))


@pytest.mark.kamailio
@pytest.mark.server
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_same_transcript_as_kamailio(asyncd_stock, kamailio_stock, transport):
    ours = dict(transcript("asyncd", asyncd_stock, transport))
    ref = dict(transcript("kamailio", kamailio_stock, transport))
    ours.pop("ids"), ref.pop("ids")
    assert ours == ref
