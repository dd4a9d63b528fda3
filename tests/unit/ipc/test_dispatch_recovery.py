"""A task worker killed with SIGKILL loses no task (docs/kamailio-async.md
§10.7): its replacement (same index) runs the task that was handed to it but
not started, abandons the one it was running (the kind's abandon handler,
never a second run), and the backlog goes to the other workers meanwhile.

Runs in: the pytest process, plus forked workers running the real loop
(workers/task_worker.py run) on a real Dispatcher.
"""
import ast
import multiprocessing
import os
import select
import signal
import time
from types import SimpleNamespace

import pytest

from asyncd.core import log
from asyncd.core.context import ProcState
from asyncd.ipc import async_task, codec
from asyncd.ipc.dispatch import Dispatcher
from workers import task_worker

FORK = multiprocessing.get_context("fork")
KIND = "t-recovery"
_events = None          # the Events the handlers report to (set before each fork)


class Events:
    """Workers' reports over a pipe, one write() each (atomic below PIPE_BUF):
    unlike multiprocessing.Queue, no lock a killed writer could keep."""

    def __init__(self):
        self.r, self.w = os.pipe()
        self.buf = b""

    def put(self, ev):
        os.write(self.w, repr(ev).encode() + b"\n")

    def get(self, timeout):
        while b"\n" not in self.buf:
            if not select.select([self.r], [], [], timeout)[0]:
                raise TimeoutError
            self.buf += os.read(self.r, 65536)
        line, self.buf = self.buf.split(b"\n", 1)
        return ast.literal_eval(line.decode())

    def close(self):
        os.close(self.r)
        os.close(self.w)


def _run(proc, item):
    _, secs, key = item
    _events.put(("start", key, proc.widx))
    if key == "grab-lock":
        proc.disp._acquire()                # and die holding it
        _events.put(("locked", key, proc.widx))
        time.sleep(60)
    time.sleep(secs)
    _events.put(("done", key, proc.widx))
    return True


def _abandon(proc, item):
    _events.put(("abandon", item[2], proc.widx))
    return False


@pytest.fixture
def rig(rundir):
    """Two workers of group "tg", their events, and a way to (re)start one."""
    global _events
    async_task.register_handler(KIND, _run, abandon=_abandon)
    _events = Events()
    disp = Dispatcher("rc", 2, ring=16, rundir=rundir)
    group = SimpleNamespace(name="tg", handlers={KIND: _run}, usleep=0, disp=disp)
    procs = {}

    def start(widx):
        logfile = os.path.join(rundir, f"worker-{widx}-{len(procs)}.log")
        p = FORK.Process(target=_worker, args=(group, widx, logfile))
        p.start()
        procs[p.pid] = (p, logfile)
        return p

    r = SimpleNamespace(disp=disp, start=start, events=_events, procs=procs)
    yield r
    for p, _ in procs.values():
        p.kill()
        p.join()
    _events.close()
    async_task.HANDLERS.pop(KIND, None)
    async_task.ABANDON.pop(KIND, None)


def _worker(group, widx, logfile):
    log.state.out = open(logfile, "a")
    log.configure(level=log.L_INFO, to_stderr=True)     # whatever an earlier test set
    proc = ProcState(None, -2, f"Async Task Worker - {group.name}", "task_worker")
    proc.widx = widx
    proc.disp = group.disp
    task_worker.run(proc, SimpleNamespace(handlers=group), widx)


def _push(disp, secs, key):
    assert disp.push(codec.pack([KIND, secs, key])) == 0


def _kill(p):
    os.kill(p.pid, signal.SIGKILL)
    p.join()


def _wait(events, want, timeout=3.0):
    """Events until `want` (a tuple) arrives; fails on timeout."""
    got = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            ev = events.get(timeout=max(0.01, end - time.monotonic()))
        except TimeoutError:
            break
        got.append(ev)
        if ev == want:
            return got
    raise AssertionError(f"{want} not seen; got {got}")


def _drain(events, secs):
    out = []
    end = time.monotonic() + secs
    while time.monotonic() < end:
        try:
            out.append(events.get(timeout=0.02))
        except TimeoutError:
            pass
    return out


def _logs(r):
    text = ""
    for _, path in r.procs.values():
        with open(path) as f:
            text += f.read()
    return text


def _settle(disp, want_pending=0, timeout=1.0):
    end = time.monotonic() + timeout
    while disp.stats()["pending"] != want_pending and time.monotonic() < end:
        time.sleep(0.01)
    return disp.stats()


def test_worker_killed_idle_is_replaced_without_loss(rig):
    w0 = rig.start(0)
    rig.start(1)
    time.sleep(0.3)
    _kill(w0)
    for k in range(4):          # the first goes to dead 0's inbox (round robin), the rest to 1
        _push(rig.disp, 0.0, f"q{k}")
    time.sleep(0.2)
    rig.start(0)
    seen = _drain(rig.events, 0.6)
    done = sorted(key for ev, key, _ in seen if ev == "done")
    assert done == ["q0", "q1", "q2", "q3"], seen
    s = _settle(rig.disp)
    assert s == {"accepted": 4, "rejected": 0, "run": 4, "skipped": 0, "pending": 0}


def test_handed_task_of_a_dead_worker_runs_exactly_once(rig):
    w0 = rig.start(0)
    rig.start(1)
    time.sleep(0.3)
    os.kill(w0.pid, signal.SIGSTOP)           # idle in shm, but never looks at its inbox
    _push(rig.disp, 0.0, "handed")            # round robin: worker 0's inbox, a wake-up it never reads
    _kill(w0)
    _push(rig.disp, 0.3, "long")              # worker 1
    for k in range(3):
        _push(rig.disp, 0.0, f"b{k}")         # everyone busy: the ring
    seen = _wait(rig.events, ("done", "b2", 1))
    assert [k for ev, k, _ in seen if ev == "start"] == ["long", "b0", "b1", "b2"]
    assert rig.disp.stats()["pending"] == 1   # the handed one, waiting for a replacement
    rig.start(0)
    seen = _wait(rig.events, ("done", "handed", 0))
    seen += _drain(rig.events, 0.3)
    assert [ev for ev, k, _ in seen if k == "handed"] == ["start", "done"]
    s = _settle(rig.disp)
    assert s == {"accepted": 5, "rejected": 0, "run": 5, "skipped": 0, "pending": 0}
    assert "async worker [tg] 0: took over 1 queued task(s) of the dead worker" in _logs(rig)


def test_running_task_of_a_dead_worker_is_abandoned_not_rerun(rig):
    w0 = rig.start(0)
    rig.start(1)
    time.sleep(0.3)
    _push(rig.disp, 30.0, "long")             # worker 0 (round robin starts there)
    _wait(rig.events, ("start", "long", 0))
    _kill(w0)
    _push(rig.disp, 0.0, "other")             # the idle worker 1 takes it meanwhile
    _wait(rig.events, ("done", "other", 1))
    rig.start(0)
    seen = _wait(rig.events, ("abandon", "long", 0))
    seen += _drain(rig.events, 0.4)
    assert [ev for ev, k, _ in seen if k == "long"] == ["abandon"], seen
    s = _settle(rig.disp)
    assert s == {"accepted": 2, "rejected": 0, "run": 1, "skipped": 1, "pending": 0}
    text = _logs(rig)
    assert ("async worker [tg] 0: took over 0 queued task(s) of the dead worker; "
            f"abandoned the running one ({KIND} 30.0 long)") in text, text
    _push(rig.disp, 0.0, "next")              # the replacement works as any worker
    _push(rig.disp, 0.0, "next2")
    done = {k for ev, k, _ in _drain(rig.events, 0.4) if ev == "done"}
    assert done == {"next", "next2"}


def test_worker_killed_holding_the_lock_holds_nobody_up(rig):
    """Worker 0 dies inside the dispatcher lock (its task takes the lock and
    never lets go); producers and worker 1 go on after the takeover (~50 ms),
    and the replacement abandons the task that died."""
    w0 = rig.start(0)
    rig.start(1)
    time.sleep(0.3)
    _push(rig.disp, 0.0, "grab-lock")          # worker 0
    _wait(rig.events, ("locked", "grab-lock", 0))
    _kill(w0)
    t0 = time.monotonic()
    _push(rig.disp, 0.0, "after")
    pushed = time.monotonic() - t0
    _wait(rig.events, ("done", "after", 1))
    took = time.monotonic() - t0
    assert pushed < 0.2 and took < 0.3, (pushed, took)
    rig.start(0)
    _wait(rig.events, ("abandon", "grab-lock", 0))
    s = _settle(rig.disp)
    assert s == {"accepted": 2, "rejected": 0, "run": 1, "skipped": 1, "pending": 0}
