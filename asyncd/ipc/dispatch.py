"""Idle-first dispatch of work items to a set of consumer processes.

Runs in: producers (udp receivers, async task workers, ASYNC MOD MS TIMER) and
consumers (Async Task Worker - <group>, ASYNC MOD TIMER, ASYNC MOD MS TIMER).

Why not plain PUSH/PULL: a PUSH socket deals frames round-robin to its peers'
pipes, so a task queued behind a 2 s task in worker A waits 2 s although
worker B is idle. Kamailio avoids that with one shared datagram socket that
all workers of a group read (spec B §4.3); ZeroMQ has no shared queue, and a
ROUTER broker would be an extra process and an extra hop per task.

Design ("queue" mode, task groups): every consumer binds its own PULL
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

"spread" mode (timers, ring=0): items are parked in the consumer's own heap,
so "idle" means nothing; a producer picks the consumer with the fewest
pending items, bounded by `cap` each.

Awake consumers (queue mode): a ZeroMQ send to an idle worker costs the
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

Bounds (spec A §7): push() checks for room and queues under one lock round
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
import os
import struct
import time

import zmq

from asyncd import ipc
from asyncd.core import runtime as rt

_HDR = 8
_PER = 4
_LOCK_TIMEOUT = 0.5      # a holder that died mid-section must not wedge the rest
SLOT = 1024
NAP = 0.00002            # spin(): sleep between looks at the ring
_LEN = struct.Struct("<I")
_WAKE = struct.Struct("<d")


class Dispatcher:
    """Create in main before fork; every process uses the inherited object."""

    def __init__(self, name, consumers, cap, nonblock=False, block_wait=1.0, rundir=None,
                 ring=0):
        self.name = name                  # short: it names the endpoint files
        self.n = int(consumers)
        self.cap = int(cap)
        self.ring = int(ring)
        self.nonblock = bool(nonblock)
        self.block_wait = float(block_wait)
        self.rundir = rundir              # str, or a callable returning it
        self._ring_off = 8 * (_HDR + _PER * max(self.n, 1))
        self._mm = mmap.mmap(-1, self._ring_off + SLOT * self.ring)
        self.c = memoryview(self._mm).cast("q")
        self._awm = mmap.mmap(-1, 8 * max(self.n, 1))
        self.aw = memoryview(self._awm).cast("q")       # awake flags (queue mode)
        self._lock = multiprocessing.get_context("fork").Lock()
        self._socks = {}
        self._socks_pid = 0

    def _dir(self):
        return self.rundir() if callable(self.rundir) else self.rundir

    def endpoint(self, i):
        return ipc.endpoint(self._dir(), f"{self.name}-{i}")

    def _acquire(self):
        return self._lock.acquire(timeout=_LOCK_TIMEOUT)

    # ---- producer side -------------------------------------------------

    def _room_locked(self):
        c = self.c
        if self.ring:
            # backlog + reservations + oversize frames parked in busy workers' pipes
            extra = sum(max(0, c[_HDR + _PER * i] - c[_HDR + _PER * i + 1] - 1)
                        for i in range(self.n))
            return (c[5] - c[4]) + extra < self.ring
        pending = sum(c[_HDR + _PER * i] - c[_HDR + _PER * i + 1] for i in range(self.n))
        return pending < self.cap * self.n

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
        if self.ring and len(frame) <= SLOT - 4:
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
            self._sock(i).send(frame, zmq.NOBLOCK)
            return True
        except zmq.ZMQError as e:
            rt.err("core", f"dispatch {self.name}: cannot queue to consumer {i}: {e}")
            c = self.c
            got = self._acquire()
            c[_HDR + _PER * i + 1] += 1     # never arrives: the consumer is not busy with it
            c[0] -= 1
            if got:
                self._lock.release()
            return False

    def offer(self, frame):
        """Queue mode: give `frame` to an idle consumer now (awake: through
        the ring; asleep: its ZeroMQ endpoint). False when every consumer is
        busy or the frame does not fit a ring slot: nothing was queued."""
        if self.n <= 0 or not self.ring or len(frame) > SLOT - 4:
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

    def _sock(self, i):
        pid = os.getpid()
        if self._socks_pid != pid:
            self._socks = {}        # sockets never cross a fork
            self._socks_pid = pid
        s = self._socks.get(i)
        if s is None:
            s = ipc.context().socket(zmq.PUSH)
            s.setsockopt(zmq.SNDHWM, 0)        # bounded by our own counters
            s.setsockopt(zmq.LINGER, 1000)
            s.setsockopt(zmq.RECONNECT_IVL, 10)
            s.connect(self.endpoint(i))
            self._socks[i] = s
        return s

    def connect_all(self):
        """Open the PUSH sockets to every consumer now (call after fork)."""
        for i in range(self.n):
            self._sock(i)

    # ---- consumer side -------------------------------------------------

    def bind(self, i):
        """PULL socket for consumer i (call in the consumer process)."""
        d = self._dir()
        path = ipc.endpoint_path(d, f"{self.name}-{i}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            os.unlink(path)         # stale socket file of an earlier run
        except OSError:
            pass
        s = ipc.context().socket(zmq.PULL)
        s.setsockopt(zmq.RCVHWM, 0)
        s.setsockopt(zmq.LINGER, 0)
        s.bind(self.endpoint(i))
        return s

    def finish(self, i, skipped=False):
        """Queue mode: consumer i finished an item. Returns the next backlog
        frame (we stay busy with it) or None (we are idle again)."""
        c = self.c
        b = _HDR + _PER * i
        got = self._acquire()
        try:
            c[b + (3 if skipped else 2)] += 1
            if self.ring and c[5] > c[4]:
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
        """Queue mode: idle consumer i stays awake up to `limit` s, looking
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

    def mark_done(self, i, skipped=False):
        """Spread mode: consumer i finished (or skipped) one of its items.
        Single writer per counter, no lock needed."""
        b = _HDR + _PER * i
        self.c[b + (3 if skipped else 2)] += 1
        self.c[b + 1] += 1

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


class TimerDispatcher(Dispatcher):
    """Spread mode for timer processes, with a shared mailbox per consumer so
    producers rarely touch ZeroMQ.

    A timer sleeps until its earliest due item; an item due later than that
    needs no wake-up at all, only to be seen before it is due. So a producer
    writes the frame into the consumer's mailbox ring and sends a zmq wake-up
    (an empty frame) only when the item is due before the consumer's published
    next wake time. With a steady delay (async_sleep(1) at any rate) new items
    are always due after the heap head: no zmq send on the request path. The
    consumer drains the mailbox, then publishes its next wake time under the
    lock and re-checks the mailbox, so no item can slip between the two.

    Mailbox layout per consumer i (second mmap): int64 head, tail, float64
    next_wake, spare; then `mailbox` slots of MB_SLOT bytes (u32 len + frame).
    A frame too big for a slot, or a full mailbox, goes over zmq as before.
    """

    MB_SLOT = 128

    def __init__(self, name, consumers, cap, mailbox=4096, **kw):
        super().__init__(name, consumers, cap, nonblock=True, **kw)
        self.mbn = int(mailbox)
        self._mbh = 32 * max(self.n, 1)
        self._mb = mmap.mmap(-1, self._mbh + max(self.n, 1) * self.mbn * self.MB_SLOT)
        self.m = memoryview(self._mb).cast("q")

    def _slot(self, i, k):
        return self._mbh + (i * self.mbn + k % self.mbn) * self.MB_SLOT

    def _place_locked(self, frame, due=None):
        """Lock held, c[0] counted: mailbox (returns (i, b"") for a wake-up,
        (i, None) for nothing to send) or (i, frame) to send over zmq."""
        m = self.m
        i = self._pick_locked(idle_only=False)
        b = 4 * i
        if len(frame) <= self.MB_SLOT - 4 and m[b + 1] - m[b] < self.mbn:
            k = self._slot(i, m[b + 1])
            self._mb[k:k + 4] = _LEN.pack(len(frame))
            self._mb[k + 4:k + 4 + len(frame)] = frame
            m[b + 1] += 1
            (wake,) = _WAKE.unpack_from(self._mb, 32 * i + 16)
            return i, (b"" if due is None or due < wake else None)
        return i, frame

    def _out(self, i, out):
        """After _place_locked: nothing to send, a wake-up, or the frame itself."""
        if out is None:
            return True
        if out:
            return self._zmq_send(i, out)       # no room in the mailbox: the frame goes over zmq
        try:
            self._sock(i).send(out, zmq.NOBLOCK)
        except zmq.ZMQError:
            pass                    # the frame is in the mailbox; it will be seen late
        return True

    def push(self, frame, nonblock=None, due=None):
        """Room check and queueing under one lock round trip: 0, or -1 (full)."""
        if self.n <= 0:
            return -1
        c = self.c
        got = self._acquire()
        try:
            if not self._room_locked():
                c[1] += 1
                return -1
            c[0] += 1
            i, out = self._place_locked(frame, due)
        finally:
            if got:
                self._lock.release()
        return 0 if self._out(i, out) else -1

    def take(self, i):
        """Consumer i: the frames waiting in its mailbox (oldest first)."""
        m, b = self.m, 4 * i
        if m[b + 1] == m[b]:
            return ()
        got = self._acquire()
        try:
            out = []
            for k in range(m[b], m[b + 1]):
                s = self._slot(i, k)
                (ln,) = _LEN.unpack_from(self._mb, s)
                out.append(bytes(self._mb[s + 4:s + 4 + ln]))
            m[b] = m[b + 1]
            return out
        finally:
            if got:
                self._lock.release()

    def publish(self, i, wake):
        """Consumer i will sleep until `wake` (monotonic). True when frames
        arrived meanwhile (drain again instead of sleeping)."""
        got = self._acquire()
        try:
            _WAKE.pack_into(self._mb, 32 * i + 16, wake)
            return self.m[4 * i + 1] != self.m[4 * i]
        finally:
            if got:
                self._lock.release()
