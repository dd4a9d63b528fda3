"""Transaction-table capacity at the default -m 64 (docs/kamailio-tm.md §8): a
few thousand OPTIONS answered from an async task worker all wait their
wt_timer in the table, each in a compact record (a 512-byte arena slot: the
shm `used` grows by about that per transaction, where a whole cell took a
1,024-byte one), and a retransmission of an early one still gets its very
200, byte for byte. Read the way an operator would: `kamcmd tm.stats` and
`kamcmd core.shmmem` over the ctl socket.

Runs in: the pytest process; asyncd runs as a subprocess (run_server).
"""
import os
import re
import socket
import tempfile
import time

import pytest

from bench.servers import kamailio_binary
from tests.helpers import run_server
from tests.helpers.kamailio import KAMCMD, SKIP_KAMAILIO, SKIP_KAMCMD, kamcmd, run_kamailio
from tests.helpers.sipclient import build_request

N = 3000
CFG = """
debug=2
listen=udp:127.0.0.1:LPORT
children=2
async_workers=2
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "async.so"
loadmodule "ctl.so"
modparam("ctl", "binrpc", "unix:{sock}")
modparam("tm", "wt_timer", 30000)   # all of them still waiting when counted, however slow the box
request_route {{
    if ($rm == "ACK") {{ t_check_trans(); exit; }}
    t_check_trans();
    async_task_route("RESUME");
    exit;
}}
route[RESUME] {{
    send_reply("200", "OK");
    exit;
}}
"""


def _rpc(ctl, *args):
    """kamcmd's struct rendering -> {key: int}."""
    r = kamcmd(ctl, *args)
    assert r.returncode == 0, r.stderr
    return {k: int(v) for k, v in re.findall(r"^\s*(\w+): (\d+)$", r.stdout, re.M)}


def _blast(sock, addr, reqs, window=200, timeout=10.0):
    """Send reqs, at most `window` unanswered at a time; -> {Call-ID: 200 bytes}."""
    got, sent, end = {}, 0, time.monotonic() + timeout
    while len(got) < len(reqs) and time.monotonic() < end:
        while sent < len(reqs) and sent - len(got) < window:
            sock.sendto(reqs[sent][0], addr)
            sent += 1
        try:
            data, _ = sock.recvfrom(65536)
        except socket.timeout:
            continue
        if data.startswith(b"SIP/2.0 200 "):
            cid = re.search(rb"\r\nCall-ID: ([^\r]+)", data).group(1).decode()
            got[cid] = data
    return got


@pytest.mark.skipif(KAMCMD is None, reason=SKIP_KAMCMD)
def test_many_wait_state_transactions_stay_small_and_absorb_retransmissions():
    d = tempfile.mkdtemp(prefix="tmcap-")
    ctl_path = os.path.join(d, "ctl")
    ctl = f"unix:{ctl_path}"
    with run_server(CFG.format(sock=ctl_path), args=("-m", "64")) as srv, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.2)
        addr = ("127.0.0.1", srv.port)
        before = _rpc(ctl, "core.shmmem")
        reqs = [build_request("OPTIONS", f"sip:ping@127.0.0.1:{srv.port}", s.getsockname())
                for _ in range(N)]
        t0 = time.monotonic()
        got = _blast(s, addr, reqs)
        took = time.monotonic() - t0
        lost = [r for r in reqs if r[2] not in got]     # a reply lost on a busy box: ask again
        got.update(_blast(s, addr, lost, timeout=2.0))
        after = _rpc(ctl, "core.shmmem")
        tm = _rpc(ctl, "tm.stats")
        assert len(got) == N, f"{len(got)} of {N} answered 200 in {took:.1f} s"
        assert tm["waiting"] >= N and tm["current"] >= N, tm
        per_cell = (after["used"] - before["used"]) / N
        assert 300 < per_cell < 640, f"{per_cell:.0f} bytes of shm per waiting transaction"
        first, _, cid = reqs[0]
        s.sendto(first, addr)            # a retransmission of the first request
        again = None
        while again is None:
            data, _ = s.recvfrom(65536)
            if cid.encode() in data:
                again = data
        assert again == got[cid], "the same 200, byte for byte"
    os.rmdir(d)


RELAY = """
listen=udp:127.0.0.1:LPORT
children=1
{head}
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
request_route {{
    if ($rm == "ACK") {{ t_check_trans(); exit; }}
    t_check_trans();
    $du = "sip:127.0.0.1:{uas}";
    t_relay();
    exit;
}}
"""
KAM_HEAD = ('#!KAMAILIO\ndisable_tcp=yes\nmpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"\n'
            'loadmodule "ctl.so"')


def _udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.05)
    return s


def _recv_all(sock, secs, until=None):
    out, end = [], time.monotonic() + secs
    while time.monotonic() < end and len(out) != until:
        try:
            out.append(sock.recvfrom(65536)[0])
        except socket.timeout:
            pass
    return out


def _answer(req, status, reason):
    """A UAS's reply to the request bytes it received (its Vias, From, To with a tag)."""
    head = req.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]
    keep = [h for h in head if h.split(b":")[0].lower() in (b"via", b"from", b"call-id", b"cseq")]
    to = next(h for h in head if h.lower().startswith(b"to:"))
    lines = [b"SIP/2.0 %d %s" % (status, reason)] + keep + [to + b";tag=uas1", b"Content-Length: 0"]
    return b"\r\n".join(lines + [b"", b""])


def _late_replies(port, uac, uas):
    """MESSAGE relayed, answered 200; the UAS sends its 200 again and a 202;
    the UAC retransmits. -> what each side saw."""
    data, _, _ = build_request("MESSAGE", "sip:bob@127.0.0.1", uac.getsockname(), body="hi")
    uac.sendto(data, ("127.0.0.1", port))
    req = _recv_all(uas, 2.0, until=1)[0]     # answered at once: before timer E's first retransmission
    uas.sendto(_answer(req, 200, b"OK"), ("127.0.0.1", port))
    first = _recv_all(uac, 0.4)
    uas.sendto(_answer(req, 200, b"OK"), ("127.0.0.1", port))
    uas.sendto(_answer(req, 202, b"Accepted"), ("127.0.0.1", port))
    late = _recv_all(uac, 0.4)
    _recv_all(uas, 0.05)
    uac.sendto(data, ("127.0.0.1", port))
    again = _recv_all(uac, 0.4)
    return {"first": [r.split(b"\r\n")[0] for r in first], "late": late,
            "again_same": again == first[:1], "relayed_again": _recv_all(uas, 0.05)}


@pytest.mark.kamailio
def test_late_replies_to_a_completed_message_as_kamailio():
    """A completed non-INVITE (here in asyncd's compact record) absorbs a
    retransmitted and a different late final from downstream and answers a
    retransmitted request with the very reply it relayed: as Kamailio 5.6.3
    does with its whole cell."""
    if not kamailio_binary():
        pytest.skip(SKIP_KAMAILIO)
    seen = {}
    for name in ("asyncd", "kamailio"):
        with _udp() as uac, _udp() as uas:
            cfg = RELAY.format(head=KAM_HEAD if name == "kamailio" else "", uas=uas.getsockname()[1])
            with (run_kamailio(cfg) if name == "kamailio" else run_server(cfg)) as srv:
                seen[name] = _late_replies(srv.port, uac, uas)
    assert seen["asyncd"] == seen["kamailio"], seen
    assert seen["asyncd"] == {"first": [b"SIP/2.0 200 OK"], "late": [], "again_same": True,
                              "relayed_again": []}
