"""textopsx on asyncd and Kamailio 5.6.3, same cfg: after
msg_apply_changes() a removed header is gone and the new R-URI is the
request line's ($ou); keep_hf() answers -1; fnmatch.

Runs in: the pytest process, against one asyncd and one Kamailio on 127.0.0.1.
"""
import pytest

from bench.servers import kamailio_binary
from tests.helpers.kamailio import SKIP_KAMAILIO, run_kamailio
from tests.helpers.server import run_server
from tests.helpers.sipclient import SipClient

CFG = r'''
listen=udp:127.0.0.1:LPORT
children=1
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "textops.so"
loadmodule "textopsx.so"
request_route {
    force_rport();
    remove_hf("X-A");
    $rU = "carol";
    $var(r) = msg_apply_changes();
    $var(k) = keep_hf("^X-");
    $var(f) = fnmatch("$rU", "car*");
    sl_send_reply("200", "r=$var(r) k=$var(k) f=$var(f) ou=$ou xa=$hdr(X-A) xb=$hdr(X-B)");
}
'''
WANT = "r=1 k=-1 f=1 ou=sip:carol@example.com xa=<null> xb=2"


def ask(port):
    with SipClient(("127.0.0.1", port)) as c:
        r = c.final("OPTIONS", "sip:bob@example.com", headers=["X-A: 1", "X-B: 2"])
    return r.reason if r else None


@pytest.mark.server
def test_textopsx_on_asyncd():
    with run_server(CFG) as srv:
        assert ask(srv.port) == WANT, srv.log()[-2000:]


@pytest.mark.kamailio
def test_textopsx_on_kamailio():
    try:
        kamailio_binary()
    except Exception:
        pytest.skip(SKIP_KAMAILIO)
    with run_kamailio(CFG.replace("children=1", "children=1\nloadmodule \"ctl.so\"")) as k:
        assert ask(k.port) == WANT, k.log()[-2000:]
