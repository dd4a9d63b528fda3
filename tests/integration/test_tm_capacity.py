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

from tests.helpers import run_server
from tests.helpers.kamailio import KAMCMD, SKIP_KAMCMD, kamcmd
from tests.helpers.sipclient import build_request

pytestmark = pytest.mark.skipif(KAMCMD is None, reason=SKIP_KAMCMD)

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
        assert took < 4.5, f"{took:.1f} s: the first ones may have left the wait state already"
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
