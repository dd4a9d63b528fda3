"""ASYNC and tm together (docs/kamailio-tm.md, docs/kamailio-async.md §10.6): resumed routes run as failure
routes; a resume that does nothing gets tm's automatic 500; fr_timer shorter
than the sleep gives 408 and no resume; CANCEL during a sleep gives 487 and
no resume; retransmissions during a sleep get one final reply; chained
suspends work; and the timers are accurate (docs/kamailio-async.md §10.3).

Runs in: the pytest process, against one real server (routes chosen by R-URI
user).
"""
import statistics
import threading
import time

import pytest

from tests.helpers import SipClient
from tests.helpers.async_cfg import cfg, PRE, resumed_by, server_fixture, Uas

BODY = """request_route {
""" + PRE + """    if ($rU == "nothing") { async_task_route("NOTHING"); }
    if ($rU == "fr") { route(FR); }
    if ($rU == "cancel") { route(CANCEL); }
    if ($rU == "retr") { route(RETR); }
    if ($rU == "chain") { async_task_route("CHAIN1"); }
    if ($rU == "rtype") { async_task_route("RTYPE"); }
    if ($rU == "sleep1") { route(SLEEP1); }
    if ($rU == "ms100") { route(MS100); }
    if ($rU == "route1") { async_route("R", "1"); }
    if ($rU == "msroute") { async_ms_route("R", "100"); }
    if ($rU == "vars") { route(VARS); }
    if ($rU == "fail") {
        t_on_failure("F");
        t_relay();
    }
    exit;
}
failure_route[F] {
    xinfo("FAILED $T_reply_code\\n");
    async_ms_route("FROMF", "50");
}
route[FROMF] {
    xinfo("RES fail pid=$pp\\n");
    send_reply("200", "resumed from failure");
    exit;
}
route[NOTHING] {
    xinfo("RES $rU pid=$pp\\n");
}
route[FR] {
    t_set_fr(0, 500);
    async_sleep("1");
    xinfo("RES $rU pid=$pp\\n");
    send_reply("200", "too late");
    exit;
}
route[CANCEL] {
    async_ms_sleep("600");
    xinfo("RES $rU pid=$pp\\n");
    send_reply("200", "not cancelled");
    exit;
}
route[RETR] {
    async_ms_sleep("300");
    xinfo("RES $rU pid=$pp\\n");
    send_reply("200", "once");
    exit;
}
route[CHAIN1] {
    xinfo("RES chain1 pid=$pp\\n");
    $avp(c) = "one";
    async_ms_route("CHAIN2", "50");
}
route[CHAIN2] {
    xinfo("RES chain2 pid=$pp\\n");
    async_route("CHAIN3", "1");
}
route[CHAIN3] {
    xinfo("RES chain3 pid=$pp\\n");
    send_reply("200", "chained $avp(c)");
    exit;
}
route[RTYPE] {
    send_reply("200", "rt=$T(reply_type)");
    exit;
}
route[SLEEP1] {
    async_sleep("1");
    send_reply("200", "slept");
    exit;
}
route[MS100] {
    async_ms_sleep("100");
    send_reply("200", "slept");
    exit;
}
route[R] {
    send_reply("200", "resumed");
    exit;
}
route[VARS] {
    $avp(a) = "A1";
    $xavp(x=>f) = "X1";
    $var(v) = "V1";
    $shv(s) = "S1";
    $sht(t=>k) = "H1";
    if ($hdr(X-F) == "ar") { async_route("SHOW", "1"); }
    if ($hdr(X-F) == "amr") { async_ms_route("SHOW", "20"); }
    if ($hdr(X-F) == "atr") { async_task_route("SHOW"); }
    if ($hdr(X-F) == "atgr") { async_task_group_route("SHOW", "g2"); }
    if ($hdr(X-F) == "as") {
        async_sleep("1");
        route(SHOW);
    }
    if ($hdr(X-F) == "ams") {
        async_ms_sleep("20");
        route(SHOW);
    }
}
route[SHOW] {
    send_reply("200", "a=$avp(a) x=$xavp(x=>f) v=$var(v) s=$shv(s) h=$sht(t=>k)");
    exit;
}
"""

TEXT = cfg(BODY, core='async_workers=2\nasync_workers_group="name=g2;workers=1"',
           params='modparam("async", "ms_timer", 10)\nmodparam("htable", "htable", "t=>size=4")\n',
           children=2)


srv = server_fixture(TEXT)


def _uri(srv, user):
    return f"sip:{user}@127.0.0.1:{srv.port}"


def test_resume_that_does_nothing_gets_automatic_500(srv, sip_client):
    c = sip_client(srv.addr)
    fin = c.final("OPTIONS", _uri(srv, "nothing"))
    assert fin.status == 500 and fin.reason == "I'm terribly sorry, server error occurred (1/TM)"
    assert resumed_by(srv, "nothing") == "asyncd: Async Task Worker - default"


def test_resumed_route_runs_as_failure_route(srv, sip_client):
    # $T(reply_type) is 1 only in a failure route with a local (faked) reply: the
    # blind branch's, as Kamailio's resume sets FAILURE_ROUTE (docs/kamailio-tm.md §3 step 6, GH #750)
    c = sip_client(srv.addr)
    assert c.final("OPTIONS", _uri(srv, "rtype")).reason == "rt=1"


def test_fr_timer_shorter_than_sleep_gives_408_and_no_resume(srv, sip_client):
    c = sip_client(srv.addr)
    t0 = time.monotonic()
    rs = c.request("OPTIONS", _uri(srv, "fr"), timeout=2.0)
    finals = [r for r in rs if r.status >= 200]
    assert [r.status for r in finals] == [408]
    assert 0.45 <= finals[0].t_recv - t0 < 0.7
    assert not c.collect(1.0)                      # no "too late" 200 after the second
    assert "RES fr " not in srv.log()


def test_cancel_during_sleep_gives_487_and_no_resume(srv, sip_client):
    c = sip_client(srv.addr)
    data, branch, callid = c.send("INVITE", _uri(srv, "cancel"))
    first = c.recv(1.0)
    assert first is not None and first.status == 100
    time.sleep(0.1)
    c.send("CANCEL", _uri(srv, "cancel"), branch=branch, callid=callid,
           from_tag=_from_tag(data))
    got = c.collect(1.2)
    codes = sorted((r.hdr("cseq").split()[1], r.status) for r in got if r.status >= 200)
    assert ("CANCEL", 200) in codes and ("INVITE", 487) in codes
    assert ("INVITE", 200) not in codes
    assert "RES cancel " not in srv.log()


def _from_tag(data):
    for line in data.decode().split("\r\n"):
        if line.startswith("From:"):
            return line.split("tag=")[1]


def test_retransmissions_during_sleep_get_one_final_reply(srv, sip_client):
    c = sip_client(srv.addr)
    data, branch, callid = c.send("OPTIONS", _uri(srv, "retr"))
    for _ in range(3):
        time.sleep(0.05)
        c.send_raw(data)
    got = c.collect(0.8)
    assert [r.status for r in got if r.status >= 200] == [200]
    # INVITE: the retransmission gets the 100 Trying again (docs/kamailio-tm.md §5)
    data, branch, callid = c.send("INVITE", _uri(srv, "retr"))
    assert c.recv(1.0).status == 100
    time.sleep(0.05)
    c.send_raw(data)
    got = c.collect(0.6)
    assert [r.status for r in got] == [100, 200]
    assert srv.log().count("RES retr ") == 2


def test_chained_suspends(srv, sip_client):
    c = sip_client(srv.addr)
    t0 = time.monotonic()
    fin = c.final("OPTIONS", _uri(srv, "chain"), timeout=3.0)
    assert fin is not None and fin.reason == "chained one"
    assert 1.05 <= fin.t_recv - t0 < 1.15
    assert resumed_by(srv, "chain1") == "asyncd: Async Task Worker - default"
    assert resumed_by(srv, "chain2") == "asyncd: Async Task Worker - default"
    assert resumed_by(srv, "chain3") == "asyncd: ASYNC MOD TIMER"


@pytest.mark.parametrize("func", ["ar", "amr", "atr", "atgr", "as", "ams"])
def test_variables_across_each_suspending_function(srv, sip_client, func):
    c = sip_client(srv.addr)
    fin = c.final("OPTIONS", _uri(srv, "vars"), headers=(f"X-F: {func}",), timeout=2.0)
    assert fin is not None, srv.log()[-2000:]
    # $avp/$xavp travel with the transaction, $shv/$sht are shared, $var is not (docs/kamailio-async.md §7)
    assert fin.reason.startswith("a=A1 x=X1 v=") and fin.reason.endswith(" s=S1 h=H1"), fin.reason
    assert "v=V1" not in fin.reason


def _timed(srv, user, n, gap):
    """n requests `gap` s apart from separate clients; their elapsed times."""
    out = []

    def one():
        with SipClient(srv.addr) as c:
            fin = c.final("OPTIONS", _uri(srv, user), timeout=3.0)
            out.append(fin.elapsed if fin else None)
    ts = []
    for _ in range(n):
        t = threading.Thread(target=one)
        t.start()
        ts.append(t)
        time.sleep(gap)
    for t in ts:
        t.join(5)
    assert None not in out and len(out) == n
    return sorted(out)


def test_timer_accuracy(srv):
    _timed(srv, "ms100", 3, 0.01)           # warm up: first resumes pay lazy setup in tm
    s1 = _timed(srv, "sleep1", 10, 0.05)
    r1 = _timed(srv, "route1", 5, 0.05)
    m100 = _timed(srv, "ms100", 20, 0.02)
    mr = _timed(srv, "msroute", 10, 0.02)
    # docs/kamailio-async.md §10.3: never early; async_sleep(1) within 1.000-1.005 s, ms items ~2 ms late
    # (end to end: ~0.2 ms timer lateness + the resume itself). The bound is on
    # the median and a looser max, so a loaded 2-core CI box does not make this
    # flaky; tests/unit/workers/test_timer.py bounds the timer loop itself (p90 < 2 ms).
    for xs, nominal, tol in ((s1, 1.0, 0.006), (r1, 1.0, 0.006), (m100, 0.1, 0.004),
                             (mr, 0.1, 0.004)):
        assert xs[0] >= nominal, xs
        assert statistics.median(xs) <= nominal + tol, xs
        # the worst single sample only rules out gross lateness (a second-long
        # ring like Kamailio's): one 50 ms stall of a loaded CI box failed it once
        assert xs[-1] <= nominal + 0.1, xs
    print(f"async_sleep(1) median {statistics.median(s1):.4f} max {s1[-1]:.4f}; "
          f"async_ms_sleep(100) median {statistics.median(m100):.4f} max {m100[-1]:.4f}")


def test_suspend_from_failure_route(srv, sip_client):
    # docs/kamailio-async.md §2.0: the suspending functions are allowed in FAILURE_ROUTE too
    uas = Uas(code=486)
    try:
        c = sip_client(srv.addr)
        fin = c.final("OPTIONS", uas.uri("fail"), timeout=2.0)
        assert fin is not None and fin.status == 200 and fin.reason == "resumed from failure"
        assert fin.elapsed >= 0.05
        srv.wait_log(r"FAILED 486")
        assert resumed_by(srv, "fail") == "asyncd: Async Task Worker - default"
    finally:
        uas.close()
