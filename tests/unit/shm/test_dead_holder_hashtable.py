"""A child killed (SIGKILL) while it holds a bucket stripe lock of a
ShmHashTable, before every line it runs under that lock in insert, delete,
update and clear: the next insert on the stripe takes the lock over within a
second, `_repair` (shm/hashtable.py) leaves every chain intact and counted,
every entry the child did not touch is found with its value, and the one it
was changing is there in its old or its new form.

One stripe and two buckets, so every entry is behind the lock that dies.
The arena's locks held at the same moment (an alloc or free under the
stripe) are taken over as well; see test_dead_holder_arena.py.

Runs in: the pytest process and the processes it forks.
"""
from shm.arena import ShmArena
from shm.hashtable import ShmHashTable
from shm_invariants import alloc_sound, check_arena, check_hashtable
from shm_testutil import sweep

KEYS = [b"k%d" % i for i in range(12)]
OLD = {k: b"v-" + k for k in KEYS}


def make(keys=KEYS):
    a = ShmArena.create(2 << 20)
    t = ShmHashTable(a, 2, nstripes=1, name="t")
    for k in keys:
        t.insert(k, OLD[k], ival=len(k))
    return a, t, (t.locks, a._cls_locks, a._page_lock)


def after(t, _d):
    assert t.insert(b"after", b"ok") is not None


def check(t, touched, new=None):
    """Untouched keys intact; `touched` absent, old or `new`. -> its value(s) found."""
    entries = check_hashtable(t)
    check_arena(t.arena)
    assert [e[2] for e in entries.pop(b"after")] == [b"ok"]
    assert t.find(b"after")[2] == b"ok"
    got = [e[2] for e in entries.pop(touched, [])]
    for k in KEYS:
        if k == touched:
            continue
        (b, label, value, ival, _f, _x), = entries.pop(k)
        assert value == OLD[k] and ival == len(k)
        assert t.get(b, label) == (k, OLD[k], ival, 0, 0)
        assert t.find(k)[:3] == (b, label, OLD[k])
    assert not entries, f"unexpected entries {sorted(entries)}"
    assert t.count() == len(KEYS) + 1 - (touched in KEYS) + len(got)
    # the table and its arena work normally afterwards
    assert t.insert(b"later", b"x" * 3000) is not None
    assert t.delete_key(b"later") and t.find(b"later") is None
    assert alloc_sound(t.arena, 100, 40) == 40
    return got


def run(op, touched, new=None, torn=None):
    """sweep() with check(); `touched`'s value must be its old or `new` one, or
    torn(death, value) must accept it."""
    seen = []

    def chk(t, d):
        got = check(t, touched, new)
        for v in got:
            assert v in (OLD.get(touched), new) or (torn and torn(d, v)), (d, v)
        seen.append(len(got))

    deaths = sweep(make, op, lambda t: (t.locks, 0), after, chk, reuse=True)
    return deaths, seen


def test_death_inside_insert(fast_slice):
    deaths, seen = run(lambda t: t.insert(b"new", b"n" * 200), b"new", b"n" * 200)
    assert len(deaths) > 20
    assert any("_new_entry" in d.where for d in deaths)
    assert any("arena.py" in d.where for d in deaths)      # under the stripe: the allocator
    assert 0 in seen and 1 in seen                         # died before and after the link


def test_death_inside_delete_of_a_chained_entry(fast_slice):
    # KEYS[2] is inside its chain (not the head): prev's link is rewritten
    deaths, seen = run(lambda t: t.delete_key(KEYS[2]), KEYS[2])
    assert any("_unlink_l" in d.where for d in deaths)
    assert any("free" in d.where for d in deaths)
    assert 0 in seen and 1 in seen


def test_death_inside_delete_of_a_chain_head(fast_slice):
    deaths, seen = run(lambda t: t.delete_key(KEYS[-1]), KEYS[-1])
    assert 0 in seen and 1 in seen


def test_death_inside_an_update_that_moves_the_entry(fast_slice):
    new = b"w" * 5000

    def op(t):
        b, label = t.find(KEYS[2])[:2]
        assert t.update(b, label, value=new)

    deaths, seen = run(op, KEYS[2], new)
    assert any("_set_value_l" in d.where for d in deaths)
    assert seen and set(seen) == {1}                       # never lost, never doubled


def test_death_inside_clear(fast_slice):
    def chk(t, d):
        entries = check_hashtable(t)
        check_arena(t.arena)
        assert [e[2] for e in entries.pop(b"after")] == [b"ok"]
        for k, es in entries.items():                      # the survivors, if any, intact
            assert [e[2] for e in es] == [OLD[k]]
        assert t.count() == len(entries) + 1
        assert alloc_sound(t.arena, 100, 40) == 40

    deaths = sweep(lambda: make(KEYS[:4]), lambda t: t.clear(), lambda t: (t.locks, 0), after, chk,
                   reuse=True)
    assert len(deaths) > 10 and any("free" in d.where for d in deaths)


def test_death_inside_an_update_in_place(fast_slice):
    # the one torn value: a value of another length rewritten in its own slot
    # is copied, then its length stored; a death between leaves the new bytes
    # over the old ones, read at the old length (docs/contracts.md, shm)
    old, new = OLD[KEYS[2]], b"W" * 6                 # still fits its 48-byte slot
    torn_at = []

    def torn(d, v):
        torn_at.append(d.where)
        return "_set_value_l" in d.where and v == (new + old[len(new):])[:len(old)]

    def op(t):
        b, label = t.find(KEYS[2])[:2]
        assert t.update(b, label, value=new)

    deaths, seen = run(op, KEYS[2], new, torn)
    assert set(seen) == {1}
    assert len(set(torn_at)) == 1 and len(deaths) > 10
