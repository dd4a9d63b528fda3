"""The timer service: the one loop every timer process runs.

Runs in: every process of a ROLE_TIMER row: tm's `timer`, the ASYNC
module's `ASYNC MOD TIMER` (× modparam workers) and `ASYNC MOD MS TIMER`,
htable's `HTable Timer`, usrloc's `USRLOC Timer`, nathelper's `TIMER NH`
(× natping_processes) (rank PROC_TIMER).

One heap per process, keyed by CLOCK_MONOTONIC due times (stamped by the
producer when it armed the entry; the clock is system-wide, so every
process compares the same numbers, and a wall-clock step changes nothing).
Cancel is by marking: a handler re-reads the state it acts on and does
nothing when it moved on (a transaction answered, a resume skipped).
Entries arrive through the row's TimerFeed (asyncd/ipc/timers.py): a
shared-memory mailbox, with ZeroMQ wake-ups only for entries due before the
wake-up this loop published. The heap is private, but every entry in it is
also in the consumer's shared-memory journal (asyncd/ipc/journal.py) until
its handler returned: a timer process killed at any instant (kill -9
included) and respawned for the same row and instance rebuilds its heap at
start (recover), due times unchanged, so nothing armed before the death is
lost; a handler cut short by the death runs again (journal.py says why
that is safe).

The loop sleeps exactly until the earliest entry: it polls its PULL socket
with a timeout that ends ~1 ms early, then sleeps the rest with nanosecond
resolution, so entries fire ~0.1-1.5 ms late and never early (Kamailio's
timers tick: its seconds ring resumes anywhere in (0, 2) s, its ms list up
to one ms_timer period late; docs/kamailio-async.md §8).

What to do with an entry is the row's business (asyncd.core.procs.
TimerHandlers): on_due[kind] runs it when due; early[kind] = (lead, fn) is
offered it `lead` s before (the ms timer hands items to an idle task worker
that sleeps out the rest, so the ZeroMQ hop to a sleeping worker, 0.2-0.3 ms
and now and then a few ms, is no longer late; refused, the entry fires at
due as usual). A handler that answers RETRY (e.g. the task group it hands
to is full) is tried again RETRY_DELAY later: delay, never drop, the choice
Kamailio's author made for its ms timer (GH #2006). Entries that all wait
one delay (tm's wait timer, fr probes, first retransmissions) come through delay rings
(asyncd/ipc/delay_ring.py) instead of the feed: due in ring order, they are
run from the ring on each loop turn (drain_rings). Periodic jobs (tm's
table sweep, htable expiry) run from the same loop. A handler that raises
is logged; the loop never dies of it.
"""
import gc
import heapq
import math
import time

import zmq

from asyncd import ipc
from asyncd.core import log
from asyncd.core.cfg_groups import updater
from asyncd.core.procs import RETRY, SKIPPED
from asyncd.ipc import codec

MOD = "core"
POLL = 0.2          # the longest sleep: how often an idle timer looks at proc.stopping
FINE_WAIT = 0.002   # below this, sleep precisely instead of polling (ms resolution)
RETRY_DELAY = 0.001


def next_run(last, p, now):
    """When a Periodic job that was due at `last` runs next: `interval` s
    later; an aligned job on a whole second (the next one at or after that);
    a job that fell behind runs at once (unaligned) or on the next whole
    second (aligned), never in a burst of catch-up runs."""
    nxt = last + p.interval
    if not p.aligned:
        return max(nxt, now)
    nxt = float(math.ceil(nxt))
    return nxt if nxt > now else float(int(now) + 1)


class TimerLoop:
    """The heap, the periodic jobs and the feed of one timer process."""

    def __init__(self, proc, handlers, idx):
        self.proc = proc
        self.on_due = handlers.on_due
        self.early = handlers.early
        self.lead = max((lead for lead, _ in handlers.early.values()), default=0.0)
        self.feed = handlers.feed
        self.rings = handlers.rings
        self.idx = idx
        self.heap = []
        self.seq = 0
        now = time.monotonic()
        self.jobs = [[float(int(now) + 1) if p.aligned else now + p.interval, p]
                     for p in handlers.every]

    # ---- arrivals ----------------------------------------------------------
    def recover(self):
        """At start: what a killed predecessor left in the journal, and what
        waits in the mailbox, goes into the heap with its due time as armed
        (the overdue fire at once). Returns how many entries it recovered."""
        feed, idx = self.feed, self.idx
        items, restarted = feed.recover(idx)
        n = sum(self.add(*it) for it in items)
        if restarted:
            n += self.take()
        if n:
            log.notice(MOD, f"timer: recovered {n} pending entries of {feed.name} consumer {idx}")
        return n

    def take(self):
        """Journal the mailbox's frames and queue their entries (how many)."""
        return sum(self.add(*it) for it in self.feed.take(self.idx))

    def add(self, slot, frame, mask):
        """Queue the entries of journal slot `slot` whose bit is set in
        `mask`; a malformed one is skipped (counted). Returns how many."""
        try:
            entries = codec.unpack(frame)
            if not isinstance(entries, list):
                raise ValueError(f"not a list: {entries!r}")
        except ValueError as ex:
            log.err(MOD, f"timer: dropping a malformed frame: {ex}")
            entries = []
        n = 0
        for j in range(mask.bit_length()):
            if mask >> j & 1:
                n += self._queue(entries[j] if j < len(entries) else None, slot, j)
        return n

    def _queue(self, e, slot, j):
        try:
            due = float(e[1])
            early = self.early.get(e[0])     # (lead, fn) or None
        except (ValueError, TypeError, IndexError) as ex:
            log.err(MOD, f"timer: dropping a malformed entry {e!r}: {ex!r}")
            self.feed.done(self.idx, slot, j, skipped=True)     # accounted for, not silently lost
            return 0
        # (fire at, seq, entry, slot, j): fired before its due time, an entry is an early offer
        self.seq += 1
        heapq.heappush(self.heap, (due - early[0] if early else due, self.seq, e, slot, j))
        return 1

    def drain(self, sock):
        feed = self.feed
        feed.awake(self.idx)
        self.take()
        events, pollin = sock.getsockopt, zmq.POLLIN
        # looked at first: a recv() on an empty socket raises, which costs more
        while events(zmq.EVENTS) & pollin:
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if frame:
                log.err(MOD, f"timer: ignoring a {len(frame)}-byte frame: entries travel in shared memory")

    # ---- firing ------------------------------------------------------------
    def fire(self):
        """Run what is due (and offer what is due within its lead)."""
        mono = time.monotonic
        h = self.heap
        feed, idx = self.feed, self.idx
        now = mono()
        while h and h[0][0] <= now:
            at, s, e, slot, j = heapq.heappop(h)
            due = float(e[1])
            if at < due and due > now:
                self._offer(e, s, due, slot, j)
            elif self._run(e, now, s, slot, j) is RETRY:
                return
            if feed.waiting(idx):
                self.take()         # a long run of handlers must not leave the mailbox to fill
            now = mono()

    def _offer(self, e, s, due, slot, j):
        try:
            handed = self.early[e[0]][1](self.proc, e)
        except Exception as ex:      # never lose the entry: it fires at due instead
            log.err(MOD, f"timer: early hand-off failed: {ex!r}")
            handed = False
        if handed:
            self.feed.done(self.idx, slot, j)            # the taker accounts for it now
        else:
            heapq.heappush(self.heap, (due, s, e, slot, j))     # nobody took it: at due, as usual

    def drain_rings(self):
        """Run the ring entries that are due (asyncd/ipc/delay_ring.py)."""
        for ring in self.rings:
            if ring.next_due() is not None:
                ring.pop_due(time.monotonic(), self._ring_entry)

    def _ring_entry(self, e):
        """One due ring entry; True when skipped. A handler that answers
        RETRY gets it again from the heap (not journaled: the ring had it)."""
        r = self._run(e, time.monotonic(), 0, -1, 0)
        return r is SKIPPED

    def _run(self, e, now, s, slot, j):
        fn = self.on_due.get(e[0])
        if fn is None:
            log.err(MOD, f"timer: no handler for entry kind {e[0]!r}")
            r = SKIPPED
        else:
            try:
                r = fn(self.proc, e)
            except Exception as ex:      # a failing handler never kills the timer
                log.err(MOD, f"timer: {e[0]!r} handler failed: {ex!r}")
                r = None
        if r is RETRY:
            heapq.heappush(self.heap, (now + RETRY_DELAY, s, e, slot, j))     # still journaled
            return RETRY
        if slot >= 0:       # a feed entry (slot -1: a ring's, accounted for by its ring)
            self.feed.done(self.idx, slot, j, skipped=r is SKIPPED)
        return r

    def run_jobs(self, now):
        for job in self.jobs:
            if job[0] <= now:
                p = job[1]
                try:
                    p.fn(self.proc)
                except Exception as ex:
                    log.err(MOD, f"timer: periodic {getattr(p.fn, '__name__', p.fn)} failed: {ex!r}")
                now = time.monotonic()
                job[0] = next_run(job[0], p, now)

    def rings_wake(self, wake):
        """The earlier of `wake` and the time the rings' oldest entries want
        us (each ring's head due time plus its slack; no lock)."""
        for ring in self.rings:
            due = ring.next_due()
            if due is not None and due + ring.slack < wake:
                wake = due + ring.slack
        return wake

    def next_wake(self, now):
        wake = now + POLL
        if self.heap:
            wake = min(wake, self.heap[0][0])
        wake = self.rings_wake(wake)
        for at, _ in self.jobs:
            wake = min(wake, at)
        return wake


def run(proc, row, idx):
    """Loop until proc.stopping: take entries, fire them when due, run the jobs."""
    loop = TimerLoop(proc, row.handlers, idx)
    feed = loop.feed
    sock = feed.bind(idx) if feed is not None else None
    if sock is not None:
        loop.recover()      # bound first: a wake-up sent from here on is not lost
    gc.freeze()     # what we inherited from main is never garbage: keep it out of GC scans
    mono = time.monotonic
    cfg_update = updater(proc.script)     # Kamailio's cfg_update() per loop turn
    try:
        while not proc.stopping:
            cfg_update()
            if sock is not None:
                loop.drain(sock)
                loop.fire()
            if loop.rings:
                loop.drain_rings()
            loop.run_jobs(mono())
            wake = loop.next_wake(mono())
            # an entry due before wake + lead must wake us to be offered early
            if sock is not None and feed.publish(idx, wake + loop.lead):
                continue            # frames arrived while we were busy
            if sock is not None and loop.rings and loop.rings_wake(wake) < wake:
                continue            # a ring entry put before it could see our wake time (TimerFeed.nudge)
            wait = wake - mono()
            if wait <= 0:
                continue
            if wait < FINE_WAIT or sock is None:
                time.sleep(wait)
                continue
            try:
                sock.poll(int(wait * 1000) - 1)
            except zmq.ZMQError as ex:
                if proc.stopping:
                    break
                log.err(MOD, f"timer: poll failed: {ex}")
        if loop.heap:
            log.info(MOD, f"timer: stopping with {len(loop.heap)} pending entries")
    finally:
        if sock is not None:
            try:
                sock.close(0)
            except zmq.ZMQError:
                pass
        ipc.close_all()
