"""What tm does when the script ends without replying: a failed t_relay() in request_route
gets "478 Unresolvable destination (478/TM)" (Kamailio's delayed error reply, t_unref +
kill_transaction) unless the script replies itself, and leaves the error for sl_reply_error();
a t_newtran() transaction nobody replies to is logged ("script writer didn't release
transaction") and freed.

Runs in: the pytest process, against real servers on 127.0.0.1.
"""
import pytest

from tests.helpers.async_cfg import cfg, finals, PRE, server_fixture

BODY = """request_route {
""" + PRE + """    if ($rU == "bad") {
        $du = "sip:nowhere.invalid:5060";
        t_relay();
        exit;
    }
    if ($rU == "badsl") {
        $du = "sip:nowhere.invalid:5060";
        if (!t_relay()) { sl_reply_error(); }
        exit;
    }
    if ($rU == "badrpl") {
        $du = "sip:nowhere.invalid:5060";
        if (!t_relay()) { t_reply("503", "own reply"); }
        exit;
    }
    if ($rU == "newtran") {
        t_newtran();
        exit;
    }
    sl_send_reply("404", "no");
}
"""
TEXT = cfg(BODY, params='modparam("tm", "wt_timer", 300)\n', core="async_workers=1")


srv = server_fixture(TEXT)



@pytest.mark.parametrize("method", ["INVITE", "OPTIONS"])
def test_failed_relay_gets_the_delayed_478_from_tm(srv, sip_client, method):
    c = sip_client(srv.addr)
    rs = c.request(method, f"sip:bad@127.0.0.1:{srv.port}", timeout=2.0)
    fin = finals(rs)
    assert fin and fin[0].status == 478 and fin[0].reason == "Unresolvable destination (478/TM)", rs
    if method == "INVITE":
        assert rs[0].status == 100
    assert not c.collect(0.4)        # one final, no retransmission storm before the ACK matters


def test_sl_reply_error_after_a_failed_relay_is_478_and_alone(srv, sip_client):
    c = sip_client(srv.addr)
    rs = c.request("OPTIONS", f"sip:badsl@127.0.0.1:{srv.port}", timeout=2.0)
    fin = finals(rs)
    assert fin and fin[0].status == 478 and fin[0].reason == "Unresolvable destination (478/SL)", rs
    assert not c.collect(0.4)        # the script replied: no second (478/TM) reply


def test_the_script_own_reply_replaces_the_delayed_one(srv, sip_client):
    c = sip_client(srv.addr)
    rs = c.request("OPTIONS", f"sip:badrpl@127.0.0.1:{srv.port}", timeout=2.0)
    fin = finals(rs)
    assert fin and fin[0].status == 503 and fin[0].reason == "own reply", rs
    assert not c.collect(0.4)


def test_unreplied_newtran_is_logged_and_freed(run_server, sip_client):
    with run_server(TEXT) as s:
        c = sip_client(s.addr)
        data, _, callid = c.send("OPTIONS", f"sip:newtran@127.0.0.1:{s.port}")
        s.wait_log(rf"WARNING: <tm>.*script writer didn't release transaction \(OPTIONS {callid}\)")
        c.send_raw(data)                # a retransmission within wt_timer is absorbed by the live T
        assert not c.collect(0.5)                   # no reply, as Kamailio
        assert s.log().count("script writer didn't release") == 1
        import time
        time.sleep(0.6)                             # wt_timer 300 ms
        s.stop()
        assert "transaction table: 0 entries at exit" in s.log(), s.log()[-2000:]
