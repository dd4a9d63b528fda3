"""JSON-RPC over HTTP: jsonrpc_dispatch() in event_route[xhttp:request], the
stock kamailio.cfg's WITH_JSONRPC shape (jsonrpcs transport 7 with xhttp),
answered on the same connection with application/json
(docs/operations.md "jsonrpcs").

Runs in: the pytest process; asyncd is a subprocess, the client http.client.
"""
import http.client
import json

CFG = r"""
debug=2
children=1
tcp_children=1
listen=127.0.0.1:LPORT
tcp_accept_no_cl=yes
run_dir="RUNDIR"
loadmodule "sl.so"
loadmodule "kex.so"
loadmodule "xhttp.so"
loadmodule "jsonrpcs.so"
modparam("jsonrpcs", "pretty_format", 1)
modparam("jsonrpcs", "transport", 7)
request_route {
    sl_send_reply("200", "OK");
}
event_route[xhttp:request] {
    if ($hu =~ "^/RPC") {
        if (!jsonrpc_dispatch()) {
            xhttp_reply("400", "Bad Request", "text/plain", "not json-rpc");
        }
        exit;
    }
    xhttp_reply("403", "Forbidden", "text/html", "<html><body>Forbidden</body></html>");
}
"""


def _post(conn, body):
    conn.request("POST", "/RPC", body=body, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    return r.status, r.reason, r.getheader("Content-Type"), r.read()


def test_jsonrpc_dispatch_answers_on_the_same_connection(run_server, tmp_path):
    cfg = CFG.replace("RUNDIR", str(tmp_path / "run"))
    with run_server(cfg) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        req = {"jsonrpc": "2.0", "method": "core.psx", "id": 1}
        status, reason, ctype, body = _post(conn, json.dumps(req))
        assert (status, reason, ctype) == (200, "OK", "application/json")
        doc = json.loads(body)
        assert doc["id"] == 1 and any(p["DSC"] == "main process - attendant" for p in doc["result"])
        # the same connection (keep-alive): a stats method and an unknown one
        status, _r, _c, body = _post(conn, json.dumps({"jsonrpc": "2.0", "method": "stats.fetch",
                                                       "params": ["core:"], "id": 2}))
        assert status == 200 and "core.rcv_requests" in json.loads(body)["result"]
        status, reason, _c, body = _post(conn, json.dumps({"jsonrpc": "2.0", "method": "no.such", "id": 3}))
        assert (status, reason) == (500, "Method Not Found")
        assert json.loads(body)["error"] == {"code": 500, "message": "Method Not Found"}
        # not JSON: the function fails and the route answers
        assert _post(conn, "{nope")[:2] == (400, "Bad Request")
        conn.request("GET", "/other")
        r = conn.getresponse()
        assert (r.status, r.read()) == (403, b"<html><body>Forbidden</body></html>")
        conn.close()
