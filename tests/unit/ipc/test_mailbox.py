"""The timer service's shared-memory mailbox (asyncd.ipc.mailbox): what
spares producers a ZeroMQ send, counts every entry it was given, and
refuses (counted) what it cannot hold instead of sending it another way.

Runs in: the pytest process, plus forked producer processes.
"""
import multiprocessing
import time

from asyncd.ipc.journal import Journal
from asyncd.ipc.mailbox import FRAME_MAX, FULL, MAX_COUNT, STORED, STORED_WAKE, Mailbox

FORK = multiprocessing.get_context("fork")


def _frames(journal):
    return [frame for _, frame, _ in journal.take()]


def test_mailbox_wakes_only_for_items_due_before_the_published_wake():
    mb = Mailbox(4)
    jr = Journal(mb, 16)
    # nobody published yet: the consumer has not slept, it drains first
    assert mb.put(b"a", 100.0) == STORED
    assert _frames(jr) == [b"a"]
    assert mb.publish(50.0) is False          # nothing arrived meanwhile
    assert mb.put(b"later", 60.0) == STORED   # the consumer is up before it is due
    assert mb.put(b"sooner", 40.0) == STORED_WAKE
    assert mb.publish(10.0) is True           # frames waiting: drain, do not sleep
    assert _frames(jr) == [b"later", b"sooner"]
    mb.awake()                                # running: nobody needs to wake it
    assert mb.put(b"x", 0.0) == STORED
    assert _frames(jr) == [b"x"]


def test_mailbox_refuses_and_counts_what_it_cannot_hold():
    mb = Mailbox(2)
    jr = Journal(mb, 16)
    assert mb.put(b"x" * (FRAME_MAX + 1), 1.0) == FULL           # too big for a journal slot
    assert mb.put(b"x", 1.0, count=MAX_COUNT + 1) == FULL         # more entries than mask bits
    assert mb.put(b"1", 1.0) in (STORED, STORED_WAKE)
    assert mb.put(b"2", 1.0) in (STORED, STORED_WAKE)
    assert mb.put(b"3", 1.0) == FULL                             # no room: refused, not sent elsewhere
    assert mb.put_all((b"4", b"5"), (1, 1), 1.0) == FULL          # all or none
    assert _frames(jr) == [b"1", b"2"]
    assert mb.put(b"4", 1.0) in (STORED, STORED_WAKE)            # ring wraps
    assert _frames(jr) == [b"4"]
    assert mb.stats() == {"accepted": 3, "rejected": 4, "run": 0, "skipped": 0, "pending": 3}


def test_mailbox_counts_entries_and_refuses_over_its_cap():
    mb = Mailbox(8)
    jr = Journal(mb, 4)
    assert mb.put(b"abc", 1.0, count=3, cap=4) == STORED       # one frame, three entries
    assert mb.put(b"de", 1.0, count=2, cap=4) == FULL           # would make 5 pending
    assert mb.put(b"d", 1.0, count=1, cap=4) != FULL            # 4 pending now
    assert mb.put(b"e", 1.0, count=1, cap=4) == FULL            # at the cap: refused, counted
    (s0, _, m0), (s1, _, m1) = jr.take()
    assert (m0, m1) == (0b111, 0b1)
    for j in range(3):
        jr.finish(s0, j)
    jr.finish(s1, 0, skipped=True)
    assert mb.stats() == {"accepted": 4, "rejected": 2, "run": 3, "skipped": 1, "pending": 0}
    assert mb.put(b"e", 1.0, count=1, cap=4) != FULL            # room again
    assert jr.live() == 0 and sorted(jr.free) == [s0, s1]       # both slots back


def _putter(mb, base, n):
    for k in range(n):
        while mb.put(b"%d" % (base + k), 1e18, cap=32) == FULL:
            time.sleep(0.0005)


def test_mailbox_loses_nothing_with_concurrent_producers():
    mb = Mailbox(64)
    jr = Journal(mb, 32)
    mb.publish(1e18)
    procs = [FORK.Process(target=_putter, args=(mb, p * 10000, 2000)) for p in range(3)]
    for p in procs:
        p.start()
    got = []
    deadline = time.monotonic() + 20
    while len(got) < 6000 and time.monotonic() < deadline:
        for s, f, _ in jr.take():
            got.append(int(f))
            jr.finish(s, 0)
        time.sleep(0.0002)
    for p in procs:
        p.join(5)
    assert sorted(got) == sorted(p * 10000 + k for p in range(3) for k in range(2000))
    assert mb.stats()["pending"] == 0
