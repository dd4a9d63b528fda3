"""Idle-first dispatch of work items to a set of consumer processes.

Runs in: producers (udp receivers, async task workers, ASYNC MOD MS TIMER) and
consumers (Async Task Worker - <group>).

Why not plain PUSH/PULL: a PUSH socket deals frames round-robin to its peers'
pipes, so a task queued behind a 2 s task in worker A waits 2 s although
worker B is idle. Kamailio avoids that with one shared datagram socket that
all workers of a group read (src/core/async_task.c, async_task_run;
docs/kamailio-async.md §4.3); ZeroMQ has no shared queue, and a ROUTER broker
would be an extra process and an extra hop per task.

Design: every consumer binds its own PULL
endpoint. A small shared block (anonymous MAP_SHARED mmap made in main before
fork: no name to leak or unlink) holds per-consumer busy counters and a
bounded backlog ring of frames, guarded by one fork-inherited lock. A
producer, under the lock, gives the frame to an idle consumer (marks it busy,
then PUSHes straight to its endpoint) or, when all are busy, appends it to
the backlog. A consumer that finishes an item, under the lock, takes the next
backlog frame itself or marks itself idle. So an item waits only while every
consumer is busy, exactly as with Kamailio's shared socket; the common path
is one lock round-trip plus one zmq send. Frames larger than a backlog slot
(big async_task_data payloads) go to the least busy consumer instead.

Awake consumers: a ZeroMQ send to an idle worker costs the
producer 0.1-0.3 ms wall on a loaded 2-core box (three context switches:
producer -> its I/O thread -> the worker's I/O thread -> worker). Under load a
worker that just finished is about to get the next item anyway, so it stays
*awake* for a short while (spin(): it looks at the ring every ~70 µs, napping
in between; a sched_yield loop here cost a core at 3,000/s) and publishes that in a
shared flag; a producer that sees an idle awake consumer appends the frame to
the backlog ring instead of sending it, and the awake consumer claims it from
there. A consumer that goes back to sleep clears its flag and re-checks the
ring under the lock (doze()), so no frame is stranded; a producer that missed
the flag just sends over ZeroMQ as before. Idle-first is kept: the frame
waits only for an idle worker that is already looking for it.

Bounds: push() checks for room and queues under one lock round
trip; -1 at once for a non-blocking dispatcher, after at most `block_wait` s
for a blocking one (the async module then undoes the suspension). Every item
sent is counted: accepted == run + skipped + pending.

Shared block layout (int64 header, then per-consumer counters, then ring):
    0 accepted  1 rejected  2 rr cursor  3 (unused)  4 ring head  5 ring tail
    8+4i: assigned[i]  9+4i: done[i]  10+4i: run[i]  11+4i: skipped[i]
    ring slot k: u32 length + frame bytes, SLOT bytes each
"""
import mmap
import multiprocessing
import struct
import time

import zmq

from asyncd.core import log
from asyncd.ipc import Pushers

_HDR = 8
_PER = 4
_LOCK_TIMEOUT = 0.5      # a holder that died mid-section must not wedge the rest
SLOT = 1024
NAP = 0.00002            # spin(): sleep between looks at the ring
_LEN = struct.Struct("<I")


class Dispatcher:
    """Create in main before fork; every process uses the inherited object."""

    def __init__(self, name, consumers, ring, nonblock=False, block_wait=1.0, rundir=None):
        self.name = name                  # short: it names the endpoint files
        self.n = int(consumers)
        self.ring = int(ring)             # backlog frames (> 0)
        self.nonblock = bool(nonblock)
        self.block_wait = float(block_wait)
        self._ring_off = 8 * (_HDR + _PER * max(self.n, 1))
        self._mm = mmap.mmap(-1, self._ring_off + SLOT * self.ring)
        self.c = memoryview(self._mm).cast("q")
        self._awm = mmap.mmap(-1, 8 * max(self.n, 1))
        self.aw = memoryview(self._awm).cast("q")       # awake flags
        self._lock = multiprocessing.get_context("fork").Lock()
        self.pushers = Pushers(name, rundir)   # rundir: str, or a callable returning it

    def _acquire(self):
        return self._lock.acquire(timeout=_LOCK_TIMEOUT)

    # ---- producer side -------------------------------------------------

    def _room_locked(self):
        c = self.c
        # backlog + oversize frames parked in busy workers' pipes
        extra = sum(max(0, c[_HDR + _PER * i] - c[_HDR + _PER * i + 1] - 1)
                    for i in range(self.n))
        return (c[5] - c[4]) + extra < self.ring

    def _pick_locked(self, idle_only):
        c, n = self.c, self.n
        start = c[2]
        best, best_load = -1, None
        for k in range(n):
            i = (start + k) % n
            b = _HDR + _PER * i
            load = c[b] - c[b + 1]
            if load <= 0:
                best = i
                break
            if not idle_only and (best_load is None or load < best_load):
                best, best_load = i, load
        if best >= 0:
            c[2] = (best + 1) % n
            c[_HDR + _PER * best] += 1
        return best

    def _place_locked(self, frame):
        """Lock held, room checked, c[0] counted: the ring (returns -1) or the
        index of the consumer marked busy with it (the caller sends over zmq)."""
        c = self.c
        i = -1
        if len(frame) <= SLOT - 4:
            aw = self.aw
            for k in range(self.n):
                if aw[k] and c[_HDR + _PER * k] == c[_HDR + _PER * k + 1]:
                    break           # an idle worker is awake: it takes it from the ring
            else:
                i = self._pick_locked(idle_only=True)
        else:
            i = self._pick_locked(idle_only=False)
        if i < 0:
            k = (c[5] % self.ring) * SLOT + self._ring_off
            self._mm[k:k + 4] = _LEN.pack(len(frame))
            self._mm[k + 4:k + 4 + len(frame)] = frame
            c[5] += 1
        return i

    def _zmq_send(self, i, frame):
        """Send to consumer i (already counted busy). False: undone, logged."""
        try:
            self.pushers.get(i).send(frame, zmq.NOBLOCK)
            return True
        except zmq.ZMQError as e:
            log.err("core", f"dispatch {self.name}: cannot queue to consumer {i}: {e}")
            c = self.c
            got = self._acquire()
            c[_HDR + _PER * i + 1] += 1     # never arrives: the consumer is not busy with it
            c[0] -= 1
            if got:
                self._lock.release()
            return False

    def offer(self, frame):
        """Give `frame` to an idle consumer now (awake: through
        the ring; asleep: its ZeroMQ endpoint). False when every consumer is
        busy or the frame does not fit a ring slot: nothing was queued."""
        if self.n <= 0 or len(frame) > SLOT - 4:
            return False
        c, aw = self.c, self.aw
        got = self._acquire()
        try:
            idle = [k for k in range(self.n) if c[_HDR + _PER * k] == c[_HDR + _PER * k + 1]]
            if not idle:
                return False            # every consumer busy: the caller keeps it
            if any(aw[k] for k in idle) and c[5] - c[4] >= self.ring:
                return False
            c[0] += 1
            i = self._place_locked(frame)   # awake idle: the ring; else that idle one
        finally:
            if got:
                self._lock.release()
        return True if i < 0 else self._zmq_send(i, frame)

    def push(self, frame, nonblock=None):
        """Claim room and queue `frame` under one lock round trip: 0, or -1 when full (at once
        for a non-blocking dispatcher, after at most `block_wait` s for a
        blocking one) or when the send failed."""
        if self.n <= 0:
            return -1
        nb = self.nonblock if nonblock is None else nonblock
        deadline = None
        delay = 0.0002
        c = self.c
        while True:
            got = self._acquire()
            try:
                if self._room_locked():
                    c[0] += 1
                    i = self._place_locked(frame)
                    break
            finally:
                if got:
                    self._lock.release()
            now = time.monotonic()
            if not nb and deadline is None:
                deadline = now + self.block_wait
            if nb or now >= deadline:
                got = self._acquire()
                c[1] += 1
                if got:
                    self._lock.release()
                return -1
            time.sleep(delay)
            delay = min(delay * 2, 0.005)
        return 0 if i < 0 or self._zmq_send(i, frame) else -1

    def connect_all(self):
        """Open the PUSH sockets to every consumer now (call after fork)."""
        for i in range(self.n):
            self.pushers.get(i)

    # ---- consumer side -------------------------------------------------

    def bind(self, i):
        """PULL socket for consumer i (call in the consumer process)."""
        return self.pushers.bind(i)

    def finish(self, i, skipped=False):
        """Consumer i finished an item. Returns the next backlog
        frame (we stay busy with it) or None (we are idle again)."""
        c = self.c
        b = _HDR + _PER * i
        got = self._acquire()
        try:
            c[b + (3 if skipped else 2)] += 1
            if c[5] > c[4]:
                k = (c[4] % self.ring) * SLOT + self._ring_off
                (ln,) = _LEN.unpack_from(self._mm, k)
                frame = bytes(self._mm[k + 4:k + 4 + ln])
                c[4] += 1
                return frame
            c[b + 1] += 1
            return None
        finally:
            if got:
                self._lock.release()

    def spin(self, i, limit):
        """Idle consumer i stays awake up to `limit` s, looking
        for backlog frames between short naps (NAP plus the kernel's timer
        slack, ~70 µs: each look costs a few µs, where yielding in a loop
        burned the whole wait). Returns a claimed frame (we are busy with it)
        or None (asleep again: wait on the ZeroMQ socket)."""
        c, aw = self.c, self.aw
        mono, nap = time.monotonic, time.sleep
        aw[i] = 1
        end = mono() + limit
        b = _HDR + _PER * i
        while True:
            if c[5] > c[4] or c[b] != c[b + 1]:
                break
            if mono() >= end:
                break
            nap(NAP)
        return self._doze(i)

    def _doze(self, i):
        c = self.c
        b = _HDR + _PER * i
        got = self._acquire()
        try:
            self.aw[i] = 0
            if c[b] != c[b + 1] or c[5] <= c[4]:
                return None     # a producer picked us (frame in our pipe) or nothing to do
            k = (c[4] % self.ring) * SLOT + self._ring_off
            (ln,) = _LEN.unpack_from(self._mm, k)
            frame = bytes(self._mm[k + 4:k + 4 + ln])
            c[4] += 1
            c[b] += 1           # busy with it: finish() accounts for it as usual
            return frame
        finally:
            if got:
                self._lock.release()

    # ---- introspection -------------------------------------------------

    def outstanding(self, i=None):
        if i is not None:
            b = _HDR + _PER * i
            return self.c[b] - self.c[b + 1]
        return sum(self.outstanding(k) for k in range(self.n)) + (self.c[5] - self.c[4])

    def stats(self):
        run = sum(self.c[_HDR + _PER * i + 2] for i in range(self.n))
        skipped = sum(self.c[_HDR + _PER * i + 3] for i in range(self.n))
        return {"accepted": self.c[0], "rejected": self.c[1], "run": run,
                "skipped": skipped, "pending": self.outstanding()}
