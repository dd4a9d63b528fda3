"""ShmHashTable: the (index, label) API tm builds on, value moves, full
arena, and consistency after a process is killed inside a bucket lock.

Runs in: the pytest process and the processes it forks.
"""
import os
import signal
import time

from shm import hashtable
from shm.hashtable import ShmHashTable
from shm.arena import ShmArena
from shm_testutil import fork, wait_all


def test_insert_get_find_update_delete(arena):
    t = ShmHashTable(arena, 64, name="t")
    idx, lbl = t.insert(b"call-1", b"req", ival=7, flags=3, expires=9)
    assert idx == t.index_of(b"call-1")
    assert t.get(idx, lbl) == (b"call-1", b"req", 7, 3, 9)
    assert t.find(b"call-1") == (idx, lbl, b"req", 7, 3, 9)
    assert t.find(b"nope") is None
    # grow the value past its slot: the entry moves, (index, label) stays valid
    big = b"x" * 5000
    assert t.update(idx, lbl, value=big, ival=8)
    assert t.get(idx, lbl) == (b"call-1", big, 8, 3, 9)
    assert t.update(idx, lbl, value=b"")
    assert t.get(idx, lbl)[1] == b""
    assert t.add_ival(idx, lbl, 5) == 13
    assert t.delete(idx, lbl)
    assert t.get(idx, lbl) is None
    assert not t.delete(idx, lbl)
    assert not t.update(idx, lbl, value=b"z")


def test_labels_never_repeat_in_a_bucket(arena):
    t = ShmHashTable(arena, 1, name="t")         # everything in one bucket
    seen = set()
    for i in range(200):
        idx, lbl = t.insert(b"k%d" % i, b"")
        assert (idx, lbl) not in seen
        seen.add((idx, lbl))
        if i % 2:
            t.delete(idx, lbl)
    # a stale handle of a deleted entry never matches a newer one
    assert t.get(0, 1) is None
    assert len(t.iter_bucket(0)) == 100
    assert t.bucket_count(0) == 100
    assert t.count() == 100


def test_change_flags_is_a_conditional_transition(arena):
    t = ShmHashTable(arena, 16, name="t")
    SUSP, CONT = 1 << 15, 1 << 12
    h = t.insert(b"k", flags=SUSP)
    assert t.change_flags(*h, set_mask=CONT, clear_mask=SUSP, require=SUSP) == SUSP
    assert t.change_flags(*h, set_mask=CONT, clear_mask=SUSP, require=SUSP) == -1
    assert t.get(*h)[3] == CONT
    assert t.change_flags(99, 99) is None


def test_full_arena_insert_returns_none_and_recovers():
    a = ShmArena.create(2 << 20, static_bytes=1 << 20)
    try:
        t = ShmHashTable(a, 256, name="t")
        handles = []
        while True:
            h = t.insert(b"key%d" % len(handles), b"v" * 500)
            if h is None:
                break
            handles.append(h)
        assert len(handles) > 100
        for h in handles[:50]:
            assert t.get(*h)[1] == b"v" * 500
        for h in handles:
            assert t.delete(*h)
        assert t.insert(b"again", b"v" * 500) is not None
    finally:
        a.destroy()


def _die_in_insert(t, w):
    def hook(table, b, off):
        os.write(w, b"x")
        time.sleep(60)          # killed here: entry written, not linked, lock held
    hashtable._hook = hook
    t.insert(b"victim", b"v")


def test_kill9_inside_bucket_lock_others_carry_on(arena):
    t = ShmHashTable(arena, 1, nstripes=1, name="t")   # one bucket, one lock: worst case
    for i in range(20):
        t.insert(b"k%d" % i, b"v%d" % i)
    r, w = os.pipe()
    pid = fork(_die_in_insert, t, w)
    assert os.read(r, 1) == b"x"
    assert t.locks.owner(0) == pid
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)

    def other():
        t0 = time.monotonic()
        assert t.insert(b"after", b"ok") is not None
        assert time.monotonic() - t0 < 1.0

    t0 = time.monotonic()
    res = wait_all([fork(other)], 10)
    assert list(res.values()) == [0]
    # lock-free readers never blocked; locked readers continue too
    assert t.find(b"k3")[2] == b"v3"
    assert time.monotonic() - t0 < 2.0
    rows = t.iter_bucket(0)
    keys = sorted(k for _l, k, *_ in rows)
    assert keys == sorted([b"k%d" % i for i in range(20)] + [b"after"])
    assert t.bucket_count(0) == 21
    assert t.locks.takeovers(0) == 1
    os.close(r)
    os.close(w)


def test_concurrent_inserts_and_deletes_keep_chains_intact(arena):
    t = ShmHashTable(arena, 8, nstripes=2, name="t")
    n = 3000

    def worker(p):
        mine = []
        for i in range(n):
            h = t.insert(b"p%d-%d" % (p, i), b"%d" % i * (i % 7))
            mine.append(h)
            if i % 3 == 0:
                assert t.delete(*mine.pop(0))
        for h in mine:
            assert t.get(*h) is not None

    res = wait_all([fork(worker, p) for p in range(4)], 60)
    assert set(res.values()) == {0}
    total = sum(len(t.iter_bucket(b)) for b in range(t.nbuckets))
    assert total == t.count() == 4 * (n - n // 3)
