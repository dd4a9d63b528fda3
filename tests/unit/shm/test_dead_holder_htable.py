"""$sht tables (shm/htable.py) when a child is killed (SIGKILL) while it holds
one of their locks: the bucket stripe (set, incr, delete), the expiry wheel
locks (filing a ticket, the htable timer's expiry pass) and the sht_lock
locks.  The next process that needs the lock takes it over within a second;
afterwards every chain is intact, untouched keys keep their values, the key
being changed is old or new, and every entry of an autoexpire table still has
an expiry ticket, so the timer reclaims it (src/modules/htable/ht_api.c
expires entries by a full scan and cannot lose one; the wheel must not either).

Runs in: the pytest process and the processes it forks.
"""
import os
import signal
import time
import zlib

from shm.arena import ShmArena
from shm.htable import HTable, TICKS, now_ticks
from shm_invariants import alloc_sound, check_arena, check_hashtable, check_wheel
from shm_testutil import fork, sweep

OLD = {"i0": 10, "i1": 11, "i2": 12, "s0": "str-s0", "s1": "str-s1", "s2": "str-s2"}
EXPIRE = 60


def make(keys=tuple(OLD)):
    a = ShmArena.create(2 << 20)
    ht = HTable(a, "x", autoexpire=EXPIRE, nstripes=1, nbuckets=2)
    for k in keys:
        ht.set(k, OLD[k])
    return a, ht, (ht.t.locks, ht.wlocks, ht.plock, a._cls_locks, a._page_lock)


def after(ht, _d):
    assert ht.set("after", "ok")


def tickets_missing(ht):
    """Keys of entries with an expiry that no ticket (wheel or pending pass) names."""
    tickets = check_wheel(ht)
    return sorted(k.decode() for k, es in check_hashtable(ht.t).items()
                  for b, label, _v, _i, _f, ex in es if ex and not tickets.get((b, label)))


def check(ht, touched, new=None, torn=None):
    """-> values found for `touched` (old, new, or accepted by torn(v))."""
    entries = check_hashtable(ht.t)
    check_arena(ht.arena)
    assert tickets_missing(ht) == []
    assert ht.get("after") == "ok"
    got = [ht.get(touched)] if touched.encode() in entries else []
    for v in got:
        assert v in (OLD.get(touched), new) or (torn and torn(v)), v
    for k, v in OLD.items():
        if k != touched:
            assert ht.get(k) == v
    assert ht.count() == len(OLD) + 1 - (touched in OLD) + len(got)
    assert ht.set("later", "x" * 3000) and ht.get("later") == "x" * 3000
    ht.delete("later")
    assert alloc_sound(ht.arena, 100, 40) == 40
    return got


def stripe_sweep(op, touched, new=None, torn=None):
    seen = []

    def chk(ht, d):
        seen.append(len(check(ht, touched, new, torn and (lambda v: torn(d, v)))))

    deaths = sweep(make, op, lambda ht: (ht.t.locks, 0), after, chk, reuse=True)
    return deaths, seen


def test_death_inside_set_of_a_new_key(fast_slice):
    deaths, seen = stripe_sweep(lambda ht: ht.set("new", "fresh"), "new", "fresh")
    assert len(deaths) > 20 and 0 in seen and 1 in seen


def test_death_inside_set_that_moves_a_string(fast_slice):
    deaths, seen = stripe_sweep(lambda ht: ht.set("s1", "L" * 3000), "s1", "L" * 3000)
    assert any("_set_value_l" in d.where for d in deaths) and set(seen) == {1}


def test_death_inside_set_that_rewrites_a_string_in_place(fast_slice):
    # the torn value of docs/contracts.md (shm): new bytes at the old length
    def torn(d, v):
        return "set" in d.where and v == ("NEWVALUE" + OLD["s1"][8:])[:len(OLD["s1"])]

    deaths, seen = stripe_sweep(lambda ht: ht.set("s1", "NEWVALUE"), "s1", "NEWVALUE", torn)
    assert set(seen) == {1}


def test_death_inside_incr(fast_slice):
    deaths, seen = stripe_sweep(lambda ht: ht.incr("i1", 5), "i1", 16)
    assert set(seen) == {1}


def test_death_inside_delete(fast_slice):
    deaths, seen = stripe_sweep(lambda ht: ht.delete("s1"), "s1")
    assert 0 in seen and 1 in seen


def test_death_filing_an_expiry_ticket(fast_slice):
    def after_w(ht, _d):
        assert ht.set("after", "ok")       # files a ticket: the same wheel slot's lock

    def chk(ht, _d):
        check(ht, "new", "fresh")

    deaths = sweep(make, lambda ht: ht.set("new", "fresh"), lambda ht: (ht.wlocks, None), after_w, chk,
                   reuse=True)
    assert any("_file_ticket" in d.where for d in deaths)


# -- the expiry pass (the htable timer process) ------------------------------------------
KEEP = ("s0",)              # refreshed to a later second: its ticket moves, it stays


def make_due():
    """Two entries, both due at the pass's `now` but KEEP.  -> state (ht, now)."""
    a, ht, locks = make(("s0", "s1"))
    for k in KEEP:
        ht.set_expire(k, 10 * EXPIRE)
    secs = [ex // TICKS for es in check_hashtable(ht.t).values() for _b, _l, _v, _i, _f, ex in es
            if ex < now_ticks() + 2 * EXPIRE * TICKS]
    return a, (ht, min(secs), (max(secs) + 1) * TICKS + 1), locks


def expire(state, _death=None):
    ht, first, now = state
    ht._last_sec = first - 1               # this pass looks at the due seconds only
    ht.expire_tick(now)


def check_expired(state, _d):
    ht = state[0]
    check_arena(ht.arena)
    assert tickets_missing(ht) == []
    assert sorted(k.decode() for k in check_hashtable(ht.t)) == sorted(KEEP)
    for k in KEEP:
        assert ht.get(k) == OLD[k]


def test_death_inside_the_expiry_pass_holding_a_wheel_lock(fast_slice):
    deaths = sweep(make_due, expire, lambda st: (st[0].wlocks, None), expire, check_expired, reuse=True)
    assert any("_expire_slot" in d.where for d in deaths)


def test_death_inside_the_expiry_pass_holding_the_bucket_lock(fast_slice):
    deaths = sweep(make_due, expire, lambda st: (st[0].t.locks, 0), expire, check_expired, reuse=True)
    assert any("_unlink_l" in d.where for d in deaths)


def test_death_anywhere_in_the_expiry_pass(fast_slice):
    # the pass lock is held throughout: this kills the pass between its other
    # locks too (after an entry is deleted, before its ticket leaves pending...);
    # in htable.py and hashtable.py lines only (the arena's: test_dead_holder_arena.py)
    deaths = sweep(make_due, expire, lambda st: (st[0].plock, 0), expire, check_expired,
                   only=("htable.py", "hashtable.py"), reuse=True)
    assert any("_drain" in d.where for d in deaths) and any("_file_ticket" in d.where for d in deaths)


# -- sht_lock -----------------------------------------------------------------------
def test_kill9_holding_sht_lock_the_next_lock_key_takes_it_over_within_a_second(arena):
    ht = HTable(arena, "u", 4)
    key = "who-holds-it"
    i = zlib.crc32(key.encode()) & 15       # the sht_lock stripe of the key
    r, w = os.pipe()

    def holder():
        ht.lock_key(key)                   # what sht_lock("u=>key") does
        os.write(w, b"x")
        time.sleep(60)

    pid = fork(holder)
    assert os.read(r, 1) == b"x"
    assert ht.ulocks.owner(i) == pid
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    t0 = time.monotonic()
    ht.lock_key(key)
    assert time.monotonic() - t0 < 1.0
    assert ht.ulocks.takeovers(i) == 1 and ht.ulocks.owner(i) == os.getpid()
    assert ht.unlock_key(key)
    assert ht.ulocks.owner(i) == 0
    assert [ht.ulocks.takeovers(j) for j in range(ht.ulocks.n) if j != i] == [0] * 15
    os.close(r)
    os.close(w)


# -- $shv: the arena's own htable (shm/shv.py), no autoexpire -------------------------
def test_death_inside_a_shv_set(fast_slice):
    def make_shv():
        a = ShmArena.create(2 << 20)
        for n in range(4):
            a.shv.set(f"v{n}", n)
        return a, a.shv, (a.shv.t.locks, a._cls_locks, a._page_lock)

    def lock_of(shv):
        return shv.t.locks, zlib.crc32(b"gw") & shv.t.mask & shv.t.smask

    def after_shv(shv, _d):
        assert shv.set("gw", "after")         # same key, same stripe

    def chk(shv, _d):
        entries = check_hashtable(shv.t)
        check_arena(shv.arena)
        assert sorted(entries) == [b"gw", b"v0", b"v1", b"v2", b"v3"]
        assert shv.get("gw") == "after" and [shv.get(f"v{n}") for n in range(4)] == [0, 1, 2, 3]

    deaths = sweep(make_shv, lambda shv: shv.set("gw", "sip:gw1.example.net"), lock_of, after_shv, chk,
                   reuse=True)
    assert len(deaths) > 10
