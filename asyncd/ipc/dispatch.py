"""Idle-first dispatch of work items to a set of consumer processes.

Runs in: producers (udp receivers, async task workers, ASYNC MOD MS TIMER) and
consumers (Async Task Worker - <group>, ASYNC MOD TIMER, ASYNC MOD MS TIMER).

Why not plain PUSH/PULL: a PUSH socket deals frames round-robin to its peers'
pipes, so a task queued behind a 2 s task in worker A waits 2 s although
worker B is idle. Kamailio avoids that with one shared datagram socket that all
workers of a group read (spec B §4.3); ZeroMQ has no such shared queue.

Design: every consumer binds its own PULL endpoint; a small shared counter
block (anonymous MAP_SHARED mmap made in main before fork, so no name to leak
or unlink) holds, per consumer, `assigned` (bumped by producers under one
fork-inherited lock per dispatcher) and `done` (bumped only by that consumer,
no lock: a single aligned 8-byte store). outstanding = assigned - done counts
queued + running items. A producer takes the lock, picks an idle consumer
(outstanding 0; round-robin among idle ones) or else the least loaded, bumps
its `assigned`, releases, and PUSHes the frame straight to that consumer.
No broker process and no extra hop; process titles stay Kamailio's.

Bounds (spec A §7): a consumer with `cap` outstanding items is full; when all
are full a non-blocking producer gets -1 at once, a blocking one polls for up
to `block_wait` seconds, then -1. An accepted item is always sent (NOBLOCK on
a pipe whose HWM is above cap); every consumed item is counted as run or
skipped, so accepted == run + skipped + outstanding at any quiet moment.

Counter block layout (int64 slots):
    0 accepted   1 rejected (full)   2 rr cursor   3 spare
    4+4i: assigned[i]  5+4i: done[i]  6+4i: run[i]  7+4i: skipped[i]
"""
import mmap
import multiprocessing
import os
import time

import zmq

from asyncd import ipc
from asyncd.core import log

_HDR = 4
_PER = 4
_LOCK_TIMEOUT = 0.5      # a holder that died mid-section must not wedge producers


class Dispatcher:
    """Shared between all processes; create in main before fork."""

    def __init__(self, name, consumers, cap, nonblock=False, block_wait=1.0, rundir=None):
        self.name = name                  # short, used in endpoint file names
        self.n = int(consumers)
        self.cap = int(cap)
        self.nonblock = bool(nonblock)
        self.block_wait = float(block_wait)
        self.rundir = rundir
        self._mm = mmap.mmap(-1, 8 * (_HDR + _PER * max(self.n, 1)))
        self.c = memoryview(self._mm).cast("q")
        self._lock = multiprocessing.get_context("fork").Lock()
        self._socks = {}
        self._socks_pid = 0

    # ---- producer side -------------------------------------------------

    def endpoint(self, i):
        return ipc.endpoint(self.rundir, f"{self.name}-{i}")

    def _pick_locked(self):
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
            if best_load is None or load < best_load:
                best, best_load = i, load
        else:
            if best_load is not None and best_load >= self.cap:
                return -1
        c[2] = (best + 1) % n
        c[_HDR + _PER * best] += 1
        c[0] += 1
        return best

    def reserve(self, nonblock=None):
        """Claim room for one item; returns the consumer index or -1 (full / no
        consumers). Never blocks longer than block_wait."""
        if self.n <= 0:
            return -1
        nb = self.nonblock if nonblock is None else nonblock
        deadline = None
        delay = 0.0002
        while True:
            got = self._lock.acquire(timeout=_LOCK_TIMEOUT)
            try:
                i = self._pick_locked()
            finally:
                if got:
                    self._lock.release()
            if i >= 0:
                return i
            if nb:
                break
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.block_wait
            elif now >= deadline:
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.005)
        self._count_rejected()
        return -1

    def _count_rejected(self):
        got = self._lock.acquire(timeout=_LOCK_TIMEOUT)
        try:
            self.c[1] += 1
        finally:
            if got:
                self._lock.release()

    def release(self, i):
        """Give back a reservation that will not be sent (e.g. t_suspend failed)."""
        got = self._lock.acquire(timeout=_LOCK_TIMEOUT)
        try:
            self.c[_HDR + _PER * i] -= 1
            self.c[0] -= 1
        finally:
            if got:
                self._lock.release()

    def _sock(self, i):
        pid = os.getpid()
        if self._socks_pid != pid:
            self._socks = {}        # sockets never cross a fork
            self._socks_pid = pid
        s = self._socks.get(i)
        if s is None:
            s = ipc.context().socket(zmq.PUSH)
            s.setsockopt(zmq.SNDHWM, self.cap + 1024)
            s.setsockopt(zmq.LINGER, 1000)
            s.setsockopt(zmq.RECONNECT_IVL, 10)
            s.connect(self.endpoint(i))
            self._socks[i] = s
        return s

    def send(self, i, frame):
        """Send a reserved item. Returns True, or False (reservation released)."""
        try:
            self._sock(i).send(frame, zmq.NOBLOCK)
            return True
        except zmq.ZMQError as e:
            log.err("async", f"dispatch {self.name}: cannot queue to consumer {i}: {e}")
            self.release(i)
            return False

    def push(self, frame, nonblock=None):
        """reserve + send; -1 when full, else the consumer index."""
        i = self.reserve(nonblock)
        if i < 0:
            return -1
        return i if self.send(i, frame) else -1

    # ---- consumer side -------------------------------------------------

    def bind(self, i):
        """PULL socket for consumer i (call in the consumer process)."""
        path = ipc.endpoint_path(self.rundir, f"{self.name}-{i}")
        try:
            os.unlink(path)         # stale socket file of an earlier run
        except OSError:
            pass
        s = ipc.context().socket(zmq.PULL)
        s.setsockopt(zmq.RCVHWM, self.cap + 1024)
        s.setsockopt(zmq.LINGER, 0)
        s.bind(self.endpoint(i))
        return s

    def mark_done(self, i, skipped=False):
        """The consumer finished one item (run, or skipped because its
        transaction ended meanwhile)."""
        b = _HDR + _PER * i
        self.c[b + (3 if skipped else 2)] += 1
        self.c[b + 1] += 1

    # ---- introspection -------------------------------------------------

    def outstanding(self, i=None):
        if i is not None:
            b = _HDR + _PER * i
            return self.c[b] - self.c[b + 1]
        return sum(self.outstanding(k) for k in range(self.n))

    def stats(self):
        run = sum(self.c[_HDR + _PER * i + 2] for i in range(self.n))
        skipped = sum(self.c[_HDR + _PER * i + 3] for i in range(self.n))
        return {"accepted": self.c[0], "rejected": self.c[1], "run": run,
                "skipped": skipped, "pending": self.outstanding()}
