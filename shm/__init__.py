"""Shared memory for asyncd: arena, robust locks, hash tables, htable/shv
stores, AVP/XAVP lists, process table.

Runs in: main process (creation before fork), every child (use).

Public API (what other parts build on)
======================================

Arena (`shm.arena`)
-------------------
    arena = ShmArena.create(size_bytes)     # main, before fork; -m MB, default DEFAULT_MB=64
    cleanup_stale()                          # main, at start: unlink segments of dead runs
    off = arena.static_alloc(n)              # main before fork only: fixed structures
    off = arena.alloc(n)                     # any process; 0 when full (n <= 65536)
    arena.free(off)
    arena.slot_size(off)                     # real capacity of the slot
    arena.buf                                # memoryview over the segment (struct.*_from/_into)
    arena.words / arena.qwords / arena.doubles  # u32 / u64 / f64 cast views: plain stores, no zero-fill
    arena.shv                                # the $shv store (always there)
    arena.stats()                            # pages used, failed allocs, ...
    arena.destroy()                          # main at shutdown: unlink + close

Never attach the segment by name in a child; the mapping is inherited.
The size classes (PAGE, SLOT_SIZES, CLASS_OF, MAX_ALLOC) live in `shm.slots`,
below the arena, and are re-exported by it.

Locks (`shm.locks`)
-------------------
    ls = LockSet(arena, n, name, on_recover=None)   # main, before fork
    ls.acquire(i); ...; ls.release(i)               # robust: dead holders are taken over
    ls.try_acquire(i) -> bool ; ls.owner(i) ; ls.seq_off(i) (odd while held)
Not re-entrant.  Never hold one across I/O or script execution.
Beware: struct.pack_into zero-fills its target before writing, so data read
without the lock must be validated with the stripe's sequence word (see
ShmHashTable.get) or written with single stores through arena.words.

Hash table (`shm.hashtable`) -- tm's transaction table builds on this
---------------------------------------------------------------------
    t = ShmHashTable(arena, nbuckets, nstripes=None, name="tm")   # main, before fork
    t.insert(key, value=b"", ival=0, flags=0, expires=0) -> (index, label) | None(full)
    t.get(index, label)       -> (key, value, ival, flags, expires) | None   (lock-free read)
    t.find(key)               -> (index, label, value, ival, flags, expires) | None (lock-free)
    t.update(index, label, value=None, ival=None, flags=None, expires=None) -> bool
    t.change_flags(index, label, set_mask, clear_mask, require, forbid) -> old | -1 | None
    t.add_ival(index, label, delta) -> new ival | None
    t.delete(index, label) -> bool ; t.delete_key(key) -> bool
    t.iter_bucket(index)      -> [(label, key, value, ival, flags, expires), ...]
    t.index_of(key) ; t.count() ; t.clear()
    with t.locked(index): ...  (+ the `_..._l` helpers) for compound operations
`value` is opaque bytes up to ~65 KB (store request + reply + AVP bytes packed
as you like, e.g. msgpack); `flags` (u32), `ival` (i64) and `expires` (u32)
are free for the owner.  Labels are per bucket and never repeat within 2**32
inserts, so a stale (index, label) simply is not found.

htable store (`shm.htable`) -- $sht, used by asyncd/modules/htable.py
----------------------------------------------------------------------
    ht = HTable(arena, name, size_exp, autoexpire=0, initval=None, updateexpire=1)
    ht.get(key) -> int | str | None (lock-free) ; ht.set(key, v) -> bool ; ht.delete(key)
    ht.incr(key, delta) -> int | None ; ht.get_expire / set_expire
    ht.count_match(spec, by_value) ; ht.remove_match(regex, by_value) ; ht.reset()
    ht.lock_key(key) / unlock_key(key)   # sht_lock: recursive per process
    ht.expire_tick(now)        # from the htable timer: drops due entries (no full scan)

Shared variables (`shm.shv`): arena.shv.get(name) / .set(name, v) -> bool
(an HTable with initval 0: unset reads 0).

AVP lists (`shm.avp`): AvpList / XavpList, per-message private objects with
`dumps() -> bytes` (msgpack) and `AvpList.loads(b)`; tm stores the bytes with
the transaction and restores them in the resuming process (docs/kamailio-tm.md §1;
docs/kamailio-async.md §7).

Process table (`shm.proctable`): ProcTable(arena, nslots) with set(slot, pid,
rank, desc), rows() -- filled by the supervisor, read by control tools.
"""
