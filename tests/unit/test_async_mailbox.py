"""The shared-memory feeds that spare producers a ZeroMQ send: tm's timer
mailbox (asyncd.ipc.mailbox) and the task dispatcher's awake consumers
(asyncd.ipc.dispatch.Dispatcher.spin).

Runs in: the pytest process, plus forked consumer processes.
"""
import multiprocessing
import time

from asyncd import ipc
from asyncd.ipc import codec
from asyncd.ipc.dispatch import Dispatcher
from asyncd.ipc.mailbox import Mailbox, STORED, STORED_WAKE, REFUSED

FORK = multiprocessing.get_context("fork")


def test_mailbox_wakes_only_for_items_due_before_the_published_wake():
    mb = Mailbox(4)
    # nobody published yet: the consumer has not slept, it drains first
    assert mb.put(b"a", 100.0) == STORED
    assert mb.take() == [b"a"]
    assert mb.publish(50.0) is False          # nothing arrived meanwhile
    assert mb.put(b"later", 60.0) == STORED   # the consumer is up before it is due
    assert mb.put(b"sooner", 40.0) == STORED_WAKE
    assert mb.publish(10.0) is True           # frames waiting: drain, do not sleep
    assert mb.take() == [b"later", b"sooner"]
    mb.awake()                                # running: nobody needs to wake it
    assert mb.put(b"x", 0.0) == STORED
    assert mb.take() == [b"x"]


def test_mailbox_refuses_what_it_cannot_hold():
    mb = Mailbox(2)
    assert mb.put(b"x" * (Mailbox.SLOT - 3), 1.0) == REFUSED     # too big for a slot
    assert mb.put(b"1", 1.0) != REFUSED
    assert mb.put(b"2", 1.0) != REFUSED
    assert mb.put(b"3", 1.0) == REFUSED                          # full
    assert mb.take() == [b"1", b"2"]
    assert mb.put(b"4", 1.0) != REFUSED                          # ring wraps
    assert mb.take() == [b"4"]


def _putter(mb, base, n):
    for k in range(n):
        while mb.put(b"%d" % (base + k), 1e18) == REFUSED:
            time.sleep(0.0005)


def test_mailbox_loses_nothing_with_concurrent_producers():
    mb = Mailbox(64)
    mb.publish(1e18)
    procs = [FORK.Process(target=_putter, args=(mb, p * 10000, 2000)) for p in range(3)]
    for p in procs:
        p.start()
    got = []
    deadline = time.monotonic() + 20
    while len(got) < 6000 and time.monotonic() < deadline:
        got.extend(int(f) for f in mb.take())
        time.sleep(0.0002)
    for p in procs:
        p.join(5)
    assert sorted(got) == sorted(p * 10000 + k for p in range(3) for k in range(2000))


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
                frame = sock.recv()
            item = codec.unpack(frame)
            results.put((item[1], "zmq" if item[2] == "first" else "?"))
            frame = disp.finish(0)
            while frame is None and time.monotonic() < end:
                frame = disp.spin(0, 0.05)
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
    disp = Dispatcher("tw", 1, 16, ring=16, rundir=rundir)
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
