"""A shared-memory mailbox for one timer process: producers drop small frames
into it and wake the consumer over ZeroMQ only when it would oversleep; the
mailbox also counts what it was given, so every entry is accounted for.

Runs in: main (created before fork), any producer process (put), and the one
consumer (take, publish, awake, done): a process of workers/timer.py.

Why: a ZeroMQ send from a busy receiver costs ~0.1-0.4 ms wall under load
(the I/O thread competes for the 2 cores), paid on every transaction for
timers due seconds later (fr_timer, wt_timer, async_sleep). A timer only
needs to *see* an entry before it is due: when the entry is due after the
consumer's published next wake-up, writing it to shared memory is enough.

No lost entry: the consumer drains, computes its next wake-up and publishes
it under the lock, re-checking the ring in the same section (publish()
returns True when frames arrived meanwhile: drain again). A producer
compares its due time with the published wake-up under that same lock.
While the consumer runs it publishes 0.0 ("awake", a plain store): no
producer wakes a process that drains before it sleeps anyway.

Layout (anonymous MAP_SHARED mmap made in main: no name to leak), int64
words unless noted:
    0 head      consumer, under the lock
    1 tail      producers, under the lock
    2 wake      float64, the consumer's next planned wake-up (0.0: awake)
    3 assigned  producers, under the lock: entries accepted for this consumer
    4 rejected  producers, under the lock: refused (consumer at its cap)
    5 run       consumer only
    6 skipped   consumer only
    7 (spare)
then `n` slots of SLOT bytes: u32 length + frame.
"""
import mmap
import struct

from shm.locks import robust_lock

_LEN = struct.Struct("<I")
_WAKE = struct.Struct("<d")
_HDR = 64
H_HEAD, H_TAIL, H_WAKE, H_ASSIGNED, H_REJECTED, H_RUN, H_SKIPPED = range(7)

# put() results
STORED, STORED_WAKE, OVERFLOW, FULL = 0, 1, 2, 3


class Mailbox:
    SLOT = 128

    def __init__(self, n=4096):
        self.n = int(n)
        self._mm = mmap.mmap(-1, _HDR + self.n * self.SLOT)
        self.h = memoryview(self._mm)[:_HDR].cast("q")
        # nobody published yet: the consumer has not slept, it drains first
        _WAKE.pack_into(self._mm, 8 * H_WAKE, 0.0)
        # robust (shm/locks.py): a process killed inside put() or publish() delays the
        # next taker ~50 ms, never wedges it, and nobody enters while the dead one
        # is still inside (a timeout-and-proceed lock let two in)
        self._lock = robust_lock("timer mailbox")

    # ---- producers -------------------------------------------------------
    def put(self, frame, due, count=1, cap=0):
        """Queue `frame` holding `count` entries, the earliest due at `due`.
        STORED (the consumer will see it in time), STORED_WAKE (send it a
        wake-up), OVERFLOW (accepted, but too big or no room: send the frame
        itself over ZeroMQ), FULL (refused and counted: `cap` entries pending)."""
        ln = len(frame)
        lock = self._lock
        lock.acquire(0)
        try:
            h = self.h
            if cap and h[H_ASSIGNED] - h[H_RUN] - h[H_SKIPPED] >= cap:
                h[H_REJECTED] += 1
                return FULL
            h[H_ASSIGNED] += count
            tail = h[H_TAIL]
            if ln > self.SLOT - 4 or tail - h[H_HEAD] >= self.n:
                return OVERFLOW
            k = _HDR + (tail % self.n) * self.SLOT
            mm = self._mm
            _LEN.pack_into(mm, k, ln)
            mm[k + 4:k + 4 + ln] = frame
            h[H_TAIL] = tail + 1
            return STORED_WAKE if due < _WAKE.unpack_from(mm, 8 * H_WAKE)[0] else STORED
        finally:
            lock.release(0)

    def unassign(self, count=1):
        """An OVERFLOW frame that could not be sent after all: refused, not pending."""
        self._lock.acquire(0)
        try:
            self.h[H_ASSIGNED] -= count
            self.h[H_REJECTED] += 1
        finally:
            self._lock.release(0)

    def pending(self):
        h = self.h
        return h[H_ASSIGNED] - h[H_RUN] - h[H_SKIPPED]

    # ---- the consumer ----------------------------------------------------
    def take(self):
        """The frames waiting (oldest first)."""
        h = self.h
        if h[H_TAIL] == h[H_HEAD]:
            return ()
        self._lock.acquire(0)
        try:
            mm, n, slot = self._mm, self.n, self.SLOT
            out = []
            for i in range(h[H_HEAD], h[H_TAIL]):
                k = _HDR + (i % n) * slot
                (ln,) = _LEN.unpack_from(mm, k)
                out.append(mm[k + 4:k + 4 + ln])     # mmap slices are bytes
            h[H_HEAD] = h[H_TAIL]
            return out
        finally:
            self._lock.release(0)

    def awake(self):
        """Running, and draining before any sleep: no producer needs to wake
        us (a single aligned store, no lock)."""
        _WAKE.pack_into(self._mm, 8 * H_WAKE, 0.0)

    def publish(self, wake):
        """We will sleep until `wake` (monotonic). True when frames arrived
        meanwhile (drain again instead of sleeping)."""
        self._lock.acquire(0)
        try:
            _WAKE.pack_into(self._mm, 8 * H_WAKE, wake)
            return self.h[H_TAIL] != self.h[H_HEAD]
        finally:
            self._lock.release(0)

    def done(self, skipped=False):
        """One entry ran (or was skipped). Single writer: no lock."""
        self.h[H_SKIPPED if skipped else H_RUN] += 1

    def stats(self):
        h = self.h
        return {"accepted": h[H_ASSIGNED], "rejected": h[H_REJECTED], "run": h[H_RUN],
                "skipped": h[H_SKIPPED], "pending": self.pending()}
