"""xhttp over asyncd's TCP: HTTP/1.x requests on the SIP listen socket run
event_route[xhttp:request] in a tcp receiver and are answered by
xhttp_reply() over the same connection (docs/operations.md "xhttp").

Runs in: the pytest process; asyncd is a subprocess, the clients are
http.client and plain sockets on loopback.
"""
import http.client
import socket

CFG = r"""
#!ifndef LPORT
#!define LPORT 5060
#!endif
debug=2
children=1
tcp_children=2
listen=127.0.0.1:LPORT
tcp_accept_no_cl=yes
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "textops.so"
loadmodule "xhttp.so"
modparam("xhttp", "url_skip", "^/skipped")
request_route {
    sl_send_reply("200", "OK");
}
route[LOOP] {
    route(LOOP);
}
event_route[xhttp:request] {
    if ($hu =~ "^/noreply") {
        exit;
    }
    if ($hu =~ "^/crash") {
        route(LOOP);
    }
    if ($hu =~ "^/echo") {
        append_to_reply("X-Method: $rm\r\n");
        xhttp_reply("200", "OK", "text/plain", "$hu [$rb] $(hu{url.path}) [$(hu{url.querystring})]");
        exit;
    }
    xhttp_reply("404", "Not Found", "text/html", "<html><body>Not Found $hu</body></html>");
}
"""

NO_XHTTP = r"""
#!ifndef LPORT
#!define LPORT 5060
#!endif
debug=2
children=1
tcp_children=1
listen=127.0.0.1:LPORT
tcp_accept_no_cl=yes
loadmodule "sl.so"
request_route {
    sl_send_reply("200", "OK");
}
"""


def _raw(port, data, wait=0.6):
    """Send data on a new connection; -> (bytes read, closed by the server)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        return _read(s)


def _read(s):
    out = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                return out, True
            out += d
    except socket.timeout:
        return out, False


def _options_answered(sip_client, srv):
    c = sip_client(srv.addr)
    r = c.final("OPTIONS", timeout=3.0)
    return r is not None and r.status == 200


def test_get_post_keepalive_404_and_url_skip(run_server, sip_client):
    with run_server(CFG) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=3)
        conn.request("GET", "/echo/one?x=1")
        r = conn.getresponse()
        assert (r.status, r.reason) == (200, "OK")
        assert r.getheader("Content-Type") == "text/plain"
        assert r.getheader("X-Method") == "GET"
        assert r.getheader("Server", "").startswith("asyncd")
        assert r.read() == b"/echo/one?x=1 [] /echo/one [x=1]"
        sock = conn.sock
        # keep-alive: the second request goes over the same connection
        conn.request("POST", "/echo/two", body=b"hello", headers={"Content-Type": "text/plain"})
        r = conn.getresponse()
        assert r.status == 200 and r.read() == b"/echo/two [hello] /echo/two []"
        assert conn.sock is sock
        conn.request("GET", "/missing")
        r = conn.getresponse()
        assert r.status == 404 and r.read() == b"<html><body>Not Found /missing</body></html>"
        assert conn.sock is sock
        conn.close()
        # url_skip: the module passes, no other hook: dropped, no answer, connection open
        out, closed = _raw(srv.port, b"GET /skipped HTTP/1.1\r\nHost: a\r\n\r\n")
        assert out == b"" and not closed
        assert _options_answered(sip_client, srv)


def test_no_reply_runtime_error_close_and_garbage(run_server, sip_client):
    with run_server(CFG) as srv:
        # no reply from the route: nothing comes (Kamailio's behaviour), the connection
        # stays usable for the next request
        with socket.create_connection(("127.0.0.1", srv.port), timeout=0.6) as s:
            s.sendall(b"GET /noreply HTTP/1.1\r\nHost: a\r\n\r\n")
            assert _read(s) == (b"", False)
            s.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
            out, closed = _read(s)
            assert out.startswith(b"HTTP/1.1 200 OK\r\n") and not closed
        # a runtime error in the route: 500, then the connection is closed
        out, closed = _raw(srv.port, b"GET /crash HTTP/1.1\r\nHost: a\r\n\r\n", wait=5)
        assert out.startswith(b"HTTP/1.1 500 Server Internal Error\r\n") and closed
        srv.wait_log(r"runtime error in cfg: RecursionError")
        # Connection: close and HTTP/1.0: closed once the reply is written
        out, closed = _raw(srv.port, b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200 OK\r\n") and closed
        out, closed = _raw(srv.port, b"GET /echo HTTP/1.0\r\n\r\n")
        assert out.startswith(b"HTTP/1.0 200 OK\r\n") and closed
        # chunked bodies are not read: 501 and close
        out, closed = _raw(srv.port, b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                                     b"3\r\nabc\r\n0\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 501 Not Implemented\r\n") and closed
        # garbage: dropped, the receivers live on
        out, _closed = _raw(srv.port, b"garbage garbage\r\n\r\n")
        assert out == b""
        out, _closed = _raw(srv.port, b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200 OK\r\n")
        assert _options_answered(sip_client, srv)


def test_http_without_the_module_is_dropped_and_counted(run_server, sip_client):
    with run_server(NO_XHTTP) as srv:
        for _ in range(3):
            out, closed = _raw(srv.port, b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n", wait=0.3)
            assert out == b"" and not closed
        assert _options_answered(sip_client, srv)
        srv.stop()
        # core:drop_requests, summed by main at exit, counts the drops
        srv.wait_log(r"; 3 non-SIP requests no module took")
