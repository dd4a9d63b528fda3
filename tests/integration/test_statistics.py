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
#!ifndef UAS
#!define UAS 5099
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
    if ($rU == "tmx") {
        sl_send_reply("200", "uas=$stat(UAS_transactions) rcv=$stat(rpl_received) relayed=$stat(rpl_relayed) gen=$stat(rpl_generated) sent=$stat(rpl_sent) t2xx=$stat(2xx_transactions) active=$stat(active_transactions)");
        exit;
    }
    if ($rU == "relay") {
        t_relay("127.0.0.1", UAS);
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


def _uas():
    """A UDP next hop on a free loopback port that the test answers by hand."""
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    u.settimeout(5)
    return u


def _answer(uas, code):
    """Answer the next request the server relays to `uas` with `code`."""
    data, src = uas.recvfrom(65536)
    head, _, _ = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    keep = [ln for ln in lines[1:] if ln.split(b":")[0].strip().lower() in
            (b"via", b"from", b"to", b"call-id", b"cseq")]
    uas.sendto(b"\r\n".join([b"SIP/2.0 %d OK" % code] + keep + [b"Content-Length: 0", b"", b""]), src)


def _stats(c, port, user):
    r = c.final("OPTIONS", f"sip:{user}@127.0.0.1:{port}")
    assert r is not None and r.status == 200
    return dict(kv.split("=") for kv in r.reason.split())


def test_counters_move_by_the_requests_sent(run_server, sip_client):
    uas = _uas()
    with run_server(CFG, defines={"UAS": uas.getsockname()[1]}) as srv:
        c = sip_client(srv.addr)
        for _ in range(10):
            assert c.final("OPTIONS").status == 200
        for _ in range(5):
            assert c.final("MESSAGE", f"sip:tm@127.0.0.1:{srv.port}").status == 404
        _tcp_options(srv.port, 3)
        # sl counts a reply once it is sent (sl_funcs.c: update_sl_stats after msg_send):
        # the client may hold the last one a moment before its sender counted it
        time.sleep(0.3)
        got = _stats(c, srv.port, "stats")
        # the stats request itself was counted before the script ran, its reply not yet sent
        assert got == {"rcv": "19", "opt": "14", "msg": "5", "sl200": "13", "uas": "5",
                       "t4xx": "5", "tcp": "1"}, got
        # one relayed MESSAGE: its 200 received and relayed, next to the five local 404s
        c.send("MESSAGE", f"sip:relay@127.0.0.1:{srv.port}")
        _answer(uas, 200)
        r = c.recv(5)
        assert r is not None and r.status == 200
        time.sleep(0.3)
        got = _stats(c, srv.port, "tmx")
        assert got == {"uas": "6", "rcv": "1", "relayed": "1", "gen": "5", "sent": "6",
                       "t2xx": "1", "active": "0"}, got
    uas.close()
    m = re.search(r"received (\d+) requests, (\d+) replies; (\d+) malformed", srv.log())
    assert m and m.groups() == ("21", "1", "0"), srv.log()[-2000:]
