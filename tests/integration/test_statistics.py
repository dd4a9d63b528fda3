"""Statistics on a running server: core:, sl:, tmx: and tcp: move by exactly
the number of requests sent, summed over every receiver's row, read back
through $stat in a reply's reason phrase (the script is the reader: the
ctl transport is not part of this test), and in the attendant's exit summary.

Runs in: the pytest process; asyncd is a subprocess, the peers plain sockets.
"""
import re
import socket
import time

from tests.helpers.sipclient import build_request

CFG = r"""
#!ifndef LPORT
#!define LPORT 5060
#!endif
debug=2
children=2
tcp_children=1
listen=127.0.0.1:LPORT
loadmodule "kex.so"
loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "tmx.so"
loadmodule "pv.so"
request_route {
    if ($rU == "stats") {
        sl_send_reply("200", "rcv=$stat(rcv_requests) opt=$stat(rcv_requests_options) msg=$stat(rcv_requests_message) sl200=$stat(200_replies) uas=$stat(UAS_transactions) t4xx=$stat(4xx_transactions) tcp=$stat(passive_open)");
        exit;
    }
    if ($rU == "tm") {
        t_newtran();
        t_reply("404", "Not Here");
        exit;
    }
    sl_send_reply("200", "OK");
}
"""


def _tcp_options(port, n):
    """n OPTIONS over one TCP connection, each answered before the next."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        for _ in range(n):
            data, _b, _c = build_request("OPTIONS", f"sip:x@127.0.0.1:{port}", s.getsockname(),
                                         rport=False)
            s.sendall(data.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP", 1))
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += s.recv(65536)
            assert buf.startswith(b"SIP/2.0 200"), buf[:100]
    finally:
        s.close()


def test_counters_move_by_the_requests_sent(run_server, sip_client):
    with run_server(CFG) as srv:
        c = sip_client(srv.addr)
        for _ in range(10):
            assert c.final("OPTIONS").status == 200
        for _ in range(5):
            assert c.final("MESSAGE", f"sip:tm@127.0.0.1:{srv.port}").status == 404
        _tcp_options(srv.port, 3)
        # sl counts a reply once it is sent (sl_funcs.c: update_sl_stats after msg_send):
        # the client may hold the last one a moment before its sender counted it
        time.sleep(0.3)
        r = c.final("OPTIONS", f"sip:stats@127.0.0.1:{srv.port}")
        assert r is not None and r.status == 200
        got = dict(kv.split("=") for kv in r.reason.split())
        # the stats request itself was counted before the script ran, its reply not yet sent
        assert got == {"rcv": "19", "opt": "14", "msg": "5", "sl200": "13", "uas": "5",
                       "t4xx": "5", "tcp": "1"}, r.reason
    m = re.search(r"received (\d+) requests, (\d+) replies; (\d+) malformed", srv.log())
    assert m and m.groups() == ("19", "0", "0"), srv.log()[-2000:]
