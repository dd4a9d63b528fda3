"""A FIFO of timer entries that all wait about the same delay (tm's wait
timer, its fr probes, the first retransmission of a relayed request):
producers append under one short lock, the timer process that owns the ring
pops what is due on its loop turns.

Runs in: main (created by a module's mod_init, before fork), any producer
(put: udp receivers, task workers, the tm timer), and the one consumer, a
process of workers/timer.py (due, pop, run through TimerLoop.drain_rings).

Why beside the TimerFeed (timers.py): an entry whose delay is the same for
everyone is due in the order it was armed, so it needs no heap, no
per-entry frame, no journal: a ring in shared memory already is the
schedule, and the consumer's cost per entry is its handler. Measured at
3,000 async_task_route requests/s (docs/benchmarks.md, "Issue 16"): the
wait entry and the fr probe of every transaction through the feed cost
the tm timer process ~26 µs per request and each producer a mailbox round
trip; through rings, see the table there.

Sleep: the consumer sleeps until the earliest of its heap, its rings'
heads and its poll interval, and publishes that time in its feed's mailbox
(timers.py). An entry put into an empty ring may be due before it (a delay
shorter than the poll interval, as tests set retr_timer1): the producer
then nudges the consumer (TimerFeed.nudge), and the consumer looks at its
rings again after publishing, so one of the two always sees the other.

Slack: a ring whose entries are nearly always moot when due (tm's first
retransmission: the reply came) may be given a slack; the consumer then
wakes for its head at most that much late and runs every entry due by then
in one turn, instead of waking once per entry (one wake-up per request at
3,000 relays/s). Entries still never run early.

Order: put() stamps nothing itself but keeps the ring sorted: an entry
whose due time is earlier than the tail's (its producer read the clock,
then lost the race for the lock, or wt_timer was lowered at run time) gets
the tail's due time, so it may fire a little late, never early.

Nothing is lost: the entry is written, then the tail moved, under the lock
(a robust one, shm/locks.py: a producer killed inside delays the next by
~50 ms and its half-written entry was never published). The consumer runs
an entry, then moves the head past it (one aligned store): a consumer
killed in between is replaced by one that runs that entry again, so the
handlers must be idempotent (tm's are: they re-read the transaction by
(index, label) and do nothing once it moved on). A full ring refuses
(put() -> False) and the producer arms the entry through its feed instead.

Layout (anonymous MAP_SHARED mmap made in main), int64 words:
    0 head (consumer) | 1 tail (producers, under the lock) | 2 refused
    3 run | 4 skipped (consumer) | 5-7 spare
then `n` entries of 24 bytes: due f64 | index u32 | label u32 | arg i32 | extra i32
"""
import mmap
import struct

from shm.locks import robust_lock

_E = struct.Struct("<dIIii")
_D = struct.Struct("<d")
_HDR = 64
H_HEAD, H_TAIL, H_REFUSED, H_RUN, H_SKIPPED = range(5)


class DelayRing:
    """`n` entries of timer kind `kind`, handed to the handler as
    `[kind, due, index, label, arg, extra]` (the TimerFeed entry shape;
    tm's retransmission entries carry their interval in `extra`)."""

    def __init__(self, name, kind, n, slack=0.0):
        self.name = name
        self.kind = kind
        self.n = int(n)
        self.slack = float(slack)     # the consumer may run an entry this much late, to batch
        self._mm = mmap.mmap(-1, _HDR + self.n * _E.size)
        self.h = memoryview(self._mm)[:_HDR].cast("q")
        self.lock = robust_lock(f"delay ring {name}")

    # ---- producers -------------------------------------------------------
    def put(self, due, index, label, arg=0, extra=0):
        """Append; False when the ring is full (counted): arm it elsewhere."""
        lock, h, mm, n = self.lock, self.h, self._mm, self.n
        lock.acquire(0)
        try:
            tail = h[H_TAIL]
            if tail - h[H_HEAD] >= n:
                h[H_REFUSED] += 1
                return False
            if tail:
                last = _D.unpack_from(mm, _HDR + ((tail - 1) % n) * 24)[0]
                if due < last:
                    due = last
            _E.pack_into(mm, _HDR + (tail % n) * 24, due, index, label, arg, extra)
            h[H_TAIL] = tail + 1        # after the entry: the consumer sees it whole
            return True
        finally:
            lock.release(0)

    # ---- the consumer ----------------------------------------------------
    def next_due(self):
        """Due time of the oldest entry, or None (no lock: x86 store order)."""
        h = self.h
        head = h[H_HEAD]
        if head >= h[H_TAIL]:
            return None
        return _D.unpack_from(self._mm, _HDR + (head % self.n) * 24)[0]

    def pop_due(self, now, run, limit=4096):
        """Run `run(entry)` for each entry due at `now` (at most `limit`),
        oldest first, moving the head past each once it ran; run returns
        True when it counted as skipped. Returns how many ran."""
        h, mm, n, kind = self.h, self._mm, self.n, self.kind
        head, tail = h[H_HEAD], h[H_TAIL]
        done = 0
        while head < tail and done < limit:
            due, index, label, arg, extra = _E.unpack_from(mm, _HDR + (head % n) * 24)
            if due > now:
                break
            skipped = run([kind, due, index, label, arg, extra])
            head += 1
            h[H_HEAD] = head
            h[H_SKIPPED if skipped else H_RUN] += 1
            done += 1
        return done

    def stats(self):
        h = self.h
        return {"accepted": h[H_TAIL], "rejected": h[H_REFUSED], "run": h[H_RUN],
                "skipped": h[H_SKIPPED], "pending": h[H_TAIL] - h[H_HEAD]}
