"""Robust striped locks: mutual exclusion across forked processes, and
recovery when a holder is killed with SIGKILL.

Runs in: the pytest process and the processes it forks.
"""
import os
import signal
import struct
import time

from shm import locks
from shm.locks import LockSet
from shm_testutil import fork, kill_holder, wait_all

_Q = struct.Struct("<Q")


def test_mutual_exclusion_across_processes(arena):
    ls = LockSet(arena, 4, "t")
    off = arena.static_alloc(8)
    n = 20000

    def worker():
        buf = arena.buf
        for _ in range(n):
            ls.acquire(1)
            # a read-modify-write that loses updates without the lock
            v = _Q.unpack_from(buf, off)[0]
            _Q.pack_into(buf, off, v + 1)
            ls.release(1)

    res = wait_all([fork(worker) for _ in range(4)], 60)
    assert set(res.values()) == {0}
    assert _Q.unpack_from(arena.buf, off)[0] == 4 * n
    assert ls.owner(1) == 0


def test_dead_holder_is_taken_over_within_a_second(arena):
    recovered = []
    ls = LockSet(arena, 2, "t", on_recover=recovered.append)
    r, w = os.pipe()

    def holder():
        ls.acquire(0)
        os.write(w, b"x")
        time.sleep(60)

    pid = fork(holder)
    assert os.read(r, 1) == b"x"
    assert ls.owner(0) == pid
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    t0 = time.monotonic()
    ls.acquire(0)
    took = time.monotonic() - t0
    assert took < 1.0
    assert ls.owner(0) == os.getpid()
    assert recovered == [0]
    assert ls.takeovers(0) == 1
    ls.release(0)
    # the lock is a normal lock again afterwards
    assert ls.try_acquire(0)
    ls.release(0)
    os.close(r)
    os.close(w)


def test_holder_killed_before_writing_its_owner_word_is_taken_over(arena, monkeypatch):
    # the few bytecodes between taking the semaphore and writing the pid: the
    # owner word still says 0, so the waiter falls back on ZERO_OWNER_GRACE
    monkeypatch.setattr(locks, "ZERO_OWNER_GRACE", 0.3)
    ls = LockSet(arena, 1, "t")

    def take():
        assert ls._acq[0](False)         # acquire()'s first step, and no further

    kill_holder(take)
    assert ls.owner(0) == 0 and not ls.try_acquire(0)
    t0 = time.monotonic()
    ls.acquire(0)
    took = time.monotonic() - t0
    assert 0.3 <= took < 1.0
    assert ls.takeovers(0) == 1 and ls.owner(0) == os.getpid()
    ls.release(0)
    assert ls.try_acquire(0)
    ls.release(0)


def test_waiters_do_not_steal_from_a_live_holder(arena):
    ls = LockSet(arena, 1, "t")
    r, w = os.pipe()

    def holder():
        ls.acquire(0)
        os.write(w, b"x")
        time.sleep(0.6)
        ls.release(0)

    pid = fork(holder)
    os.read(r, 1)
    t0 = time.monotonic()
    ls.acquire(0)
    waited = time.monotonic() - t0
    ls.release(0)
    assert waited > 0.4
    assert ls.takeovers(0) == 0
    assert wait_all([pid], 5)[pid] == 0
    os.close(r)
    os.close(w)


def test_sequence_is_odd_while_held(arena):
    ls = LockSet(arena, 1, "t")
    so = ls.seq_off(0)
    s0 = struct.unpack_from("<I", arena.buf, so)[0]
    assert s0 % 2 == 0
    ls.acquire(0)
    assert struct.unpack_from("<I", arena.buf, so)[0] == s0 + 1
    ls.release(0)
    assert struct.unpack_from("<I", arena.buf, so)[0] == s0 + 2
