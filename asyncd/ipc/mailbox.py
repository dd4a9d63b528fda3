"""A shared-memory mailbox for one timer process: producers drop small frames
into it and wake the consumer over ZeroMQ only when it would oversleep.

Runs in: main (created before fork), any producer process (put), and the one
consumer (take / publish), e.g. tm's `timer` process.

Why: a ZeroMQ send from a busy receiver costs ~0.1-0.4 ms wall under load
(the I/O thread competes for the 2 cores), paid on every transaction for
timers due seconds later (fr_timer, wt_timer). A timer only needs to *see* an
item before it is due: when the item is due after the consumer's published
next wake-up, writing it to shared memory is enough. Same idea as
asyncd.ipc.dispatch.TimerDispatcher (async timers), without the per-consumer
picking and accounting, so the producer path is one lock round trip.

No lost item: the consumer drains, computes its next wake-up and publishes it
under the lock, re-checking the ring in the same section (publish() returns
True when frames arrived meanwhile: drain again). A producer compares its due
time with the published wake-up under that same lock. A frame that does not
fit (too large, ring full) is refused and the caller sends it over ZeroMQ.

Layout (anonymous MAP_SHARED mmap: no name to leak): int64 head, int64 tail,
float64 next_wake, int64 spare; then `n` slots of SLOT bytes (u32 len + frame).
"""
import mmap
import multiprocessing
import struct

_LEN = struct.Struct("<I")
_WAKE = struct.Struct("<d")
_LOCK_TIMEOUT = 0.5      # a holder that died mid-section must not wedge the rest

# put() results
STORED, STORED_WAKE, REFUSED = 0, 1, 2


class Mailbox:
    SLOT = 128

    def __init__(self, n=8192):
        self.n = int(n)
        self._mm = mmap.mmap(-1, 32 + self.n * self.SLOT)
        self.h = memoryview(self._mm)[:16].cast("q")
        # nobody published yet: the consumer has not slept, it drains first
        _WAKE.pack_into(self._mm, 16, 0.0)
        self._lock = multiprocessing.get_context("fork").Lock()

    def put(self, frame, due):
        """STORED (the consumer will see it in time), STORED_WAKE (send it a
        wake-up), REFUSED (send the frame itself over ZeroMQ)."""
        ln = len(frame)
        if ln > self.SLOT - 4:
            return REFUSED
        lock = self._lock
        got = lock.acquire(timeout=_LOCK_TIMEOUT)
        try:
            h = self.h
            tail = h[1]
            if tail - h[0] >= self.n:
                return REFUSED
            k = 32 + (tail % self.n) * self.SLOT
            mm = self._mm
            _LEN.pack_into(mm, k, ln)
            mm[k + 4:k + 4 + ln] = frame
            h[1] = tail + 1
            return STORED_WAKE if due < _WAKE.unpack_from(mm, 16)[0] else STORED
        finally:
            if got:
                lock.release()

    def pending(self):
        return self.h[1] != self.h[0]

    def take(self):
        """Consumer: the frames waiting (oldest first)."""
        h = self.h
        if h[1] == h[0]:
            return ()
        got = self._lock.acquire(timeout=_LOCK_TIMEOUT)
        try:
            mm, n, slot = self._mm, self.n, self.SLOT
            out = []
            for i in range(h[0], h[1]):
                k = 32 + (i % n) * slot
                (ln,) = _LEN.unpack_from(mm, k)
                out.append(mm[k + 4:k + 4 + ln])
            h[0] = h[1]
            return out
        finally:
            if got:
                self._lock.release()

    def awake(self):
        """Consumer: it is running and drains before it sleeps, so no
        producer needs to wake it (a single aligned store, no lock)."""
        _WAKE.pack_into(self._mm, 16, 0.0)   # "looks now": no due time is earlier

    def publish(self, wake):
        """Consumer will sleep until `wake` (monotonic). True when frames
        arrived meanwhile (drain again instead of sleeping)."""
        got = self._lock.acquire(timeout=_LOCK_TIMEOUT)
        try:
            _WAKE.pack_into(self._mm, 16, wake)
            return self.h[1] != self.h[0]
        finally:
            if got:
                self._lock.release()
