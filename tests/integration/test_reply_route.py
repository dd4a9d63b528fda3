"""The core reply_route runs for every reply, those tm handles included, before tm
sees them; `drop` there stops the reply (Kamailio's receive_msg order).

Runs in: the pytest process, against a real server on 127.0.0.1.
"""
import pytest

from tests.helpers.async_cfg import PRE, Uas, cfg

BODY = """request_route {
""" + PRE + """    if (!t_relay()) { sl_reply_error(); }
    exit;
}
reply_route {
    xinfo("REPLY_ROUTE $rs $ci\\n");
    if ($rs == 202) { drop; }
}
"""


@pytest.fixture(scope="module")
def setup():
    from tests.helpers import run_server
    ok, quiet = Uas(200), Uas(202)
    with run_server(cfg(BODY, params='modparam("tm", "wt_timer", 300)\n')) as srv:
        yield srv, ok, quiet
    ok.close()
    quiet.close()


def test_reply_route_sees_a_reply_tm_relays(setup):
    from tests.helpers import SipClient
    srv, ok, _ = setup
    with SipClient(srv.addr) as c:
        rs = c.request("MESSAGE", ok.uri("rr1"), body="hi", timeout=3.0)
        assert rs and rs[-1].status == 200, rs
        callid = rs[-1].hdr("Call-ID")
    srv.wait_log(rf"REPLY_ROUTE 200 {callid}")


def test_drop_in_reply_route_keeps_the_reply_from_tm(setup):
    from tests.helpers import SipClient
    srv, _, quiet = setup
    with SipClient(srv.addr) as c:
        rs = c.request("MESSAGE", quiet.uri("rr2"), body="hi", timeout=1.5)
    assert not [r for r in rs if r.status == 202], rs     # dropped before tm relayed it
    srv.wait_log(r"REPLY_ROUTE 202 ")
