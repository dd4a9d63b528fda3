"""The shm transaction table on its own: addressing, matching, resizing blobs,
freeing, and several forked processes hammering it at once.

Runs in: the pytest process and the children it forks (real shared memory).
"""
import os
import random

import pytest

from shm.arena import ShmArena
from shm.tm_table import TableFull, TmTable

# the table and forked children, no server (tests/unit: marked unit by tests/conftest.py)


@pytest.fixture
def table():
    arena = ShmArena.create(16 << 20)
    t = TmTable(arena, nslots=2048)
    yield t
    arena.destroy()


def test_insert_find_get_put_delete(table):
    created, i, l = table.insert(b"k1", b"one", 1e18)
    assert created and table.find(b"k1") == (i, l) and table.get(i, l) == b"one"
    assert table.insert(b"k1", b"two", 1e18) == (False, i, l), "same key: the existing one"
    table.lock(i)
    assert table.put(i, l, b"x" * 5000)                # grows into a larger arena slot
    assert table.put(i, l, b"small")                   # and shrinks back
    table.unlock(i)
    assert table.get(i, l) == b"small"
    assert table.get(i, l + 1) is None, "a stale label never reads a recycled slot"
    assert table.count() == 1 and table.delete(i, l) and table.count() == 0
    assert table.get(i, l) is None and table.find(b"k1") is None and not table.delete(i, l)
    created, i2, l2 = table.insert(b"k2", b"again", 1e18)
    assert (i2, l2) != (i, l)


def test_payload_callable_names_its_slot(table):
    created, i, l = table.insert(b"k", lambda index, label: b"%d.%d" % (index, label), 1e18)
    assert table.get(i, l) == b"%d.%d" % (i, l)


def test_full_table_raises_and_recovers(table):
    ids = [table.insert(b"k%d" % n, b"v", 1e18) for n in range(table.nslots)]
    with pytest.raises(TableFull):
        table.insert(b"one too many", b"v", 1e18)
    for _, i, l in ids:
        table.delete(i, l)
    assert table.count() == 0
    assert table.insert(b"fits again", b"v", 1e18)[0]


def test_expired_and_still_expired(table):
    _, i, l = table.insert(b"old", b"v", 10.0)
    _, j, m = table.insert(b"new", b"v", 1e18)
    assert table.expired(100.0) == [(i, l)]
    assert table.still_expired(i, l, 100.0) and not table.still_expired(j, m, 100.0)


def _worker(table, seed, n):
    rnd = random.Random(seed)
    mine = {}
    for k in range(n):
        key = b"w%d-%d" % (seed, k)
        created, i, l = table.insert(key, b"%d" % k, 1e18)
        assert created
        mine[key] = (i, l, k)
        if rnd.random() < 0.5 and mine:
            dk = rnd.choice(list(mine))
            di, dl, dv = mine.pop(dk)
            table.lock(di)
            assert table.get(di, dl) == b"%d" % dv
            table.put(di, dl, b"%d" % dv * rnd.randint(1, 300))
            table.unlock(di)
            assert table.delete(di, dl)
        for key2, (i2, l2, v2) in list(mine.items())[-3:]:
            assert table.find(key2) == (i2, l2)
    for key, (i, l, v) in mine.items():
        assert table.delete(i, l)


def test_concurrent_processes_keep_the_table_consistent(table):
    pids = []
    for seed in range(3):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _worker(table, seed, 400)
            except BaseException:
                import traceback
                traceback.print_exc()
                code = 1
            os._exit(code)
        pids.append(pid)
    codes = [os.waitpid(p, 0)[1] for p in pids]
    assert codes == [0, 0, 0]
    assert table.count() == 0


def test_put_fit_moves_to_the_smallest_class(table):
    """tm's wait-state record (fit=True) leaves a slot one class too big; a
    plain put keeps it unless it uses a third or less."""
    a = table.arena
    created, i, lab = table.insert(b"k", b"x" * 700, 1e18)          # a 768-byte slot
    off = lambda: table.w64[(table.o_slots + i * 40 + 16) >> 3]   # noqa: E731 (the header's offset)
    table.lock(i)
    try:
        assert table.put(i, lab, b"y" * 400) and a.slot_size(off()) == 768
        assert table.put(i, lab, b"z" * 400, fit=True) and a.slot_size(off()) == 512
        assert table.put(i, lab, b"w" * 300, fit=True) and a.slot_size(off()) == 384
    finally:
        table.unlock(i)
    assert table.get(i, lab) == b"w" * 300 and table.find(b"k") == (i, lab)
    assert not table.is_done(i, lab) and not table.is_plain(i, lab)
    table.lock(i)
    assert table.put(i, lab, b"v", plain=True)
    table.unlock(i)
    assert table.is_plain(i, lab) and not table.is_done(i, lab) and not table.is_plain(i, lab + 1)
    table.lock(i)
    assert table.put(i, lab, b"u", done=True)
    table.unlock(i)
    assert table.is_plain(i, lab) and table.is_done(i, lab), "bits are only ever added"


def test_sweep_skips_free_slots_and_finds_the_expired(table):
    """A free slot's deadline is +inf (the sweep's quick min() test); a
    deleted transaction's slot is free again and never reported."""
    _, i, lab = table.insert(b"old", b"1", 100.0)
    _, j, m = table.insert(b"new", b"2", 1e18)
    assert table.expired(now=200.0) == [(i, lab)]
    table.delete(i, lab)
    assert table.expired(now=200.0) == []
    assert table.expired(now=2e18) == [(j, m)]


def test_default_size_at_m64_holds_five_seconds_of_14000_per_second():
    """The default -m 64: slots for 70,000+ completed non-INVITE transactions
    (14,000/s x wt_timer 5 s), with shm pages for their compact records (512
    bytes each) and static room left for the other fixed structures."""
    from shm.arena import DEFAULT_MB
    arena = ShmArena.create(DEFAULT_MB << 20)
    try:
        t = TmTable(arena)
        assert t.nslots >= 70000
        st = arena.stats()
        assert st["static_size"] - st["static_used"] > 2 << 20
        assert st["pages"] * 65536 > t.nslots * 512 * 3 // 2
    finally:
        arena.destroy()
