"""t_branch_timeout() and t_branch_replied() in a failure route (Kamailio
tm.c t_branch_timeout / t_branch_replied): which way the failed branch ended.
The same cfg on asyncd and on Kamailio 5.6.3; the replies must be equal.

- a branch to a port nobody answers ends by its fr timer: timeout, not replied;
- a branch answered 486 at once (tests/helpers/uas.py EchoUas): neither: the
  reply that ends a branch counts as "replied" only after the failure route
  (Kamailio t_reply.c sets F_RB_REPLIED after relay_reply);
- 180 then 486: replied; 180 then nothing: timeout and replied.
t_any_timeout() / t_any_replied() in the same failure route agree here (one branch).

Runs in: the pytest process (asyncd and Kamailio are real processes on loopback).
"""
import pytest

from bench.servers import kamailio_binary
from tests.helpers.kamailio import SKIP_KAMAILIO, run_kamailio
from tests.helpers.server import run_server
from tests.helpers.sipclient import SipClient
from tests.helpers.uas import EchoUas

CFG = """#!KAMAILIO
listen=udp:127.0.0.1:LPORT
loadmodule "pv.so"
loadmodule "ctl.so"
loadmodule "tm.so"
loadmodule "sl.so"
modparam("tm", "fr_timer", 400)
modparam("tm", "fr_inv_timer", 400)
failure_route[BRANCH] {
  if (t_branch_timeout() && !t_any_timeout()) { t_reply("599", "Any Disagrees"); exit; }
  if (t_branch_replied() && !t_any_replied()) { t_reply("599", "Any Disagrees"); exit; }
  if (t_branch_timeout()) {
    if (t_branch_replied()) { t_reply("505", "Timeout After A Reply"); exit; }
    t_reply("504", "Branch Timeout"); exit;
  }
  if (t_branch_replied()) { t_reply("502", "Branch Replied"); exit; }
  t_reply("500", "Neither");
}
request_route {
  if (method == "ACK") { t_check_trans(); exit; }
  t_on_failure("BRANCH");
  if ($rU == "hole") { $du = "sip:127.0.0.1:HOLE"; t_relay(); exit; }
  if ($rU == "486") { $du = "sip:127.0.0.1:UAS"; t_relay(); exit; }
  if ($rU == "ring486") { $rU = "486"; $du = "sip:127.0.0.1:RING"; t_relay(); exit; }
  if ($rU == "ring") { $rU = "180"; $du = "sip:127.0.0.1:RING"; t_relay(); exit; }
  sl_send_reply("500", "unknown case");
}
"""
CASES = {"hole": [(100, ""), (504, "Branch Timeout")], "486": [(100, ""), (500, "Neither")],
         "ring486": [(100, ""), (180, "Ringing"), (502, "Branch Replied")],
         "ring": [(100, ""), (180, "Ringing"), (505, "Timeout After A Reply")]}


@pytest.fixture(scope="module")
def cfg(silent_udp_port):
    uas, ring = EchoUas(), EchoUas(ring=True)
    yield (CFG.replace("HOLE", str(silent_udp_port)).replace("UAS", str(uas.port))
           .replace("RING", str(ring.port)))
    uas.close()
    ring.close()


@pytest.fixture(scope="module")
def asyncd(cfg, tmp_path_factory):
    run = str(tmp_path_factory.mktemp("run"))
    with run_server(cfg, args=("-Y", run)) as srv:
        yield srv.addr


@pytest.fixture(scope="module")
def kamailio(cfg):
    if kamailio_binary() is None:
        pytest.skip(SKIP_KAMAILIO)
    with run_kamailio(cfg) as k:
        yield ("127.0.0.1", k.port)


def replies(addr, case):
    with SipClient(addr) as c:
        rs = c.request("INVITE", f"sip:{case}@{addr[0]}:{addr[1]}", timeout=4.0)
    return [(r.status, r.reason if r.status > 100 else "") for r in rs]


@pytest.mark.parametrize("case", CASES)
def test_branch_status_on_asyncd(asyncd, case):
    assert replies(asyncd, case) == CASES[case]


@pytest.mark.kamailio
@pytest.mark.parametrize("case", CASES)
def test_branch_status_on_kamailio(kamailio, case):
    assert replies(kamailio, case) == CASES[case]


def test_outside_a_failure_route_is_a_startup_error(tmp_path):
    cfg = CFG.replace('t_on_failure("BRANCH");', 'if (t_branch_timeout()) { exit; }')
    with pytest.raises(Exception, match="t_branch_timeout"):
        with run_server(cfg.replace("HOLE", "9").replace("UAS", "9").replace("RING", "9"),
                        args=("-Y", str(tmp_path))):
            pass
