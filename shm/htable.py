"""The htable store: named shared hash tables of int/str values ($sht).

Runs in: main process (creation in htable's mod_init), udp receivers and
async workers ($sht get/set), the "htable timer" process (expiry).

Built on ShmHashTable (hashtable.py): one entry per key, entry `flags` bit 0
= string value (utf-8 in the value bytes), else the int lives in `ival`
(so `$sht(a=>x) = 5` reads back as the int 5, `"5"` as the string "5").
`expires` is an absolute time in ticks of 1/16 s on CLOCK_MONOTONIC (shared
by all processes, immune to wall-clock steps), 0 = never.

Autoexpire without full scans: an expiry wheel of WHEEL one-second slots.
Every entry of an autoexpire table owns one ticket in the slot of its expiry
second; refreshing an entry only moves its `expires` later (the ticket stays).
When the timer reaches a slot it takes the slot's whole chain, and per
ticket: entry gone -> drop ticket; entry due -> delete it; entry refreshed ->
re-file the ticket under the new second.  Work is proportional to the
entries that come due, never to the table size.  Reads never return an
expired entry (checked on access, as Kamailio's ht_cell_pkg_copy does), so
the timer only reclaims memory and its period does not affect correctness.

A process killed at any point never leaves an entry without a ticket (it
would never be reclaimed, nor reach event_route[htable:expired]): a new
entry's ticket is filed before the entry is linked, and a pass moves the
slot's chain to a pending head in shm (not a local variable), takes each
ticket off it only once the ticket is dealt with, and re-files on a new
ticket.  A dead pass's leftovers are drained by the next one (the pass lock
is robust; `_repair_pass` clears a slot whose chain the pass had copied but
not yet cleared).  The worst a death costs is a duplicate ticket, or one
expired event.

Ticket (arena slot, 32-byte class):
    0   8  u64 next ticket in the wheel slot chain
    8   4  u32 bucket
    12  4  u32 label
    16  4  u32 expires (ticks) when filed

Wheel (static area): WHEEL x u64 chain heads, guarded by WLOCKS stripes.
Pass (static area, 16 bytes, guarded by the pass lock):
    0   8  u64 pending: the tickets the running pass took from the wheel
    8   4  u32 wheel slot + 1 whose chain is being moved to pending (0 = none)

Semantics follow Kamailio's htable (src/modules/htable/ht_api.c, ht_var.c):
missing key reads $null, or initval when the table has one; $shtinc on a
missing key creates initval+1 only with initval, else $null; on a string
value $null; $shtex is only meaningful on autoexpire tables.
"""
import os
import re
import struct
import time
import weakref

from asyncd.core import log
from shm.hashtable import ShmHashTable, _EH, _E, _NEXT, _KV, _SPIN, _MAXHOP, _Torn, hk_struct
from shm.locks import LockSet
from shm.slots import MAX_ALLOC, SLOT_SIZES

TICKS = 16
MAX_EXPIRE = 3 * 365 * 86400   # u32 ticks hold ~8.5 years of CLOCK_MONOTONIC (uptime + expiry)
WHEEL = 256
WLOCKS = 8
MIN_BUCKETS = 1024   # Kamailio's default size=4 (16 slots) is far too few for chained Python walks

F_STR = 1
_MFI = struct.Struct("<IIq")         # flags, expires, ival at +24
_VMFI = struct.Struct("<IIIq")       # vlen, flags, expires, ival at +20
_KCVFE = struct.Struct("<HBxIII")    # klen, cls, vlen, flags, expires at +16
_EXP = struct.Struct("<I")
_TK = struct.Struct("<QIII")
_PEND = struct.Struct("<QI")
_U32 = struct.Struct("<I")
_crc = __import__("zlib").crc32
_mono = time.monotonic


_I64 = 1 << 63


def _wrap(n):
    """Two's complement 64-bit, as Kamailio's long arithmetic."""
    return ((n + _I64) % (1 << 64)) - _I64


def now_ticks():
    return int(_mono() * TICKS)


def _enc(v):
    try:
        return v.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        # a lone surrogate that surrogateescape cannot map: keep it, never raise
        return v.encode("utf-8", "surrogatepass")


_KC = {}        # per-process cache: key -> (bytes, crc32, header+key Struct, len)
_KC_MAX = 8192


def _key(key):
    """Script keys repeat a lot: encode and hash each once per process."""
    c = _KC.get(key)
    if c is None:
        kb = _enc(key if type(key) is str else str(key))
        if len(_KC) >= _KC_MAX:
            _KC.clear()
        c = _KC[key] = (kb, _crc(kb), hk_struct(len(kb)), len(kb))
    return c


def _dec(b):
    return b.decode("utf-8", "surrogateescape")


class HTable:
    """One named table.  Values: int or str; None means $null (delete)."""

    def __init__(self, arena, name, size=4, autoexpire=0, initval=None, updateexpire=1,
                 nstripes=None, nbuckets=None):
        nb = nbuckets or max(1 << max(1, min(size, 31)), MIN_BUCKETS)
        self.name = name
        self.size = size
        self.arena = arena
        self.autoexpire = autoexpire
        self.exp_ticks = min(autoexpire, MAX_EXPIRE) * TICKS
        self.initval = initval
        self.updateexpire = updateexpire
        self.t = t = ShmHashTable(arena, nb, nstripes or min(nb, 64), f"htable {name}")
        self.buf = arena.buf
        self._mask = t.mask
        self._smask = t.smask
        self._boff = t.boff
        self._lock = t.locks.acquire
        self._unlock = t.locks.release
        self._seqo = t._seqo
        self._words = arena.words
        # sht_lock/sht_unlock: separate robust locks so a script holding one never
        # blocks the internal bucket locks (Kamailio uses recursive slot locks)
        self.ulocks = LockSet(arena, 16, f"htable {name} sht_lock")
        self._uheld = {}
        _tables.add(self)
        if autoexpire:
            self.woff = arena.static_alloc(8 * WHEEL)
            self.wlocks = LockSet(arena, WLOCKS, f"htable {name} expiry")
            self.poff = arena.static_alloc(16)
            self.plock = LockSet(arena, 1, f"htable {name} expiry pass", on_recover=self._repair_pass)
            self._last_sec = None

    # -- lookups -------------------------------------------------------------------------
    def _locate(self, c, b):
        """Entry offset for cached key c in bucket b (stripe lock held), 0 if absent."""
        kb, h, st, klen = c
        buf = self.buf
        off = _NEXT.unpack_from(buf, self._boff + 16 * b)[0]
        while off:
            r = st.unpack_from(buf, off)
            if r[2] == h and r[3] == klen and r[9] == kb:
                return off
            off = r[0]
        return 0

    def _live(self, off):
        """Entry fields (flags, expires, ival) or None if it has expired."""
        fl, ex, iv = _MFI.unpack_from(self.buf, off + 24)
        if ex and ex <= int(_mono() * TICKS):
            return None
        return fl, ex, iv

    def get(self, key):
        """$sht read: lock-free (seqlock, see locks.py) unless a writer is on the stripe."""
        c = _KC.get(key) or _key(key)
        kb, h, st, klen = c
        b = h & self._mask
        buf = self.buf
        W = self._words
        so = self._seqo[b & self._smask]
        bo = self._boff + 16 * b
        for _ in range(_SPIN):
            s1 = W[so]
            if s1 & 1:
                continue
            try:
                off = _NEXT.unpack_from(buf, bo)[0]
                n = 0
                r = None
                while off:
                    nxt, _l, eh, kl, _c, vl, fl, ex, iv, k = st.unpack_from(buf, off)
                    if eh == h and kl == klen and k == kb:
                        if ex and ex <= int(_mono() * TICKS):
                            r = None
                        elif fl & F_STR:
                            if vl > MAX_ALLOC:
                                raise _Torn
                            o = off + _EH + kl
                            r = buf[o:o + vl].tobytes()
                        else:
                            r = iv
                        break
                    off = nxt
                    n += 1
                    if n > _MAXHOP:
                        raise _Torn
            except (struct.error, ValueError, IndexError, OverflowError, _Torn):  # torn optimistic read: retry
                continue
            if W[so] == s1:
                if r is None:
                    return self.initval
                return _dec(r) if type(r) is bytes else r
        return self._get_locked(c, b)

    def get_locked(self, key):
        """get() through the stripe lock (benchmarks compare it with the lock-free path)."""
        c = _KC.get(key) or _key(key)
        return self._get_locked(c, c[1] & self._mask)

    def _get_locked(self, c, b):
        s = b & self._smask
        self._lock(s)
        try:
            off = self._locate(c, b)
            if off:
                buf = self.buf
                fl, ex, iv = _MFI.unpack_from(buf, off + 24)
                if ex and ex <= now_ticks():
                    pass
                elif fl & F_STR:
                    kl, vl = _KV.unpack_from(buf, off + 16)
                    o = off + _EH + kl
                    return _dec(buf[o:o + vl].tobytes())
                else:
                    return iv
        finally:
            self._unlock(s)
        return self.initval

    def set(self, key, value):
        """-> True, or False when shared memory is full (logged)."""
        if value is None:
            self.delete(key)
            return True
        c = _KC.get(key) or _key(key)
        kb, h = c[0], c[1]
        if type(value) is int:
            flags, vb, iv = 0, b"", value
            if not -_I64 <= iv < _I64:
                iv = _wrap(iv)
        else:
            flags, vb, iv = F_STR, _enc(value if type(value) is str else str(value)), 0
        b = h & self._mask
        s = b & self._smask
        t = self.t
        self._lock(s)
        try:
            off = self._locate(c, b)
            buf = self.buf
            if off:
                kl, cls, _vl, fl, ex = _KCVFE.unpack_from(buf, off + 16)
                if self.exp_ticks and (self.updateexpire or (ex and ex <= now_ticks())):
                    ex = now_ticks() + 1 + self.exp_ticks
                if not vb and not fl & F_STR:
                    _MFI.pack_into(buf, off + 24, flags, ex, iv)
                elif _EH + kl + len(vb) <= SLOT_SIZES[cls]:
                    o = off + _EH + kl
                    buf[o:o + len(vb)] = vb
                    _VMFI.pack_into(buf, off + 20, len(vb), flags, ex, iv)
                else:
                    off = t._set_value_l(b, self._prev_of(b, off), off, vb)
                    if not off:
                        return self._full(key)
                    _MFI.pack_into(buf, off + 24, flags, ex, iv)
            else:
                ex = now_ticks() + 1 + self.exp_ticks if self.exp_ticks else 0
                self._ticket_first(b, ex)
                off, _label = t._link_l(b, kb, vb, h, flags, ex, iv)
                if not off:
                    return self._full(key)
        finally:
            self._unlock(s)
        return True

    def _ticket_first(self, b, ex):
        """File the ticket of the entry about to be linked into bucket b (stripe
        lock held): a death in between leaves a ticket for nothing, which the
        pass drops, never an entry without one."""
        if ex:
            self._file_ticket(0, b, _U32.unpack_from(self.buf, self._boff + 16 * b + 8)[0], ex)

    def _prev_of(self, b, target):
        buf = self.buf
        prev = 0
        off = _NEXT.unpack_from(buf, self._boff + 16 * b)[0]
        while off and off != target:
            prev = off
            off = _NEXT.unpack_from(buf, off)[0]
        return prev

    def _full(self, key):
        log.err("htable", f"$sht({self.name}=>{key}): out of shared memory, value not stored (raise -m)")
        return False

    def delete(self, key):
        return self.t.delete_key((_KC.get(key) or _key(key))[0])

    def incr(self, key, delta):
        """$shtinc/$shtdec: atomic add -> new int, or None ($null)."""
        c = _KC.get(key) or _key(key)
        kb, h = c[0], c[1]
        b = h & self._mask
        s = b & self._smask
        self._lock(s)
        try:
            off = self._locate(c, b)
            buf = self.buf
            if off:
                fl, ex, iv = _MFI.unpack_from(buf, off + 24)
                if ex and ex <= now_ticks():
                    # expired: restart from initval, as ht_cell_value_add does
                    if self.initval is None:
                        return None
                    fl, iv = 0, self.initval
                    ex = now_ticks() + 1 + self.exp_ticks
                elif fl & F_STR:
                    return None
                elif self.exp_ticks and self.updateexpire:
                    ex = now_ticks() + 1 + self.exp_ticks
                iv += delta
                if not -_I64 <= iv < _I64:
                    iv = _wrap(iv)
                _MFI.pack_into(buf, off + 24, fl, ex, iv)
                return iv
            if self.initval is None:
                return None
            iv = _wrap(self.initval + delta)
            ex = now_ticks() + 1 + self.exp_ticks if self.exp_ticks else 0
            self._ticket_first(b, ex)
            off, _label = self.t._link_l(b, kb, b"", h, 0, ex, iv)
            if not off:
                self._full(key)
                return None
        finally:
            self._unlock(s)
        return iv

    # -- expiry ------------------------------------------------------------------
    def get_expire(self, key):
        """$shtex read: seconds left (0: no autoexpire, never, or missing)."""
        if not self.exp_ticks:
            return 0
        kb = _enc(str(key))
        r = self.t.find(kb)
        if r is None or not r[5]:
            return 0
        left = r[5] - now_ticks()
        return max(0, (left + TICKS // 2) // TICKS)

    def set_expire(self, key, seconds):
        """$shtex write: expire `seconds` from now (0 = never); autoexpire tables only."""
        if not self.exp_ticks:
            return True
        kb = _enc(str(key))
        seconds = min(seconds, MAX_EXPIRE)       # keep it inside the u32 tick field
        ex = now_ticks() + 1 + seconds * TICKS if seconds > 0 else 0
        r = self.t.find(kb)
        if r is None:
            return True
        b, label = r[0], r[1]
        if not self.t.update(b, label, expires=ex):
            return True
        if ex:
            self._file_ticket(0, b, label, ex)
        return True

    def _file_ticket(self, toff, b, label, ex):
        """Put a ticket (new if toff is 0) into the wheel slot of second ex//TICKS."""
        if not toff:
            toff = self.arena.alloc(24)
            if not toff:
                log.err("htable", f"{self.name}: out of shared memory for an expiry ticket"
                        " (the entry still expires on access)")
                return
        slot = (ex // TICKS) % WHEEL
        ls = slot % WLOCKS
        wl = self.wlocks
        wl.acquire(ls)
        try:
            ho = self.woff + 8 * slot
            head = _NEXT.unpack_from(self.buf, ho)[0]
            _TK.pack_into(self.buf, toff, head, b, label, ex)
            _NEXT.pack_into(self.buf, ho, toff)
        finally:
            wl.release(ls)

    def expire_tick(self, now=None, expired=None):
        """Reclaim entries whose expiry second has fully passed. -> entries removed.
        expired: a list to append the removed (key, value) pairs to (for
        event_route[htable:expired:NAME]); None when nobody wants them."""
        if not self.exp_ticks:
            return 0
        now = now_ticks() if now is None else now
        cur = now // TICKS
        last = self._last_sec
        if last is None:
            last = cur - WHEEL
        first = max(last + 1, cur - WHEEL)
        self.plock.acquire(0)
        try:
            removed = self._drain(now, expired)      # what a killed pass left
            for sec in range(first, cur):
                removed += self._expire_slot(sec % WHEEL, now, expired)
        finally:
            self.plock.release(0)
        self._last_sec = cur - 1
        return removed

    def _expire_slot(self, slot, now, expired=None):
        """Move the slot's chain to the pending head, then drain it (pass lock held)."""
        ls = slot % WLOCKS
        ho = self.woff + 8 * slot
        buf = self.buf
        self.wlocks.acquire(ls)
        try:
            chain = _NEXT.unpack_from(buf, ho)[0]
            if chain:
                # pending first: a death before the slot is cleared leaves the chain
                # in both, and _repair_pass clears the slot
                _PEND.pack_into(buf, self.poff, chain, slot + 1)
                _NEXT.pack_into(buf, ho, 0)
                _U32.pack_into(buf, self.poff + 8, 0)
        finally:
            self.wlocks.release(ls)
        return self._drain(now, expired)

    def _drain(self, now, expired):
        """Deal with every pending ticket; each leaves pending only when done."""
        buf = self.buf
        t = self.t
        removed = 0
        toff = _NEXT.unpack_from(buf, self.poff)[0]
        while toff:
            nxt, b, label, _tex = _TK.unpack_from(buf, toff)
            s = b & self._smask
            refile = 0
            self._lock(s)
            try:
                prev, off = t._find_label_l(b, label)
                if off:
                    ex = _EXP.unpack_from(buf, off + 28)[0]
                    if ex and ex <= now:
                        if expired is not None:
                            kb, vb, iv, fl, _e = t._read(off)
                            expired.append((_dec(kb), _dec(vb) if fl & F_STR else iv))
                        t._unlink_l(b, prev, off)
                        removed += 1
                    elif ex:
                        refile = ex
            finally:
                self._unlock(s)
            if refile:
                # a new ticket before this one leaves pending: never none, at worst two
                self._file_ticket(0, b, label, refile)
            _NEXT.pack_into(buf, self.poff, nxt)
            self.arena.free(toff)
            toff = nxt
        return removed

    def _repair_pass(self, _i):
        """The pass lock's holder died: if it died between copying a slot's chain
        to pending and clearing the slot, clear the slot (pending is drained next)."""
        buf = self.buf
        pending, ps = _PEND.unpack_from(buf, self.poff)
        if not ps:
            return
        slot = ps - 1
        ho = self.woff + 8 * slot
        self.wlocks.acquire(slot % WLOCKS)
        try:
            if pending and _NEXT.unpack_from(buf, ho)[0] == pending:
                _NEXT.pack_into(buf, ho, 0)
            _U32.pack_into(buf, self.poff + 8, 0)
        finally:
            self.wlocks.release(slot % WLOCKS)

    # -- whole-table operations ---------------------------------------------------------
    def items(self):
        """Live (key, value) pairs; walks every bucket (rpc dumps, regex ops)."""
        out = []
        now = now_ticks()
        for b in range(self.t.nbuckets):
            if not _NEXT.unpack_from(self.buf, self._boff + 16 * b)[0]:
                continue
            for _l, kb, vb, iv, fl, ex in self.t.iter_bucket(b):
                if ex and ex <= now:
                    continue
                out.append((_dec(kb), _dec(vb) if fl & F_STR else iv))
        return out

    def lookup(self, key):
        """-> (value, expires in ticks, 0 = never) of a live entry; None when
        the key is absent or expired (initval not applied: htable.get says
        "doesn't exist" as Kamailio's ht_cell_pkg_copy)."""
        r = self.t.find(_enc(str(key)))
        if r is None:
            return None
        _b, _l, vb, iv, fl, ex = r
        if ex and ex <= now_ticks():
            return None
        return (_dec(vb) if fl & F_STR else iv), ex

    def count_match(self, spec, by_value):
        """$shtcn / $shtcv: Kamailio's operators `~~` re, `~%` ends with, `%~` starts
        with, `==` equal, `eq` int equal (values), `**` all; no operator = regex."""
        op, arg = "re", spec
        if len(spec) >= 2 and spec[:2] in ("~~", "~%", "%~", "==", "eq", "**"):
            op, arg = spec[:2], spec[2:]
        items = self.items()
        if op == "**":
            return len(items)
        if not arg:
            return 0
        if op == "eq":
            if not by_value:
                return 0
            try:
                n = int(arg)
            except ValueError:
                return 0
            return sum(1 for _k, v in items if type(v) is int and v == n)
        if op in ("re", "~~"):
            try:
                rx = re.compile(arg, re.I)
            except re.error:
                log.err("htable", f"bad regex {arg!r}")
                return 0
            test = lambda s: rx.search(s) is not None  # noqa: E731
        elif op == "~%":
            test = lambda s: s.endswith(arg)  # noqa: E731
        elif op == "%~":
            test = lambda s: s.startswith(arg)  # noqa: E731
        else:
            test = lambda s: s == arg  # noqa: E731
        n = 0
        for k, v in items:
            s = k if not by_value else (v if type(v) is str else None)
            if s is not None and test(s):
                n += 1
        return n

    def remove_match(self, rx, by_value):
        """sht_rm_name_re / sht_rm_value_re: delete entries whose key (or string value) matches."""
        n = 0
        t = self.t
        for b in range(t.nbuckets):
            if not _NEXT.unpack_from(self.buf, self._boff + 16 * b)[0]:
                continue
            s = b & self._smask
            self._lock(s)
            try:
                buf = self.buf
                prev, off = 0, _NEXT.unpack_from(buf, self._boff + 16 * b)[0]
                while off:
                    nxt, _lbl, _h, kl, _c, vl, fl = _E.unpack_from(buf, off)[:7]
                    if by_value:
                        txt = _dec(bytes(buf[off + _EH + kl:off + _EH + kl + vl])) if fl & F_STR else None
                    else:
                        txt = _dec(bytes(buf[off + _EH:off + _EH + kl]))
                    if txt is not None and rx.search(txt):
                        t._unlink_l(b, prev, off)
                        n += 1
                    else:
                        prev = off
                    off = nxt
            finally:
                self._unlock(s)
        return n

    def reset(self):
        self.t.clear()

    def count(self):
        return self.t.count()

    # -- sht_lock / sht_unlock ------------------------------------------------------------
    def lock_key(self, key):
        i = _crc(_enc(str(key))) & 15
        n = self._uheld.get(i, 0)
        if n == 0:
            self.ulocks.acquire(i)
        self._uheld[i] = n + 1

    def unlock_key(self, key):
        i = _crc(_enc(str(key))) & 15
        n = self._uheld.get(i, 0)
        if n == 0:
            return False
        if n == 1:
            del self._uheld[i]
            self.ulocks.release(i)
        else:
            self._uheld[i] = n - 1
        return True


def key_hash(key):
    """The 32-bit hash a key's bucket is taken from (bucket = hash & mask)."""
    return _crc(_enc(str(key)))


def _after_fork():
    # sht_lock counts are per process: a child starts holding nothing
    for ht in list(_tables):
        ht._uheld = {}


# weak: a table dropped with its arena (tests make hundreds) must not keep the
# arena's mapping and its lock semaphores alive (one mmap each)
_tables = weakref.WeakSet()
os.register_at_fork(after_in_child=_after_fork)
