"""Statistics counters (asyncd/core/counters.py): per-process rows in shm,
summed on read, reset by base, computed ones, and a forked child's adds
seen by its parent."""
import os

from asyncd.core.counters import NO_RESET, Stats
from shm.arena import ShmArena


def _stats(nslots=4):
    arena = ShmArena.create(4 << 20)
    st = Stats()
    return arena, st


def test_rows_sum_and_reset_by_base():
    arena, st = _stats()
    try:
        a = st.register("core", "rcv_requests")
        b = st.register("sl", "200_replies", flags=NO_RESET)
        assert st.register("core", "rcv_requests") == a
        st.allocate(arena, 3)
        r0, r2 = st.row(0), st.row(2)
        r0[a] += 2
        r2[a] += 5
        r2[b] += 1
        assert st.get(a) == 7 and st.get(b) == 1
        assert st.reset(a) and st.get(a) == 0
        r0[a] += 1
        assert st.get(a) == 1
        assert not st.reset(b) and st.get(b) == 1
        assert st.items("core") == [("core", "rcv_requests", 1)]
        assert st.groups() == ["core", "sl"]
        assert st.handle("sl", "200_replies") == b and st.handle("sl", "x") is None
    finally:
        arena.close()
        arena.unlink()


def test_computed_stat_and_out_of_range_slot():
    arena, st = _stats()
    try:
        g = st.register("tmx", "active_transactions", func=lambda: 42)
        bad = st.register("x", "broken", func=lambda: 1 / 0)
        st.allocate(arena, 2)
        assert st.get(g) == 42 and st.get(bad) == 0 and not st.reset(g)
        private = st.row(99)
        private[0] += 1
        assert st.get(0) == 42
    finally:
        arena.close()
        arena.unlink()


def test_a_forked_child_adds_to_its_own_row():
    arena, st = _stats()
    try:
        h = st.register("core", "fwd_requests")
        st.allocate(arena, 3)
        pid = os.fork()
        if pid == 0:
            row = st.row(1)
            for _ in range(1000):
                row[h] += 1
            os._exit(0)
        os.waitpid(pid, 0)
        st.row(0)[h] += 1
        assert st.get(h) == 1001
    finally:
        arena.close()
        arena.unlink()
