"""Idle-first dispatch (asyncd.ipc.dispatch) with real forked consumers: the
task waits in the consumer's shm inbox and ZeroMQ only wakes it, the awake
consumer takes frames from the shm ring without any ZeroMQ message, and a
consumer killed inside the dispatcher lock holds nobody up for long.

Runs in: the pytest process, plus forked consumer processes.
"""
import multiprocessing
import os
import signal
import time

from asyncd import ipc
from asyncd.ipc import codec
from asyncd.ipc.dispatch import HANDED, IDLE, MAX_FRAME, RUNNING, Dispatcher

FORK = multiprocessing.get_context("fork")


def _consumer(disp, idx, results, poll_ms=50):
    """The consumer protocol of workers/task_worker.py, reduced: wake-up or
    poll timeout -> claim -> run -> finish. Runs until killed."""
    sock = disp.bind(idx)
    try:
        frame = None
        while True:
            if frame is None:
                if sock.poll(poll_ms):
                    sock.recv()
                frame = disp.claim(idx)
                if frame is None:
                    continue
            item = codec.unpack(frame)
            time.sleep(item[1])
            results.put((item[2], idx, time.monotonic()))
            frame = disp.finish(idx, skipped=item[0] == "skip")
    finally:
        sock.close(0)
        ipc.close_all()


def _start(disp, n, **kw):
    q = FORK.Queue()
    procs = [FORK.Process(target=_consumer, args=(disp, i, q), kwargs=kw) for i in range(n)]
    for p in procs:
        p.start()
    return q, procs


def _stop(procs):
    for p in procs:
        p.kill()
        p.join()


def test_long_task_does_not_delay_queued_tasks(rundir):
    disp = Dispatcher("tq", 2, ring=64, rundir=rundir)
    q, procs = _start(disp, 2)
    try:
        time.sleep(0.2)          # consumers bound
        assert disp.push(codec.pack(["run", 1.0, "long"])) >= 0
        time.sleep(0.05)         # the long task is running in one worker
        t0 = time.monotonic()
        for k in range(20):
            assert disp.push(codec.pack(["run", 0.001, k])) >= 0
        done = [q.get(timeout=3) for _ in range(20)]
        elapsed = max(t for _, _, t in done) - t0
        assert {k for k, _, _ in done} == set(range(20))
        assert len({w for _, w, _ in done}) == 1      # all on the idle worker
        assert elapsed < 0.2, elapsed
        q.get(timeout=3)                               # the long one finishes too
        s = disp.stats()
        assert s["accepted"] == 21 and s["run"] == 21 and s["pending"] == 0
    finally:
        _stop(procs)


def test_full_nonblocking_refuses_at_once(rundir):
    # no consumer process: the first frame goes to consumer 0's inbox, two more fill the ring
    disp = Dispatcher("tf", 1, ring=2, nonblock=True, rundir=rundir)
    assert [disp.push(codec.pack(["run", 0, k])) for k in range(3)] == [0, 0, 0]
    assert disp.state(0) == HANDED
    t0 = time.monotonic()
    assert disp.push(codec.pack(["run", 0, "x"])) == -1
    assert time.monotonic() - t0 < 0.01
    st = disp.stats()
    assert st["rejected"] == 1 and st["accepted"] == 3 and st["pending"] == 3


def test_full_blocking_waits_bounded_then_refuses(rundir):
    disp = Dispatcher("tb", 1, ring=1, nonblock=False, block_wait=0.3, rundir=rundir)
    assert disp.push(codec.pack(["run", 0, "a"])) == 0      # consumer 0 busy
    assert disp.push(codec.pack(["run", 0, "b"])) == 0      # the ring's one slot
    t0 = time.monotonic()
    assert disp.push(codec.pack(["run", 0, "c"])) == -1
    assert 0.28 <= time.monotonic() - t0 < 0.6
    assert disp.stats()["rejected"] == 1


def test_blocking_producer_gets_room_when_worker_finishes(rundir):
    disp = Dispatcher("tw", 1, ring=1, nonblock=False, block_wait=2.0, rundir=rundir)
    q, procs = _start(disp, 1)
    try:
        time.sleep(0.2)
        assert disp.push(codec.pack(["run", 0.3, "a"])) == 0     # runs
        assert disp.push(codec.pack(["run", 0.0, "b"])) == 0     # waits in the backlog
        t0 = time.monotonic()
        assert disp.push(codec.pack(["run", 0.0, "c"])) == 0     # waits ~0.3 s for room
        assert 0.2 < time.monotonic() - t0 < 1.0
        assert [q.get(timeout=3)[0] for _ in range(3)] == ["a", "b", "c"]
    finally:
        _stop(procs)


def test_skipped_items_are_counted(rundir):
    disp = Dispatcher("ts", 1, ring=8, rundir=rundir)
    q, procs = _start(disp, 1)
    try:
        time.sleep(0.2)
        disp.push(codec.pack(["skip", 0.0, 1]))
        disp.push(codec.pack(["run", 0.0, 2]))
        q.get(timeout=3), q.get(timeout=3)
        time.sleep(0.05)
        s = disp.stats()
        assert s == {"accepted": 2, "rejected": 0, "run": 1, "skipped": 1, "pending": 0}
    finally:
        _stop(procs)


def test_frame_larger_than_a_slot_is_refused_and_counted(rundir):
    disp = Dispatcher("to", 1, ring=3, nonblock=True, rundir=rundir)
    q, procs = _start(disp, 1)
    try:
        time.sleep(0.2)
        too_big = b"x" * (MAX_FRAME + 1)
        assert disp.push(too_big) == -1
        assert disp.why_refused(too_big).startswith("task too big")
        s = disp.stats()
        assert s["accepted"] == 0 and s["rejected"] == 1 and s["pending"] == 0
        # the old 1 KiB ring slots sent big frames around the ring; now they fit
        big = codec.pack(["run", 0.0, "y" * 60000])
        assert [disp.push(big) for _ in range(3)] == [0, 0, 0]
        got = [q.get(timeout=3) for _ in range(3)]
        assert all(k == "y" * 60000 for k, _, _ in got)
        time.sleep(0.05)
        s = disp.stats()
        assert s["accepted"] == s["run"] == 3 and s["pending"] == 0
    finally:
        _stop(procs)


def test_lost_wakeup_costs_one_poll_interval(rundir):
    """The frame waits in the inbox, not in the ZeroMQ pipe: a consumer whose
    wake-up never came claims it at its next poll timeout."""
    disp = Dispatcher("tl", 1, ring=4, rundir=rundir)
    q, procs = _start(disp, 1, poll_ms=50)
    try:
        time.sleep(0.2)
        disp._wake = lambda i: None            # this producer's wake-ups are lost
        t0 = time.monotonic()
        assert disp.push(codec.pack(["run", 0.0, "quiet"])) == 0
        key, _, t = q.get(timeout=3)
        assert key == "quiet" and t - t0 < 0.2, t - t0
    finally:
        _stop(procs)


def test_offer_goes_to_an_idle_worker_or_is_refused(rundir):
    """offer() (the ms timer's early hand-off) never queues behind busy workers:
    it hands the frame to an idle consumer or returns False with nothing counted."""
    disp = Dispatcher("of", 2, nonblock=True, rundir=rundir, ring=8)
    q, procs = _start(disp, 2)
    try:
        time.sleep(0.2)
        assert disp.offer(codec.pack(["run", 0.3, "a"]))
        assert disp.offer(codec.pack(["run", 0.3, "b"]))
        t_busy = time.monotonic()
        assert not disp.offer(codec.pack(["run", 0.0, "c"]))     # both busy: refused
        assert disp.stats()["accepted"] == 2 and disp.outstanding() == 2
        assert not disp.offer(b"x" * (MAX_FRAME + 1))             # too big for a slot
        got = sorted((q.get(timeout=3) for _ in range(2)), key=lambda g: g[0])
        assert [g[0] for g in got] == ["a", "b"] and {g[1] for g in got} == {0, 1}
        assert all(g[2] - t_busy < 0.5 for g in got)
        time.sleep(0.05)
        assert disp.offer(codec.pack(["run", 0.0, "d"]))          # idle again: taken
        assert q.get(timeout=3)[0] == "d"
        time.sleep(0.05)
        st = disp.stats()
        assert st["accepted"] == st["run"] == 3 and st["pending"] == 0
    finally:
        _stop(procs)


def _spinning_consumer(disp, results):
    """Consumer 0: sleeps on ZeroMQ until the first item, then stays awake."""
    sock = disp.bind(0)
    try:
        frame = None
        end = time.monotonic() + 5
        while time.monotonic() < end:
            if frame is None:
                if not sock.poll(100):
                    continue
                sock.recv()
                frame = disp.claim(0)
                if frame is None:
                    continue
            item = codec.unpack(frame)
            results.put((item[1], "zmq" if item[2] == "first" else "?"))
            frame = disp.finish(0)
            while frame is None and time.monotonic() < end:
                frame = disp.stay_awake(0, 0.05)
                if frame is None and sock.poll(0):
                    break
            if frame is not None:
                item = codec.unpack(frame)
                results.put((item[1], "ring"))
                frame = disp.finish(0)
            if item[1] == "last":
                return
    finally:
        sock.close(0)
        ipc.close_all()


def test_awake_consumer_takes_frames_from_the_ring(rundir):
    disp = Dispatcher("tw", 1, ring=16, rundir=rundir)
    q = FORK.Queue()
    p = FORK.Process(target=_spinning_consumer, args=(disp, q))
    p.start()
    try:
        time.sleep(0.2)                        # bound
        assert disp.push(codec.pack(["run", "a", "first"])) == 0
        assert q.get(timeout=3) == ("a", "zmq")
        deadline = time.monotonic() + 2
        while not disp.aw[0] and time.monotonic() < deadline:
            time.sleep(0.001)
        assert disp.aw[0] == 1                 # idle and awake
        assert disp.push(codec.pack(["run", "last", "second"])) == 0
        # handed over in shm: no frame on the consumer's ZeroMQ pipe for it
        assert q.get(timeout=3) == ("last", "ring")
        p.join(3)
        st = disp.stats()
        assert st["accepted"] == 2 and st["run"] == 2 and st["pending"] == 0
    finally:
        if p.is_alive():
            p.terminate()
        p.join(3)


def _awake_consumer(disp, idx, results, awake_for):
    """Consumer idx stays awake (its semaphore) for `awake_for` s at a time and
    reports (tag, idx, when it got the frame, its ZeroMQ pipe had a wake-up)."""
    sock = disp.bind(idx)
    try:
        while True:
            frame = disp.stay_awake(idx, awake_for)
            if frame is None:
                continue
            item = codec.unpack(frame)
            results.put((item[2], idx, time.monotonic(), bool(sock.poll(0))))
            time.sleep(item[1])
            assert disp.finish(idx) is None
    finally:
        sock.close(0)
        ipc.close_all()


def test_an_awake_consumer_is_posted_at_once_and_each_frame_gets_its_own(rundir):
    """Awake consumers wait on their semaphores, not in naps: a frame pushed
    while both are awake (for 2 s) starts within milliseconds, two frames
    pushed back to back start in two consumers (each posted once), and no
    ZeroMQ wake-up is sent for any of them."""
    disp = Dispatcher("ta", 2, ring=16, rundir=rundir)
    q = FORK.Queue()
    procs = [FORK.Process(target=_awake_consumer, args=(disp, i, q, 2.0)) for i in range(2)]
    for p in procs:
        p.start()
    try:
        deadline = time.monotonic() + 3
        while not (disp.aw[0] and disp.aw[1]) and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)                        # both waiting on their semaphores
        t0 = time.monotonic()
        assert disp.push(codec.pack(["run", 0.0, "one"])) == 0
        tag, _idx, t, zmq_woken = q.get(timeout=3)
        # posted: within scheduling latency, far below the 2 s it would otherwise wait
        assert tag == "one" and t - t0 < 0.1 and not zmq_woken, (t - t0, zmq_woken)
        time.sleep(0.05)
        t0 = time.monotonic()
        assert disp.push(codec.pack(["run", 0.2, "a"])) == 0
        assert disp.push(codec.pack(["run", 0.2, "b"])) == 0
        got = [q.get(timeout=3) for _ in range(2)]
        assert sorted(g[0] for g in got) == ["a", "b"]
        assert {g[1] for g in got} == {0, 1}, got           # one each, not both to one
        assert all(g[2] - t0 < 0.15 and not g[3] for g in got), got
        time.sleep(0.3)
        st = disp.stats()
        assert st["accepted"] == 3 and st["run"] == 3 and st["pending"] == 0
    finally:
        _stop(procs)


def _die_holding_the_lock(disp, ready_w):
    """A consumer killed in the middle of a queue update: lock held, the
    journal armed, one word of two changed."""
    disp._acquire()
    disp._begin(0, 5)
    disp.c[0] += 1                      # "accepted" moved, the ring tail not yet
    os.write(ready_w, b"x")
    time.sleep(60)


def test_consumer_killed_inside_the_lock_holds_nobody_up(rundir):
    disp = Dispatcher("tk", 2, ring=8, rundir=rundir)
    q = FORK.Queue()
    live = FORK.Process(target=_consumer, args=(disp, 0, q))
    live.start()
    r, w = os.pipe()
    dying = FORK.Process(target=_die_holding_the_lock, args=(disp, w))
    dying.start()
    try:
        time.sleep(0.2)
        assert os.read(r, 1) == b"x"
        os.kill(dying.pid, signal.SIGKILL)
        t0 = time.monotonic()
        assert disp.push(codec.pack(["run", 0.0, "after"])) == 0
        took = time.monotonic() - t0
        assert took < 0.25, took        # the robust lock: taken over after ~50 ms
        key, idx, t = q.get(timeout=3)
        assert (key, idx) == ("after", 0) and t - t0 < 0.3
        time.sleep(0.05)
        # the half-done update was rolled back: every count exact
        s = disp.stats()
        assert s == {"accepted": 1, "rejected": 0, "run": 1, "skipped": 0, "pending": 0}
        assert disp.state(1) == IDLE
        assert disp._lock.takeovers(0) == 1
    finally:
        _stop([live, dying])
        os.close(r)
        os.close(w)


def test_recover_reports_the_inbox_of_a_dead_consumer(rundir):
    """recover(): handed (never started) comes back as a task to run, running
    as one to abandon; both leave the consumer running until finish()."""
    disp = Dispatcher("tr", 1, ring=4, rundir=rundir)
    assert disp.recover(0) == (IDLE, None)
    assert disp.push(codec.pack(["run", 0, "h"])) == 0
    disp.aw[0] = 1                      # it died awake
    state, frame = disp.recover(0)
    assert state == HANDED and codec.unpack(frame)[2] == "h" and disp.aw[0] == 0
    assert disp.state(0) == RUNNING
    assert disp.recover(0)[0] == RUNNING            # died again, while running it
    assert disp.finish(0, skipped=True) is None
    s = disp.stats()
    assert s["accepted"] == 1 and s["skipped"] == 1 and s["pending"] == 0
