"""Arena: slot allocation, exhaustion and reuse, fork safety, stale cleanup.

Runs in: the pytest process and the processes it forks.
"""
import os
import subprocess
import sys

import pytest

from shm import arena as arena_mod
from shm.arena import ShmArena, SLOT_SIZES, PAGE
from shm_testutil import fork, wait_all


def test_alloc_is_writable_disjoint_and_freed(arena):
    offs = [arena.alloc(n) for n in (1, 32, 33, 100, 1000, 5000, PAGE)]
    assert all(offs)
    for o, n in zip(offs, (1, 32, 33, 100, 1000, 5000, PAGE)):
        assert arena.slot_size(o) >= n
        arena.buf[o:o + n] = bytes([n % 251]) * n
    for o, n in zip(offs, (1, 32, 33, 100, 1000, 5000, PAGE)):
        assert bytes(arena.buf[o:o + n]) == bytes([n % 251]) * n
    spans = sorted((o, o + arena.slot_size(o)) for o in offs)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    for o in offs:
        arena.free(o)
    assert arena.stats()["pages_used"] <= len(SLOT_SIZES)


def test_too_large_is_refused_not_crashing(arena):
    assert arena.alloc(PAGE + 1) == 0
    assert arena.alloc(-5) == 0


def _fill(arena, size):
    offs = []
    while True:
        o = arena.alloc(size)
        if not o:
            return offs
        offs.append(o)


def test_exhaustion_fill_free_fill_again():
    a = ShmArena.create(4 << 20, static_bytes=1 << 20)
    try:
        first = _fill(a, 100)
        assert len(first) > 1000
        assert a.stats()["failed_allocs"] == 1
        for o in first:
            a.free(o)
        again = _fill(a, 100)
        assert len(again) == len(first)
        for o in again:
            a.free(o)
        # pages freed by one size class serve another
        big = _fill(a, 3000)
        assert len(big) >= (a.npages - len(SLOT_SIZES)) * (PAGE // 3072)
        for o in big:
            a.free(o)
        assert len(_fill(a, 100)) == len(first)
    finally:
        a.destroy()


def test_static_area_overflow_raises():
    a = ShmArena.create(4 << 20, static_bytes=1 << 20)
    try:
        with pytest.raises(MemoryError):
            a.static_alloc(2 << 20)
    finally:
        a.destroy()


def test_children_share_the_mapping_and_do_not_unlink(arena):
    off = arena.alloc(64)

    def child():
        arena.buf[off:off + 5] = b"hello"
        o2 = arena.alloc(200)      # allocator works in the child
        assert o2
        arena.free(o2)

    res = wait_all([fork(child) for _ in range(3)], 10)
    assert set(res.values()) == {0}
    assert bytes(arena.buf[off:off + 5]) == b"hello"
    assert os.path.exists("/dev/shm/" + arena.name)


def test_python_exit_in_child_keeps_segment(arena):
    """A child running a full interpreter shutdown (multiprocessing,
    resource tracker machinery) must not unlink the segment."""
    code = ("import os, sys; from multiprocessing import shared_memory;"
            "pid = os.fork()\n"
            "if pid == 0:\n    sys.exit(0)\n"
            "os.waitpid(pid, 0)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=20)
    pid = fork(lambda: sys.exit(0))
    wait_all([pid], 10)
    assert os.path.exists("/dev/shm/" + arena.name)


def test_cleanup_stale_removes_only_dead_owners(arena):
    # a pid that cannot exist right now
    dead = 4194303
    path = f"/dev/shm/asyncd_{dead}_1"
    with open(path, "wb") as f:
        f.write(b"x")
    removed = arena_mod.cleanup_stale(verbose=False)
    assert f"asyncd_{dead}_1" in removed
    assert not os.path.exists(path)
    assert os.path.exists("/dev/shm/" + arena.name)   # ours: owner alive


def test_killed_run_segment_is_cleaned_by_next_run():
    code = ("from shm.arena import ShmArena; import os, sys;"
            "a = ShmArena.create(1 << 20); print(a.name, flush=True); os.kill(os.getpid(), 9)")
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20,
                       env=env)
    name = p.stdout.strip()
    assert name.startswith("asyncd_") and os.path.exists("/dev/shm/" + name)
    arena_mod.cleanup_stale(verbose=False)
    assert not os.path.exists("/dev/shm/" + name)


def test_usage_is_kamailios_shm_summary():
    """core.shmmem / shmem: numbers: used follows live slots, max_used keeps the peak."""
    a = ShmArena.create(8 << 20)
    try:
        u0 = a.usage()
        assert set(u0) == {"total", "free", "used", "real_used", "max_used", "fragments"}
        assert u0["total"] == u0["free"] + u0["real_used"]
        offs = [a.alloc(100) for _ in range(1000)]
        u1 = a.usage()
        assert u1["used"] - u0["used"] == 1000 * 128 and u1["real_used"] > u0["real_used"]
        for o in offs:
            a.free(o)
        u2 = a.usage()
        assert u2["used"] == u0["used"] and u2["max_used"] == u1["max_used"] > u2["real_used"]
    finally:
        a.close()
        a.unlink()
