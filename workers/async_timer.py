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

Items are `[kind, due, tindex, tlabel, target]`. on_due(proc, item) returns
True (ran), False (skipped: transaction gone) or None (could not hand it on
now, e.g. the default task group is full: retry in RETRY s, delay instead of
drop, the author's own rationale for the ms timer, GH #2006).
"""
import heapq
import time

import zmq

from asyncd import ipc
from asyncd.core import log
from asyncd.ipc import codec

POLL_MS = 200
FINE_WAIT = 0.002   # below this, sleep precisely instead of polling (ms resolution)
RETRY = 0.001


def _drain(sock, heap, seq, disp, idx):
    while True:
        try:
            frame = sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return seq
        try:
            item = codec.unpack(frame)
            due = float(item[1])
        except (ValueError, TypeError, IndexError) as e:
            log.err("async", f"timer: dropping malformed item: {e}")
            disp.mark_done(idx, skipped=True)     # accounted for, not silently lost
            continue
        seq += 1
        heapq.heappush(heap, (due, seq, item))


def run(proc, disp, idx, on_due):
    """Loop until proc.stopping: receive items, resume them when due."""
    sock = disp.bind(idx)
    heap = []
    seq = 0
    mono = time.monotonic
    try:
        while not proc.stopping:
            now = mono()
            while heap and heap[0][0] <= now:
                due, s, item = heapq.heappop(heap)
                try:
                    r = on_due(proc, item)
                except Exception as e:    # a failing resume never kills the timer
                    log.err("async", f"timer: resume failed: {e!r}")
                    r = True
                if r is None:
                    heapq.heappush(heap, (now + RETRY, s, item))
                    break
                disp.mark_done(idx, r is False)
                now = mono()
            if heap:
                wait = heap[0][0] - mono()
                if wait <= 0:
                    continue
                if wait < FINE_WAIT:
                    time.sleep(wait)
                    seq = _drain(sock, heap, seq, disp, idx)
                    continue
                timeout = int(wait * 1000) - 1
            else:
                timeout = POLL_MS
            try:
                if sock.poll(max(timeout, 0)):
                    seq = _drain(sock, heap, seq, disp, idx)
            except zmq.ZMQError as e:
                if proc.stopping:
                    break
                log.err("async", f"timer: poll failed: {e}")
        if heap:
            log.warn("async", f"timer: stopping with {len(heap)} pending item(s)")
    finally:
        try:
            sock.close(0)
        except zmq.ZMQError:
            pass
        ipc.close_all()
