"""tm's transaction table (shm/tm_table.py) when a child is killed (SIGKILL)
while it holds one of its locks: a bucket stripe (insert, delete), a cell's
slot stripe (put: tm's update of a cell, AVPs included) or the slot
allocator's lock.  The next process that needs the lock takes it over within
a second; afterwards every chain is intact, no slot is lost (each is live or
free, and the count is right), the transactions the child did not touch are
found with their payload, and the one it was changing is old or new (a
transaction inserted but not yet linked is still reclaimed by tm's sweep at
its deadline, as docs/kamailio-tm.md describes for every lost transaction).

Kamailio does not recover a lock from a dead process at all (its tm lock is a
futex or SysV semaphore, src/modules/tm/lock.h); these tests are the reason
we can.

Runs in: the pytest process and the processes it forks.
"""
import inspect
import os
import signal
import struct
import time

from shm.arena import ShmArena
from shm.avp import AvpList
from shm.tm_table import N_SLOT_LOCKS, TmTable
from shm_invariants import alloc_sound, check_arena, check_tm_table
from shm_testutil import stop_inside, sweep

KEYS = [b"branch-%d" % i for i in range(5)]
OLD = {k: b"cell-" + k for k in KEYS}
DEADLINE = time.monotonic() + 3600


def make():
    a = ShmArena.create(2 << 20)
    t = TmTable(a, nslots=32, nbuckets=1)       # one chain, one bucket stripe: worst case
    for k in KEYS:
        t.insert(k, OLD[k], DEADLINE)
    return a, t, (t.bucket_locks, t.slot_locks, t.alloc_lock, a._cls_locks, a._page_lock)


def after_insert(t, _d):
    assert t.insert(b"after", b"ok", DEADLINE)[0]


def check(t, touched, new=None, torn=None):
    """Untouched transactions intact; `touched` absent, old or new. -> its payloads."""
    chained, loose = check_tm_table(t)
    check_arena(t.arena)
    assert chained.pop(b"after")[2] == b"ok"
    got = []
    if touched in chained:
        idx, label, payload = chained.pop(touched)
        assert t.find(touched) == (idx, label) and t.get(idx, label) == payload
        got.append(payload)
    for k in KEYS:
        if k != touched:
            idx, label, payload = chained.pop(k)
            assert payload == OLD[k] and t.find(k) == (idx, label) and t.get(idx, label) == OLD[k]
    assert not chained
    for idx, key in loose.items():
        # inserted, not linked (or unlinked, not freed): only tm's sweep sees it
        assert key == touched
        label = t.buf[t.o_slots + 40 * idx:t.o_slots + 40 * idx + 4].cast("I")[0]
        assert (idx, label) in t.expired(DEADLINE + 1)
        assert t.delete(idx, label)
    for v in got:
        assert v in (OLD.get(touched), new) or (torn and torn(v)), v
    # the table and its arena work normally afterwards
    _c, i, label = t.insert(b"later", b"x" * 3000, DEADLINE)
    assert t.delete(i, label) and t.find(b"later") is None
    check_tm_table(t)
    assert alloc_sound(t.arena, 100, 40) == 40
    return got


def bucket_sweep(op, touched, new=None):
    seen = []

    def chk(t, d):
        seen.append(len(check(t, touched, new)))

    deaths = sweep(make, op, lambda t: (t.bucket_locks, 0), after_insert, chk, reuse=True)
    return deaths, seen


def test_death_inside_insert(fast_slice):
    deaths, seen = bucket_sweep(lambda t: t.insert(b"new", b"fresh", DEADLINE), b"new", b"fresh")
    assert any("_pop_slot" in d.where for d in deaths) and any("alloc" in d.where for d in deaths)
    assert 0 in seen and 1 in seen


def test_death_inside_delete(fast_slice):
    def op(t):
        assert t.delete(*t.find(KEYS[2]))

    deaths, seen = bucket_sweep(op, KEYS[2])
    assert any("_push_slot" in d.where for d in deaths) and any("free" in d.where for d in deaths)
    assert 0 in seen and 1 in seen


def test_death_holding_the_slot_allocator_lock(fast_slice):
    # pop in insert, push in delete: both under the allocator lock
    def op(t):
        t.insert(b"new", b"fresh", DEADLINE)
        assert t.delete(*t.find(KEYS[2]))

    def chk(t, d):
        chained, loose = check_tm_table(t)
        assert chained.pop(b"after")[2] == b"ok"
        assert {k: v[2] for k, v in chained.items() if k in KEYS} == {
            k: OLD[k] for k in KEYS if k in chained}
        assert set(chained) - set(KEYS) <= {b"new"} and set(KEYS) - set(chained) <= {KEYS[2]}
        assert not loose

    deaths = sweep(make, op, lambda t: (t.alloc_lock, 0), after_insert, chk, reuse=True)
    assert any("_pop_slot" in d.where for d in deaths) and any("_push_slot" in d.where for d in deaths)


# -- a cell's slot lock: tm updating a transaction (its AVP lists ride in the cell) -----
def avps(**kv):
    a = AvpList()
    for name, v in kv.items():
        a.add(name, v)
    return a.dumps()


AVP_OLD = avps(caller="alice", hops=1)


def make_cell():
    a, t, locks = make()
    t.lock(0)                  # KEYS[0] sits in slot 0
    assert t.put(0, t.find(KEYS[0])[1], AVP_OLD)
    t.unlock(0)
    return a, t, locks


def update(t, payload):
    """What tm's Handle.acquire/release do around a change (asyncd/modules/tm/cell.py)."""
    idx, label = t.find(KEYS[0])
    t.lock(idx)
    try:
        assert t.get(idx, label) is not None
        assert t.put(idx, label, payload)
    finally:
        t.unlock(idx)


def slot_sweep(new):
    payloads = []

    def after(t, _d):
        idx, label = t.find(KEYS[0])
        t.lock(idx)                           # the dead child's stripe: taken over
        payloads.append(t.get(idx, label))
        t.unlock(idx)

    def chk(t, d):
        chained, loose = check_tm_table(t)
        check_arena(t.arena)
        assert not loose and set(chained) == set(KEYS)
        for k in KEYS[1:]:
            assert chained[k][2] == OLD[k]

    deaths = sweep(make_cell, lambda t: update(t, new), lambda t: (t.slot_locks, 0 % N_SLOT_LOCKS),
                   after, chk, reuse=True)
    return deaths, payloads


def _put_line(text):
    src, first = inspect.getsourcelines(TmTable.put)
    return next(first + n for n, line in enumerate(src) if text in line)


def torn_window(deaths, payloads, new):
    """Line numbers in put() of the deaths that left neither the old nor the new
    cell; each must lie after put's payload copy and no later than its length
    store: the torn cell of docs/contracts.md (shm).  Intact cells must decode."""
    copy, length = _put_line("] = payload"), _put_line("self.w32[(hoff + 28) >> 2] = n")
    torn = []
    for d, p in zip(deaths, payloads):
        if p in (AVP_OLD, new):
            assert AvpList.loads(p).get("caller") == "alice"
            continue
        func, line = d.where.split(":")[1:]
        assert func == "put" and copy < int(line) <= length, (d, p)
        torn.append(int(line))
    return torn


def test_death_updating_a_cells_avps_that_grow_out_of_the_slot(fast_slice):
    new = avps(caller="alice", hops=2, note="x" * 2000)
    deaths, payloads = slot_sweep(new)
    assert any("put" in d.where for d in deaths)
    # the new blob is written aside; only a death between its two header stores
    # (offset, then length) reads the new blob at the old length
    assert set(torn_window(deaths, payloads, new)) <= {_put_line("self.w32[(hoff + 28) >> 2] = n")}


def test_death_updating_a_cells_avps_in_place(fast_slice):
    new = avps(caller="alice", hops=300)        # two bytes longer: still fits its slot
    deaths, payloads = slot_sweep(new)
    assert any("put" in d.where for d in deaths)
    torn_window(deaths, payloads, new)


def free_slots(t):
    top = struct.unpack_from("<i", t.buf, t.o_free)[0]
    return sorted(struct.unpack_from("<%di" % top, t.buf, t.o_free + 4))


def test_reclaim_leaves_a_live_inserters_slot_alone(fast_slice):
    # a slot off the free stack and not yet live belongs to a dead process only
    # if the pid in it is dead: a live inserter paused right after taking its
    # slot keeps it through a reclaim, and finishes its insert afterwards
    a, t, _locks = make()
    try:
        src, first = inspect.getsourcelines(TmTable.insert)
        at = ("insert", next(first + n for n, line in enumerate(src) if "if idx < 0:" in line))
        d = stop_inside(t.bucket_locks, 0, 0, t.insert, b"new", b"fresh", DEADLINE, at=at)
        try:
            free_before = free_slots(t)
            t.alloc_lock.acquire(0)
            t._reclaim_l()                     # what a takeover elsewhere runs
            t.alloc_lock.release(0)
            assert free_slots(t) == free_before and t.count() == len(KEYS) + 1
        finally:
            os.kill(d.pid, signal.SIGCONT)
            _p, status = os.waitpid(d.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        chained, loose = check_tm_table(t)
        assert not loose and chained[b"new"][2] == b"fresh"
        assert len(chained) == len(KEYS) + 1 and t.count() == len(KEYS) + 1
    finally:
        a.destroy()
