"""Respawn on a real cfg: kill -9 of any process is followed, within 1 s, by
a replacement with the same title and rank, and the server keeps answering
through every path (task workers, the ASYNC timers, tm's timer, htable's);
a worker killed in the middle of a task gives that task's transaction its
final reply at once; tm's timer killed while INVITEs wait for their replies
still fires their fr timers; `respawn=no` keeps Kamailio's policy
(docs/architecture.md, "Respawn").

Runs in: the pytest process; asyncd runs as a subprocess (run_server). The
SIPp load versions are in tests/sipp/test_respawn_load.py.
"""
import os
import re
import signal
import socket
import time
from collections import Counter


from tests.helpers import SipClient, run_server
from tests.helpers.async_cfg import PRE, cfg, final

CFG = cfg("""
modparam("async", "workers", 2)
modparam("async", "ms_timer", 10)
modparam("htable", "htable", "seen=>size=6;autoexpire=1")
modparam("tm", "fr_timer", 2000)
request_route {
""" + PRE + """
    $sht(seen=>$ci) = 1;
    if ($hdr(X-Path) == "task") { async_task_route("DONE"); exit; }
    if ($hdr(X-Path) == "long") { async_task_route("LONG"); exit; }
    if ($hdr(X-Path) == "sleep") { async_sleep(1); t_reply("200", "Slept"); exit; }
    if ($hdr(X-Path) == "ms") { async_ms_route("DONE", 50); exit; }
    if ($hdr(X-Path) == "hold") {
        t_newtran();
        xlog("L_INFO", "HOLD pid=$pp\n");
        sleep(2);                       # the receiver holds its transaction
        t_reply("200", "Held");
        exit;
    }
    if ($hdr(X-Path) == "relay") { t_on_failure("FAIL"); t_relay(); exit; }
    sl_send_reply("200", "OK");
}
route[DONE] { t_reply("200", "Done"); }
route[LONG] {
    xlog("L_INFO", "LONG start pid=$pp\\n");
    sleep(2);
    t_reply("200", "Long Done");
}
failure_route[FAIL] {
    if (t_check_status("408")) { t_reply("408", "Failure Route Ran"); }
}
""", core="async_workers=2", children=2)

ROLES = ("Async Task Worker - default", "udp receiver child=0", "timer", "ASYNC MOD TIMER",
         "ASYNC MOD MS TIMER", "HTable Timer")


def _titles(srv):
    return Counter(t for t in srv.titles() if t.startswith("asyncd: "))


def _pids(srv, title):
    out = set()
    for p in srv.processes():
        try:
            if " ".join(p.cmdline()).strip() == "asyncd: " + title or \
                    " ".join(p.cmdline()).strip().startswith("asyncd: " + title + " "):
                out.add(p.pid)
        except Exception:
            pass
    return out


def _kill_and_wait(srv, title, before):
    """kill -9 one process titled `title`; return seconds until the titles are all back."""
    victim = min(_pids(srv, title))
    t0 = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    while time.monotonic() - t0 < 3:
        if _titles(srv) == before and victim not in _pids(srv, title):
            return victim, time.monotonic() - t0
        time.sleep(0.01)
    raise AssertionError(f"{title}: not back within 3 s: {_titles(srv)}")


def _all_paths_answer(c):
    for path, reason in (("task", "Done"), ("sleep", "Slept"), ("ms", "Done"), ("", "OK")):
        fin, rs = final(c, method="MESSAGE" if path else "OPTIONS", timeout=3.0,
                        headers=[f"X-Path: {path}"] if path else ())
        assert fin is not None and fin.status == 200 and fin.reason == reason, (path, rs)


def test_every_role_is_respawned_with_its_title_and_the_server_keeps_answering():
    with run_server(CFG) as srv, SipClient(srv.addr) as c:
        before = _titles(srv)
        _all_paths_answer(c)
        for title in ROLES:
            victim, took = _kill_and_wait(srv, title, before)
            assert took < 1.0, (title, took)
            m = srv.wait_log(rf"child process {victim} \(([^)]*), rank (-?\d+)\) terminated by signal 9 "
                             r"\(SIGKILL, perhaps out of memory\); respawning it")
            assert m.group(1).startswith(title)
            srv.wait_log(rf"respawned {re.escape(m.group(1))} \(rank {m.group(2)}\) as pid \d+")
            _all_paths_answer(c)
        assert _titles(srv) == before
    assert "6 dead process(es) were respawned" in srv.log()


def test_killed_worker_running_a_long_task_its_transaction_ends_at_once():
    with run_server(CFG) as srv, SipClient(srv.addr) as c, SipClient(srv.addr) as quick:
        c.send("MESSAGE", headers=["X-Path: long"])
        pid = int(srv.wait_log(r"LONG start pid=(\d+)").group(1))
        os.kill(pid, signal.SIGKILL)
        t_kill = time.monotonic()
        rs = c.collect(3.0, until=lambda rs: rs[-1].status >= 200)
        fin = rs[-1] if rs else None
        assert fin is not None and fin.status == 500, rs
        assert fin.t_recv - t_kill < 1.0
        for _ in range(4):          # the other transactions are untouched
            f2, rs2 = final(quick, method="MESSAGE", headers=["X-Path: task"])
            assert f2 is not None and (f2.status, f2.reason) == (200, "Done"), rs2
        assert "Long Done" not in srv.log()         # never run twice


def test_killed_receiver_holding_a_transaction_its_replacement_answers_it():
    """The claim a dead receiver left on its slot: 500 at once, not fr_timer or the sweep."""
    with run_server(CFG) as srv, SipClient(srv.addr) as c:
        c.send("MESSAGE", headers=["X-Path: hold"])
        pid = int(srv.wait_log(r"HOLD pid=(\d+)").group(1))
        os.kill(pid, signal.SIGKILL)
        t_kill = time.monotonic()
        rs = c.collect(3.0, until=lambda rs: rs[-1].status >= 200)
        assert rs and rs[-1].status == 500, rs
        assert rs[-1].t_recv - t_kill < 1.0
        srv.wait_log(r"transaction \d+:\d+ was in the hands of the dead process of this slot: replied 500")
        fin, _ = final(c, method="MESSAGE", headers=["X-Path: task"])
        assert fin is not None and fin.reason == "Done"
    assert "Held" not in srv.log()


class Blackhole:
    """A next hop that reads and never answers (records what it got)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def drain(self):
        self.sock.setblocking(False)
        got = []
        while True:
            try:
                got.append((time.monotonic(), self.sock.recv(65535)))
            except BlockingIOError:
                return got

    def close(self):
        self.sock.close()


def test_killed_tm_timer_fr_timers_still_fire():
    hole = Blackhole()
    try:
        with run_server(CFG) as srv, SipClient(srv.addr) as c:
            n = 20
            t0 = time.monotonic()
            for i in range(n):
                c.send("INVITE", ruri=f"sip:hole@127.0.0.1:{hole.port}", headers=["X-Path: relay"],
                       callid=f"fr-{i}")
            time.sleep(0.6)             # relayed, retransmitting (Timer A), fr pending
            os.kill(min(_pids(srv, "timer")), signal.SIGKILL)
            rs = c.collect(5.0, until=lambda rs: sum(1 for r in rs if r.status == 408) >= n)
            got = [r for r in rs if r.status == 408]
            assert len(got) == n and all(r.reason == "Failure Route Ran" for r in got), rs
            # fr_timer=2 s from the relay: fired on time, not at some sweep
            assert max(r.t_recv for r in got) - t0 < 2.0 + 0.8
            srv.wait_log(r"timer: recovered \d+ pending entries")
    finally:
        hole.close()


def test_killed_tm_timer_its_successor_frees_what_waits_in_the_delay_rings():
    """Wait entries and fr probes live in shm rings (asyncd/ipc/delay_ring.py),
    not in the timer's heap: its replacement drains them, and every
    transaction is freed after wt_timer."""
    text = CFG.replace('modparam("tm", "fr_timer", 2000)',
                       'modparam("tm", "fr_timer", 2000)\nmodparam("tm", "wt_timer", 500)')
    with run_server(text) as srv, SipClient(srv.addr) as c:
        n = 30
        for i in range(n):
            c.send("OPTIONS", headers=["X-Path: task"], callid=f"ring-{i}")
        rs = c.collect(3.0, until=lambda rs: sum(1 for r in rs if r.status == 200) >= n)
        assert sum(1 for r in rs if r.status == 200) == n, rs
        os.kill(min(_pids(srv, "timer")), signal.SIGKILL)      # their wait entries are pending
        time.sleep(2.0)                 # respawn, then wt_timer (0.5 s) and the 1 s probes are past
    assert "transaction table: 0 entries at exit" in srv.log(), srv.log()[-2000:]


def test_respawn_no_keeps_kamailio_policy():
    text = CFG.replace("async_workers=2", "async_workers=2\nrespawn=no")
    with run_server(text, check_clean=True) as srv:
        victim = min(_pids(srv, "Async Task Worker - default"))
        os.kill(victim, signal.SIGKILL)
        assert srv.wait(5) == 1
    assert re.search(rf"child process {victim} \(Async Task Worker - default, rank -2\) terminated by "
                     r"signal 9 \(SIGKILL, perhaps out of memory\); stopping asyncd \(respawn=no\)",
                     srv.log())
