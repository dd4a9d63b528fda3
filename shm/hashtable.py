"""ShmHashTable: a chained hash table in the shm arena, keyed by bytes.

Runs in: main process (creation in mod_init, before fork), every child.

Used by the htable store ($sht, $shv: shm/htable.py) and shaped for a
transaction table (tm chose a slot table of its own, shm/tm_table.py).
Entries are identified like Kamailio's transactions by
(index, label): index = bucket number, label = a per-bucket counter taken at
insert time, so a stale (index, label) never matches a newer entry.

Bucket array (static area, 16 bytes per bucket):
    0   8  u64 head: offset of the first entry of the chain (0 = empty)
    8   4  u32 next label to hand out
    12  4  u32 entries in the chain

Entry (one arena slot, header + key + value inline; 40-byte header):
    0   8  u64 next entry in the chain (0 = end)
    8   4  u32 label
    12  4  u32 hash (crc32 of the key)
    16  2  u16 key length
    18  1  u8  arena size class of this slot (capacity = slots.SLOT_SIZES[cls])
    19  1  -
    20  4  u32 value length
    24  4  u32 flags   (owner-defined: htable type bits, tm state bits)
    28  4  u32 expires (owner-defined: htable expiry in 1/16 s ticks, 0 = never)
    32  8  i64 ival    (owner-defined: htable int value, tm counters)
    40  .  key bytes, then value bytes

Consistency when a process dies inside a critical section (kill -9): every
change is ordered so the chain stays walkable after any single store: an
insert writes the whole entry first and links it with one bucket store; a
delete unlinks with one store and frees afterwards (a death in between
leaks one slot, never corrupts).  A value that no longer fits its slot is
written to a new slot which replaces the old one in the chain with one store.
After a lock takeover (locks.py) `_repair(stripe)` re-walks the stripe's
chains, cuts a chain at the first bad link and recounts.

Locks: one robust lock per stripe, bucket b uses stripe b % nstripes.  They
are held only around a few struct reads/writes, never across I/O.
"""
import struct
import zlib

from asyncd.core import log
from shm.locks import Guard, LockSet
from shm.slots import CLASS_OF, MAX_ALLOC, SLOT_SIZES

_B = struct.Struct("<QII")          # bucket: head, next_label, count
_E = struct.Struct("<QIIHBxIIIq")   # entry header: next, label, hash, klen, cls, vlen, flags, expires, ival
_EH = 40
_NEXT = struct.Struct("<Q")
_NL = struct.Struct("<QI")          # next, label
_KV = struct.Struct("<HxxI")        # klen, vlen at +16
_META = struct.Struct("<IIq")       # flags, expires, ival at +24
_FLAGS = struct.Struct("<I")
_IVAL = struct.Struct("<q")

_crc = zlib.crc32
_U32 = struct.Struct("<I")
_SPIN = 16            # optimistic read attempts before taking the lock
_MAXHOP = 100000      # a chain longer than this is a torn read: retry
_HK = {}              # key length -> Struct(header + key), shared by all tables


def hk_struct(klen):
    st = _HK.get(klen)
    if st is None:
        st = _HK[klen] = struct.Struct(f"<QIIHBxIIIq{klen}s")
    return st


class _Torn(Exception):
    """An optimistic read saw a half-written structure: retry or take the lock."""


_hook = None   # tests only: called inside insert's critical section (kill -9 test)


class ShmHashTable:
    """Hash table of bytes keys -> (bytes value, ival, flags, expires).

    nbuckets is rounded up to a power of two.  All public methods take the
    stripe lock themselves; methods whose name starts with `_` and end in
    `_l` expect the caller to hold it (see htable.py for compound ops).
    Insert-type methods return None when the arena is full (logged).
    """

    def __init__(self, arena, nbuckets, nstripes=None, name="hashtable"):
        n = 1
        while n < nbuckets:
            n <<= 1
        self.nbuckets = n
        self.mask = n - 1
        if nstripes is None:
            nstripes = min(n, 256)
        s = 1
        while s < nstripes:
            s <<= 1
        self.nstripes = min(s, n)
        self.smask = self.nstripes - 1
        self.name = name
        self.arena = arena
        self.buf = arena.buf
        self.boff = arena.static_alloc(16 * n)
        self.locks = LockSet(arena, self.nstripes, f"{name} buckets", on_recover=self._repair)
        self._lock = self.locks.acquire
        self._unlock = self.locks.release
        self._seqo = [self.locks.seq_off(i) >> 2 for i in range(self.nstripes)]   # word index
        self._words = arena.words

    # -- helpers ----------------------------------------------------------------
    def index_of(self, key):
        return _crc(key) & self.mask

    _hash = staticmethod(_crc)

    def _set_meta_l(self, off, flags, ival):
        e0 = _META.unpack_from(self.buf, off + 24)[1]
        _META.pack_into(self.buf, off + 24, flags, e0, ival)

    def _new_entry(self, key, value, label, nxt, h, flags, expires, ival):
        klen = len(key)
        need = _EH + klen + len(value)
        if klen > 0xFFFF or need > MAX_ALLOC:
            log.err("shm", f"{self.name}: entry of {need} bytes is too large (max {MAX_ALLOC})")
            return 0
        off = self.arena.alloc(need)
        if not off:
            log.err("shm", f"{self.name}: out of shared memory storing {need} bytes (raise -m)")
            return 0
        buf = self.buf
        _E.pack_into(buf, off, nxt, label, h, klen, CLASS_OF[(need + 15) >> 4], len(value),
                     flags, expires, ival)
        o = off + _EH
        buf[o:o + klen] = key
        buf[o + klen:o + klen + len(value)] = value
        return off

    def _find_l(self, b, key, h):
        """(prev, off) of key in bucket b, prev 0 = bucket head; (., 0) if absent."""
        buf = self.buf
        prev = 0
        off = _NEXT.unpack_from(buf, self.boff + 16 * b)[0]
        klen = len(key)
        st = hk_struct(klen)
        while off:
            nxt, _lbl, eh, kl, _c, _vl, _f, _x, _i, k = st.unpack_from(buf, off)
            if eh == h and kl == klen and k == key:
                return prev, off
            prev = off
            off = nxt
        return prev, 0

    def _find_label_l(self, b, label):
        buf = self.buf
        prev = 0
        off = _NEXT.unpack_from(buf, self.boff + 16 * b)[0]
        while off:
            nxt, lbl = _NL.unpack_from(buf, off)
            if lbl == label:
                return prev, off
            prev = off
            off = nxt
        return prev, 0

    def _read(self, off):
        """-> (key, value, ival, flags, expires) of the entry at off."""
        buf = self.buf
        _n, _l, _h, kl, _c, vl, flags, expires, ival = _E.unpack_from(buf, off)
        if vl > MAX_ALLOC:
            raise _Torn
        o = off + _EH
        return bytes(buf[o:o + kl]), bytes(buf[o + kl:o + kl + vl]), ival, flags, expires

    def _value(self, off):
        buf = self.buf
        kl, vl = _KV.unpack_from(buf, off + 16)
        o = off + _EH + kl
        return bytes(buf[o:o + vl])

    def _link_l(self, b, key, value, h, flags, expires, ival):
        """Insert a new entry at the chain head; -> (off, label) or (0, 0)."""
        bo = self.boff + 16 * b
        head, label, count = _B.unpack_from(self.buf, bo)
        off = self._new_entry(key, value, label, head, h, flags, expires, ival)
        if not off:
            return 0, 0
        if _hook is not None:
            _hook(self, b, off)
        _B.pack_into(self.buf, bo, off, (label + 1) & 0xFFFFFFFF, count + 1)
        return off, label

    def _unlink_l(self, b, prev, off):
        buf = self.buf
        nxt = _NEXT.unpack_from(buf, off)[0]
        bo = self.boff + 16 * b
        head, label, count = _B.unpack_from(buf, bo)
        if prev:
            _NEXT.pack_into(buf, prev, nxt)
            _B.pack_into(buf, bo, head, label, count - 1 if count else 0)
        else:
            _B.pack_into(buf, bo, nxt, label, count - 1 if count else 0)
        self.arena.free(off)

    def _set_value_l(self, b, prev, off, value):
        """Replace the value of the entry at off; -> new off (may move) or 0 if full."""
        buf = self.buf
        nxt, label, h, kl, cls, vl, flags, expires, ival = _E.unpack_from(buf, off)
        need = _EH + kl + len(value)
        if need <= SLOT_SIZES[cls]:
            o = off + _EH + kl
            buf[o:o + len(value)] = value
            _U32.pack_into(buf, off + 20, len(value))
            return off
        key = bytes(buf[off + _EH:off + _EH + kl])
        noff = self._new_entry(key, value, label, nxt, h, flags, expires, ival)
        if not noff:
            return 0
        if prev:
            _NEXT.pack_into(buf, prev, noff)
        else:
            _NEXT.pack_into(buf, self.boff + 16 * b, noff)
        self.arena.free(off)
        return noff

    # -- public API ------------------------------------------------------------------
    def insert(self, key, value=b"", ival=0, flags=0, expires=0):
        """Add an entry (duplicates allowed, e.g. tm); -> (index, label) or None if full."""
        h = _crc(key)
        b = h & self.mask
        s = b & self.smask
        self._lock(s)
        try:
            off, label = self._link_l(b, key, value, h, flags, expires, ival)
        finally:
            self._unlock(s)
        return (b, label) if off else None

    def get(self, index, label):
        """-> (key, value, ival, flags, expires) or None.  Lock-free unless a writer
        is active on the stripe (seqlock read, see locks.py)."""
        buf = self.buf
        W = self._words
        so = self._seqo[index & self.smask]
        bo = self.boff + 16 * index
        for _ in range(_SPIN):
            s1 = W[so]
            if s1 & 1:
                continue
            try:
                off = _NEXT.unpack_from(buf, bo)[0]
                n = 0
                while off:
                    nxt, lbl = _NL.unpack_from(buf, off)
                    if lbl == label:
                        break
                    off = nxt
                    n += 1
                    if n > _MAXHOP:
                        raise _Torn
                r = self._read(off) if off else None
            except (struct.error, ValueError, IndexError, OverflowError, _Torn):  # torn optimistic read: retry
                continue
            if W[so] == s1:
                return r
        return self._get_locked(index, label)

    def _get_locked(self, index, label):
        s = index & self.smask
        self._lock(s)
        try:
            _p, off = self._find_label_l(index, label)
            return self._read(off) if off else None
        finally:
            self._unlock(s)

    def find(self, key):
        """First entry with this key -> (index, label, value, ival, flags, expires) or None.
        Lock-free unless a writer is active on the stripe."""
        h = _crc(key)
        b = h & self.mask
        buf = self.buf
        W = self._words
        so = self._seqo[b & self.smask]
        bo = self.boff + 16 * b
        klen = len(key)
        st = hk_struct(klen)
        for _ in range(_SPIN):
            s1 = W[so]
            if s1 & 1:
                continue
            try:
                off = _NEXT.unpack_from(buf, bo)[0]
                n = 0
                r = None
                while off:
                    nxt, lbl, eh, kl, _c, vl, fl, ex, iv, k = st.unpack_from(buf, off)
                    if eh == h and kl == klen and k == key:
                        if vl > MAX_ALLOC:
                            raise _Torn
                        o = off + _EH + kl
                        r = (b, lbl, buf[o:o + vl].tobytes(), iv, fl, ex)
                        break
                    off = nxt
                    n += 1
                    if n > _MAXHOP:
                        raise _Torn
            except (struct.error, ValueError, IndexError, OverflowError, _Torn):  # torn optimistic read: retry
                continue
            if W[so] == s1:
                return r
        return self._find_locked(key, h, b)

    def _find_locked(self, key, h, b):
        s = b & self.smask
        self._lock(s)
        try:
            _p, off = self._find_l(b, key, h)
            if not off:
                return None
            _k, value, ival, flags, expires = self._read(off)
            label = _NL.unpack_from(self.buf, off)[1]
        finally:
            self._unlock(s)
        return b, label, value, ival, flags, expires

    def update(self, index, label, value=None, ival=None, flags=None, expires=None):
        """Change fields of (index, label); None leaves a field as is. -> False if
        not found or the new value does not fit in shm."""
        s = index & self.smask
        self._lock(s)
        try:
            prev, off = self._find_label_l(index, label)
            if not off:
                return False
            if value is not None:
                off = self._set_value_l(index, prev, off, value)
                if not off:
                    return False
            if ival is not None or flags is not None or expires is not None:
                f0, e0, i0 = _META.unpack_from(self.buf, off + 24)
                _META.pack_into(self.buf, off + 24, f0 if flags is None else flags,
                                e0 if expires is None else expires, i0 if ival is None else ival)
            return True
        finally:
            self._unlock(s)

    def change_flags(self, index, label, set_mask=0, clear_mask=0, require=0, forbid=0):
        """Atomic flag transition for state machines (tm: suspended -> continuing).
        Applies only if all `require` bits are set and no `forbid` bit is set.
        -> old flags if applied, -1 if the condition failed, None if no such entry."""
        s = index & self.smask
        self._lock(s)
        try:
            _p, off = self._find_label_l(index, label)
            if not off:
                return None
            old = _FLAGS.unpack_from(self.buf, off + 24)[0]
            if (old & require) != require or (old & forbid):
                return -1
            _FLAGS.pack_into(self.buf, off + 24, (old | set_mask) & ~clear_mask)
            return old
        finally:
            self._unlock(s)

    def add_ival(self, index, label, delta):
        """Atomic ival += delta -> new value, or None if no such entry."""
        s = index & self.smask
        self._lock(s)
        try:
            _p, off = self._find_label_l(index, label)
            if not off:
                return None
            v = _IVAL.unpack_from(self.buf, off + 32)[0] + delta
            _IVAL.pack_into(self.buf, off + 32, v)
            return v
        finally:
            self._unlock(s)

    def delete(self, index, label):
        s = index & self.smask
        self._lock(s)
        try:
            prev, off = self._find_label_l(index, label)
            if not off:
                return False
            self._unlink_l(index, prev, off)
            return True
        finally:
            self._unlock(s)

    def delete_key(self, key):
        h = _crc(key)
        b = h & self.mask
        s = b & self.smask
        self._lock(s)
        try:
            prev, off = self._find_l(b, key, h)
            if not off:
                return False
            self._unlink_l(b, prev, off)
            return True
        finally:
            self._unlock(s)

    def iter_bucket(self, index):
        """Snapshot of bucket `index`: list of (label, key, value, ival, flags, expires)."""
        s = index & self.smask
        out = []
        self._lock(s)
        try:
            buf = self.buf
            off = _NEXT.unpack_from(buf, self.boff + 16 * index)[0]
            while off:
                nxt, label = _NL.unpack_from(buf, off)
                out.append((label,) + self._read(off))
                off = nxt
        finally:
            self._unlock(s)
        return out

    def bucket_count(self, index):
        return _B.unpack_from(self.buf, self.boff + 16 * index)[2]

    def count(self):
        """Entries in the table (sum of bucket counters; no locks, approximate under writes)."""
        return sum(_B.unpack_from(self.buf, self.boff + 16 * b)[2] for b in range(self.nbuckets))

    def clear(self):
        """Delete every entry (sht_reset)."""
        for s in range(self.nstripes):
            self._lock(s)
            try:
                for b in range(s, self.nbuckets, self.nstripes):
                    bo = self.boff + 16 * b
                    off, label, _c = _B.unpack_from(self.buf, bo)
                    _B.pack_into(self.buf, bo, 0, label, 0)
                    while off:
                        nxt = _NEXT.unpack_from(self.buf, off)[0]
                        self.arena.free(off)
                        off = nxt
            finally:
                self._unlock(s)

    def locked(self, index):
        """Context manager holding the stripe lock of bucket `index`."""
        return Guard(self.locks, index & self.smask)

    # -- recovery after a dead lock holder -----------------------------------------------
    def _repair(self, s):
        """Re-walk the chains of stripe s: cut at the first link that does not
        point at a plausible entry, fix the counters."""
        arena = self.arena
        lo = arena.data_off
        hi = arena.data_off + arena.npages * 65536
        cut = 0
        for b in range(s, self.nbuckets, self.nstripes):
            bo = self.boff + 16 * b
            head, label, _c = _B.unpack_from(self.buf, bo)
            prev, off, n, seen = 0, head, 0, set()
            while off:
                ok = lo <= off < hi and off not in seen and (_crc(
                    bytes(self.buf[off + _EH:off + _EH + _KV.unpack_from(self.buf, off + 16)[0]]))
                    & self.mask) == b
                if not ok:
                    if prev:
                        _NEXT.pack_into(self.buf, prev, 0)
                    else:
                        head = 0
                    cut += 1
                    break
                seen.add(off)
                n += 1
                prev = off
                off = _NEXT.unpack_from(self.buf, off)[0]
            _B.pack_into(self.buf, bo, head, label, n)
        if cut:
            log.warn("shm", f"{self.name}: repaired {cut} chain(s) of stripe {s}")
