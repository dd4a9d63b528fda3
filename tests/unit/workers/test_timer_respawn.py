"""A timer process (workers/timer.py) killed with SIGKILL and started again
for the same feed and instance, as the supervisor respawns it: the new one
rebuilds every pending entry from shared memory and fires each once at its
original due time; entries that fell due meanwhile fire at once.

Runs in: the pytest process (the producer), plus timer processes made with
os.fork, reporting each entry they fire on a pipe (one write per line, so a
kill never tears one).
"""
import os
import signal
import time

import pytest

from asyncd.core import log
from asyncd.core.context import ProcState
from asyncd.core.procs import PROC_TIMER, RAN, ROLE_TIMER, ProcRow, TimerHandlers
from asyncd.ipc.timers import TimerFeed
from workers import timer as timer_loop

N = 20


class _Rig:
    """One feed, the timer processes started on it, and what they report."""

    def __init__(self, rundir):
        self.feed = TimerFeed("tw", 1, 1000, rundir=rundir)
        self.logpath = os.path.join(rundir, "log")
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        self.pids = []
        self.buf = b""

    def start(self, hold=False):
        """A timer process for consumer 0; `hold`: its "hold" handler takes
        the mailbox lock and never lets go."""
        pid = os.fork()
        if pid == 0:
            try:
                self._timer(hold)
            finally:
                os._exit(0)
        self.pids.append(pid)
        return pid

    def _timer(self, hold):
        os.close(self.r)
        proc = ProcState(role=ROLE_TIMER)
        signal.signal(signal.SIGTERM, lambda *a: setattr(proc, "stopping", True))
        log.state.out = open(self.logpath, "a")
        log.state.level = log.L_NOTICE
        feed, w = self.feed, self.w

        def on_due(p, e):
            kind, due, tag = e
            os.write(w, f"{tag} {time.monotonic() - due:.6f} {os.getpid()}\n".encode())
            if kind == "hold" and hold:
                feed.boxes[0].locks.acquire(0)
                time.sleep(60)
            return RAN

        row = ProcRow(ROLE_TIMER, "test timer", PROC_TIMER, 1,
                      TimerHandlers(feed, {"t": on_due, "hold": on_due}))
        timer_loop.run(proc, row, 0)

    def kill(self, pid):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        self.pids.remove(pid)

    def arm(self, delays, kind="t", t0=None):
        t0 = time.monotonic() if t0 is None else t0
        for tag, d in delays.items():
            assert self.feed.arm([[kind, t0 + d, tag]]) == 0

    def reports(self, n, timeout=3.0):
        """n fired entries: [(tag, late, pid)]."""
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            try:
                self.buf += os.read(self.r, 4096)
            except BlockingIOError:
                time.sleep(0.002)
            *lines, self.buf = self.buf.split(b"\n")
            for ln in lines:
                tag, late, pid = ln.split()
                out.append((tag.decode(), float(late), int(pid)))
        return out

    def log_text(self):
        with open(self.logpath) as f:
            return f.read()

    def close(self):
        for pid in self.pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(self.r)
        os.close(self.w)


@pytest.fixture
def rig(rundir):
    r = _Rig(rundir)
    yield r
    r.close()


def _delays(base):
    return {f"e{k}": base + k * 0.015 for k in range(N)}


def _assert_each_once_on_time(got, pid, tags):
    assert sorted(t for t, _, _ in got) == sorted(tags), got
    assert all(p == pid for _, _, p in got), got
    late = [x for _, x, _ in got]
    assert all(0 <= x < 0.02 for x in late), late


def test_killed_idle_timer_is_replaced_and_fires_every_entry_on_time(rig):
    a = rig.start()
    rig.arm(_delays(0.5))
    time.sleep(0.2)                     # A took them all and sleeps until the first
    assert rig.feed.boxes[0].waiting() == 0
    rig.kill(a)
    b = rig.start()
    _assert_each_once_on_time(rig.reports(N), b, _delays(0))
    assert rig.reports(1, timeout=0.2) == []           # nothing twice
    assert f"timer: recovered {N} pending entries of tw consumer 0" in rig.log_text()
    st = rig.feed.stats()
    assert st["accepted"] == st["run"] == N and st["pending"] == 0


def test_timer_killed_with_entries_left_in_its_mailbox(rig):
    a = rig.start()
    time.sleep(0.2)
    os.kill(a, signal.SIGSTOP)          # alive but not draining
    first = {f"m{k}": 0.5 + k * 0.01 for k in range(5)}
    rig.arm(first)
    assert rig.feed.boxes[0].waiting() == 5
    rig.kill(a)
    rig.arm(_delays(0.55))              # while no timer runs
    b = rig.start()
    _assert_each_once_on_time(rig.reports(N + 5), b, list(first) + list(_delays(0)))
    assert f"timer: recovered {N + 5} pending entries of tw consumer 0" in rig.log_text()
    assert rig.feed.stats()["pending"] == 0


def test_timer_killed_holding_the_mailbox_lock(rig):
    """Killed inside the mailbox lock (its handler took it): the new timer
    takes the lock over and rebuilds; the entry whose handler was cut short
    runs again (the documented repeat), every other entry once."""
    a = rig.start(hold=True)
    time.sleep(0.2)
    t0 = time.monotonic()
    rig.arm({"h": 0.05}, kind="hold", t0=t0)
    rig.arm(_delays(0.6), t0=t0)
    assert rig.reports(1)[0][:1] == ("h",)
    assert rig.feed.boxes[0].locks.owner(0) == a
    rig.kill(a)
    b = rig.start()
    got = rig.reports(N + 1)
    again = [g for g in got if g[0] == "h"]
    assert len(again) == 1 and again[0][2] == b        # overdue: fired at once by b
    _assert_each_once_on_time([g for g in got if g[0] != "h"], b, _delays(0))
    assert rig.feed.boxes[0].locks.owner(0) != a
    st = rig.feed.stats()
    assert st["accepted"] == N + 1 and st["run"] == N + 1 and st["pending"] == 0


def test_entries_due_while_no_timer_runs_fire_at_once(rig):
    a = rig.start()
    rig.arm({"o1": 0.3, "o2": 0.35})
    time.sleep(0.1)
    rig.kill(a)
    time.sleep(0.4)                     # both overdue now
    t0 = time.monotonic()
    b = rig.start()
    got = rig.reports(2)
    assert sorted(t for t, _, _ in got) == ["o1", "o2"] and all(p == b for _, _, p in got)
    assert time.monotonic() - t0 < 0.2


def test_wakeups_reach_the_replacement(rig):
    """Producers' ZeroMQ pushes reconnect to the new timer's endpoint: an
    entry due before the replacement's published wake-up still fires on
    time."""
    a = rig.start()
    time.sleep(0.2)
    rig.arm({"w1": 0.05})               # due before a's idle wake-up: sent a wake-up
    assert [g[0] for g in rig.reports(1)] == ["w1"]
    rig.kill(a)
    b = rig.start()
    time.sleep(0.3)                     # b idles: its published wake-up is POLL away
    rig.arm({"w2": 0.03})
    got = rig.reports(1)
    assert [g[:1] for g in got] == [("w2",)] and got[0][2] == b
    assert 0 <= got[0][1] < 0.02, got
