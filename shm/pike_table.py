"""PikeTable: pike's IP prefix tree in the shm arena, shared by every process.

Runs in: main process (creation in pike's mod_init, before fork), every
child (pike_check_req, pike.top).

Kamailio keeps a tree of IP-address bytes (src/modules/pike/ip_tree.c): a
request marks the longest known prefix of its source address; a prefix that
gets hot (a quarter of reqs_density_per_unit in a time unit) is split one
byte deeper, and only the full address counts the hits that block. Here a
node is a record keyed by its prefix bytes in an open-addressed array (its
parent is the key one byte shorter), so the tree walk is a few lookups.
The per-unit swap (swap_routine) and the expiry sweep (clean_routine) are
done lazily by whichever process holds the lock when one is due, instead of
on the core timer: the results are the same at the next look.

Header (static area, 16 bytes):
    0   8  f64 time of the next swap (monotonic seconds; 0 = not started)
    8   8  f64 time of the next expiry sweep
Record (32 bytes, `nslots` of them):
    0  16  key: the prefix bytes (4 for a whole IPv4 address, 16 for IPv6)
    16  1  u8 key length (0 = free, 255 = deleted)
    17  1  u8 flags (1 = IP leaf, 2 = red: blocked, 4 = in timer)
    18  2  u16 kids (nodes one byte longer under this prefix)
    20  2  u16 hits, previous unit
    22  2  u16 hits, current unit
    24  2  u16 leaf hits, previous unit
    26  2  u16 leaf hits, current unit
    28  4  u32 expires (whole seconds on the table's clock)
One lock guards the table: a mark is a handful of record reads and writes
(~25 us measured, one address or a full table); the swap and the sweep read
every record (~3 ms and ~1.5 ms for 4096 of them), at most once a unit and
once a second.
"""
import struct
import time
import zlib

from shm.locks import LockSet

REC = struct.Struct("<16sBBHHHHHI")
HDR = struct.Struct("<dd")
FREE, DELETED = 0, 255
F_LEAF, F_RED, F_TIMER = 1, 2, 4
U16_MAX = 0xFFFF
# linear probing stops after this many slots: a key is never further from its
# hash slot, so a full table costs a miss 32 reads, not 4096 (~2 ms measured)
MAX_PROBE = 32
# mark() results (pike_funcs.c pike_check_ipaddr)
OK, RED, NEW_RED = 1, -1, -2
# pike.top status names (ip_tree.c node_status_array)
STATUS = ("", "WARM", "HOT")


class PikeTable:
    def __init__(self, arena, max_hits, unit, latency, nslots=4096):
        self.max_hits = max_hits
        self.unit = float(unit)
        self.latency = latency
        self.nslots = nslots
        self.hoff = arena.static_alloc(HDR.size)
        self.off = arena.static_alloc(REC.size * nslots)
        self.buf = arena.buf
        self.lock = LockSet(arena, 1, "pike")
        self.t0 = time.monotonic()

    # -- records ----------------------------------------------------------------
    def _read(self, i):
        return list(REC.unpack_from(self.buf, self.off + i * REC.size))

    def _write(self, i, rec):
        REC.pack_into(self.buf, self.off + i * REC.size, *rec)

    def _find(self, key):
        """(slot of key or None, first free/deleted slot seen)."""
        n = self.nslots
        i = zlib.crc32(key) % n
        reuse = None
        for _ in range(MAX_PROBE):
            rec = REC.unpack_from(self.buf, self.off + i * REC.size)
            klen = rec[1]
            if klen == FREE:
                return None, (reuse if reuse is not None else i)
            if klen == DELETED:
                if reuse is None:
                    reuse = i
            elif klen == len(key) and rec[0][:klen] == key:
                return i, reuse
            i = (i + 1) % n
        return None, reuse

    def _new(self, key, hits=0, leaf_prev=0, flags=0, now=0):
        _, slot = self._find(key)
        if slot is None:
            return None
        rec = [key, len(key), flags, 0, 0, hits, leaf_prev, 0, int(now) + self.latency]
        self._write(slot, rec)
        return slot

    # -- the clock ----------------------------------------------------------------
    def now(self):
        return time.monotonic() - self.t0

    def _due(self, now, on_unblock):
        nswap, nclean = HDR.unpack_from(self.buf, self.hoff)
        if nswap == 0:
            HDR.pack_into(self.buf, self.hoff, now + self.unit, now + 1)
            return
        if now >= nswap:
            units = int((now - nswap) // self.unit) + 1
            self._swap(units, on_unblock)
            nswap += units * self.unit
        if now >= nclean:
            self._clean(int(now))
            nclean = now + 1
        HDR.pack_into(self.buf, self.hoff, nswap, nclean)

    def _hot_leaf(self, rec):
        m = self.max_hits
        return rec[6] >= m or rec[7] >= m or (rec[6] + rec[7]) >> 1 >= m

    def _hot_prefix(self, rec):
        m = self.max_hits >> 2
        return rec[4] >= m or rec[5] >= m or (rec[4] + rec[5]) >> 1 >= m

    def _swap(self, units, on_unblock):
        """ip_tree.c refresh_node, `units` times at once."""
        for i in range(self.nslots):
            rec = self._read(i)
            if rec[1] in (FREE, DELETED):
                continue
            for _ in range(min(units, 2)):
                rec[4], rec[5], rec[6], rec[7] = rec[5], 0, rec[7], 0
            if rec[2] & F_RED and not self._hot_leaf(rec):
                rec[2] &= ~F_RED
                on_unblock(rec[0][:rec[1]])
            self._write(i, rec)

    def _clean(self, now):
        """pike_funcs.c clean_routine: expired nodes go (an IP leaf with
        kids only stops being a leaf); a parent left without kids enters
        the timer in turn."""
        for i in range(self.nslots):
            rec = self._read(i)
            if rec[1] in (FREE, DELETED) or not rec[2] & F_TIMER or rec[8] > now:
                continue
            if rec[3]:
                if rec[2] & F_LEAF:
                    rec[2] &= ~(F_LEAF | F_TIMER)
                    rec[7] = 0
                    self._write(i, rec)
                continue
            key = rec[0][:rec[1]]
            rec[1] = DELETED
            self._write(i, rec)
            if len(key) > 1:
                self._kid_gone(key[:-1], now)

    def _kid_gone(self, key, now):
        j, _ = self._find(key)
        if j is None:
            return
        dad = self._read(j)
        dad[3] = max(dad[3] - 1, 0)
        if dad[3] == 0 and not dad[2] & F_TIMER:
            dad[2] |= F_TIMER
            dad[8] = now + self.latency
        self._write(j, dad)

    # -- marking a request ------------------------------------------------------------
    def mark(self, ip, on_unblock=lambda key: None):
        """One request from `ip` (4 or 16 bytes): OK, RED (already blocked) or
        NEW_RED (blocked by this one) (ip_tree.c mark_node and
        pike_funcs.c pike_check_ipaddr). OK when the table is full (an error
        must not block, as Kamailio)."""
        lk = self.lock
        lk.acquire(0)
        try:
            now = self.now()
            self._due(now, on_unblock)
            return self._mark(ip, int(now))
        finally:
            lk.release(0)

    def _longest(self, ip):
        slot, n = None, 0
        while n < len(ip):
            j, _ = self._find(ip[:n + 1])
            if j is None:
                break
            slot, n = j, n + 1
        return slot, n

    def _mark(self, ip, now):
        slot, n = self._longest(ip)
        if n == 0:
            self._new(ip[:1], hits=1, flags=F_TIMER, now=now)
            return OK
        rec = self._read(slot)
        if n == len(ip):
            return self._mark_leaf(slot, rec, now)
        rec[5] = min(rec[5] + 1, U16_MAX - 1)
        if self._hot_prefix(rec):
            # split: the kid inherits part of its father's hits (ip_tree.c split_node)
            kid = self._new(ip[:n + 1], hits=max(rec[5] - 1, 0),
                            leaf_prev=(max(rec[6] - 1, 0) if rec[7] >= 1 else 0),
                            flags=F_TIMER, now=now)
            if kid is None:
                self._write(slot, rec)
                return OK
            rec[3] += 1
            if not rec[2] & F_LEAF:
                rec[2] &= ~F_TIMER      # a prefix with kids lives as long as they do
        elif rec[2] & F_LEAF or not rec[3]:
            if rec[5] >= self.max_hits >> 2:     # warm: keep it (else let it expire)
                rec[8] = now + self.latency
        self._write(slot, rec)
        return OK

    def _mark_leaf(self, slot, rec, now):
        rec[2] |= F_LEAF | F_TIMER
        rec[7] = min(rec[7] + 1, U16_MAX - 1)
        rec[8] = now + self.latency
        res = OK
        if not rec[2] & F_RED:
            if self._hot_leaf(rec):
                rec[2] |= F_RED
                res = NEW_RED
        else:
            res = RED
        self._write(slot, rec)
        return res

    # -- pike.top ------------------------------------------------------------------------
    def top(self, which):
        """[(ip bytes, leaf_prev, leaf_curr, expires in s, status)] of IP
        leaves: all of them (`ALL`) or the hot ones (`HOT`) (pike_rpc.c
        traverse_subtree; `WARM` selects none there, and here)."""
        out = []
        lk = self.lock
        lk.acquire(0)
        try:
            now = self.now()
            self._due(now, lambda key: None)
            for i in range(self.nslots):
                rec = self._read(i)
                if rec[1] in (FREE, DELETED) or not rec[2] & F_LEAF:
                    continue
                st = 2 if self._hot_leaf(rec) else 1 if rec[5] >= self.max_hits >> 2 else 0
                if which == "ALL" or (which == "HOT" and st == 2):
                    out.append((rec[0][:rec[1]], rec[6], rec[7], rec[8] - int(now), STATUS[st]))
        finally:
            lk.release(0)
        return out
