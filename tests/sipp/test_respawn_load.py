"""kill -9 of each process role in turn under SIPp load: every call still
completes (0 failed calls), the server stays up, every process comes back
with its title (docs/architecture.md, "Respawn").

Runs in: the pytest process; asyncd, SIPp (UAC and, for the relay case, a
UAS) run as subprocesses. The UAC runs in a thread while the test kills.

The async_task_route case accepts one outcome besides 200: a call whose
task was *running* in the killed worker gets 500 at once (it cannot be run
twice safely); the scenario ACKs it and the test checks that at most one
task per worker kill was abandoned. Everything else is retried or recovered:
a killed receiver loses at most the datagram it was parsing (SIPp
retransmits), timers are rebuilt from shared memory, queued tasks move on.
"""
import os
import re
import signal
import threading
import time
from collections import Counter

import pytest

from tests.helpers import REPO_ROOT, run_server
from tests.helpers.sipp import SippUas, run_sipp

pytestmark = pytest.mark.slow
BENCH_SCENARIOS = REPO_ROOT / "bench" / "scenarios"    # the bench's relay UAC and UAS

TASK_CFG = """#!ifndef LPORT
#!define LPORT 5071
#!endif
debug=2
log_stderror=yes
children=2
listen=udp:127.0.0.1:LPORT
async_workers=2
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "async.so"
modparam("async", "workers", 1)
request_route {
    if ($rm == "ACK") { t_check_trans(); exit; }
    if (t_precheck_trans()) { t_check_trans(); exit; }
    t_check_trans();
    if ($rm == "BYE") { sl_send_reply("200", "OK"); exit; }
    async_task_route("RESUME");
    exit;
}
route[RESUME] { send_reply("200", "OK"); exit; }
"""

RELAY_CFG = """#!ifndef LPORT
#!define LPORT 5071
#!endif
debug=2
log_stderror=yes
children=2
listen=udp:127.0.0.1:LPORT
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
request_route {
    if (!t_relay()) { sl_reply_error(); }
    exit;
}
"""


def _titles(srv):
    return Counter(t for t in srv.titles() if t.startswith("asyncd: "))


def _victim(srv, title):
    pids = [p.pid for p in srv.find("asyncd: " + title)
            if " ".join(p.cmdline()).strip() == "asyncd: " + title
            or " ".join(p.cmdline()).startswith("asyncd: " + title + " ")]
    return min(pids)


def _kill_in_turn(srv, titles, gap, before):
    """Kill one process of each title, `gap` s apart; each must be back within 1 s."""
    for title in titles:
        time.sleep(gap)
        pid = _victim(srv, title)
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        while _titles(srv) != before or pid in {p.pid for p in srv.processes()}:
            assert time.monotonic() - t0 < 1.0, (title, _titles(srv))
            time.sleep(0.01)


def _said(log_text, limit=80):
    """The server's warnings and errors (kills, respawns, takeovers, abandoned transactions)."""
    lines = [ln for ln in log_text.splitlines()
             if re.search(r"WARNING|ERROR|CRITICAL|ALERT|respawn|took over|abandon|dead process", ln)]
    return "\n".join(lines[-limit:])


def _load_and_kill(srv, sipp_kw, titles, seconds=10, rate=500):
    before = _titles(srv)
    calls = rate * seconds
    out = {}
    t = threading.Thread(target=lambda: out.setdefault(
        "r", run_sipp(calls=calls, rate=rate, timeout=seconds + 40, **sipp_kw)))
    t.start()
    try:
        _kill_in_turn(srv, titles, (seconds - 2) / (len(titles) + 1), before)
    finally:
        t.join(seconds + 60)
    r = out["r"]
    # a call lost here happened once in ~40 runs (issue 16's second stop): keep what the
    # server said about the deaths and takeovers in the failure, to see which kill it follows
    assert r.failed == 0 and r.successful == calls, r.summary() + "\n" + _said(srv.log())
    assert srv.alive() and _titles(srv) == before
    for title in titles:
        assert re.search(rf"\({re.escape(title)}[^)]*, rank -?\d+\) terminated by signal 9 "
                         r"\(SIGKILL, perhaps out of memory\); respawning it", srv.log())
    return r


def test_kill_each_role_under_async_task_route_load():
    with run_server(TASK_CFG) as srv:
        titles = ("Async Task Worker - default", "udp receiver child=0", "timer",
                  "ASYNC MOD TIMER", "udp receiver child=1", "Async Task Worker - default")
        _load_and_kill(srv, dict(target=srv.addr, scenario="respawn_uac"), titles)
        abandoned = len(re.findall(r"abandoned the running one", srv.log()))
        assert abandoned <= 2          # one per worker kill at most
    assert "6 dead process(es) were respawned" in srv.log()


def test_kill_each_role_under_relay_load():
    uas = SippUas(scenario=str(BENCH_SCENARIOS / "uas.xml"))
    try:
        with run_server(RELAY_CFG) as srv:
            titles = ("udp receiver child=0", "timer", "udp receiver child=1", "timer")
            _load_and_kill(srv, dict(target=("127.0.0.1", uas.port), scenario=str(
                BENCH_SCENARIOS / "invite_uac.xml"), extra=["-rsa", f"127.0.0.1:{srv.port}"]),
                titles, rate=300)
    finally:
        uas.stop()
