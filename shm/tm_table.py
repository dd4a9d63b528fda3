"""The tm transaction table: fixed slot headers plus size-classed blobs in one
shared mapping, addressed by (tindex, tlabel) like Kamailio's cell hash.

Runs in: main process (created in tm's mod_init, before fork); udp receivers,
the tm `timer` process and async workers (lookups, updates, frees).

Why not one Python dict per process: every process must find every
transaction (docs/kamailio-tm.md: a request suspended in a receiver is resumed by an
async worker; its reply comes back to any receiver; its timers fire in the
`timer` process). Only bytes live here; asyncd/modules/tm/cell.py gives them meaning.

tindex is the slot number, tlabel a per-slot generation counter bumped on
every allocation, so a stale (tindex, tlabel) never reaches a recycled slot.
Requests are also found by a matching key (RFC 3261 17.2.3 branch key or the
RFC 2543 fallback key): a chained hash keyed by a 64-bit hash of the key,
confirmed against the key bytes stored at the head of the blob.

Byte layout (little endian), all in one anonymous MAP_SHARED mapping:

  [0:64)               table header: used u32, _ (8 bytes), full mark u32 (the
                       `used` count at which an insert last found no shm; 0: none),
                       refused u64 (no slot or no shm: insert raised
                       TableFull; changed under the allocator lock), 8 spare
  slot headers         nslots x 40 bytes:
      0 label u32 | 4 used u32 (bit 0 in use, bit 1 "done": tm's final reply
      sent, lets timers skip it lock-free; bit 2 "plain": the record names no
      other slot (tm: a compact wait-state cell, no ACK aliases), so its end is
      a delete with no read) | 8 keyhash i64 | 16 blob offset u64
      | 24 next i32 (bucket chain, -1 end) | 28 blen u32 | 32 deadline f64 (monotonic;
      +inf while the slot is free)
  bucket heads         nbuckets x i32 (-1 empty)
  free slot stack      top i32, then nslots x i32
  blob (arena slot)    keylen u16 | key | payload (tm cell msgpack)

Lock-free readers (get() from any process, the sweep) never see a torn
header: a live slot's offset, length and deadline change only through
single aligned stores (struct.pack_into zero-fills before writing, see the
shm notes in docs/contracts.md), and get() re-reads the header after copying
the blob and retries when it moved. Chains are matched on the 64-bit key
hash alone (SipHash, seeded per run), so a lookup never reads a blob that a
concurrent put() may be freeing.

A process killed inside insert() or delete() (docs/contracts.md, shm): chains
change by single stores, so they stay whole; a slot it had taken off the free
stack but not linked, or unlinked but not pushed back, would be lost for good,
so a free slot off the stack carries the pid of the process handling it in
its keyhash word (a free slot's keyhash is read by nobody) and, after a
takeover of a bucket stripe or the allocator lock, `_reclaim_l` pushes back
every such slot whose process is dead and recounts.  A slot linked but not
yet chained (or unchained, not yet freed) stays live and tm's sweep frees it
at its deadline.

Locks (robust, shm/locks.py, created before fork): bucket stripes guard chains,
slot stripes (re-entrant: a failure route relaying again re-enters its own
transaction) guard slot contents, one allocator lock guards the free stacks.
Order: bucket -> slot -> alloc; never the reverse. None is held across I/O by
this module; tm holds a slot stripe only while updating its cell (and while
a failure/resumed route runs, as Kamailio holds the reply lock, docs/kamailio-tm.md §3).
"""
import struct
import time

from asyncd.core import log
from shm.locks import LockSet, current_pid, pid_alive
from shm.slots import CLASS_OF, SLOT_SIZES

_HDR = struct.Struct("<IIqQiId")          # one slot header, 40 bytes
_I32 = struct.Struct("<i")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_H_MARK, _H_REFUSED = 12, 16     # header offsets (see the layout above)
_DONE, _PLAIN = 2, 4         # bits of a slot's `used` word (bit 0: in use)
_NEVER = float("inf")       # a free slot's deadline: the sweep's min() skips it
_PID_MAX = 1 << 22          # Linux's pid_max ceiling: a larger keyhash is a key's hash, not a pid

N_BUCKET_LOCKS = 64
N_SLOT_LOCKS = 512


class TableFull(Exception):
    """No free slot or no shm for the blob: the request gets a 500, never a hang."""


NSLOTS_MAX = 131072
BYTES_PER_SLOT = 896        # of -m: a wait-state cell's compact record (512) and its slot (48), with room


def default_nslots(arena):
    """One slot per BYTES_PER_SLOT of the arena (-m), a multiple of 1024
    between 1024 and NSLOTS_MAX, and at most what 65% of the free static area
    holds (48 bytes a slot: header, bucket head, free-stack entry).

    Why that many: a non-INVITE transaction stays wt_timer (5 s) after its
    reply, so 14,000 requests/s keep 70,000 cells alive; stored in their
    compact wait-state form (asyncd/modules/tm/cell.py COMPACT_WHEN, ~400-500
    bytes: a 512-byte slot), the default -m 64 holds 74,752 of them (3.6 MiB
    of slots in the 6 MiB static area, shm/arena.py static_default; 37 MiB of
    records in the 58 MiB of pages). Nothing needs a power of two."""
    free = arena.static_end - _U64top(arena)
    n = min(arena.size // BYTES_PER_SLOT, (free * 65 // 100) // 48) // 1024 * 1024
    return max(1024, min(NSLOTS_MAX, n))


def _U64top(arena):
    return struct.unpack_from("<Q", arena.buf, 16)[0]


class TmTable:
    def __init__(self, arena, nslots=None, nbuckets=None):
        self.arena = arena
        self.nslots = nslots = nslots or default_nslots(arena)
        self.nbuckets = nbuckets or nslots
        size = 64 + nslots * _HDR.size + self.nbuckets * 4 + 4 + nslots * 4
        base = arena.static_alloc(size, align=64)
        self.o_hdr = base
        self.o_slots = base + 64
        self.o_buckets = self.o_slots + nslots * _HDR.size
        self.o_free = self.o_buckets + self.nbuckets * 4
        self.buf = arena.buf
        self.w32 = arena.words
        self.w64 = arena.qwords
        self.f64 = arena.doubles
        self.bucket_locks = LockSet(arena, N_BUCKET_LOCKS, "tm buckets", on_recover=self._recover)
        # a cell's stripe guards its payload only: nothing structural to repair
        self.slot_locks = LockSet(arena, N_SLOT_LOCKS, "tm cells")
        self.alloc_lock = LockSet(arena, 1, "tm slots", on_recover=lambda _i: self._reclaim_l())
        self._format()

    def _format(self):
        b = self.buf
        b[self.o_hdr:self.o_hdr + 64] = bytes(64)
        empty = _HDR.pack(0, 0, 0, 0, -1, 0, _NEVER)
        b[self.o_slots:self.o_slots + self.nslots * 40] = empty * self.nslots
        b[self.o_buckets:self.o_buckets + self.nbuckets * 4] = b"\xff" * (self.nbuckets * 4)
        # the free stack pops slot 0 first
        _I32.pack_into(b, self.o_free, self.nslots)
        struct.pack_into("<%di" % self.nslots, b, self.o_free + 4, *range(self.nslots - 1, -1, -1))

    # ---- slot allocator (alloc_lock held) -----------------------------------
    def _pop_slot(self):
        top = _I32.unpack_from(self.buf, self.o_free)[0]
        if top <= 0:
            self._bump(_H_REFUSED)      # the table is full: counted, insert raises TableFull
            return -1
        top -= 1
        idx = _I32.unpack_from(self.buf, self.o_free + 4 + top * 4)[0]
        self.w64[(self.o_slots + idx * 40 + 8) >> 3] = current_pid()    # before it leaves the stack
        _I32.pack_into(self.buf, self.o_free, top)
        used = _U32.unpack_from(self.buf, self.o_hdr)[0]
        _U32.pack_into(self.buf, self.o_hdr, used + 1)
        return idx

    def _push_slot(self, idx):
        top = _I32.unpack_from(self.buf, self.o_free)[0]
        _I32.pack_into(self.buf, self.o_free + 4 + top * 4, idx)
        _I32.pack_into(self.buf, self.o_free, top + 1)
        used = _U32.unpack_from(self.buf, self.o_hdr)[0]
        _U32.pack_into(self.buf, self.o_hdr, used - 1)
        if _U32.unpack_from(self.buf, self.o_hdr + _H_MARK)[0]:
            _U32.pack_into(self.buf, self.o_hdr + _H_MARK, 0)   # room again: the next insert tries

    def _reclaim_l(self):
        """Push back the free slots off the stack whose handling process is dead;
        recount (alloc_lock held).  Keyhash words are read before the used
        words: an insert stores used before keyhash (x86 keeps store order), so
        a keyhash that is no longer a pid comes with used != 0."""
        buf = self.buf
        n = self.nslots
        top = _I32.unpack_from(buf, self.o_free)[0]
        free = set(struct.unpack_from("<%di" % top, buf, self.o_free + 4))
        region = buf[self.o_slots:self.o_slots + n * 40]
        owners = region.cast("q")[1::5].tolist()
        used = region.cast("I")[1::10].tolist()
        back = [i for i in range(n) if not used[i] and i not in free
                and 0 < owners[i] < _PID_MAX and not pid_alive(owners[i])]
        for j, i in enumerate(back):
            _I32.pack_into(buf, self.o_free + 4 + (top + j) * 4, i)
        _I32.pack_into(buf, self.o_free, top + len(back))
        _U32.pack_into(buf, self.o_hdr, n - top - len(back))
        if back:
            log.warn("tm", f"{len(back)} transaction slot(s) of dead processes reclaimed")

    def _recover(self, _stripe):
        """A bucket stripe's holder died (inside insert or delete)."""
        self.alloc_lock.acquire(0)
        try:
            self._reclaim_l()
        finally:
            self.alloc_lock.release(0)

    # ---- public API -------------------------------------------------------
    def lock(self, index):
        self.slot_locks.acquire(index % N_SLOT_LOCKS)

    def held_here(self, index):
        """This process already holds the stripe of `index` (a second take
        would deadlock: LockSet is not re-entrant)."""
        return self.slot_locks.held_here(index % N_SLOT_LOCKS)

    def unlock(self, index):
        self.slot_locks.release(index % N_SLOT_LOCKS)

    @staticmethod
    def key_hash(key):
        # hash() of bytes is seeded once in main; every child is forked from it
        return hash(key) or 1

    def insert(self, key, payload, deadline, headroom=0):
        """Add a transaction unless one with `key` exists. `payload` is bytes,
        or a callable(index, label) -> bytes when the record must name its own
        slot (tm's Via branch); it runs under the bucket lock, so keep it short.
        `headroom`: bytes the record is expected to grow by (tm: the reply it
        will store), so that put() does not have to move it later.
        Returns (created, index, label). Raises TableFull."""
        kh = hash(key) or 1
        bucket = kh % self.nbuckets
        bl = self.bucket_locks
        stripe = bucket % N_BUCKET_LOCKS
        bl.acquire(stripe)
        try:
            found = self._find_locked(bucket, kh, key)
            if found is not None:
                return (False,) + found
            self.alloc_lock.acquire(0)
            idx = self._pop_slot()
            self.alloc_lock.release(0)
            if idx < 0:
                raise TableFull("transaction table full (%d slots)" % self.nslots)
            hoff = self.o_slots + idx * 40
            label = (_U32.unpack_from(self.buf, hoff)[0] + 1) & 0xFFFFFFFF or 1
            try:
                if callable(payload):
                    payload = payload(idx, label)
                blob = _U16.pack(len(key)) + key + payload
                off = self.arena.alloc(len(blob) + headroom)
                if not off:
                    raise TableFull("no shm for a %d byte transaction; raise -m" % len(blob))
            except BaseException as e:
                self.alloc_lock.acquire(0)
                self._push_slot(idx)
                if isinstance(e, TableFull):
                    self._bump(_H_REFUSED)
                    _U32.pack_into(self.buf, self.o_hdr + _H_MARK, max(1, self.count()))
                self.alloc_lock.release(0)
                raise
            self.buf[off:off + len(blob)] = blob
            # the slot is invisible until linked: a stale (index, label) holder
            # sees the new label, never a half-written header (one memcpy)
            boff = self.o_buckets + bucket * 4
            head = _I32.unpack_from(self.buf, boff)[0]
            _HDR.pack_into(self.buf, hoff, label, 1, kh, off, head, len(blob), deadline)
            _I32.pack_into(self.buf, boff, idx)
        finally:
            bl.release(stripe)
        return True, idx, label

    def _find_locked(self, bucket, kh, key):
        buf = self.buf
        idx = _I32.unpack_from(buf, self.o_buckets + bucket * 4)[0]
        while idx >= 0:
            label, used, h, _, nxt, _, _ = _HDR.unpack_from(buf, self.o_slots + idx * 40)
            if used and h == kh:
                return idx, label
            idx = nxt
        return None

    def find(self, key):
        """(index, label) of the transaction matching `key`, or None."""
        kh = hash(key) or 1
        bucket = kh % self.nbuckets
        stripe = bucket % N_BUCKET_LOCKS
        self.bucket_locks.acquire(stripe)
        try:
            return self._find_locked(bucket, kh, key)
        finally:
            self.bucket_locks.release(stripe)

    def get(self, index, label):
        """The payload bytes, or None when (index, label) is gone. Callers that
        will write back hold lock(index)."""
        if not 0 <= index < self.nslots:
            return None
        hoff = self.o_slots + index * 40
        buf = self.buf
        for _ in range(8):
            lab, used, _, off, _, blen, _ = _HDR.unpack_from(buf, hoff)
            if not used or lab != label:
                return None
            try:
                klen = _U16.unpack_from(buf, off)[0]
                data = bytes(buf[off + 2 + klen:off + blen])
            except (ValueError, struct.error, OverflowError, IndexError):  # torn read: retry
                data = None
            lab2, used2, _, off2, _, blen2, _ = _HDR.unpack_from(buf, hoff)
            if (lab2, used2, off2, blen2) == (lab, used, off, blen) and data is not None:
                return data
        return None

    def put(self, index, label, payload, deadline=None, done=False, fit=False, plain=False):
        """Replace the payload (lock(index) held). False if gone. Raises TableFull.
        done: set the header's "done" bit, plain its "plain" bit (never
        cleared). fit: move the record
        to the smallest size class that holds it (tm's wait-state record, kept
        for wt_timer: its slot is what the table costs per transaction); else
        it moves only when it outgrew its slot or uses a third of it."""
        hoff = self.o_slots + index * 40
        lab, used, kh, off, nxt, blen, dl = _HDR.unpack_from(self.buf, hoff)
        if not used or lab != label:
            return False
        klen = _U16.unpack_from(self.buf, off)[0]
        n = 2 + klen + len(payload)
        cap = self.arena.slot_size(off)
        old = 0
        if n > cap or n <= cap // 3 or fit and SLOT_SIZES[CLASS_OF[(n + 15) >> 4]] < cap:
            noff = self.arena.alloc(n)
            if not noff:
                raise TableFull("no shm for a %d byte transaction; raise -m" % n)
            self.buf[noff:noff + 2 + klen] = self.buf[off:off + 2 + klen]
            old, off = off, noff
        self.buf[off + 2 + klen:off + n] = payload
        # single aligned stores, never a zero-filling pack over a live header
        self.w64[(hoff + 16) >> 3] = off
        self.w32[(hoff + 28) >> 2] = n
        if deadline is not None:
            self.f64[(hoff + 32) >> 3] = deadline
        bits = used | (_DONE if done else 0) | (_PLAIN if plain else 0)
        if bits != used:
            self.w32[(hoff + 4) >> 2] = bits
        if old:
            self.arena.free(old)
        return True

    def delete(self, index, label):
        """Unlink and free. Returns False if (index, label) is already gone.
        Never called with lock(index) held by the caller (lock order)."""
        if not 0 <= index < self.nslots:
            return False
        buf = self.buf
        hoff = self.o_slots + index * 40
        lab, used, kh, _, _, _, _ = _HDR.unpack_from(buf, hoff)
        if not used or lab != label:
            return False
        bucket = kh % self.nbuckets
        stripe = bucket % N_BUCKET_LOCKS
        self.bucket_locks.acquire(stripe)
        self.slot_locks.acquire(index % N_SLOT_LOCKS)
        try:
            lab, used, kh, off, nxt, _, _ = _HDR.unpack_from(buf, hoff)
            if not used or lab != label:
                return False
            boff = self.o_buckets + bucket * 4
            cur = _I32.unpack_from(buf, boff)[0]
            if cur == index:
                _I32.pack_into(buf, boff, nxt)
            else:
                while cur >= 0:
                    coff = self.o_slots + cur * 40 + 24
                    cnext = _I32.unpack_from(buf, coff)[0]
                    if cnext == index:
                        _I32.pack_into(buf, coff, nxt)
                        break
                    cur = cnext
            # who frees it, before it stops being live (it is out of its chain
            # already: a second delete() that takes this pid for the keyhash
            # looks in another bucket, unlinks nothing and finishes the job)
            pid = current_pid()
            self.w64[(hoff + 8) >> 3] = pid
            self.w32[(hoff + 4) >> 2] = 0          # used = 0 first: lock-free readers stop here
            _HDR.pack_into(buf, hoff, lab, 0, pid, 0, -1, 0, _NEVER)
            self.arena.free(off)
            self.alloc_lock.acquire(0)
            self._push_slot(index)
            self.alloc_lock.release(0)
        finally:
            self.slot_locks.release(index % N_SLOT_LOCKS)
            self.bucket_locks.release(stripe)
        return True

    def is_done(self, index, label):
        """Lock-free: the slot still holds (index, label) and its done bit is set."""
        lab, used = struct.unpack_from("<II", self.buf, self.o_slots + index * 40)
        return lab == label and used & _DONE

    def is_plain(self, index, label):
        """Lock-free: the slot still holds (index, label) and its plain bit is
        set (its owner may delete it without reading it)."""
        lab, used = struct.unpack_from("<II", self.buf, self.o_slots + index * 40)
        return lab == label and used & _PLAIN

    def count(self):
        """Transactions (and ACK aliases) currently held."""
        return _U32.unpack_from(self.buf, self.o_hdr)[0]

    def is_full(self):
        """No free slot left, or the last insert found no shm for its record
        and no transaction has ended since (lock-free reads: a hint, the
        insert decides)."""
        used = _U32.unpack_from(self.buf, self.o_hdr)[0]
        mark = _U32.unpack_from(self.buf, self.o_hdr + _H_MARK)[0]
        return used >= self.nslots or (mark and used >= mark)

    def _bump(self, off):
        """alloc_lock held."""
        o = self.o_hdr + off
        _U64.pack_into(self.buf, o, _U64.unpack_from(self.buf, o)[0] + 1)

    def overload(self):
        """{"refused": inserts that found the table full} (tm counts its 503s itself)."""
        return {"refused": _U64.unpack_from(self.buf, self.o_hdr + _H_REFUSED)[0]}

    def expired(self, now=None):
        """(index, label) of every slot whose deadline has passed: the sweep's
        safety net, so nothing outlives its end of life whatever was lost."""
        now = time.monotonic() if now is None else now
        # the deadline column as one C-speed list (f64 at byte 32 of each
        # 40-byte header): the timer runs this every second over ~47,000
        # slots at -m 64, a per-header unpack loop cost it ~12 ms a time
        n = self.nslots
        region = self.buf[self.o_slots:self.o_slots + n * 40]
        dls = region.cast("d")[4::5].tolist()
        if min(dls) >= now:
            return []       # the usual answer, at C speed: a free slot's deadline is _NEVER
        used = region.cast("I")[1::10].tolist()
        labels = region.cast("I")[0::10]
        return [(i, labels[i]) for i, (u, dl) in enumerate(zip(used, dls)) if u and dl < now]

    def still_expired(self, index, label, now):
        """Re-check a sweep candidate under its lock (the sweep read lock-free)."""
        self.lock(index)
        try:
            lab, used, _, _, _, _, dl = _HDR.unpack_from(self.buf, self.o_slots + index * 40)
            return bool(used) and lab == label and dl < now
        finally:
            self.unlock(index)
