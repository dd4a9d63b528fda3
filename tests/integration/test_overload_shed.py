"""Overload: a UDP request that waited longer than `overload_delay_ms` in
the kernel's receive queue gets `503 Service Unavailable` with Retry-After
from tm before the script runs (docs/kamailio-tm.md §7), so a server past
its ceiling answers everything instead of leaving it to the kernel's drops
and the clients' retransmissions. With the parameter at 0 the same burst is
served, late, by the script.

Runs in: the pytest process; asyncd runs as a subprocess (run_server).
"""
import socket
import time

from tests.helpers import run_server
from tests.helpers.sipclient import build_request

N = 40
CFG = """
debug=2
listen=udp:127.0.0.1:LPORT
children=1
overload_delay_ms={delay}
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "cfgutils.so"
request_route {{
    usleep(20000);              # a route that costs 20 ms: one receiver serves 50/s
    sl_send_reply("200", "OK");
    exit;
}}
"""


def _burst(port, n=N, timeout=8.0):
    """Send n OPTIONS at once; -> {Call-ID: first final reply}."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.2)
        reqs = [build_request("OPTIONS", f"sip:svc@127.0.0.1:{port}", s.getsockname()) for _ in range(n)]
        for data, _, _ in reqs:
            s.sendto(data, ("127.0.0.1", port))
        got, end = {}, time.monotonic() + timeout
        while len(got) < n and time.monotonic() < end:
            try:
                data, _ = s.recvfrom(65536)
            except socket.timeout:
                continue
            for _, _, cid in reqs:
                if cid.encode() in data:
                    got.setdefault(cid, data)
        return got


def test_requests_that_waited_too_long_get_503_with_retry_after_and_none_is_left_unanswered():
    with run_server(CFG.format(delay=50)) as srv:
        got = _burst(srv.port)
        log = srv.log()
    assert len(got) == N, f"{N - len(got)} of {N} requests were never answered"
    codes = [r.split(b" ", 2)[1] for r in got.values()]
    ok, busy = codes.count(b"200"), codes.count(b"503")
    assert ok + busy == N and ok >= 1 and busy >= N // 2, (ok, busy)
    for r in got.values():
        if r.startswith(b"SIP/2.0 503 "):
            assert b"\r\nRetry-After: 5\r\n" in r, r
    assert "receive queue: a request waited" in log


def test_with_overload_delay_ms_0_the_script_serves_the_whole_burst():
    with run_server(CFG.format(delay=0)) as srv:
        got = _burst(srv.port)
    assert len(got) == N
    assert all(r.startswith(b"SIP/2.0 200 ") for r in got.values())
