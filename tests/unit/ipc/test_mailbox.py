"""The timer service's shared-memory mailbox (asyncd.ipc.mailbox): what
spares producers a ZeroMQ send, and counts every entry it was given.

Runs in: the pytest process, plus forked producer processes.
"""
import multiprocessing
import time

from asyncd.ipc.mailbox import FULL, OVERFLOW, STORED, STORED_WAKE, Mailbox

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


def test_mailbox_hands_back_what_it_cannot_hold():
    mb = Mailbox(2)
    assert mb.put(b"x" * (Mailbox.SLOT - 3), 1.0) == OVERFLOW    # too big for a slot
    assert mb.put(b"1", 1.0) in (STORED, STORED_WAKE)
    assert mb.put(b"2", 1.0) in (STORED, STORED_WAKE)
    assert mb.put(b"3", 1.0) == OVERFLOW                         # no room: the caller sends it
    assert mb.take() == [b"1", b"2"]
    assert mb.put(b"4", 1.0) in (STORED, STORED_WAKE)            # ring wraps
    assert mb.take() == [b"4"]
    # every frame handed over was accepted (the OVERFLOW ones travel over ZeroMQ)
    assert mb.stats() == {"accepted": 5, "rejected": 0, "run": 0, "skipped": 0, "pending": 5}


def test_mailbox_counts_entries_and_refuses_over_its_cap():
    mb = Mailbox(8)
    assert mb.put(b"abc", 1.0, count=3, cap=4) == STORED       # one frame, three entries
    assert mb.put(b"d", 1.0, count=1, cap=4) != FULL             # 4 pending now
    assert mb.put(b"e", 1.0, count=1, cap=4) == FULL             # at the cap: refused, counted
    for _ in range(3):
        mb.done()
    mb.done(skipped=True)
    assert mb.stats() == {"accepted": 4, "rejected": 1, "run": 3, "skipped": 1, "pending": 0}
    assert mb.put(b"e", 1.0, count=1, cap=4) != FULL             # room again
    mb.unassign()                                                # e.g. its ZeroMQ send failed
    assert mb.stats()["rejected"] == 2 and mb.pending() == 0


def _putter(mb, base, n):
    for k in range(n):
        while mb.put(b"%d" % (base + k), 1e18, cap=32) == FULL:
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
        for f in mb.take():
            got.append(int(f))
            mb.done()
        time.sleep(0.0002)
    for p in procs:
        p.join(5)
    assert sorted(got) == sorted(p * 10000 + k for p in range(3) for k in range(2000))
