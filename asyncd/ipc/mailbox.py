"""A shared-memory mailbox for one timer process: producers drop small frames
into it and wake the consumer over ZeroMQ only when it would oversleep; the
mailbox also counts what it was given, so every entry is accounted for.

Runs in: main (created before fork), any producer process (put), and the one
consumer (frames, advance, publish, awake; the counters through journal.py):
a process of workers/timer.py.

Why: a ZeroMQ send from a busy receiver costs ~0.1-0.4 ms wall under load
(the I/O thread competes for the 2 cores), paid on every transaction for
timers due seconds later (fr_timer, wt_timer, async_sleep). A timer only
needs to *see* an entry before it is due: when the entry is due after the
consumer's published next wake-up, writing it to shared memory is enough.

An accepted frame lives here until the consumer has copied it into its
journal (journal.py), so a consumer killed at any instant loses nothing.
A frame that finds no room (ring full, `cap` pending entries, or too big) is
refused and counted, never sent another way.

No lost entry: the consumer drains, computes its next wake-up and publishes
it under the lock, re-checking the ring in the same section (publish()
returns True when frames arrived meanwhile: drain again). A producer
compares its due time with the published wake-up under that same lock.
While the consumer runs it publishes 0.0 ("awake", a plain store): no
producer wakes a process that drains before it sleeps anyway.

The consumer reads the ring without the lock: producers write a frame, then
its tail, under the lock, and x86 keeps stores in order (shm/locks.py says
the same of its sequence words), so a frame below the tail is whole. The
lock is a robust one (shm/locks.py robust_lock): a producer or consumer
killed inside put() or publish() delays the next taker ~50 ms, no more. A
producer killed between moving the tail and counting its entries would
leave them uncounted: put() writes its intent first (the tail and the
count it is about to store) and the taker of a dead holder's lock finishes
it (repair), so the counts stay exact.

Layout (anonymous MAP_SHARED mmap made in main: no name to leak), int64
words unless noted:
    0 head      consumer (plain store: the frames below it are journaled)
    1 tail      producers, under the lock
    2 wake      float64, the consumer's next planned wake-up (0.0: awake)
    3 assigned  producers, under the lock: entries accepted for this consumer
    4 rejected  producers, under the lock: arms refused
    5 run       consumer only (journal.py finish)
    6 skipped   consumer only (journal.py finish)
    7 put_tail  producers, under the lock: the tail a put() under way stores (0: none)
    8 put_count producers, under the lock: the `assigned` it stores after that
    9-15 (spare)
then `n` slots of SLOT bytes, slot k holding frame number p (p % n == k):
    0 u32 length | 4 u32 entries in the frame | 8 frame (<= FRAME_MAX bytes)
"""
import mmap
import struct

from shm.locks import robust_lock

_SLOT_HDR = struct.Struct("<II")
_WAKE = struct.Struct("<d")
_HDR = 128
SLOT = 128
FRAME_MAX = 112         # what a journal slot holds (journal.py): a longer frame is split by the feed
MAX_COUNT = 32          # entries per frame: one bit each in a journal slot's mask
H_HEAD, H_TAIL, H_WAKE, H_ASSIGNED, H_REJECTED, H_RUN, H_SKIPPED, H_PUT_TAIL, H_PUT_COUNT = range(9)

# put() results
STORED, STORED_WAKE, FULL = 0, 1, 2


class Mailbox:
    """`n` frame slots. `locks`, `li`: the robust LockSet and index guarding
    it (a feed gives its consumers one set); by default a set of its own."""

    def __init__(self, n=4096, locks=None, li=0):
        self.n = int(n)
        self._mm = mmap.mmap(-1, _HDR + self.n * SLOT)
        self.h = memoryview(self._mm)[:_HDR].cast("q")
        # nobody published yet: the consumer has not slept, it drains first
        _WAKE.pack_into(self._mm, 8 * H_WAKE, 0.0)
        if locks is None:
            locks = robust_lock("timer mailbox")
            locks.on_recover = lambda i: self.repair()
        self.locks = locks
        self.li = li

    # ---- producers -------------------------------------------------------
    def put(self, frame, due, count=1, cap=0):
        """Queue `frame` holding `count` entries, the earliest due at `due`;
        results as put_all's (this is its one-frame case, the hot path)."""
        if len(frame) > FRAME_MAX or not 0 < count <= MAX_COUNT:
            self.refuse()
            return FULL
        return self._store((frame,), (count,), count, due, cap)

    def put_all(self, frames, counts, due, cap=0):
        """Queue every frame or none (counts[k] entries in frames[k]).
        STORED (the consumer will see them in time), STORED_WAKE (send it a
        wake-up), FULL (refused and counted: no room in the ring, `cap` > 0
        entries would be exceeded, a frame is longer than FRAME_MAX or holds
        no entry or more than MAX_COUNT)."""
        if max(map(len, frames)) > FRAME_MAX or not 0 < min(counts) <= max(counts) <= MAX_COUNT:
            self.refuse()
            return FULL
        return self._store(frames, counts, sum(counts), due, cap)

    def _store(self, frames, counts, total, due, cap):
        locks, li = self.locks, self.li
        locks.acquire(li)
        try:
            h = self.h
            tail, assigned = h[H_TAIL], h[H_ASSIGNED]
            if (tail - h[H_HEAD] + len(frames) > self.n
                    or cap and assigned - h[H_RUN] - h[H_SKIPPED] + total > cap):
                h[H_REJECTED] += 1
                return FULL
            mm, n = self._mm, self.n
            for frame, count in zip(frames, counts):
                k = _HDR + (tail % n) * SLOT
                _SLOT_HDR.pack_into(mm, k, len(frame), count)
                mm[k + 8:k + 8 + len(frame)] = frame
                tail += 1
            assigned += total
            h[H_PUT_COUNT] = assigned
            h[H_PUT_TAIL] = tail    # the intent: repair() finishes it if we die here
            h[H_TAIL] = tail        # after the frames: a consumer reading without the lock sees them whole
            h[H_ASSIGNED] = assigned
            h[H_PUT_TAIL] = 0
            return STORED_WAKE if self.sleeps_past(due) else STORED
        finally:
            locks.release(li)

    def refuse(self):
        """Count an arm refused before it reached the ring (a frame or an
        entry that no slot can hold)."""
        self.locks.acquire(self.li)
        try:
            self.h[H_REJECTED] += 1
        finally:
            self.locks.release(self.li)

    def repair(self):
        """The lock was taken over from a dead holder (we hold it now): count
        the frames of a put() it had made visible but not counted."""
        h = self.h
        if h[H_PUT_TAIL] and h[H_TAIL] == h[H_PUT_TAIL]:
            h[H_ASSIGNED] = h[H_PUT_COUNT]
        h[H_PUT_TAIL] = 0

    def settle(self):
        """Take the lock once: a section a dead holder left half done is
        repaired (by the takeover) before we count on the counts."""
        self.locks.acquire(self.li)
        self.locks.release(self.li)

    def pending(self):
        h = self.h
        return h[H_ASSIGNED] - h[H_RUN] - h[H_SKIPPED]

    # ---- the consumer ----------------------------------------------------
    def waiting(self):
        """Frames not yet journaled (two loads, no lock)."""
        h = self.h
        return h[H_TAIL] - h[H_HEAD]

    def frame(self, p):
        """(entries, bytes) of frame number p (head <= p < tail)."""
        k = _HDR + (p % self.n) * SLOT
        ln, count = _SLOT_HDR.unpack_from(self._mm, k)
        return count, self._mm[k + 8:k + 8 + min(ln, FRAME_MAX)]     # mmap slices are bytes

    def advance(self, p):
        """Frames below p are the consumer's now (journaled): their slots are free."""
        self.h[H_HEAD] = p

    def awake(self):
        """Running, and draining before any sleep: no producer needs to wake
        us (a single aligned store, no lock)."""
        _WAKE.pack_into(self._mm, 8 * H_WAKE, 0.0)

    def sleeps_past(self, due):
        """The consumer sleeps (or is about to) beyond `due`: an entry due then
        that it cannot see in this mailbox needs a wake-up. One load, no lock."""
        return due < _WAKE.unpack_from(self._mm, 8 * H_WAKE)[0]

    def publish(self, wake):
        """We will sleep until `wake` (monotonic). True when frames arrived
        meanwhile (drain again instead of sleeping)."""
        self.locks.acquire(self.li)
        try:
            _WAKE.pack_into(self._mm, 8 * H_WAKE, wake)
            return self.h[H_TAIL] != self.h[H_HEAD]
        finally:
            self.locks.release(self.li)

    def stats(self):
        h = self.h
        return {"accepted": h[H_ASSIGNED], "rejected": h[H_REJECTED], "run": h[H_RUN],
                "skipped": h[H_SKIPPED], "pending": self.pending()}
