"""`kamcmd cfg.seti core debug 3` on a running asyncd: the receiver logs an
xlog("L_DBG", ...) line for its next message that it did not log before,
and `cfg.get core debug` reads the new level back (Kamailio's cfg_rpc, with
cfg_update() at the start of every message).

Runs in: the pytest process; starts the real server and runs kamcmd.
"""
import pytest

from tests.helpers import SipClient
from tests.helpers.kamailio import KAMCMD, SKIP_KAMCMD, kamcmd

pytestmark = pytest.mark.skipif(KAMCMD is None, reason=SKIP_KAMCMD)

CFG = r'''
debug=2
listen=udp:127.0.0.1:LPORT
children=1
loadmodule "ctl.so"
loadmodule "sl.so"
loadmodule "xlog.so"
loadmodule "cfg_rpc.so"
request_route {
    xlog("L_DBG", "dbg-marker $ci\n");
    sl_send_reply("200", "OK");
    exit;
}
'''


def _options(srv, call_id):
    with SipClient(srv.addr) as c:
        r = c.final("OPTIONS", f"sip:a@127.0.0.1:{srv.port}", timeout=3.0, callid=call_id)
    assert r is not None and r.status == 200


def test_cfg_seti_core_debug_makes_the_receiver_log_debug_lines(run_server, tmp_path):
    rundir = str(tmp_path / "run")
    with run_server(CFG, args=("-Y", rundir)) as srv:
        sock = f"unix:{rundir}/kamailio_ctl"
        assert kamcmd(sock, "cfg.get", "core", "debug").stdout.strip() == "2"
        _options(srv, "before-change")
        assert "dbg-marker before-change" not in srv.log()
        r = kamcmd(sock, "cfg.seti", "core", "debug", "3")
        assert r.returncode == 0 and "error" not in r.stdout, r.stdout + r.stderr
        assert kamcmd(sock, "cfg.get", "core", "debug").stdout.strip() == "3"
        _options(srv, "after-change")
        srv.wait_log(r"dbg-marker after-change", timeout=3.0)
