"""Run-time edge cases of the ASYNC module (docs/kamailio-async.md §2, §10.1-10.2, §10.6-10.7): values
from variables that are out of range or unknown give -1, an error naming the
cfg file:line, and no suspended transaction; faked messages are refused; full
queues say so; return values; `$async`/`$atkv` outside their tasks.

Runs in: the pytest process, against one real server (routes chosen by R-URI
user) plus one with modparam return=1.
"""
import re
import time

import pytest

from tests.helpers.async_cfg import cfg, line_of, PRE, resumed_by, server_fixture

BODY = """request_route {
""" + PRE + """    $var(v) = $hdr(X-V);
    if ($rU == "sleep") { route(SLEEP); }
    if ($rU == "mssleep") { route(MSSLEEP); }
    if ($rU == "route") { route(ROUTE); }
    if ($rU == "msroute") { route(MSROUTE); }
    if ($rU == "group") { route(GROUP); }
    if ($rU == "task") { route(TASK); }
    if ($rU == "data") { route(DATA); }
    if ($rU == "tkv") { route(TKV); }
    if ($rU == "pvs") { route(PVS); }
    if ($rU == "full") { route(FULL); }
    if ($rU == "blfull") { route(BLFULL); }
    if ($rU == "replied") { route(REPLIED); }
    if ($rU == "usleep") { route(USLEEP); }
    if ($rU == "cont") {
        async_ms_sleep("20");
        xinfo("A-cont\n");
    }
    xinfo("B-cont\n");
    exit;
}
route[SLEEP] {
    async_sleep("$var(v)");
    send_reply("200", "after rc=$rc");
    exit;
}
route[MSSLEEP] {
    async_ms_sleep("$var(v)");
    send_reply("200", "after rc=$rc");
    exit;
}
route[ROUTE] {
    async_route("$var(v)", "1");
    send_reply("200", "after rc=$rc");
    exit;
}
route[MSROUTE] {
    async_ms_route("R", "$var(v)");
    send_reply("200", "after rc=$rc");
    exit;
}
route[GROUP] {
    async_task_group_route("R", "$var(v)");
    send_reply("200", "after rc=$rc");
    exit;
}
route[TASK] {
    async_task_route("$var(v)");
    send_reply("200", "after rc=$rc");
    exit;
}
route[DATA] {
    async_task_data("FAKED", "$var(v)");
    send_reply("200", "data rc=$rc");
    exit;
}
route[TKV] {
    async_tkv_emit("7", "k", "$var(v)");
    send_reply("200", "tkv rc=$rc");
    exit;
}
route[PVS] {
    async_task_route("PVR");
}
route[PVR] {
    send_reply("200", "D=$async(data) G=$async(gname) T=$atkv(type) K=$atkv(key)");
    exit;
}
route[R] {
    xinfo("RES $rU pid=$pp\\n");
    send_reply("200", "resumed");
    exit;
}
route[FAKED] {
    async_route("R", "1");
    xinfo("FAKED rc=$rc data=$async(data) pvs=$atkv(type)\\n");
    exit;
}
route[FULL] {
    $var(ok) = 0;
    $var(fail) = 0;
    $var(i) = 0;
    async_task_group_data("SLOW", "nb", "2");
    while ($var(i) < 1100) {
        if (async_task_group_data("SLOW", "nb", "0")) {
            $var(ok) = $var(ok) + 1;
        } else {
            $var(fail) = $var(fail) + 1;
        }
        $var(i) = $var(i) + 1;
    }
    async_task_group_route("R", "nb");
    send_reply("503", "full ok=$var(ok) fail=$var(fail) rc=$rc");
    exit;
}
route[BLFULL] {
    $var(i) = 0;
    async_task_group_data("SLOW", "bl", "2");
    while ($var(i) < 1024) {
        async_task_group_data("SLOW", "bl", "0");
        $var(i) = $var(i) + 1;
    }
    async_task_group_data("SLOW", "bl", "0");
    send_reply("503", "blocked rc=$rc");
    exit;
}
route[USLEEP] {
    $var(i) = 0;
    while ($var(i) < 5) {
        async_task_group_data("TICK", "us", "$var(i)");
        $var(i) = $var(i) + 1;
    }
    send_reply("200", "ticking");
    exit;
}
route[TICK] {
    xinfo("TICK $async(data) $async(gname)\n");
}
route[REPLIED] {
    t_newtran();
    t_reply("202", "first");
    async_task_route("R");
    xinfo("REPLIED rc=$rc\n");
    exit;
}
route[SLOW] {
    if ($async(data) != "0") {
        sleep("$async(data)");
    }
    exit;
}
event_route[core:tkv] {
    xinfo("TKV $atkv(type) $atkv(key) len=$(atkv(val){s.len})\\n");
}
"""

CORE = ('max_while_loops=5000\nasync_workers=1\nasync_workers_group="name=nb;workers=1;nonblock=1"\n'
        'async_workers_group="name=bl;workers=1;nonblock=0"\n'
        'async_workers_group="name=tkv;workers=1"\n'
        'async_workers_group="name=us;workers=1;usleep=100000"')
TEXT = cfg(BODY, core=CORE, params='modparam("async", "ms_timer", 10)\n', children=2)


srv = server_fixture(TEXT, stop_timeout=8.0)


@pytest.fixture
def client(srv, sip_client):
    return sip_client(srv.addr)


def _ask(client, srv, user, value, timeout=2.0):
    rs = client.request("OPTIONS", f"sip:{user}@127.0.0.1:{srv.port}", timeout=timeout,
                        headers=(f"X-V: {value}",))
    fin = [r for r in rs if r.status and r.status >= 200]
    assert fin, f"no final reply for {user}/{value}; log:\n{srv.log()[-3000:]}"
    return fin[0], rs


def _no_more(client, wait=0.4):
    late = client.collect(wait)
    assert not late, late


def _err_logged(srv, route_needle, text):
    line = line_of(TEXT, route_needle)
    srv.wait_log(rf"ERROR: <async> \[[^\]]*test\.cfg:{line}\]: .*{re.escape(text)}")


@pytest.mark.parametrize("user,value,needle", [
    ("sleep", "0", 'async_sleep("$var(v)")'),
    ("sleep", "-1", 'async_sleep("$var(v)")'),
    ("sleep", "abc", 'async_sleep("$var(v)")'),
    ("sleep", "101", 'async_sleep("$var(v)")'),
    ("mssleep", "30001", 'async_ms_sleep("$var(v)")'),
    ("mssleep", "", 'async_ms_sleep("$var(v)")'),
    ("msroute", "0", 'async_ms_route("R", "$var(v)")'),
])
def test_bad_delay_from_variable(srv, client, user, value, needle):
    fin, rs = _ask(client, srv, user, value)
    assert fin.status == 200 and fin.reason == "after rc=-1"
    assert fin.elapsed < 0.1
    _err_logged(srv, needle, "invalid")
    _no_more(client)                  # nothing suspended: no 408/500 later


def test_numeric_string_from_variable_is_accepted(srv, client):
    fin, rs = _ask(client, srv, "mssleep", "250")
    assert fin.reason == "after rc=1" and 0.25 <= fin.elapsed < 0.3


def test_unknown_route_from_variable(srv, client):
    fin, _ = _ask(client, srv, "route", "NOPE")
    assert fin.reason == "after rc=-1"
    _err_logged(srv, 'async_route("$var(v)", "1")', "route block not found [NOPE]")
    _no_more(client)


def test_route_name_too_long_from_variable(srv, client):
    fin, _ = _ask(client, srv, "task", "R" * 63)
    assert fin.reason == "after rc=-1"
    _err_logged(srv, 'async_task_route("$var(v)")', "callback name is too long")


def test_unknown_group_from_variable_is_an_error_not_a_hang(srv, client):
    fin, _ = _ask(client, srv, "group", "nogroup")
    assert fin.reason == "after rc=-1"
    _err_logged(srv, 'async_task_group_route("R", "$var(v)")', "[nogroup] not found")
    _no_more(client)


def test_empty_group_means_default(srv, client):
    fin, _ = _ask(client, srv, "group", "")
    assert fin.reason == "resumed"
    assert resumed_by(srv, "group") == "asyncd: Async Task Worker - default"


def test_data_task_returns_1_and_suspending_on_faked_message_is_refused(srv, client):
    fin, _ = _ask(client, srv, "data", "payload-1")
    assert fin.reason == "data rc=1"
    srv.wait_log(r"FAKED rc=-1 data=payload-1 pvs=<null>")
    srv.wait_log(r"invalid usage for faked message")


def test_tkv_value_limits(srv, client):
    fin, _ = _ask(client, srv, "tkv", "v" * 10)
    assert fin.reason == "tkv rc=1"
    srv.wait_log(r"TKV 7 k len=10\b")
    fin, _ = _ask(client, srv, "tkv", "v" * 1024)
    assert fin.reason == "tkv rc=1"
    srv.wait_log(r"TKV 7 k len=1024\b")       # 1023 chars + NUL, as Kamailio (docs/kamailio-async.md §5)
    fin, _ = _ask(client, srv, "tkv", "v" * 1025)
    assert fin.reason == "tkv rc=-1"


def test_async_pvs_in_a_resumed_task_route(srv, client):
    fin, _ = _ask(client, srv, "pvs", "x")
    assert fin.reason == "D=<null> G=default T=<null> K=<null>"


def test_full_nonblocking_group_returns_minus_one_at_once(srv, client):
    t0 = time.monotonic()
    fin, _ = _ask(client, srv, "full", "x", timeout=3.0)
    # one task running, 1024 queued: the rest and the suspending call are refused
    assert fin.status == 503 and fin.reason == "full ok=1024 fail=76 rc=-1", fin.reason
    assert time.monotonic() - t0 < 1.0
    _err_logged(srv, 'async_task_group_route("R", "nb")', "queue is full")
    _no_more(client)


def test_full_blocking_group_waits_bounded_then_minus_one(srv, client):
    fin, _ = _ask(client, srv, "blfull", "x", timeout=4.0)
    assert fin.status == 503 and fin.reason == "blocked rc=-1"
    assert 1.0 <= fin.elapsed < 1.6


RET_TEXT = cfg("request_route {\n" + PRE + """    async_task_route("R2");
    xinfo("AFTER rc=$rc\\n");
    exit;
}
route[R2] {
    send_reply("200", "resumed");
    exit;
}
""", params='modparam("async", "return", 1)\n')


def test_return_modparam_lets_the_script_continue(run_server, sip_client):
    with run_server(RET_TEXT) as s:
        c = sip_client(s.addr)
        fin = c.final("OPTIONS", f"sip:ret@127.0.0.1:{s.port}")
        assert fin is not None and fin.reason == "resumed"
        s.wait_log(r"AFTER rc=1")


def test_suspend_after_final_reply_returns_minus_one(srv, client):
    fin, _ = _ask(client, srv, "replied", "x")
    assert fin.status == 202
    srv.wait_log(r"REPLIED rc=-1")
    _err_logged(srv, 'async_task_route("R");', "failed to suspend")
    _no_more(client)


def test_sleep_continues_only_with_the_rest_of_its_block(srv, client):
    # docs/kamailio-async.md §2.3: `if (c) { async_sleep(); a } b` -> after resume only "a" runs; it
    # neither replies nor relays, so tm's automatic 500 ends the transaction
    fin, _ = _ask(client, srv, "cont", "x")
    assert fin.status == 500 and 0.02 <= fin.elapsed < 0.2
    srv.wait_log(r"A-cont")
    time.sleep(0.1)
    assert "B-cont" not in srv.log()


def test_group_usleep_throttles_each_worker(srv, client):
    # docs/kamailio-async.md §4.3: the worker sleeps `usleep` µs before each receive: 5 tasks >= 0.4 s apart
    fin, _ = _ask(client, srv, "usleep", "x")
    assert fin.reason == "ticking"
    t0 = time.monotonic()
    srv.wait_log(r"TICK 0 us")
    first = time.monotonic() - t0
    srv.wait_log(r"TICK 4 us", timeout=3.0)
    spread = time.monotonic() - t0 - first
    assert 0.38 <= spread < 1.0, (first, spread)


TKV_TEXT = cfg("request_route {\n" + PRE + """    async_tkv_emit("$var(t)", "$rU", "from=$fU");
    sl_send_reply("200", "rc=$rc");
    exit;
}
event_route[my:ev] {
    xinfo("EV $atkv(type)|$atkv(key)|$atkv(val)|$atkv(gname) pid=$pp\\n");
}
""", core='async_workers=1\nasync_workers_group="name=ev;workers=1"\n'
          'async_tkv_gname="ev"\nasync_tkv_evcb="my:ev"')


def test_tkv_core_parameters_route_events_to_their_group(run_server, sip_client):
    with run_server(TKV_TEXT) as s:
        c = sip_client(s.addr)
        fin = c.final("OPTIONS", f"sip:k1@127.0.0.1:{s.port}")
        # $var(t) is unset in this receiver -> 0, an integer: accepted
        assert fin is not None and fin.reason == "rc=1"
        m = s.wait_log(r"EV 0\|k1\|from=tester\|ev pid=(\d+)")
        from tests.helpers.async_cfg import title_of
        assert title_of(s, m.group(1)) == "asyncd: Async Task Worker - ev"
        assert "tkv: using" not in s.log()       # no defaults applied when configured
