"""tm/state.py insert_claimed: a new transaction is claimed by its creating
process before any other process can see it, so a death at any instant after
that is answered by the replacement (tm/mod.py child_init); a refused insert
leaves no claim behind.

Runs in: the pytest process (a real shm arena and transaction table).
"""
import pytest

from asyncd.modules.tm import state
from shm.arena import ShmArena
from shm.tm_table import TableFull, TmTable


@pytest.fixture
def tm():
    arena = ShmArena.create(16 << 20)
    saved = (state.S.table, state.S.mine, state.S.claims)
    state.S.table, state.S.mine, state.S.claims = TmTable(arena, nslots=4), 1, [0, 0]
    yield state.S
    state.S.table, state.S.mine, state.S.claims = saved
    arena.destroy()


def test_the_claim_is_written_before_the_transaction_can_be_found(tm):
    seen = []

    def payload(index, label):
        # under the bucket lock, the slot not yet linked: another process's get() sees nothing
        seen.append((tm.claims[1], tm.table.get(index, label)))
        return b"cell"

    created, i, lab = state.insert_claimed(b"k", payload, 1e18)
    assert created and seen == [((i << 32) | lab, None)]     # claimed, not yet linked
    assert tm.table.find(b"k") == (i, lab) and tm.claims[1] == (i << 32) | lab


def test_an_existing_transaction_is_not_claimed_again(tm):
    created, i, lab = state.insert_claimed(b"k", b"cell", 1e18)
    state.unclaim()
    assert state.insert_claimed(b"k", b"other", 1e18) == (False, i, lab)
    assert tm.claims[1] == 0


def test_a_refused_insert_leaves_no_claim(tm):
    for n in range(tm.table.nslots):
        state.insert_claimed(b"k%d" % n, b"cell", 1e18)
    with pytest.raises(TableFull):
        state.insert_claimed(b"one too many", b"cell", 1e18)
    assert tm.claims[1] == 0
