"""asyncd/ipc/delay_ring.py: a FIFO of same-delay timer entries in shm."""
import os
import time

import pytest

from asyncd.ipc.delay_ring import DelayRing

pytestmark = pytest.mark.unit


def test_entries_leave_in_order_when_due_with_their_fields():
    r = DelayRing("t", 4, 8)
    assert r.next_due() is None
    assert r.put(10.0, 1, 11, 0) and r.put(10.5, 2, 22, 3) and r.put(11.0, 3, 33, 0)
    assert r.next_due() == 10.0
    got = []
    assert r.pop_due(10.6, lambda e: got.append(e)) == 2
    assert got == [[4, 10.0, 1, 11, 0, 0], [4, 10.5, 2, 22, 3, 0]]
    assert r.next_due() == 11.0
    assert r.stats() == {"accepted": 3, "rejected": 0, "run": 2, "skipped": 0, "pending": 1}


def test_an_entry_due_before_the_tail_takes_the_tails_due_time_never_earlier():
    r = DelayRing("t", 4, 8)
    r.put(5.0, 1, 1)
    r.put(4.0, 2, 2)          # armed "earlier" but queued later: it waits for its predecessor
    got = []
    r.pop_due(4.5, got.append)
    assert got == []
    r.pop_due(5.0, got.append)
    assert [e[1] for e in got] == [5.0, 5.0]


def test_a_full_ring_refuses_and_counts_then_takes_again_once_drained():
    r = DelayRing("t", 4, 2)
    assert r.put(1.0, 1, 1) and r.put(1.0, 2, 2)
    assert not r.put(1.0, 3, 3)
    assert r.stats()["rejected"] == 1
    r.pop_due(2.0, lambda e: True)                 # True: skipped
    assert r.stats()["skipped"] == 2
    assert r.put(3.0, 4, 4)                        # the slots wrap around
    got = []
    r.pop_due(3.0, got.append)
    assert got == [[4, 3.0, 4, 4, 0, 0]]


def test_the_ring_is_shared_across_fork_producer_in_the_child():
    r = DelayRing("t", 4, 64)
    pid = os.fork()
    if pid == 0:          # the producer
        ok = all(r.put(time.monotonic() + 0.01, i, i) for i in range(20))
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    got = []
    time.sleep(0.02)
    assert r.pop_due(time.monotonic(), got.append) == 20
    assert [e[2] for e in got] == list(range(20))


def test_a_consumer_that_dies_mid_batch_leaves_the_unfinished_entry_for_its_successor():
    r = DelayRing("t", 4, 8)
    for i in range(3):
        r.put(1.0, i, i)
    pid = os.fork()
    if pid == 0:          # runs entry 0, dies inside entry 1's handler
        def run(e):
            if e[2] == 1:
                os._exit(0)
        r.pop_due(2.0, run)
        os._exit(1)
    os.waitpid(pid, 0)
    got = []
    r.pop_due(2.0, got.append)
    assert [e[2] for e in got] == [1, 2]          # entry 1 runs again (handlers are idempotent)
