"""When tm sends an INVITE's automatic `100 trying`: at t_relay and t_suspend
(Kamailio t_funcs.c t_relay_to, t_suspend.c t_suspend), not at t_newtran. The
same cfg on asyncd and on Kamailio 5.6.3; each case's replies must be equal.

- t_newtran(); t_reply(404): the 404 alone (the stock cfg's route LOCATION);
- t_newtran(); t_relay() to a port nobody answers: 100, then 408 at fr_inv_timer;
- t_relay() without t_newtran: the same;
- t_newtran(); t_suspend(), never continued: 100, then the blind branch's 408.

Runs in: the pytest process (asyncd and Kamailio are real processes on loopback).
"""
import pytest

from bench.servers import kamailio_binary
from tests.helpers.kamailio import SKIP_KAMAILIO, run_kamailio
from tests.helpers.server import run_server
from tests.helpers.sipclient import SipClient

CFG = """#!KAMAILIO
listen=udp:127.0.0.1:LPORT
loadmodule "pv.so"
loadmodule "ctl.so"
loadmodule "tm.so"
loadmodule "tmx.so"
loadmodule "sl.so"
modparam("tm", "fr_timer", 400)
modparam("tm", "fr_inv_timer", 400)
request_route {
  if (method == "ACK") { t_check_trans(); exit; }
  if ($rU == "newtran") { t_newtran(); t_reply("404", "Not Found"); exit; }
  if ($rU == "newtran_relay") { t_newtran(); $du = "sip:127.0.0.1:HOLE"; t_relay(); exit; }
  if ($rU == "relay") { $du = "sip:127.0.0.1:HOLE"; t_relay(); exit; }
  if ($rU == "suspend") { t_newtran(); t_suspend(); exit; }
  sl_send_reply("500", "unknown case");
}
"""
CASES = {"newtran": [404], "newtran_relay": [100, 408], "relay": [100, 408], "suspend": [100, 408]}


@pytest.fixture(scope="module")
def asyncd(silent_udp_port, tmp_path_factory):
    run = str(tmp_path_factory.mktemp("run"))
    with run_server(CFG.replace("HOLE", str(silent_udp_port)), args=("-Y", run)) as srv:
        yield srv.addr


@pytest.fixture(scope="module")
def kamailio(silent_udp_port):
    if kamailio_binary() is None:
        pytest.skip(SKIP_KAMAILIO)
    with run_kamailio(CFG.replace("HOLE", str(silent_udp_port))) as k:
        yield ("127.0.0.1", k.port)


def replies(addr, case):
    with SipClient(addr) as c:
        rs = c.request("INVITE", f"sip:{case}@{addr[0]}:{addr[1]}", timeout=4.0)
    return [r.status for r in rs]


@pytest.mark.parametrize("case", CASES)
def test_auto_100_on_asyncd(asyncd, case):
    assert replies(asyncd, case) == CASES[case]


@pytest.mark.kamailio
@pytest.mark.parametrize("case", CASES)
def test_auto_100_on_kamailio(kamailio, case):
    assert replies(kamailio, case) == CASES[case]
