"""usrloc store: records of contacts in shm, Kamailio's q order and matching
modes, expiry, a full arena, and records written by forked processes.

Runs in: the pytest process and the processes it forks.
"""
from shm.arena import ShmArena
from shm.usrloc import (C_CALLID, C_EXPIRES, C_Q, C_URI, CONTACT_CALLID, CONTACT_CALLID_ONLY,
                        CONTACT_ONLY, CONTACT_PATH, FULL, ULStore, find_contact, insert_sorted,
                        new_contact, update_in_place, valid)
from shm_testutil import fork, wait_all


def _add(store, aor, c, desc=False):
    def put(cs):
        insert_sorted(cs, c, desc)
        return cs, 1
    return store.update(aor, put)


def test_add_update_remove(arena):
    ul = ULStore(arena, "location", 64)
    assert ul.get("alice") == []
    assert _add(ul, "alice", new_contact("sip:a@1.2.3.4", 2000000000, callid="c1", cseq=1)) == 1
    got = ul.get("alice")
    assert [c[C_URI] for c in got] == ["sip:a@1.2.3.4"] and got[0][C_CALLID] == "c1"
    assert ul.users() == 1 and ul.contacts() == 1

    def refresh(cs):
        i = find_contact(cs, CONTACT_ONLY, "sip:a@1.2.3.4")
        cs[i] = cs[i][:C_EXPIRES] + (2000000100,) + cs[i][C_EXPIRES + 1:]
        return cs, i
    assert ul.update("alice", refresh) == 0
    assert ul.get("alice")[0][C_EXPIRES] == 2000000100
    assert ul.update("alice", lambda cs: ([], None)) is None     # empty list: record gone
    assert ul.get("alice") == [] and ul.users() == 0


def test_q_order_as_mem_insert_ucontact(arena):
    ul = ULStore(arena, "location", 64)
    for uri, q in (("sip:low@h", 100), ("sip:none@h", -1), ("sip:high@h", 900), ("sip:mid@h", 500),
                   ("sip:mid2@h", 500)):
        _add(ul, "bob", new_contact(uri, 0, q))
    assert [c[C_URI] for c in ul.get("bob")] == ["sip:high@h", "sip:mid@h", "sip:mid2@h",
                                                  "sip:low@h", "sip:none@h"]
    _add(ul, "bob", new_contact("sip:newest@h", 0, 100), desc=True)
    assert ul.get("bob")[0][C_URI] == "sip:newest@h"


def test_matching_modes():
    cs = [new_contact("sip:a@h", 0, callid="x", path="<sip:p1>"),
          new_contact("sip:b@h", 0, callid="y", path="<sip:p2>")]
    assert find_contact(cs, CONTACT_ONLY, "sip:b@h") == 1
    assert find_contact(cs, CONTACT_CALLID, "sip:b@h", "x") == -1
    assert find_contact(cs, CONTACT_CALLID, "sip:b@h", "y") == 1
    assert find_contact(cs, CONTACT_PATH, "sip:a@h", path="<sip:p2>") == -1
    assert find_contact(cs, CONTACT_PATH, "sip:a@h", path="<sip:p1>") == 0
    assert find_contact(cs, CONTACT_CALLID_ONLY, "sip:zzz@h", "y") == 1


def test_expire_drops_only_expired_and_empty_records(arena):
    ul = ULStore(arena, "location", 64)
    _add(ul, "a", new_contact("sip:old@h", 1000))
    _add(ul, "a", new_contact("sip:new@h", 3000))
    _add(ul, "b", new_contact("sip:old@h", 1000))
    _add(ul, "p", new_contact("sip:perm@h", 0))          # 0: permanent (ul.add)
    assert not valid(ul.get("b")[0], 2000) and valid(ul.get("p")[0], 2000)
    assert ul.expire(now=2000) == 2
    assert [c[C_URI] for c in ul.get("a")] == ["sip:new@h"]
    assert ul.get("b") == [] and ul.users() == 2
    assert ul.expire(now=2000) == 0


def test_full_arena_returns_full_and_keeps_old_records():
    a = ShmArena.create(2 << 20, static_bytes=1 << 20)
    try:
        ul = ULStore(a, "location", 64)
        n = 0
        while _add(ul, f"u{n}", new_contact("sip:x@h" + "x" * 300, 0)) is not FULL:
            n += 1
            assert n < 100000
        assert n > 100
        assert ul.get("u0")[0][C_URI].startswith("sip:x@h")
    finally:
        a.destroy()


def test_records_written_by_forked_processes(arena):
    ul = ULStore(arena, "location", 64)

    def worker(p):
        for i in range(100):
            _add(ul, "shared", new_contact(f"sip:{p}-{i}@h", 0))
            _add(ul, f"own{p}", new_contact(f"sip:{i}@h", 0))

    res = wait_all([fork(worker, p) for p in range(4)], 60)
    assert set(res.values()) == {0}
    assert len(ul.get("shared")) == 400               # no lost update across processes
    assert all(len(ul.get(f"own{p}")) == 100 for p in range(4))
    assert ul.users() == 5 and ul.contacts() == 800


def test_update_position_as_update_contact_pos():
    cs = [new_contact(u, 0, q) for u, q in (("a", 900), ("b", 500), ("c", 100))]
    update_in_place(cs, 1, new_contact("b", 0, 600))          # still fits: stays
    assert [c[C_URI] for c in cs] == ["a", "b", "c"]
    update_in_place(cs, 2, new_contact("c", 0, 950))          # Kamailio's walk: to the end
    assert [c[C_URI] for c in cs] == ["a", "b", "c"]
    update_in_place(cs, 0, new_contact("a", 0, 50))           # before the first q >= 50
    assert [c[C_Q] for c in cs] == [50, 600, 950]
    update_in_place(cs, 2, new_contact("c", 0, 100), desc_time_order=True)
    assert cs[0][C_URI] == "c"
