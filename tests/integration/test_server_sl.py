"""The sl module end to end: sl_send_reply, sl_reply_error, send_reply without a transaction,
append_to_reply headers, bad codes, ACKs.

Runs in: the pytest process; the server is a subprocess on a free loopback port.
"""
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT

CFG = """
#!ifndef LPORT
#!define LPORT 5060
#!endif
children=1
listen=udp:127.0.0.1:LPORT
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "textops.so"
request_route {
    if ($rU == "error") {
        sl_reply_error();
        exit;
    }
    if ($rU == "badcode") {
        $var(c) = 999;
        if (!sl_send_reply("$var(c)", "Nope")) {
            sl_send_reply("500", "bad code refused");
        }
        exit;
    }
    if ($rU == "stateless") {
        append_to_reply("X-Hint: from sl\\r\\n");
        send_reply("202", "Accepted Statelessly");
        exit;
    }
    if ($rU == "trying") {
        sl_send_reply("100", "Trying");
        sl_send_reply("$rU" + "", "x");
        exit;
    }
    sl_send_reply("200", "OK");
}
"""


def test_sl_functions(run_server, sip_client):
    with run_server(CFG) as srv:
        c = sip_client(srv.addr)
        port = srv.port
        r = c.final("MESSAGE", ruri=f"sip:error@127.0.0.1:{port}", body="x")
        assert r.status == 500 and r.reason == "I'm terribly sorry, server error occurred (1/SL)"
        r = c.final("OPTIONS", ruri=f"sip:badcode@127.0.0.1:{port}")
        assert r.status == 500 and r.reason == "bad code refused"
        assert "invalid reply code 999" in srv.wait_log(r"ERROR: <sl> \[[^]]*test\.cfg:\d+:\d+\]: .*").group(0)
        r = c.final("OPTIONS", ruri=f"sip:stateless@127.0.0.1:{port}")
        assert r.status == 202 and r.reason == "Accepted Statelessly" and r.hdr("x-hint") == "from sl"
        # a 100 carries no To-tag (RFC 3261 8.2.6.2); a code that is not a number is refused
        rs = c.request("OPTIONS", ruri=f"sip:trying@127.0.0.1:{port}", timeout=0.5)
        assert [x.status for x in rs] == [100]
        assert rs[0].to_tag is None
        # an ACK is never answered
        c.send("ACK", ruri=f"sip:x@127.0.0.1:{port}")
        assert c.recv(0.3) is None
        assert c.final("OPTIONS").status == 200


@pytest.mark.unit          # asyncd -c only, no server
def test_literal_code_out_of_range_is_a_startup_error(tmp_path):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text(CFG.replace('sl_send_reply("200", "OK");', 'sl_send_reply("99", "OK");'))
    r = subprocess.run([sys.executable, "-m", "asyncd", "-c", "-f", str(cfg)], capture_output=True,
                       text=True, cwd=REPO_ROOT, timeout=30)
    assert r.returncode == 255
    line = CFG.split('sl_send_reply("200", "OK");')[0].count("\n") + 1
    assert f"{cfg}:{line}:" in r.stderr and "reply code 99 out of range 100..699" in r.stderr


HEADER_CFG = """
#!ifndef LPORT
#!define LPORT 5060
#!endif
children=1
listen=udp:127.0.0.1:LPORT
%s
async_workers=1
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "async.so"
request_route {
    if ($rU == "stateful") {
        async_task_route("R");
        exit;
    }
    sl_send_reply("200", "OK");
}
route[R] {
    send_reply("202", "From A Worker");
}
"""


def _bad_request(port, lport):
    # a request whose CSeq method does not match: answered 400 by the receiver itself
    return (f"OPTIONS sip:x@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bKbadcseq\r\n"
            "From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\n"
            "Call-ID: badcseq@test\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")


def _servers(srv, c):
    port = srv.port
    r1 = c.final("OPTIONS", ruri=f"sip:stateless@127.0.0.1:{port}")
    r2 = c.final("OPTIONS", ruri=f"sip:stateful@127.0.0.1:{port}")
    c.send_raw(_bad_request(port, c.local[1]))
    r3 = c.recv(2.0)
    assert (r1.status, r2.status, r3.status) == (200, 202, 400)
    return [r.hdrs("server") for r in (r1, r2, r3)]


def test_server_header_core_params(run_server, sip_client):
    """Kamailio's core params: server_header replaces the Server line of every
    locally built reply (sl, tm, the receiver's 400); server_signature=no drops it."""
    with run_server(HEADER_CFG % "") as srv:
        got = _servers(srv, sip_client(srv.addr))
        assert all(len(h) == 1 and h[0].startswith("asyncd (") for h in got), got
    with run_server(HEADER_CFG % 'server_header="Server: Edge Proxy 7"') as srv:
        assert _servers(srv, sip_client(srv.addr)) == [["Edge Proxy 7"]] * 3
    with run_server(HEADER_CFG % 'server_signature=no\nserver_header="Server: unused"') as srv:
        assert _servers(srv, sip_client(srv.addr)) == [[]] * 3
