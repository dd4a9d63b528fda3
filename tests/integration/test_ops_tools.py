"""An operator's session on one running asyncd, with Kamailio's own tools:
kamcmd over the ctl module, /metrics over xhttp_prom, both reading the same
shared counters while SIPp load runs (docs/operations.md).

Runs in: the pytest process; asyncd and SIPp are subprocesses, kamcmd is
Kamailio's (skipped when the Debian package kamailio is missing).
"""
import http.client
import re
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import SipClient
from tests.helpers.kamailio import KAMCMD, SKIP_KAMCMD, kamcmd
from tests.helpers.sipp import run_sipp, sipp_path

pytestmark = pytest.mark.skipif(KAMCMD is None, reason=SKIP_KAMCMD)

CFG = r"""
debug=2
children=2
tcp_children=1
listen=udp:127.0.0.1:LPORT
listen=tcp:127.0.0.1:LPORT
tcp_accept_no_cl=yes
async_workers=2
loadmodule "ctl.so"
loadmodule "jsonrpcs.so"
loadmodule "kex.so"
loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "tmx.so"
loadmodule "async.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "htable.so"
loadmodule "cfg_rpc.so"
loadmodule "counters.so"
loadmodule "xhttp.so"
loadmodule "xhttp_prom.so"
modparam("htable", "htable", "calls=>size=4;")
modparam("xhttp_prom", "xhttp_prom_stats", "all")
request_route {
    $sht(calls=>$rU) = $sht(calls=>$rU) + 1;
    if ($rU == "task") {
        async_task_route("WORK");
        exit;
    }
    sl_send_reply("200", "OK");
}
route[WORK] {
    xlog("L_DBG", "worker-dbg $ci\n");
    send_reply("200", "Done");
}
event_route[xhttp:request] {
    if (prom_check_uri()) {
        prom_dispatch();
        exit;
    }
    xhttp_reply("404", "Not Found", "text/plain", "no");
}
"""


@pytest.fixture
def srv(run_server, tmp_path):
    rundir = str(tmp_path / "run")
    with run_server(CFG, args=("-Y", rundir)) as s:
        s.ctl = f"unix:{rundir}/kamailio_ctl"
        yield s


def _kam(srv, *args):
    r = kamcmd(srv.ctl, *args)
    assert r.returncode == 0, f"kamcmd {args}: {r.stdout}{r.stderr}"
    return r.stdout


def _send(srv, user, n, method="OPTIONS"):
    with SipClient(srv.addr) as c:
        for i in range(n):
            r = c.final(method, f"sip:{user}@127.0.0.1:{srv.port}", timeout=3.0, callid=f"{user}-{i}-{time.time()}")
            assert r is not None and r.status == 200


def _stats(srv):
    """stats.get_statistics all as kamcmd prints it: {group:name: int}."""
    out = _kam(srv, "stats.get_statistics", "all")
    return {k: int(v) for k, v in re.findall(r"^(\S+:\S+) = (-?\d+)$", out, re.M)}


def _scrape(srv):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        assert r.status == 200
        text = r.read().decode()
    finally:
        conn.close()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_kamcmd_shows_processes_tables_transactions_and_statistics(srv):
    ps = _kam(srv, "ps")
    for title in ("main process - attendant", "udp receiver child=0 sock=127.0.0.1:", "ctl handler",
                  "JSONRPCS FIFO", "Async Task Worker - default", "tcp main process"):
        assert title in ps, ps
    up = _kam(srv, "core.uptime")
    assert re.search(r"uptime: \d+", up) and "up_since:" in up
    before = _stats(srv)
    tm_before = _kam(srv, "tm.stats")
    _send(srv, "alice", 3)
    _send(srv, "task", 4)
    after = _stats(srv)
    assert after["core:rcv_requests"] - before["core:rcv_requests"] == 7
    assert after["core:rcv_requests_options"] - before["core:rcv_requests_options"] == 7
    assert after["sl:200_replies"] - before["sl:200_replies"] == 3
    assert after["tmx:UAS_transactions"] - before["tmx:UAS_transactions"] == 4
    total = [int(re.search(r"total: (\d+)", t).group(1)) for t in (tm_before, _kam(srv, "tm.stats"))]
    assert total[1] - total[0] == 4
    dump = _kam(srv, "htable.dump", "calls")
    assert re.search(r"name: alice\s+value: 3", dump) and re.search(r"name: task\s+value: 4", dump), dump
    got = _kam(srv, "htable.get", "calls", "alice")
    assert re.search(r"item: \{\s+name: alice\s+value: 3\s", got), got


def test_cfg_seti_debug_reaches_the_task_workers_live(srv):
    _send(srv, "task", 1)
    assert "worker-dbg" not in srv.log()
    assert _kam(srv, "cfg.seti", "core", "debug", "3").strip() == ""
    _send(srv, "task", 2)
    srv.wait_log(r"worker-dbg task-1-", timeout=3.0)
    _kam(srv, "cfg.seti", "core", "debug", "2")


@pytest.mark.sipp
@pytest.mark.skipif(sipp_path() is None, reason="SIPp is not installed")
def test_metrics_move_under_sipp_load_and_equal_stats_fetch(srv):
    m0 = _scrape(srv)
    res = run_sipp(srv.addr, "options", calls=400, rate=200, timeout=30)
    assert res.successful == 400, res.summary()
    _send(srv, "task", 5)
    m1 = _scrape(srv)
    fetched = _kam(srv, "stats.fetch", "all")
    fetch = {k: int(v) for k, v in re.findall(r"^\s*(\S+?\.\S+): (-?\d+)$", fetched, re.M)}
    m2 = _scrape(srv)

    def metric(group, name, m=m1):
        return m[(f"kamailio_{group}_{name}", ())]
    assert metric("core", "rcv_requests") - metric("core", "rcv_requests", m0) == 405
    # the scrapes and the fetch read the same shm rows: nothing SIP moved in between
    for key in ("core.rcv_requests", "core.rcv_requests_options", "sl.200_replies", "sl.sent_replies",
                "tmx.UAS_transactions", "tmx.2xx_transactions"):
        group, name = key.split(".", 1)
        assert metric(group, name) == fetch[key] == metric(group, name, m2), key
    grp = (("group", "default"),)
    assert m1[("kamailio_async_run", grp)] - m0.get(("kamailio_async_run", grp), 0) == 5
    assert m1[("kamailio_async_workers", grp)] == 2
    assert m1[("kamailio_async_queue_wait_seconds_count", grp)] == m1[("kamailio_async_run", grp)]
    assert m1[("kamailio_async_queue_wait_seconds_bucket", grp + (("le", "+Inf"),))] == \
        m1[("kamailio_async_queue_wait_seconds_count", grp)]
