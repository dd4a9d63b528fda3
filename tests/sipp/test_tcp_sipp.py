"""SIP over TCP through the real server: SIPp UACs over `-t t1` (one
connection) and `-t tn` (a connection per call) in front of asyncd, SIPp
UASes over TCP and UDP behind it, all on loopback (docs/kamailio-tcp.md).

Runs in: the pytest process (asyncd, SIPp and two tiny TCP peers).

What is shown, each with 0 failed calls:
- OPTIONS answered by `sl_send_reply` in a `tcp receiver (generic)` and by
  `send_reply` in an `Async Task Worker` after `async_task_route`: the
  reply carries `$proto $pp` (append_to_reply), so the test sees which
  process answered and that it knew the request came over TCP;
- INVITE/ACK/BYE relayed TCP→TCP, UDP→TCP and TCP→UDP: the UAS sees a top
  Via of the transport it is reached on and the UAC's Via below it, and on
  TCP every INVITE and BYE exactly once (no timers A/E on a reliable
  transport, RFC 3261 17.1.1.2, 17.1.2.2);
- CANCEL after 180 over TCP: 200 for the CANCEL, 487 for the INVITE;
- a 408 made by tm's `timer` process (fr_inv after a 180, fr with no reply
  at all) reaches the TCP UAC over the connection its INVITE came on;
- a relay to a TCP port that refuses the connection: Kamailio answers 477
  at once (marked xfail: asyncd answers 408 after fr_timer);
- a task that replies after the client closed its connection leaves no
  transaction behind once wt_timer (and, for an INVITE, the wait for the
  ACK) ran, and the failed reply is not retried in a loop.

Each SIPp run is a few seconds; the file takes about half a minute.
"""
import re
import shutil
import socket
import time
from types import SimpleNamespace

import pytest

from tests.helpers.net import free_udp_port
from tests.helpers.server import run_server
from tests.helpers.sipclient import build_request
from tests.helpers.sipp import SippUas, run_sipp

pytestmark = pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp not installed")

# Kamailio does not replace a #!define inside a string, so URIs are built by concatenation.
CFG = r"""
#!ifndef LPORT
#!define LPORT 5071
#!endif
#!ifndef UAS_TCP
#!define UAS_TCP 5090
#!endif
#!ifndef UAS_UDP
#!define UAS_UDP 5091
#!endif
#!ifndef RING
#!define RING 5092
#!endif
#!ifndef HOLE
#!define HOLE 5093
#!endif
#!ifndef DEAD
#!define DEAD 5094
#!endif
#!ifndef WT
#!define WT 1000
#!endif
#!ifndef T1
#!define T1 500
#!endif
#!ifndef FR
#!define FR 30000
#!endif
debug=2
log_stderror=yes
children=2
tcp_children=2
listen=127.0.0.1:LPORT
async_workers=2

loadmodule "tm.so"
loadmodule "tmx.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "cfgutils.so"
loadmodule "async.so"

modparam("tm", "wt_timer", WT)
modparam("tm", "retr_timer1", T1)
modparam("tm", "fr_timer", FR)

request_route {
    if ($rU == "sl") {
        append_to_reply("X-By: sl $proto $pp\r\n");
        sl_send_reply("200", "OK");
        exit;
    }
    if ($rU == "task" || $rU == "slow") {
        if (is_method("ACK")) { t_check_trans(); exit; }
        if (t_precheck_trans()) { t_check_trans(); exit; }
        t_check_trans();
        if ($rU == "task") {
            async_task_route("task");
        } else {
            async_task_route("slow");
        }
        exit;
    }
    if (is_method("CANCEL")) {
        if (t_check_trans()) { t_relay(); }
        exit;
    }
    if (has_totag() && loose_route()) {
        t_relay();
        exit;
    }
    if (is_method("INVITE")) {
        record_route();
    }
    if ($rU == "tcp") {
        $du = "sip:127.0.0.1:" + UAS_TCP + ";transport=tcp";
    } else if ($rU == "udp") {
        $du = "sip:127.0.0.1:" + UAS_UDP;
    } else if ($rU == "ring") {
        $du = "sip:127.0.0.1:" + RING + ";transport=tcp";
    } else if ($rU == "ring408") {
        # both values: Kamailio 5.6 relaying to TCP with t_set_fr(1000, 0) was seen to
        # answer 408 after the default fr_timer (30 s), not 1 s after the 180
        t_set_fr(1000, 800);
        $du = "sip:127.0.0.1:" + RING + ";transport=tcp";
    } else if ($rU == "hole") {
        t_set_fr(0, 1000);
        $du = "sip:127.0.0.1:" + HOLE + ";transport=tcp";
    } else if ($rU == "dead") {
        t_set_fr(0, 1000);
        $du = "sip:127.0.0.1:" + DEAD + ";transport=tcp";
    }
    if (!t_relay()) {
        sl_reply_error();
    }
}

route[task] {
    append_to_reply("X-By: task $proto $pp $async(gname)\r\n");
    send_reply("200", "OK");
    exit;
}

route[slow] {
    usleep(200000);
    if (is_method("INVITE")) {
        send_reply("486", "Busy Here");
    } else {
        send_reply("200", "OK");
    }
    xlog("L_INFO", "slow: replied to $ci over $proto\n");
    exit;
}
"""


@pytest.fixture(scope="module")
def peers():
    """The UASes behind the server: SIPp's uas over TCP and over UDP, a TCP UAS that
    rings and never answers, a TCP port that accepts and never answers (a listen
    socket nobody accepts on: the kernel completes the handshake), a port that refuses."""
    made = []
    hole = socket.socket()
    try:
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        p = SimpleNamespace(hole=hole.getsockname()[1], dead=free_udp_port())
        for name, kw in (("tcp", dict(builtin="uas", transport="tn")), ("udp", dict(builtin="uas")),
                         ("ring", dict(scenario="tm_uas_ring_cancel.xml", transport="tn"))):
            u = SippUas(trace_msg=True, **kw)
            made.append(u)
            setattr(p, name, u)
        time.sleep(0.3)
        yield p
    finally:
        for u in made:
            u.stop()
        hole.close()


@pytest.fixture(scope="module")
def srv(peers):
    defines = {"UAS_TCP": peers.tcp.port, "UAS_UDP": peers.udp.port, "RING": peers.ring.port,
               "HOLE": peers.hole, "DEAD": peers.dead}
    with run_server(CFG, defines=defines) as s:
        yield s


# ---- reading SIPp's -trace_msg files -------------------------------------------------
_BLOCK = re.compile(r"^-{20,} .*\n(\w+) message (received|sent)[^\n]*\n\n", re.M)


def _messages(trace, direction="received"):
    """(transport, message) of each message SIPp logged in that direction."""
    parts = _BLOCK.split(trace)
    # split gives [before, transport, direction, message, transport, direction, message, ...]
    return [(parts[i], parts[i + 2]) for i in range(1, len(parts) - 2, 3) if parts[i + 1] == direction]


def _requests(trace, method):
    return [(tr, m) for tr, m in _messages(trace) if m.startswith(method + " ")]


def _vias(message):
    """Each Via value, also those folded into one line with commas."""
    out = []
    for line in re.findall(r"^(?:Via|v): *(.*?)\r?$", message, re.M | re.I):
        out += [v.strip() for v in line.split(",")]
    return out


def _titles(srv):
    return {p.pid: " ".join(p.cmdline()).strip() for p in srv.processes()}


# ---- 1. OPTIONS over TCP -------------------------------------------------------------
@pytest.mark.parametrize("transport", ["t1", "tn"])
@pytest.mark.parametrize("service, title", [("sl", "asyncd: tcp receiver (generic) child="),
                                            ("task", "asyncd: Async Task Worker - default")],
                         ids=["sl", "task"])
def test_options_over_tcp_answered_by_the_right_process(srv, transport, service, title):
    n = 200
    r = run_sipp(srv.addr, "options", service=service, calls=n, rate=200, timeout=20,
                 transport=transport, trace_msg=True)
    assert r.rc == 0 and r.successful == n and r.failed == 0, r.summary()
    replies = [(tr, m) for tr, m in _messages(r.messages) if m.startswith("SIP/2.0 200 ")]
    assert len(replies) == n and {tr for tr, _ in replies} == {"TCP"}
    by = [re.findall(r"^X-By: (.*?)\r?$", m, re.M) for _, m in replies]
    assert all(len(b) == 1 for b in by), by[:3]          # one header: the lump is added once
    titles = _titles(srv)
    seen = set()
    for (value,) in by:
        words = value.split()
        assert words[:2] == [service, "tcp"], value      # $proto of the request, in every process
        seen.add(titles.get(int(words[2]), words[2]))
        if service == "task":
            assert words[3:] == ["default"], value       # $async(gname)
    assert seen and all(t.startswith(title) for t in seen), seen


# ---- 2. INVITE/ACK/BYE relayed across transports -----------------------------------------
@pytest.mark.parametrize("uac, uas", [("t1", "tcp"), (None, "tcp"), ("tn", "udp")],
                         ids=["tcp-tcp", "udp-tcp", "tcp-udp"])
def test_calls_relayed_across_transports(srv, peers, uac, uas):
    n = 200
    target = getattr(peers, uas)
    before = len(target.messages())
    r = run_sipp(srv.addr, builtin="uac", service=uas, calls=n, rate=100, timeout=30, transport=uac)
    assert r.rc == 0 and r.successful == n and r.failed == 0, r.summary()
    trace = target.messages()[before:]
    invites, acks, byes = (_requests(trace, m) for m in ("INVITE", "ACK", "BYE"))
    ours = f"SIP/2.0/{uas.upper()} 127.0.0.1:{srv.port};branch=z9hG4bK"
    theirs = "SIP/2.0/TCP " if uac else "SIP/2.0/UDP "
    for tr, m in invites + byes:
        assert tr == uas.upper()
        vias = _vias(m)
        assert len(vias) == 2 and vias[0].startswith(ours) and vias[1].startswith(theirs), vias
    if uas == "tcp":
        # a reliable transport: tm never re-sends a request on it (timers A and E)
        assert len(invites) == n and len(byes) == n, (len(invites), len(byes))
    else:
        assert len(invites) >= n and len(byes) >= n
    assert len(acks) >= n and all(tr == uas.upper() for tr, _ in acks)


# ---- 3. CANCEL over TCP --------------------------------------------------------------
@pytest.mark.parametrize("transport", ["t1", "tn"])
def test_cancel_over_tcp_gives_487(srv, peers, transport):
    n = 20
    before = len(peers.ring.messages())
    r = run_sipp(srv.addr, "tm_uac_cancel", service="ring", calls=n, rate=20, timeout=20,
                 transport=transport)
    assert r.rc == 0 and r.successful == n and r.failed == 0, r.summary()
    trace = peers.ring.messages()[before:]
    cancels = _requests(trace, "CANCEL")
    assert len(cancels) == n and {tr for tr, _ in cancels} == {"TCP"}
    assert all(_vias(m)[0].startswith(f"SIP/2.0/TCP 127.0.0.1:{srv.port};") for _, m in cancels)
    # tm ACKs the UAS's 487 itself (hop by hop, RFC 3261 17.1.1.3), over the same connection
    assert len(_requests(trace, "ACK")) == n


# ---- 4. 408 from tm's timer process over TCP -----------------------------------------------
def _read_replies(sock, until, timeout):
    """Replies read from a stream socket (each framed by its Content-Length) until
    `until(statuses)` or timeout: [(status, seconds since the call)]."""
    t0 = time.monotonic()
    buf, got = b"", []
    sock.settimeout(0.05)
    while time.monotonic() - t0 < timeout and not until([s for s, _ in got]):
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        if not data:
            break
        buf += data
        while b"\r\n\r\n" in buf:
            head, rest = buf.split(b"\r\n\r\n", 1)
            m = re.search(rb"^(?:Content-Length|l): *(\d+)", head, re.M | re.I)
            size = int(m.group(1)) if m else 0
            if len(rest) < size:
                break
            buf = rest[size:]
            got.append((int(head.split(b" ", 2)[1]), time.monotonic() - t0))
    return got


def _invite_over_tcp(srv, service, until, timeout):
    """An INVITE on a connection of its own; the replies read back on it."""
    with socket.create_connection(srv.addr) as s:
        data, _, _ = build_request("INVITE", f"sip:{service}@127.0.0.1:{srv.port}", s.getsockname())
        s.sendall(data.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP", 1))
        return _read_replies(s, until, timeout)


@pytest.mark.parametrize("service", ["ring408", "hole"])
def test_408_from_the_timer_reaches_the_tcp_client(srv, peers, service):
    """ring408: 180, then fr_inv_timer (1 s) ends it and tm CANCELs the UAS; hole: no
    reply at all, fr_timer (1 s). The 408 is built in tm's `timer` process."""
    before = len(peers.ring.messages())
    got = _invite_over_tcp(srv, service, lambda codes: 408 in codes, 5.0)
    codes = [c for c, _ in got]
    assert 408 in codes and codes[0] == 100, got           # all on the connection the INVITE used
    t408 = dict(got)[408]
    assert 0.95 < t408 < 2.0, t408
    if service == "ring408":
        assert 180 in codes, got
    r = run_sipp(srv.addr, "tm_uac_408", service=service, calls=5, rate=10, timeout=20, transport="t1")
    assert r.rc == 0 and r.successful == 5 and r.failed == 0, r.summary()
    if service == "ring408":
        # the CANCEL tm sends when fr_inv_timer hits goes to the UAS over TCP
        cancels = _requests(peers.ring.messages()[before:], "CANCEL")
        assert len(cancels) == 6 and {tr for tr, _ in cancels} == {"TCP"}


def test_relay_to_a_refused_tcp_port_fails_at_once(srv):
    """A TCP next hop that refuses the connection ends the branch at once with 477, as
    Kamailio's t_relay() fails at once (src/core/tcp_main.c tcpconn_1st_send): tcp main
    hands tm a local 477 for the request it could not send (workers/tcp_main.py unsent)."""
    got = _invite_over_tcp(srv, "dead", lambda codes: any(c >= 200 for c in codes), 3.0)
    finals = [(c, t) for c, t in got if c >= 200]
    assert finals and finals[0][0] == 477 and finals[0][1] < 0.5, got


# ---- 5. a task replies after the client's connection closed ------------------------------
def test_reply_after_client_closed_leaves_no_transaction():
    """OPTIONS and INVITEs over TCP, each connection closed right after its request; the
    task answers 200 ms later. The reply has nowhere to go; the transactions still end:
    OPTIONS after wt_timer, an INVITE's 486 when the wait for its ACK ends (timer H,
    64*T1, RFC 3261 17.2.1; Kamailio waits fr_timer, docs/kamailio-tcp.md §7: both
    short here)."""
    n, t1, fr, wt = 10, 0.05, 2.5, 0.5
    with run_server(CFG, defines={"WT": int(wt * 1000), "T1": int(t1 * 1000), "FR": int(fr * 1000)}) as srv:
        callids = []
        for method in ("OPTIONS", "INVITE") * (n // 2):
            with socket.create_connection(srv.addr) as s:
                data, _, cid = build_request(method, f"sip:slow@127.0.0.1:{srv.port}", s.getsockname())
                s.sendall(data.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP", 1))
                callids.append(cid)
        end = time.monotonic() + 10
        while len(re.findall(r"slow: replied to \S+ over tcp", srv.log())) < n:
            assert time.monotonic() < end, srv.log()[-3000:]
            time.sleep(0.05)
        size = len(srv.log())
        time.sleep(max(64 * t1, fr) + wt + 1.5)
        assert srv.alive()
        later = srv.log()[size:]
        # a reply that cannot be delivered is given up, not retried over and over
        assert len(later.splitlines()) < n, later[-3000:]
        srv.stop()
    log_text = srv.log()
    assert not re.search(r"\bERROR\b|Traceback", log_text), log_text[-3000:]
    for cid in callids:
        assert f"slow: replied to {cid} over tcp" in log_text
    assert re.findall(r"transaction table: (\d+) entries at exit", log_text) == ["0"], log_text[-3000:]
