"""t_suspend in one receiver, t_continue in another (tmx), through the real
server: the resumed route sees the request's AVPs and XAVPs, runs in the
other process, and the docs/kamailio-tm.md §4, §5 skips hold (timeout, CANCEL).

Runs in: the pytest process (asyncd is a real process tree on loopback).
Two listen sockets with one receiver each make "another process" certain.
"""
import time

from tests.helpers.async_cfg import finals
from tests.helpers.net import free_udp_port
from tests.helpers.server import run_server
from tests.helpers.sipclient import SipClient, build_request

CFG = r"""
#!ifndef LPORT
#!define LPORT 5071
#!endif
#!ifndef LPORT2
#!define LPORT2 5072
#!endif
debug=1
children=1
listen=udp:127.0.0.1:LPORT
listen=udp:127.0.0.1:LPORT2

loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "tmx.so"
loadmodule "pv.so"
loadmodule "textops.so"

modparam("tm", "wt_timer", 300)

request_route {
    if (is_method("ACK")) {
        t_check_trans();
        exit;
    }
    if (is_method("MESSAGE") || is_method("INVITE")) {
        $avp(who) = $fU;
        $xavp(x=>k) = "xv";
        if ($rU == "late") {
            t_set_fr(1000, 400);
        }
        if (!t_suspend()) {
            sl_send_reply("500", "no suspend");
            exit;
        }
        $shv(idx) = $T(id_index);
        $shv(lbl) = $T(id_label);
        $shv(pid) = $pp;
        exit;
    }
    if (is_method("OPTIONS")) {
        if (t_continue("$shv(idx)", "$shv(lbl)", "RESUME")) {
            sl_send_reply("200", "continued");
        } else {
            sl_send_reply("200", "not continued");
        }
        exit;
    }
}

route[RESUME] {
    t_reply("200", "resumed $avp(who) $xavp(x=>k) in $pp from $shv(pid) $T_req($rU) $T(id_index)");
}
"""


def _server():
    p2 = free_udp_port()
    return run_server(CFG, defines={"LPORT2": p2}), ("127.0.0.1", p2)



def test_continue_in_other_process_sees_avps_and_xavps():
    ctx, addr2 = _server()
    with ctx as srv, SipClient(srv.addr) as a, SipClient(addr2) as b:
        data, br, cid = build_request("MESSAGE", f"sip:bob@127.0.0.1:{srv.port}", a.local, body="x")
        a.send_raw(data)
        time.sleep(0.2)
        assert finals(a.collect(timeout=0.1)) == [], "suspended: no reply yet"
        rb = b.final("OPTIONS", f"sip:ctl@{addr2[0]}:{addr2[1]}")
        assert rb is not None and rb.reason == "continued"
        got = finals(a.collect(timeout=1.0, until=lambda rs: any(r.status for r in rs)))
        assert len(got) == 1 and got[0].status == 200, got
        words = got[0].reason.split()
        assert words[:3] == ["resumed", "tester", "xv"], got[0].reason
        assert words[4] != words[6], "t_continue ran in the other receiver"
        assert words[7] == "bob", "$T_req() reads the stored request"
        assert words[8].isdigit()
        # a retransmission after the final gets the same final again, the route does not run
        a.send_raw(data)
        again = finals(a.collect(timeout=0.5))
        assert len(again) == 1 and again[0].raw == got[0].raw


def test_fr_timeout_while_suspended_408_then_continue_skipped():
    ctx, addr2 = _server()
    with ctx as srv, SipClient(srv.addr) as a, SipClient(addr2) as b:
        t0 = time.monotonic()
        data, br, cid = build_request("MESSAGE", f"sip:late@127.0.0.1:{srv.port}", a.local, body="x")
        a.send_raw(data)
        got = finals(a.collect(timeout=2.0, until=lambda rs: bool(finals(rs))))
        assert [r.status for r in got] == [408], got
        took = got[0].t_recv - t0
        assert 0.38 < took < 0.6, took          # fr_timer 400 ms, not fr_inv_timer (docs/kamailio-tm.md §4)
        rb = b.final("OPTIONS", f"sip:ctl@{addr2[0]}:{addr2[1]}")
        assert rb is not None and rb.reason == "not continued"
        assert finals(a.collect(timeout=0.3)) == []


def test_cancel_while_suspended_487_200_and_continue_skipped():
    ctx, addr2 = _server()
    with ctx as srv, SipClient(srv.addr) as a, SipClient(addr2) as b:
        ruri = f"sip:bob@127.0.0.1:{srv.port}"
        data, br, cid = build_request("INVITE", ruri, a.local, from_tag="ftcancel")
        a.send_raw(data)
        first = a.collect(timeout=1.0, until=lambda rs: any(r.status == 100 for r in rs))
        assert [r.status for r in first] == [100]
        assert first[0].reason == "trying -- your call is important to us"
        a.send_raw(data)                        # retransmission while suspended: the 100 again
        assert [r.status for r in a.collect(timeout=0.3)] == [100]
        cancel = data.replace(b"INVITE sip:", b"CANCEL sip:", 1).replace(b"CSeq: 1 INVITE", b"CSeq: 1 CANCEL")
        a.send_raw(cancel)
        got = a.collect(timeout=1.0, until=lambda rs: len(finals(rs)) >= 2)
        final_replies = finals(got)
        pairs = sorted((r.status, r.hdr("cseq").split()[1]) for r in final_replies)
        assert pairs == [(200, "CANCEL"), (487, "INVITE")], got
        r487 = next(r for r in final_replies if r.status == 487)
        ack, _, _ = build_request("ACK", ruri, a.local, branch=br, callid=cid, from_tag="ftcancel",
                                  to_tag=r487.to_tag)
        ack = ack.replace(b"CSeq: 1 INVITE", b"CSeq: 1 ACK")
        a.send_raw(ack)                         # stops the 487 retransmissions (Timer G)
        rb = b.final("OPTIONS", f"sip:ctl@{addr2[0]}:{addr2[1]}")
        assert rb is not None and rb.reason == "continued"     # t_continue returns 1: skipped quietly
        assert finals(a.collect(timeout=0.8)) == []
