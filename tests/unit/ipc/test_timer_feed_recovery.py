"""A timer feed consumer killed with SIGKILL at any instant is replaced by one
that rebuilds exactly the pending entries from shared memory (the mailbox
and the journal, asyncd/ipc/mailbox.py and journal.py): nothing lost,
nothing twice, the counts exact; and a full feed refuses, counted.

Runs in: the pytest process (a producer, then the replacement consumer),
plus consumers and producers made with os.fork and killed with SIGKILL.
"""
import os
import signal
import sys
import time

import pytest

from asyncd.ipc import codec, journal, mailbox
from asyncd.ipc.timers import TimerFeed


def _fork(fn):
    """Run fn in a child; the child never returns into pytest."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn()
            code = 0
        finally:
            os._exit(code)
    return pid


def _wait_ready(r):
    assert os.read(r, 1) == b"!"
    os.close(r)


def _kill(pid):
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def _arm(feed, tags, due=1e9, per_frame=1):
    for k in range(0, len(tags), per_frame):
        assert feed.arm([["t", due, tag] for tag in tags[k:k + per_frame]]) == 0


def _tags(items):
    """The pending entries' tags from [(slot, frame, mask)]."""
    out = []
    for _, frame, mask in items:
        entries = codec.unpack(frame)
        out += [entries[j][2] for j in range(len(entries)) if mask >> j & 1]
    return out


def _replace(feed):
    """Play the replacement consumer: what it rebuilds (journal, then mailbox)."""
    items, restarted = feed.recover(0)
    return _tags(items) + _tags(feed.take(0)), restarted


def _assert_exact(feed, tags):
    st = feed.stats()
    assert st["accepted"] == st["run"] + st["skipped"] + st["pending"]
    assert st["pending"] == len(tags) == feed.journals[0].live()


@pytest.fixture
def feed(rundir):
    return TimerFeed("tr", 1, 64, slots=16, rundir=rundir)


def test_idle_consumer_killed_with_entries_taken(feed):
    r, w = os.pipe()
    _arm(feed, list(range(10)), per_frame=2)

    def consumer():
        feed.recover(0)
        assert len(_tags(feed.take(0))) == 10      # all in its heap now
        os.write(w, b"!")
        time.sleep(60)

    pid = _fork(consumer)
    _wait_ready(r)
    _kill(pid)
    assert feed.boxes[0].waiting() == 0             # the mailbox is empty: the journal holds them
    tags, restarted = _replace(feed)
    assert restarted and sorted(tags) == list(range(10))
    _assert_exact(feed, tags)


def test_consumer_killed_with_frames_left_in_the_mailbox(feed):
    r, w = os.pipe()
    _arm(feed, ["a", "b", "c"])

    def consumer():
        feed.recover(0)
        feed.take(0)
        os.write(w, b"!")
        time.sleep(60)                  # never drains again

    pid = _fork(consumer)
    _wait_ready(r)
    _arm(feed, ["d", "e"], per_frame=2)
    _kill(pid)
    assert feed.boxes[0].waiting() == 1
    tags, _ = _replace(feed)
    assert sorted(tags) == ["a", "b", "c", "d", "e"]
    _assert_exact(feed, tags)


def test_process_killed_holding_the_mailbox_lock(feed):
    """A process dies inside the mailbox's lock: producers and the
    replacement consumer take it over (~50 ms), nothing is lost."""
    r, w = os.pipe()
    _arm(feed, [1, 2])

    def holder():
        feed.recover(0)
        feed.take(0)
        feed.boxes[0].locks.acquire(0)
        os.write(w, b"!")
        time.sleep(60)

    pid = _fork(holder)
    _wait_ready(r)
    _kill(pid)
    t0 = time.monotonic()
    _arm(feed, [3])                                 # waits for the takeover, then goes in
    assert 0.03 < time.monotonic() - t0 < 1.0
    assert feed.publish(0, 1e9) is True             # the lock works again
    tags, _ = _replace(feed)
    assert sorted(tags) == [1, 2, 3]
    _assert_exact(feed, tags)


class _KillAt:
    """sys.settrace hook: SIGKILL this process at the n-th line run in the
    feed's shared-memory code (mailbox.py, journal.py)."""

    FILES = {mailbox.__file__, journal.__file__}

    def __init__(self, n):
        self.left = n

    def __call__(self, frame, event, arg):
        if event == "call" and frame.f_code.co_filename in self.FILES:
            return self.line
        return None

    def line(self, frame, event, arg):
        if event == "line":
            self.left -= 1
            if self.left == 0:
                os.kill(os.getpid(), signal.SIGKILL)
        return self.line


def _killed_at(n, work):
    """Run work() in a child killed at its n-th line of feed code; True when
    it finished before that line came."""
    def child():
        sys.settrace(_KillAt(n))
        work()
        sys.settrace(None)

    pid = _fork(child)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return False
    assert os.WEXITSTATUS(status) == 0
    return True


def test_consumer_killed_at_every_line_loses_and_repeats_nothing(rundir):
    """The consumer takes frames (several per take, several entries per
    frame), retires entries (ran, skipped) and takes again; it is killed at
    each line of that in turn. The replacement holds exactly the entries not
    yet retired, and run/skipped count exactly the retired ones."""
    finish = [(0, False), (1, True), (4, False), (2, False)]     # (tag, skipped), in order

    for n in range(1, 10000):
        feed = TimerFeed("tk", 1, 32, slots=16, rundir=rundir)
        _arm(feed, [0, 1, 2], per_frame=3)
        _arm(feed, [3, 4, 5], per_frame=1)

        def work():
            feed.recover(0)
            where = {}
            for s, frame, mask in feed.take(0):
                for j, e in enumerate(codec.unpack(frame)):
                    where[e[2]] = (s, j)
            for tag, skipped in finish[:2]:
                feed.done(0, *where[tag], skipped=skipped)
            _arm(feed, [6, 7], per_frame=2)        # a re-arm from the timer itself
            for s, frame, mask in feed.take(0):
                for j, e in enumerate(codec.unpack(frame)):
                    where[e[2]] = (s, j)
            for tag, skipped in finish[2:]:
                feed.done(0, *where[tag], skipped=skipped)

        whole = _killed_at(n, work)
        tags, _ = _replace(feed)
        st = feed.stats()
        assert st["accepted"] in (6, 8), (n, st)                  # the re-arm went in whole or not at all
        armed = set(range(st["accepted"]))
        retired = finish[:st["run"] + st["skipped"]]          # a prefix of `finish`, in order
        assert st["skipped"] == sum(sk for _, sk in retired), (n, st)
        assert sorted(tags) == sorted(armed - {t for t, _ in retired}), (n, tags, st)
        _assert_exact(feed, tags)
        if whole:
            assert sorted(tags) == [3, 5, 6, 7]
            break
    else:
        pytest.fail("the work never finished")


def test_producer_killed_at_every_line_of_put_counts_exactly(rundir):
    """A producer killed anywhere inside arm(): its frames are in or out as a
    whole, and counted exactly when in (the lock's next taker repairs)."""
    for n in range(1, 10000):
        feed = TimerFeed("tp", 1, 32, slots=16, rundir=rundir)
        whole = _killed_at(n, lambda: _arm(feed, ["x", "y", "z"], per_frame=3))
        _arm(feed, ["after"])                           # takes the lock over if it died inside
        tags, _ = _replace(feed)
        assert sorted(tags) in (["after"], ["after", "x", "y", "z"]), (n, tags)
        _assert_exact(feed, tags)
        if whole:
            break


def test_full_feed_refuses_with_minus_one_and_counts_it(rundir):
    feed = TimerFeed("tf", 1, 4, slots=16, rundir=rundir)
    assert feed.arm([["t", 1e9, 0], ["t", 1e9, 1], ["t", 1e9, 2]]) == 0
    assert feed.arm([["t", 1e9, 3], ["t", 1e9, 4]]) == -1          # 5 > cap 4: all refused
    assert feed.arm([["t", 1e9, 3]]) == 0
    assert feed.arm([["t", 1e9, 4]]) == -1
    assert feed.arm([["t", 1e9, "x" * 200]]) == -1                 # no frame holds it
    st = feed.stats()
    assert st["accepted"] == 4 and st["rejected"] == 3 and st["pending"] == 4


def test_long_arms_are_split_into_frames_all_or_none(rundir):
    feed = TimerFeed("ts", 1, 100, slots=8, rundir=rundir)
    big = [["t", 1e9, k, "y" * 30] for k in range(12)]      # 45 bytes each: 6 frames of 2
    assert feed.arm(big) == 0
    assert feed.boxes[0].waiting() == 6
    assert feed.arm(big) == -1                      # 6 more frames, 2 slots left: none goes in
    tags, _ = _replace(feed)
    assert sorted(tags) == list(range(12))
    assert feed.stats()["rejected"] == 1
    _assert_exact(feed, tags)
