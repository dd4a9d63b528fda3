"""Every example of the ASYNC admin guide (Kamailio's src/modules/async/README;
docs/kamailio-async.md §11), as written, on real processes: reply code, delay, the process that resumed
the request (its title), and the log line.

Runs in: the pytest process; servers are started concurrently and requested
in parallel so the two 4-second examples cost 4 s together.

Where the guide is broken (docs/kamailio-async.md §10.5, §11): examples 1.11
and 1.13 call the non-group function with the group argument: asyncd refuses
them at startup with a message suggesting the right function, and the
corrected call is run too. Example 1.8's `http_connect` (http_client module)
is replaced by setting `$avp(delay)` as the leaky bucket would; the async part
is unchanged. Example 1.14 works without async_tkv_gname/async_tkv_evcb
(docs/kamailio-async.md §10.4). Each resumed route gets one added `xinfo`
naming its process.
"""
import threading
import time

import pytest

from tests.helpers import SipClient
from tests.helpers.async_cfg import PRE, Uas, cfg, check_cfg, resumed_by, servers

RES = '    xinfo("RES $rU pid=$pp\\n");\n'

EX = {}

EX["1.5"] = cfg("""request_route {
""" + PRE + """    async_route("RESUME", "4");
}
route[RESUME] {
""" + RES + """   send_reply("404", "Not found");
   exit;
}
""", params='modparam("async", "workers", 2)\n')

EX["1.6"] = cfg("""request_route {
""" + PRE + """    async_ms_route("RESUME", "250");
}
route[RESUME] {
""" + RES + """   send_reply("404", "Not found");
   exit;
}
""", params='modparam("async", "ms_timer", 10)\n')

EX["1.7"] = cfg("""request_route {
""" + PRE + RES.replace("RES $rU", "PRE $rU") + """    async_sleep("4");
""" + RES + """    send_reply("404", "Not found");
    exit;
}
""")

EX["1.8"] = cfg("""request_route {
""" + PRE + """    route(REQUESTSHAPER);
}
route[REQUESTSHAPER] {
	$avp(delay) = "100";
	$var(d) = $(avp(delay){s.int});
	if ($var(d) > 0) {
		# Delay the request by $avp(delay) ms
		async_ms_sleep("$var(d)");
""" + RES + """		if (!t_relay()) {
			sl_reply_error();
		}
		exit;
	}
	# No delay
	if (!t_relay()) {
		sl_reply_error();
	}
	exit;
}
""", params='modparam("async", "ms_timer", 1)\n')

EX["1.10"] = cfg("""request_route {
""" + PRE + """    async_task_route("RESUME");
}
route[RESUME] {
""" + RES + """   t_relay();
   exit;
}
""", core="# Enable 8 worker processes used by async and other modules\nasync_workers=8")

GROUP = 'async_workers_group="name=abc;workers=4;nonblock=0;usleep=0"'

EX["1.11"] = cfg("""request_route {
""" + PRE + """    async_task_group_route("RESUME", "abc");
}
route[RESUME] {
""" + RES + """   t_relay();
   exit;
}
""", core=GROUP)

EX["1.12"] = cfg("""request_route {
""" + PRE + """    async_task_data("RESUME", "caller: $fU - callee: $tU");
    sl_send_reply("200", "queued");
}
route[RESUME] {
   xinfo("$async(data)\\n");
   xinfo("RES data pid=$pp\\n");
   exit;
}
""", core=GROUP)

EX["1.13"] = cfg("""request_route {
""" + PRE + """    async_task_group_data("RESUME", "abc", "caller: $fU - callee: $tU");
    sl_send_reply("200", "queued");
}
route[RESUME] {
   xinfo("$async(data)\\n");
   xinfo("RES data pid=$pp\\n");
   exit;
}
""", core=GROUP)

EX["1.14"] = cfg("""request_route {
""" + PRE + """    async_tkv_emit("8000", "call", "caller='$fU';callee='$tU'");
    sl_send_reply("200", "emitted");
}
event_route[core:tkv] {
    xinfo("$atkv(type) / $atkv(key) / $atkv(val)\\n");
    xinfo("RES tkv pid=$pp\\n");
    exit;
}
""", core='async_workers_group="name=tkv;workers=1;nonblock=0;usleep=0"')

ORDER = list(EX)
# Ten servers run these at once on two cores: the end-to-end bound allows scheduling
# jitter (never early, at most 100 ms late; Kamailio is off by up to a second, docs/kamailio-async.md §8).
# The timers' own accuracy is asserted in tests/unit/workers/test_timer.py and measured by bench.
SLACK = 0.1


@pytest.fixture(scope="module")
def guide():
    """Start every example's server, fire one request at each in parallel."""
    uas = Uas()
    res = {}
    with servers([EX[k] for k in ORDER]) as srvs:
        def one(key, srv):
            with SipClient(srv.addr) as c:
                relay = key in ("1.8", "1.10", "1.11")
                ruri = uas.uri(user="x" + key.replace(".", "")) if relay else \
                    f"sip:x{key.replace('.', '')}@127.0.0.1:{srv.port}"
                t0 = time.monotonic()
                rs = c.request("OPTIONS", ruri, timeout=6.0)
                fin = rs[-1] if rs and rs[-1].status and rs[-1].status >= 200 else None
                res[key] = (srv, fin, (fin.t_recv - t0) if fin else None, rs)
        ts = [threading.Thread(target=one, args=(k, s)) for k, s in zip(ORDER, srvs)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(10)
        time.sleep(0.3)             # data/tkv tasks log after the reply
        yield res
    uas.close()


def _check(res, key, code, lo, hi, title, tag=None):
    srv, fin, dt, rs = res[key]
    assert fin is not None, f"{key}: no final reply; log:\n{srv.log()[-3000:]}"
    assert fin.status == code, (key, fin, srv.log()[-3000:])
    assert lo <= dt <= hi, (key, dt)
    tag = tag or "x" + key.replace(".", "")
    assert resumed_by(srv, tag) == "asyncd: " + title
    return srv


def test_1_5_async_route(guide):
    _check(guide, "1.5", 404, 4.0, 4.0 + SLACK, "ASYNC MOD TIMER")


def test_1_6_async_ms_route(guide):
    _check(guide, "1.6", 404, 0.25, 0.25 + SLACK, "Async Task Worker - default")


def test_1_7_async_sleep_continues_its_block(guide):
    srv = _check(guide, "1.7", 404, 4.0, 4.0 + SLACK, "ASYNC MOD TIMER")
    assert srv.log().count("PRE x17") == 1          # the part before the sleep ran once


def test_1_8_async_ms_sleep_then_relay(guide):
    _check(guide, "1.8", 200, 0.1, 0.1 + SLACK, "Async Task Worker - default")


def test_1_10_async_task_route_relays(guide):
    _check(guide, "1.10", 200, 0.0, 0.2, "Async Task Worker - default")


def test_1_11_group_route_runs_in_its_group(guide):
    _check(guide, "1.11", 200, 0.0, 0.2, "Async Task Worker - abc")


def test_1_12_task_data_logs_the_data(guide):
    srv = _check(guide, "1.12", 200, 0.0, 0.2, "Async Task Worker - default", tag="data")
    srv.wait_log(r"INFO: .*caller: tester - callee: x112\b")


def test_1_13_group_data_logs_the_data(guide):
    srv = _check(guide, "1.13", 200, 0.0, 0.2, "Async Task Worker - abc", tag="data")
    srv.wait_log(r"INFO: .*caller: tester - callee: x113\b")


def test_1_14_tkv_event_as_the_guide_shows_it(guide):
    srv = _check(guide, "1.14", 200, 0.0, 0.2, "Async Task Worker - tkv", tag="tkv")
    srv.wait_log(r"8000 / call / caller='tester';callee='x114'")
    srv.wait_log(r"tkv: using async_tkv_gname=tkv and async_tkv_evcb=core:tkv")


# ---- the examples that are broken as printed (docs/kamailio-async.md §10.5) ---------------------

@pytest.mark.unit          # asyncd -c only, no server
def test_1_11_as_printed_is_a_startup_error_suggesting_the_group_function():
    text = EX["1.11"].replace('async_task_group_route("RESUME", "abc")',
                              'async_task_route("RESUME", "abc")')
    rc, out = check_cfg(text)
    assert rc != 0
    line = text.splitlines().index('    async_task_route("RESUME", "abc");') + 1
    assert f"test.cfg:{line}:" in out and "async_task_group_route" in out, out


@pytest.mark.unit
def test_1_13_as_printed_is_a_startup_error_suggesting_the_group_function():
    text = EX["1.13"].replace('async_task_group_data("RESUME", "abc",', 'async_task_data("RESUME", "abc",')
    rc, out = check_cfg(text)
    assert rc != 0
    assert "async_task_group_data" in out and "test.cfg:" in out, out


@pytest.mark.unit
def test_modparam_examples_are_accepted():
    # examples 1.1-1.4 (mode=1 with only data/tkv functions, as its text says)
    body = "request_route {\n" + PRE + '    async_task_data("R", "x");\n    sl_send_reply("200","OK");\n}\n' \
        'route[R] {\n    xinfo("$async(data)\\n");\n}\n'
    params = ('modparam("async", "workers", 2)\nmodparam("async", "ms_timer", 10)\n'
              'modparam("async", "return", 1)\nmodparam("async", "mode", 1)\n')
    rc, out = check_cfg(cfg(body, params=params))
    assert rc == 0, out
