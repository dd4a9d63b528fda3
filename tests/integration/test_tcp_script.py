"""SIP over TCP as the script sees it: $proto/$pr/$Ri/$Rp/$si/$sp/$conid and
`proto == TCP`, a relay between UDP and TCP with Kamailio's double
Record-Route, force_tcp_alias(), set_forward_no_connect(),
force_send_socket(tcp:...), and a reply whose connection is gone going to
the Via (RFC 3261 18.2.2).

Runs in: the pytest process; asyncd is a subprocess, the peers are plain
sockets on loopback.
"""
import socket
import struct
import time

from bench.tcp import Framer
from tests.helpers.net import free_udp_port
from tests.helpers.sipclient import build_request

CFG = r"""
#!ifndef LPORT
#!define LPORT 5060
#!endif
#!ifndef UAS
#!define UAS 5099
#!endif
debug=2
children=1
listen=127.0.0.1:LPORT
loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "siputils.so"
loadmodule "textops.so"
loadmodule "cfgutils.so"
modparam("tm", "fr_timer", 1000)
modparam("tm", "fr_inv_timer", 1000)
request_route {
    if (has_totag() && loose_route()) {
        t_relay();
        exit;
    }
    if ($rU == "pv") {
        if (proto == TCP) { append_to_reply("X-Tcp: yes\r\n"); }
        append_to_reply("X-Pv: $proto $pr $Ri $Rp $si $sp $conid\r\n");
        sl_send_reply("200", "OK");
        exit;
    }
    if ($rU == "alias") {
        force_tcp_alias();
        sl_send_reply("200", "Aliased");
        exit;
    }
    if ($rU == "slow") {
        usleep(400000);
        sl_send_reply("200", "Slow");
        exit;
    }
    record_route();
    if ($rU == "totcp") {
        $du = "sip:127.0.0.1:" + UAS + ";transport=tcp";
    } else if ($rU == "nc") {
        $du = "sip:127.0.0.1:" + UAS + ";transport=tcp";
        set_forward_no_connect();
    } else if ($rU == "forced") {
        $du = "sip:127.0.0.1:" + UAS;
        force_send_socket(tcp:127.0.0.1:LPORT);
    }
    t_relay();
}
"""


def _listener():
    """A TCP next hop on a free loopback port: (listening socket, port)."""
    port = free_udp_port()
    lst = socket.socket()
    lst.bind(("127.0.0.1", port))
    lst.listen(8)
    lst.settimeout(5)
    return lst, port


def _udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    u.settimeout(5)
    return u


def _tcp(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _tcp_request(method, ruri, sock, via_port=None, **kw):
    local = sock.getsockname()
    data, branch, callid = build_request(method, ruri, (local[0], via_port or local[1]), rport=False, **kw)
    return data.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP", 1), callid


class StreamReader:
    """Messages off one TCP connection, cut by the bench harness's framer."""

    def __init__(self, sock):
        self.sock, self.framer, self.ready = sock, Framer(), []

    def next(self, timeout=5.0):
        end = time.monotonic() + timeout
        while not self.ready:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no complete message; have {bytes(self.framer.buf[:200])!r}")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; have {bytes(self.framer.buf[:200])!r}")
            self.ready += self.framer.feed(chunk)
        return self.ready.pop(0).decode()


def _hdrs(msg, name):
    return [line.split(":", 1)[1].strip() for line in msg.split("\r\n")
            if line.lower().startswith(name.lower() + ":")]


def _reply_to(msg, code, reason, extra=()):
    """A reply built from a request as a UAS would (Via, From, To, Call-ID, CSeq copied)."""
    lines = msg.split("\r\n\r\n", 1)[0].split("\r\n")[1:]
    keep = [ln for ln in lines if ln.split(":", 1)[0].lower() in
            ("via", "from", "to", "call-id", "cseq", "record-route")]
    keep = [ln + ";tag=uas1" if ln.lower().startswith("to:") and "tag=" not in ln else ln for ln in keep]
    lines = [f"SIP/2.0 {code} {reason}"] + keep + list(extra) + ["Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def test_pvs_and_proto_condition_over_tcp_and_udp(run_server):
    with run_server(CFG) as srv:
        port = srv.port
        s = _tcp(port)
        data, _ = _tcp_request("OPTIONS", f"sip:pv@127.0.0.1:{port}", s)
        s.sendall(data)
        r = StreamReader(s).next()
        assert r.startswith("SIP/2.0 200 OK"), r
        assert _hdrs(r, "X-Tcp") == ["yes"]
        proto, pr, ri, rp, si, sp, conid = _hdrs(r, "X-Pv")[0].split()
        local = s.getsockname()
        assert (proto, pr, ri, rp, si, sp) == ("tcp", "tcp", "127.0.0.1", str(port), local[0], str(local[1]))
        assert int(conid) > 0
        # the same request over UDP: no X-Tcp, no connection id
        u = _udp()
        data, _, _ = build_request("OPTIONS", f"sip:pv@127.0.0.1:{port}", u.getsockname())
        u.sendto(data, ("127.0.0.1", port))
        r = u.recv(65536).decode()
        assert _hdrs(r, "X-Tcp") == []
        assert _hdrs(r, "X-Pv")[0].split()[:2] == ["udp", "udp"]
        assert _hdrs(r, "X-Pv")[0].split()[-1] == "<null>"
        s.close()
        u.close()


def test_udp_in_tcp_out_double_record_route_and_back(run_server):
    lst, uas_port = _listener()
    with run_server(CFG, defines={"UAS": uas_port}) as srv:
        port = srv.port
        u = _udp()
        data, _, callid = build_request("INVITE", f"sip:totcp@127.0.0.1:{port}", u.getsockname(),
                                        rport=False)
        u.sendto(data, ("127.0.0.1", port))
        conn, _ = lst.accept()
        rd = StreamReader(conn)
        inv = rd.next()
        assert inv.startswith("INVITE ")
        assert _hdrs(inv, "Via")[0].startswith(f"SIP/2.0/TCP 127.0.0.1:{port};branch=")
        rr = _hdrs(inv, "Record-Route")
        # Kamailio's double RR: the socket it left from on top, then the one it came on
        assert len(rr) == 2, rr
        assert rr[0].startswith(f"<sip:127.0.0.1:{port};transport=tcp;r2=on;lr")
        assert rr[1].startswith(f"<sip:127.0.0.1:{port};r2=on;lr")
        conn.sendall(_reply_to(inv, 200, "OK", [f"Contact: <sip:uas@127.0.0.1:{uas_port};transport=tcp>"]))
        while True:
            r = u.recv(65536).decode()
            if not r.startswith("SIP/2.0 100"):
                break
        assert r.startswith("SIP/2.0 200 OK") and len(_hdrs(r, "Via")) == 1
        # an in-dialog BYE from the callee follows the route set back over UDP
        client = u.getsockname()
        bye = "\r\n".join([f"BYE sip:tester@{client[0]}:{client[1]} SIP/2.0",
                           f"Via: SIP/2.0/TCP 127.0.0.1:{uas_port};branch=z9hG4bKbye1",
                           f"Route: {rr[0]}", f"Route: {rr[1]}", "Max-Forwards: 70",
                           "From: <sip:totcp@127.0.0.1>;tag=uas1", _hdrs(inv, "From")[0].join(("To: ", "")),
                           f"Call-ID: {callid}", "CSeq: 1 BYE", "Content-Length: 0", "", ""])
        conn.sendall(bye.encode())
        got = u.recv(65536).decode()
        assert got.startswith("BYE sip:tester@"), got
        assert _hdrs(got, "Via")[0].startswith(f"SIP/2.0/UDP 127.0.0.1:{port}")
        assert _hdrs(got, "Route") == []            # both of our Record-Routes consumed
        conn.close()
        u.close()
    lst.close()


def test_force_tcp_alias_reuses_the_connection_for_the_via_port(run_server):
    via_port = free_udp_port()              # nobody listens there: only the alias can deliver
    with run_server(CFG, defines={"UAS": via_port}) as srv:
        port = srv.port
        s = _tcp(port)
        rd = StreamReader(s)
        data, _ = _tcp_request("OPTIONS", f"sip:alias@127.0.0.1:{port}", s, via_port=via_port)
        s.sendall(data)
        assert rd.next().startswith("SIP/2.0 200 Aliased")
        # a second client's request relayed to 127.0.0.1:<via_port>;transport=tcp
        s2 = _tcp(port)
        data, _ = _tcp_request("MESSAGE", f"sip:totcp@127.0.0.1:{port}", s2, body="hi")
        s2.sendall(data)
        fwd = rd.next()
        assert fwd.startswith("MESSAGE sip:totcp@"), fwd
        s.sendall(_reply_to(fwd, 200, "OK"))
        assert StreamReader(s2).next().startswith("SIP/2.0 200 OK")
        s.close()
        s2.close()


def test_set_forward_no_connect_never_opens_a_connection(run_server):
    lst, uas_port = _listener()
    with run_server(CFG, defines={"UAS": uas_port}) as srv:
        port = srv.port
        s = _tcp(port)
        data, _ = _tcp_request("MESSAGE", f"sip:nc@127.0.0.1:{port}", s, body="x")
        t0 = time.monotonic()
        s.sendall(data)
        r = StreamReader(s).next(timeout=5)
        assert r.startswith("SIP/2.0 408"), r        # fr_timer 1 s: nothing went out
        assert 0.9 < time.monotonic() - t0 < 3.0
        lst.settimeout(0.2)
        try:
            lst.accept()
            raise AssertionError("set_forward_no_connect() opened a connection")
        except socket.timeout:
            pass
        srv.wait_log(r"no connection to 127\.0\.0\.1:%d and connecting is not allowed" % uas_port)
        s.close()
    lst.close()


def test_force_send_socket_tcp_sends_over_tcp(run_server):
    lst, uas_port = _listener()
    with run_server(CFG, defines={"UAS": uas_port}) as srv:
        port = srv.port
        u = _udp()
        data, _, _ = build_request("MESSAGE", f"sip:forced@127.0.0.1:{port}", u.getsockname(), body="x")
        u.sendto(data, ("127.0.0.1", port))
        conn, _ = lst.accept()
        m = StreamReader(conn).next()
        assert m.startswith("MESSAGE ") and _hdrs(m, "Via")[0].startswith(f"SIP/2.0/TCP 127.0.0.1:{port}")
        conn.close()
        u.close()
    lst.close()


def test_reply_after_the_connection_closed_goes_to_the_via_sent_by(run_server):
    """RFC 3261 18.2.2: the connection is gone: open one to the Via's sent-by port."""
    lst, via_port = _listener()
    with run_server(CFG) as srv:
        port = srv.port
        s = _tcp(port)
        data, callid = _tcp_request("OPTIONS", f"sip:slow@127.0.0.1:{port}", s, via_port=via_port)
        s.sendall(data)
        time.sleep(0.05)
        # a reset (not a FIN, which may be a half-close whose reader still waits for the
        # reply): the connection is gone before the 400 ms route answers
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        conn, _ = lst.accept()
        r = StreamReader(conn).next()
        assert r.startswith("SIP/2.0 200 Slow") and _hdrs(r, "Call-ID") == [callid]
        conn.close()
    lst.close()
