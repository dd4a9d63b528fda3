"""DsStore: dispatcher's destination list and per-destination state in shm.

Runs in: main process (created by dispatcher's mod_init, before fork), every
child (reads on each ds_* call, state changes from routes, the pinger, the
receivers that take ping replies, the RPC processes).

Kamailio keeps two lists in shm and flips an index on reload
(src/modules/dispatcher/dispatch.c ds_load_list, `ds_crt_idx`); each
destination's flags and failure counter live in its ds_dest_t, the set's
round-robin and weight cursors in its ds_set_t. Here the list itself is
marshalled bytes (asyncd/modules/dispatcher_list.py DsList.dumps) in one of
two buffers, and the state is fixed-size words beside it, also doubled, so
a reload fills the idle half and publishes it with one store: a process
that reads the generation word sees the old list and state or the new ones,
never a mix. Every process keeps the list it unmarshalled and re-reads it
only when the generation changes.

Header (static area, 32 bytes, u32 words):
    0  generation (bumped by every publish)
    1  current half (0 or 1)
    2  blob length, half 0      3  blob length, half 1
    4  ping_active (dispatcher.ping_active; 1 = on)
    5  time of the last reload (whole seconds, for reload_delta)
Blob: 2 halves of `blob_cap` bytes.
Destination state, per half, `dest_cap` records of 8 u32:
    0 flags (Kamailio's DS_*_DST bits)   1 message_count (probing/inactive
    thresholds)   2-5 the sequence numbers of the pings in flight (0 = free
    slot; Kamailio starts one tm transaction per ping and interval, so with
    fr_timer > ds_ping_interval several wait at once)   6 calls counted by
    algorithm 10 (Kamailio's `dload`)   7 -
Set cursors, per half, `set_cap` records of 4 u32:
    0 last (round-robin)   1 wlast (weights)   2 rwlast (relative weights)   3 -
Relative-weight tables (algorithm 11), per half, `set_cap` records of 100
u32: the destination index for each of the 100 slots (dispatch.c
dp_init_relative_weights), rewritten when a destination with rweight
changes between usable and not.
One robust lock guards every read-modify-write of these words (state
changes, cursors, publish): each is a few word operations.
"""
import time

from shm.locks import LockSet

HDR_WORDS = 8
DEST_WORDS = 8
PING_SLOTS = 4
SET_WORDS = 4
F_FLAGS, F_COUNT, F_PING, F_LOAD = 0, 1, 2, 6
S_LAST, S_WLAST, S_RWLAST = 0, 1, 2
RW_SLOTS = 100


class StoreFull(ValueError):
    """A reloaded list does not fit the space made at startup."""


class DsStore:
    def __init__(self, arena, blob_cap, dest_cap, set_cap):
        self.blob_cap, self.dest_cap, self.set_cap = blob_cap, dest_cap, set_cap
        self.buf = arena.buf
        self.w = arena.words
        self.hoff = arena.static_alloc(HDR_WORDS * 4)
        self.boff = arena.static_alloc(2 * blob_cap)
        self.doff = arena.static_alloc(2 * dest_cap * DEST_WORDS * 4)
        self.soff = arena.static_alloc(2 * set_cap * SET_WORDS * 4)
        self.rwoff = arena.static_alloc(2 * set_cap * RW_SLOTS * 4)
        self.lock = LockSet(arena, 1, "dispatcher")
        self.h = self.hoff >> 2
        for i in range(HDR_WORDS):
            self.w[self.h + i] = 0
        self.w[self.h + 4] = 1

    # -- the list --------------------------------------------------------------------
    def generation(self):
        return self.w[self.h]

    def read(self):
        """-> (generation, half, blob bytes) of the current list."""
        while True:
            gen = self.w[self.h]
            half = self.w[self.h + 1]
            n = self.w[self.h + 2 + half]
            start = self.boff + half * self.blob_cap
            data = bytes(self.buf[start:start + n])
            if self.w[self.h] == gen:
                return gen, half, data

    def publish(self, data, states, nsets, loads=None):
        """Write a new list (blob, one initial flags word per destination, the
        call loads or 0) into the idle half and make it current. StoreFull
        when it does not fit."""
        if len(data) > self.blob_cap or len(states) > self.dest_cap or nsets > self.set_cap:
            raise StoreFull(f"the new list needs {len(data)} bytes, {len(states)} destinations and "
                            f"{nsets} sets; room was made at startup for {self.blob_cap}, "
                            f"{self.dest_cap} and {self.set_cap}")
        self.lock.acquire(0)
        try:
            half = 1 - self.w[self.h + 1]
            start = self.boff + half * self.blob_cap
            self.buf[start:start + len(data)] = data
            self.w[self.h + 2 + half] = len(data)
            d = self._dbase(half)
            for i, flags in enumerate(states):
                k = d + i * DEST_WORDS
                self.w[k], self.w[k + 1] = flags, 0
                self.w[k + F_LOAD] = loads[i] if loads else 0
                for j in range(PING_SLOTS):
                    self.w[k + F_PING + j] = 0
            s = self._sbase(half)
            for i in range(nsets * SET_WORDS):
                self.w[s + i] = 0
            self.w[self.h + 1] = half
            self.w[self.h] = (self.w[self.h] + 1) & 0xFFFFFFFF
        finally:
            self.lock.release(0)

    def _dbase(self, half):
        return (self.doff >> 2) + half * self.dest_cap * DEST_WORDS

    def _sbase(self, half):
        return (self.soff >> 2) + half * self.set_cap * SET_WORDS

    # -- per-destination words ---------------------------------------------------------
    def dword(self, half, i, field):
        return self.w[self._dbase(half) + i * DEST_WORDS + field]

    def set_dword(self, half, i, field, value):
        self.w[self._dbase(half) + i * DEST_WORDS + field] = value & 0xFFFFFFFF

    def update(self, half, i, fn):
        """Under the lock: fn(flags, count) -> (flags, count, result); -> result."""
        k = self._dbase(half) + i * DEST_WORDS
        self.lock.acquire(0)
        try:
            flags, count, result = fn(self.w[k], self.w[k + 1])
            self.w[k], self.w[k + 1] = flags & 0xFFFFFFFF, count & 0xFFFFFFFF
        finally:
            self.lock.release(0)
        return result

    def ping_take(self, half, i, seq):
        """A free ping slot of destination i now holds seq: -> the slot, or -1."""
        k = self._dbase(half) + i * DEST_WORDS + F_PING
        self.lock.acquire(0)
        try:
            for j in range(PING_SLOTS):
                if self.w[k + j] == 0:
                    self.w[k + j] = seq
                    return j
        finally:
            self.lock.release(0)
        return -1

    def ping_claim(self, half, i, slot, seq):
        """The ping seq in that slot is over (reply or timeout): True for the one
        caller that frees it, False when it was already over."""
        if not 0 <= slot < PING_SLOTS or not 0 <= i < self.dest_cap:
            return False
        k = self._dbase(half) + i * DEST_WORDS + F_PING + slot
        self.lock.acquire(0)
        try:
            if self.w[k] != seq or seq == 0:
                return False
            self.w[k] = 0
            return True
        finally:
            self.lock.release(0)

    def ping_reset(self, half, n):
        """Every ping slot of the first n destinations free again."""
        self.lock.acquire(0)
        try:
            for i in range(min(n, self.dest_cap)):
                k = self._dbase(half) + i * DEST_WORDS + F_PING
                for j in range(PING_SLOTS):
                    self.w[k + j] = 0
        finally:
            self.lock.release(0)

    def ping_pending(self, half, i, slot, seq):
        return self.w[self._dbase(half) + i * DEST_WORDS + F_PING + slot] == seq

    def update_word(self, half, i, field, fn):
        """Under the lock: word = fn(word); -> the new value."""
        k = self._dbase(half) + i * DEST_WORDS + field
        self.lock.acquire(0)
        try:
            v = self.w[k] = fn(self.w[k]) & 0xFFFFFFFF
        finally:
            self.lock.release(0)
        return v

    # -- set cursors -----------------------------------------------------------------------
    def cursor_step(self, half, setno, field, modulo):
        """Under the lock: the cursor's value, then (value + 1) % modulo stored."""
        k = self._sbase(half) + setno * SET_WORDS + field
        self.lock.acquire(0)
        try:
            v = self.w[k] % modulo if modulo else 0
            self.w[k] = (v + 1) % modulo if modulo else 0
        finally:
            self.lock.release(0)
        return v

    def cursor_cas(self, half, setno, field, expect, value):
        """Store value when the cursor still holds expect (ds_manage_routes' `vlast`)."""
        k = self._sbase(half) + setno * SET_WORDS + field
        self.lock.acquire(0)
        try:
            if self.w[k] == expect:
                self.w[k] = value
        finally:
            self.lock.release(0)

    # -- relative weights ------------------------------------------------------------------
    def _rwbase(self, half, setno):
        return (self.rwoff >> 2) + (half * self.set_cap + setno) * RW_SLOTS

    def set_rwlist(self, half, setno, table):
        k = self._rwbase(half, setno)
        self.lock.acquire(0)
        try:
            for j in range(RW_SLOTS):
                self.w[k + j] = table[j] if j < len(table) else 0
        finally:
            self.lock.release(0)

    def rw_slot(self, half, setno, j):
        return self.w[self._rwbase(half, setno) + j]

    # -- header words ---------------------------------------------------------------------
    def ping_active(self):
        return self.w[self.h + 4]

    def set_ping_active(self, v):
        self.w[self.h + 4] = 1 if v else 0

    def reload_time(self):
        return self.w[self.h + 5]

    def mark_reload(self):
        self.w[self.h + 5] = int(time.time()) & 0xFFFFFFFF
