"""The stock cfg's WITH_ANTIFLOOD flow (pike blocks, the address goes into
the ipban htable, later requests are dropped) on asyncd and on Kamailio
5.6.3: the same requests get answered, the same ones are dropped.

Runs in: the pytest process, against one asyncd and one Kamailio on 127.0.0.1.
"""
import pytest

from bench.servers import kamailio_binary
from tests.helpers.kamailio import SKIP_KAMAILIO, run_kamailio
from tests.helpers.server import run_server
from tests.helpers.sipclient import SipClient

CFG = r'''
debug=2
log_stderror=yes
children=2
listen=udp:127.0.0.1:LPORT
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "htable.so"
loadmodule "pike.so"
modparam("pike", "sampling_time_unit", 2)
modparam("pike", "reqs_density_per_unit", 16)
modparam("pike", "remove_latency", 4)
modparam("htable", "htable", "ipban=>size=8;autoexpire=300;")
request_route {
    if($sht(ipban=>$si)!=$null) {
        xdbg("request from blocked IP - $rm from $fu (IP:$si:$sp)\n");
        exit;
    }
    if (!pike_check_req()) {
        xlog("L_ALERT","ALERT: pike blocking $rm from $fu (IP:$si:$sp)\n");
        $sht(ipban=>$si) = 1;
        exit;
    }
    sl_send_reply("200", "ok");
}
'''
N = 26


def answered(port):
    got = []
    with SipClient(("127.0.0.1", port)) as c:
        for i in range(N):
            r = c.final("OPTIONS", f"sip:x@127.0.0.1:{port}", timeout=0.15 if i > 18 else 1.0)
            got.append(r is not None and r.status == 200)
    return got


def expected():
    return [True] * 21 + [False] * (N - 21)


@pytest.mark.server
def test_pike_blocks_and_ipban_drops_on_asyncd():
    with run_server(CFG) as srv:
        got = answered(srv.port)
        srv.wait_log(r"ALERT: pike blocking OPTIONS from sip:tester@127.0.0.1")
    assert got == expected(), srv.log()[-2000:]
    assert srv.log().count("PIKE - BLOCKing ip 127.0.0.1") == 1
    assert srv.log().count("ALERT: pike blocking") == 1


@pytest.mark.kamailio
def test_pike_blocks_and_ipban_drops_on_kamailio():
    try:
        kamailio_binary()
    except Exception:
        pytest.skip(SKIP_KAMAILIO)
    with run_kamailio(CFG.replace("children=2", "children=2\nloadmodule \"ctl.so\"")) as k:
        got = answered(k.port)
        log = k.log()
    assert got == expected(), log[-2000:]
    assert log.count("PIKE - BLOCKing ip 127.0.0.1") == 1
