"""The sl module end to end: sl_send_reply, sl_reply_error, send_reply without a transaction,
append_to_reply headers, bad codes, ACKs.

Runs in: the pytest process; the server is a subprocess on a free loopback port.
"""
import subprocess
import sys

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


def test_literal_code_out_of_range_is_a_startup_error(tmp_path):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text(CFG.replace('sl_send_reply("200", "OK");', 'sl_send_reply("99", "OK");'))
    r = subprocess.run([sys.executable, "-m", "asyncd", "-c", "-f", str(cfg)], capture_output=True,
                       text=True, cwd=REPO_ROOT, timeout=30)
    assert r.returncode == 255
    line = CFG.split('sl_send_reply("200", "OK");')[0].count("\n") + 1
    assert f"{cfg}:{line}:" in r.stderr and "reply code 99 out of range 100..699" in r.stderr
