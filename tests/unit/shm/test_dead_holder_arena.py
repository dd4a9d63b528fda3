"""A child killed (SIGKILL) while it holds one of the arena's locks -- a size
class lock or the page lock -- in the middle of alloc() or free(): the next
process that needs the lock takes it over within a second, the allocator's
lists are repaired (shm/arena.py `_repair_class`, `_repair_pages`) and every
later allocation is sound.

Each sweep kills a fresh child before every line of shm/ code it runs while
holding the lock (shm_testutil.kill_inside), on a fresh small arena each
time, so every intermediate state of the operation is left behind once.
The sweeps shorten the locks' poll slice so dozens of deaths stay fast; the
one-second bound with the real slice is shown by the first test.

Runs in: the pytest process and the processes it forks.
"""
import time

from shm.arena import ShmArena, _CLS_HEAD, _FREE_HEAD, _U32
from shm.slots import MAX_ALLOC, NSLOTS
from shm_invariants import alloc_sound, check_arena, cls
from shm_testutil import kill_holder, sweep


def small_arena():
    return ShmArena.create(2 << 20)      # 1 MiB static area, 15 data pages


def arena_sweep(setup, op, lock_of, after):
    """shm_testutil.sweep on a fresh small arena per death; state = (arena, setup(arena)).
    After each recovery the arena's lists must be sound and slots of three
    classes must still be handed out soundly."""
    def make():
        a = small_arena()
        return a, (a, setup(a)), (a._cls_locks, a._page_lock)

    def check(st, _d):
        a = st[0]
        check_arena(a)
        for size in (100, 2000, 30000):
            alloc_sound(a, size, NSLOTS[cls(size)] + 2)    # crosses a page
        check_arena(a)

    return sweep(make, lambda st: op(*st), lambda st: lock_of(st[0]),
                 lambda st, _d: after(*st), check)


def test_kill9_holding_a_class_lock_the_next_alloc_takes_it_over_within_a_second(arena):
    c = cls(100)
    keep = arena.alloc(100)
    kill_holder(lambda: arena._cls_locks.acquire(c))      # as alloc() takes it
    t0 = time.monotonic()
    o = arena.alloc(100)
    assert o and time.monotonic() - t0 < 1.0
    assert arena._cls_locks.takeovers(c) == 1
    arena.free(o)
    arena.free(keep)
    check_arena(arena)


def _fill_but_one(a):
    c = cls(100)
    return [a.alloc(100) for _ in range(NSLOTS[c] - 1)]


def test_death_inside_an_alloc_that_fills_its_page(fast_slice):
    # the page leaves the partial list in the same alloc: a death between the
    # page update and the list update left a full page at the list head
    deaths = arena_sweep(_fill_but_one, lambda a, s: a.alloc(100),
                         lambda a: (a._cls_locks, cls(100)), lambda a, s: a.alloc(100))
    assert len(deaths) > 10
    assert any("alloc" in d.where for d in deaths)


def test_death_inside_an_alloc_that_takes_a_new_page(fast_slice):
    # class lock, then the page lock inside it (_new_page)
    deaths = arena_sweep(lambda a: None, lambda a, s: a.alloc(2000),
                         lambda a: (a._cls_locks, cls(2000)), lambda a, s: a.alloc(2000))
    assert any("_new_page" in d.where for d in deaths)


def _two_full_pages(a):
    """Two full pages of class 100 and a third partial one; returns a slot of the
    first full page."""
    c = cls(100)
    offs = [a.alloc(100) for _ in range(2 * NSLOTS[c] + 1)]
    return offs[0]


def test_death_inside_a_free_that_puts_a_full_page_back_on_its_list(fast_slice):
    deaths = arena_sweep(_two_full_pages, lambda a, off: a.free(off),
                         lambda a: (a._cls_locks, cls(100)), lambda a, off: a.alloc(100))
    assert any("free" in d.where for d in deaths)


def _last_slot_of_a_second_page(a):
    c = cls(100)
    offs = [a.alloc(100) for _ in range(NSLOTS[c] + 1)]
    for o in offs[:NSLOTS[c] - 1]:
        a.free(o)                  # first page: one slot left in it
    return offs[-1]                 # the only slot of the second page


def test_death_inside_a_free_that_gives_a_page_back(fast_slice):
    # class lock, then the page lock inside it (_release_page)
    deaths = arena_sweep(_last_slot_of_a_second_page, lambda a, off: a.free(off),
                         lambda a: (a._cls_locks, cls(100)), lambda a, off: a.alloc(100))
    assert any("_release_page" in d.where for d in deaths)


def _no_free_page_left(a):
    """Every page in use: MAX_ALLOC slots fill all but one, which class 32 keeps
    cached though empty (free() keeps a class's last partial page)."""
    big = []
    while True:
        o = a.alloc(MAX_ALLOC)
        if not o:
            break
        big.append(o)
    a.free(big.pop())           # its page stays cached by the MAX_ALLOC class ...
    a.free(a.alloc(32))         # ... until class 32 steals it
    assert _U32.unpack_from(a.buf, _FREE_HEAD)[0] == 0
    assert _U32.unpack_from(a.buf, _CLS_HEAD + 4 * cls(32))[0]
    return big


def test_death_inside_an_alloc_that_steals_an_empty_page(fast_slice):
    # class 2000's lock, the page lock, and class 32's lock tried inside it
    def after(a, big):
        a.free(big.pop())            # room for alloc_sound's other classes later
        assert a.alloc(2000)

    deaths = arena_sweep(_no_free_page_left, lambda a, s: a.alloc(2000),
                         lambda a: (a._cls_locks, cls(2000)), after)
    assert any("_steal_empty_page" in d.where for d in deaths)


def test_death_holding_the_page_lock_then_a_new_page_for_another_class(fast_slice):
    # the page lock's own recovery: the next process to need it is an alloc of a
    # different class (not the dead child's class lock)
    def after(a, s):
        assert alloc_sound(a, 30000, 1) == 1

    deaths = arena_sweep(lambda a: None, lambda a, s: a.alloc(2000),
                         lambda a: (a._page_lock, 0), after)
    assert any("_new_page" in d.where for d in deaths)
