"""Acceptance fixes in tm: a failed t_relay() in request_route answers
"478 Unresolvable destination (478/TM)" when the script ends without a reply
(Kamailio's delayed error reply, t_unref + kill_transaction), and leaves the
error for sl_reply_error(); a t_newtran() transaction nobody replies to is
logged ("script writer didn't release transaction") and freed; t_is_set().

Runs in: the pytest process, against real servers on 127.0.0.1.
"""
import pytest

from tests.helpers.async_cfg import PRE, cfg

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
    if ($rU == "isset") {
        $var(r) = "";
        if (t_is_set("failure_route")) { $var(r) = $var(r) + "F"; }
        if (t_is_set("branch_route")) { $var(r) = $var(r) + "B"; }
        if (t_is_set("onreply_route")) { $var(r) = $var(r) + "R"; }
        t_on_failure("FAIL");
        if (t_is_set("failure_route")) { $var(r) = $var(r) + "f"; }
        t_on_branch("BR");
        if (t_is_set("branch_route")) { $var(r) = $var(r) + "b"; }
        t_newtran();
        t_on_reply("RPL");
        if (t_is_set("onreply_route")) { $var(r) = $var(r) + "r"; }
        t_reply("200", "set=$var(r)");
        exit;
    }
    sl_send_reply("404", "no");
}
failure_route[FAIL] { exit; }
branch_route[BR] { ; }
onreply_route[RPL] { ; }
"""
TEXT = cfg(BODY, params='modparam("tm", "wt_timer", 300)\n', core="async_workers=1")


@pytest.fixture(scope="module")
def srv():
    from tests.helpers import run_server
    with run_server(TEXT) as s:
        yield s


def _finals(rs):
    return [r for r in rs if r.status and r.status >= 200]


@pytest.mark.parametrize("method", ["INVITE", "OPTIONS"])
def test_failed_relay_gets_the_delayed_478_from_tm(srv, sip_client, method):
    c = sip_client(srv.addr)
    rs = c.request(method, f"sip:bad@127.0.0.1:{srv.port}", timeout=2.0)
    fin = _finals(rs)
    assert fin and fin[0].status == 478 and fin[0].reason == "Unresolvable destination (478/TM)", rs
    if method == "INVITE":
        assert rs[0].status == 100
    assert not c.collect(0.4)        # one final, no retransmission storm before the ACK matters


def test_sl_reply_error_after_a_failed_relay_is_478_and_alone(srv, sip_client):
    c = sip_client(srv.addr)
    rs = c.request("OPTIONS", f"sip:badsl@127.0.0.1:{srv.port}", timeout=2.0)
    fin = _finals(rs)
    assert fin and fin[0].status == 478 and fin[0].reason == "Unresolvable destination (478/SL)", rs
    assert not c.collect(0.4)        # the script replied: no second (478/TM) reply


def test_the_script_own_reply_replaces_the_delayed_one(srv, sip_client):
    c = sip_client(srv.addr)
    rs = c.request("OPTIONS", f"sip:badrpl@127.0.0.1:{srv.port}", timeout=2.0)
    fin = _finals(rs)
    assert fin and fin[0].status == 503 and fin[0].reason == "own reply", rs
    assert not c.collect(0.4)


def test_t_is_set(srv, sip_client):
    c = sip_client(srv.addr)
    rs = c.request("OPTIONS", f"sip:isset@127.0.0.1:{srv.port}", timeout=2.0)
    assert _finals(rs)[0].reason == "set=fbr", rs


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


ONSEND = """request_route {
""" + PRE + """    if ($rU == "relay" || $rU == "nosend") {
        t_relay_to_udp("127.0.0.1", UAS);
        exit;
    }
    sl_send_reply("404", "no");
}
onsend_route {
    xinfo("ONSEND $rU to $snd(ip):$snd(port) $snd(sproto) len=$snd(len) top=$(snd(buf){s.substr,0,8})\\n");
    if ($rU == "nosend") {
        drop;
    }
}
"""


def test_onsend_route_runs_before_the_request_leaves_and_drop_stops_it(run_server, sip_client):
    import socket
    uas = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    uas.bind(("127.0.0.1", 0))
    uas.settimeout(1.0)
    port = uas.getsockname()[1]
    try:
        with run_server(cfg(ONSEND, core="async_workers=1"), defines={"UAS": port}) as s:
            c = sip_client(s.addr)
            c.send("OPTIONS", f"sip:relay@127.0.0.1:{s.port}")
            data, _ = uas.recvfrom(65535)
            assert data.startswith(b"OPTIONS sip:relay@")
            m = s.wait_log(rf"ONSEND relay to 127\.0\.0\.1:{port} udp len=(\d+) top=OPTIONS ")
            assert int(m.group(1)) == len(data)
            # drop in onsend_route: nothing leaves, t_relay fails with E_SEND and the
            # delayed tm reply is Kamailio's 477
            rs = c.request("OPTIONS", f"sip:nosend@127.0.0.1:{s.port}", timeout=2.0)
            fin = _finals(rs)
            assert fin and fin[0].status == 477, rs
            assert fin[0].reason == "Unfortunately error on sending to next hop occurred (477/TM)"
            s.wait_log(r"ONSEND nosend to")
            got = []                    # the first OPTIONS is retransmitted (no reply): skip it
            try:
                while True:
                    got.append(uas.recvfrom(65535)[0])
            except socket.timeout:
                pass
            assert not [d for d in got if d.startswith(b"OPTIONS sip:nosend@")], got
            assert got                  # the receiving side works: retransmissions arrived
    finally:
        uas.close()
