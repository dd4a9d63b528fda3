"""Timer loops of the ASYNC module.

Runs in: `ASYNC MOD TIMER` (× modparam workers) and `ASYNC MOD MS TIMER`
(one, when ms_timer > 0), rank PROC_TIMER.

Kamailio keeps a 100-slot seconds ring scanned once a second and a sorted
millisecond list polled every `ms_timer` ms, so `async_sleep(1)` resumes
anywhere in (0, 2) s and ms items up to one period late (spec B §8). asyncd
keeps one heap per timer process keyed by CLOCK_MONOTONIC due times (stamped
by the producer at call time; the clock is system-wide, so any process can
compare), and sleeps exactly until the earliest one (spec A §3): it polls its
PULL socket with a timeout that ends ~1 ms before the due time, then sleeps
the remainder with nanosecond resolution. A wall-clock step changes nothing.

Items arrive through the dispatcher's shared mailbox (asyncd.ipc.dispatch.
TimerDispatcher); the PULL socket only carries wake-ups (empty frames) for
items due before our published wake time, and frames the mailbox could not
hold.

Items are `[kind, due, tindex, tlabel, target]`. on_due(proc, item) returns
True (ran), False (skipped: transaction gone) or None (could not hand it on
now, e.g. the default task group is full: retry in RETRY s, delay instead of
drop, the author's own rationale for the ms timer, GH #2006).

Early hand-off (the ms timer): handing an item to a sleeping task worker is
a ZeroMQ frame through two I/O threads, 0.2-0.3 ms typically and a few ms
now and then on this kind of box, all of it late. With `lead` > 0 the loop
offers each item to on_early(proc, item) `lead` s before it is due; on_early
gives it to an idle worker, which waits out the rest itself (a plain timed
sleep: one wake-up, like ours) and resumes it on time. on_early returns
False when no worker is idle: the item then fires at its due time through
on_due as before, so early hand-off never takes a worker that a task needs.
"""
import heapq
import gc
import time

import zmq

from asyncd import ipc
from asyncd.core import runtime as rt
from asyncd.ipc import codec

POLL_MS = 200
FINE_WAIT = 0.002   # below this, sleep precisely instead of polling (ms resolution)
RETRY = 0.001


class _Heap:
    def __init__(self, disp, idx, lead=0.0):
        self.disp, self.idx, self.lead = disp, idx, lead
        self.h = []
        self.seq = 0

    def add(self, frame):
        if not frame:
            return                  # a wake-up
        try:
            item = codec.unpack(frame)
            due = float(item[1])
        except (ValueError, TypeError, IndexError) as e:
            rt.err("async", f"timer: dropping malformed item: {e}")
            self.disp.mark_done(self.idx, skipped=True)   # accounted for, not silently lost
            return
        self.seq += 1
        # (fire at, seq, item): fired before its due time, an entry is an early offer
        heapq.heappush(self.h, (due - self.lead, self.seq, item))

    def drain(self, sock):
        for frame in self.disp.take(self.idx):
            self.add(frame)
        while True:
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.add(frame)


def _fire(proc, heap, on_due, on_early):
    mono = time.monotonic
    h, disp, idx = heap.h, heap.disp, heap.idx
    now = mono()
    while h and h[0][0] <= now:
        at, s, item = heapq.heappop(h)
        due = float(item[1])
        if at < due and due > now:
            try:
                handed = on_early(proc, item)
            except Exception as e:      # never lose the item: it fires at due instead
                rt.err("async", f"timer: early hand-off failed: {e!r}")
                handed = False
            if handed:
                disp.mark_done(idx)             # the worker has it now and accounts for it
            else:
                heapq.heappush(h, (due, s, item))   # no idle worker: at due, as usual
            now = mono()
            continue
        try:
            r = on_due(proc, item)
        except Exception as e:    # a failing resume never kills the timer
            rt.err("async", f"timer: resume failed: {e!r}")
            r = True
        if r is None:
            heapq.heappush(h, (now + RETRY, s, item))
            return
        disp.mark_done(idx, r is False)
        now = mono()


def run(proc, disp, idx, on_due, lead=0.0, on_early=None):
    """Loop until proc.stopping: receive items, resume them when due."""
    sock = disp.bind(idx)
    if on_early is None:
        lead = 0.0
    heap = _Heap(disp, idx, lead)
    gc.freeze()     # what we inherited from main is never garbage: keep it out of GC scans
    mono = time.monotonic
    try:
        while not proc.stopping:
            heap.drain(sock)
            _fire(proc, heap, on_due, on_early)
            wake = heap.h[0][0] if heap.h else mono() + POLL_MS / 1000.0
            # an item due before wake + lead must wake us to be offered early
            if disp.publish(idx, wake + lead):
                continue            # frames arrived while we were busy
            wait = wake - mono()
            if wait <= 0:
                continue
            if wait < FINE_WAIT:
                time.sleep(wait)
                continue
            try:
                sock.poll(int(wait * 1000) - 1 if heap.h else POLL_MS)
            except zmq.ZMQError as e:
                if proc.stopping:
                    break
                rt.err("async", f"timer: poll failed: {e}")
        if heap.h:
            rt.warn("async", f"timer: stopping with {len(heap.h)} pending item(s)")
    finally:
        try:
            sock.close(0)
        except zmq.ZMQError:
            pass
        ipc.close_all()
