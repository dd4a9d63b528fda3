"""Idle-first dispatch of work items to a set of consumer processes, where
every item lives in shared memory until its consumer has finished it.

Runs in: producers (udp receivers, async task workers, ASYNC MOD MS TIMER) and
consumers (Async Task Worker - <group>, and the replacement the supervisor
forks for a dead one).

Why not plain PUSH/PULL: a PUSH socket deals frames round-robin to its peers'
pipes, so a task queued behind a 2 s task in worker A waits 2 s although
worker B is idle. Kamailio avoids that with one shared datagram socket that
all workers of a group read (src/core/async_task.c, async_task_run;
docs/kamailio-async.md §4.3); ZeroMQ has no shared queue, and a ROUTER broker
would be an extra process and an extra hop per task.

Design: one shared block (anonymous MAP_SHARED mmap made in main before fork:
no name to leak or unlink) holds, per consumer, an *inbox* (state + one
frame) and, for the group, a bounded backlog ring of frames, guarded by one
robust lock (shm.locks: a dead holder's lock is taken over after ~50 ms). A
producer, under the lock, writes the frame into the inbox of an idle
consumer (state idle -> handed) and then sends it an empty ZeroMQ wake-up,
or, when all are busy, appends it to the ring. A woken consumer claims its
inbox (handed -> running) and runs the frame; when done, finish() moves the
next ring frame into its inbox as running, or sets it idle. So an item waits
only while every consumer is busy, as with Kamailio's shared socket; a push
is one lock round trip plus at most one ZeroMQ send.

ZeroMQ carries only wake-ups, never tasks (docs/kamailio-async.md §10.7):
a consumer that dies takes nothing with it. Its replacement (same index)
calls recover(): a *handed* frame (not started) is run as usual; a
*running* one may have done part of its work, so it is not run again but
given to its kind's abandon handler (asyncd.ipc.async_task; a suspended
transaction gets its final reply at once). A lost wake-up costs at most one
poll interval: an idle consumer also claims on every poll timeout, and then
takes a ring frame an awake consumer left behind (one that died awake).

Awake consumers: a ZeroMQ wake-up of an idle worker costs 0.1-0.3 ms wall
on a loaded 2-core box and ~55 µs of CPU (three context switches: producer
-> its I/O thread -> the worker's I/O thread -> worker; measured with two
processes and nothing else: producer 17 µs, consumer 39 µs per wake-up,
against 1 µs and 11 µs for a semaphore post). While its group is busy a
worker that just finished is about to get the next item anyway, so it stays
*awake* for a while (stay_awake()): it publishes that in a shared flag and
waits on its own semaphore (a futex: no CPU while it waits). A producer that
sees an idle awake consumer appends the frame to the ring instead of waking
anyone through ZeroMQ, marks that consumer *posted* and posts its semaphore
once the lock is dropped; the consumer claims the frame from the ring
(through its inbox, like every frame it runs). A consumer that goes back to
sleep (nothing came within its awake time) clears its flag and re-checks the
ring under the lock (_doze()), so no frame is stranded; from then on it is
woken through ZeroMQ again. So ZeroMQ wakes the workers that sleep, and
shared memory reaches the ones that are awake, as before; what changed
(issue 16) is that staying awake costs nothing, where the earlier spin
napped every ~70 µs (a syscall and two context switches per look) and so
could only afford 0.5 ms. A post that finds its frame already taken (another
consumer finishing took it from the ring) only wakes the consumer once for
nothing: it looks, finds the ring empty, and waits again, posted no more.
A producer killed between marking a consumer posted and posting it leaves
that frame in the ring until the consumer's awake time ends or another
consumer finishes: late, not lost.

Bounds: push() checks for room and queues under one lock round trip; -1 at
once for a non-blocking dispatcher, after at most `block_wait` s for a
blocking one (the async module then undoes the suspension). A frame larger
than a slot (MAX_FRAME) is refused the same way. Slots are 64 KiB: an
anonymous mapping costs nothing until a page is touched, so a small task
touches one page of its slot. Every item is counted: accepted == run +
skipped + pending, also across a consumer's death (an abandoned item counts
as skipped).

Death inside the lock: every critical section that changes more than one
word first writes an undo journal (the words and their old values), then
the words, then clears the journal. The process that takes a dead holder's
lock over rolls an armed journal back (_repair), so a section is all or
nothing. Slot bytes are written only where no state points yet (a free ring
slot, an idle inbox), so rolling the words back is enough.

Shared block layout (int64 words, then slots):
    0 accepted   1 rejected   2 rr cursor   3 (spare)
    4 ring head  5 ring tail  6 journal length (0: nothing in flight)  7 (spare)
    8..15        journal: up to 4 (word index, old value) pairs
    16+4i        consumer i: state (0 idle, 1 handed, 2 running)
    17+4i        run[i]      18+4i skipped[i]    19+4i (spare)
  then n inbox slots (consumer i's frame), then `ring` backlog slots;
  a slot is SLOT bytes: u32 length, f64 push time (CLOCK_MONOTONIC, s),
  frame bytes; the time travels with the frame from ring to inbox

Awake flags (a separate anonymous mapping, one int64 per consumer, read
and set by producers under the lock, by the consumer with single stores):
0 asleep (wake it through ZeroMQ), AWAKE (waiting on its semaphore), POSTED
(a producer has posted it for a ring frame: do not post it again).

Queue-wait histogram (a second anonymous mapping, int64 words, one row per
consumer, written only by that consumer, so no lock; readers sum the rows):
    row i: WAIT_BOUNDS buckets + the +Inf bucket (counts, not cumulative),
           then count, then sum of waits in ns
The wait is push -> the moment the consumer starts the frame
(record_wait(), called by workers/task_worker.py before it runs it).
"""
import bisect
import mmap
import os
import struct
import time
from _multiprocessing import SemLock
from functools import partial

import zmq

from asyncd.core import log
from asyncd.ipc import Pushers
from shm.locks import robust_lock

SLOT = 64 * 1024
_HDR = struct.Struct("<Id")  # slot header: frame length, push time
MAX_FRAME = SLOT - _HDR.size     # the largest frame a slot holds
# queue-wait histogram bounds (s): 0.5 ms .. 1 s, then +Inf
WAIT_BOUNDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_HROW = len(WAIT_BOUNDS) + 3     # buckets + Inf, count, sum_ns
IDLE, HANDED, RUNNING = 0, 1, 2
AWAKE, POSTED = 1, 2     # awake flags (0: asleep, woken through ZeroMQ)
_SEMAPHORE = 1           # _multiprocessing.SemLock kind

_ACCEPTED, _REJECTED, _RR, _HEAD, _TAIL, _JLEN, _JOURNAL = 0, 1, 2, 4, 5, 6, 8
_CONS = 16               # first per-consumer word
_PER = 4
_RUN, _SKIP = 1, 2           # offsets in a consumer's words (0: its state)
_LEN = struct.Struct("<I")


class Dispatcher:
    """Create in main before fork; every process uses the inherited object."""

    def __init__(self, name, consumers, ring, nonblock=False, block_wait=1.0, rundir=None):
        self.name = name                  # short: it names the endpoint files
        self.n = int(consumers)
        self.ring = int(ring)             # backlog frames (> 0)
        self.nonblock = bool(nonblock)
        self.block_wait = float(block_wait)
        self._inbox_off = -(-8 * (_CONS + _PER * max(self.n, 1)) // mmap.PAGESIZE) * mmap.PAGESIZE
        self._ring_off = self._inbox_off + SLOT * max(self.n, 1)
        self._mm = mmap.mmap(-1, self._ring_off + SLOT * self.ring)
        self.c = memoryview(self._mm).cast("q")
        self._awm = mmap.mmap(-1, 8 * max(self.n, 1))
        self.aw = memoryview(self._awm).cast("q")       # awake flags
        # one semaphore per consumer, posted for a ring frame while it is awake;
        # unlink=True: the name goes at once, the handles inherited by fork keep it
        tag = f"/asyncd-dz-{os.getpid()}-{id(self):x}"
        sems = [SemLock(_SEMAPHORE, 0, SemLock.SEM_VALUE_MAX, f"{tag}-{i}", True)
                for i in range(max(self.n, 1))]
        self._posts = [sm.release for sm in sems]
        self._waits = [sm.acquire for sm in sems]
        self._hm = mmap.mmap(-1, 8 * _HROW * max(self.n, 1))
        self.hist = memoryview(self._hm).cast("q")      # queue-wait rows
        self._lock = robust_lock(f"dispatch {name}")
        self._lock.on_recover = self._repair
        self._acquire = partial(self._lock.acquire, 0)
        self._release = partial(self._lock.release, 0)
        self.pushers = Pushers(name, rundir)   # rundir: str, or a callable returning it

    # ---- lock, journal, slots ------------------------------------------

    def _begin(self, *words):
        """Journal the old values of `words` before a section changes them."""
        c = self.c
        k = _JOURNAL
        for w in words:
            c[k] = w
            c[k + 1] = c[w]
            k += 2
        c[_JLEN] = len(words)

    def _repair(self, _lock_index):
        """The lock was taken over from a dead holder (we hold it now): roll
        back the section it left half done."""
        c = self.c
        n = c[_JLEN]
        for k in range(n - 1, -1, -1):
            c[c[_JOURNAL + 2 * k]] = c[_JOURNAL + 2 * k + 1]
        c[_JLEN] = 0
        if n:
            log.warn("core", f"dispatch {self.name}: rolled back the queue update "
                             "a dead process left half done")

    def _put(self, off, frame):
        mm = self._mm
        _HDR.pack_into(mm, off, len(frame), time.monotonic())
        mm[off + _HDR.size:off + _HDR.size + len(frame)] = frame

    def _get(self, off):
        (ln,) = _LEN.unpack_from(self._mm, off)
        return self._mm[off + _HDR.size:off + _HDR.size + ln]       # mmap slices are bytes

    def _move(self, src, dst):
        """Copy a slot (header with its push time, and frame) -> the frame."""
        mm = self._mm
        (ln,) = _LEN.unpack_from(mm, src)
        end = _HDR.size + ln
        mm[dst:dst + end] = mm[src:src + end]
        return mm[dst + _HDR.size:dst + end]

    def _inbox(self, i):
        return self._inbox_off + SLOT * i

    def _ring_slot(self, pos):
        return self._ring_off + SLOT * (pos % self.ring)

    # ---- producer side -------------------------------------------------

    def _awake_locked(self):
        """An idle awake consumer not yet posted (its index), -1 when every
        idle awake one is posted already, -2 when none is awake."""
        c, aw = self.c, self.aw
        seen = -2
        for k in range(self.n):
            a = aw[k]
            if a and c[_CONS + _PER * k] == IDLE:
                if a == AWAKE:
                    return k
                seen = -1
        return seen

    def _pick_locked(self):
        """An idle consumer, round robin from the cursor; -1 when all are busy."""
        c, n = self.c, self.n
        start = c[_RR]
        for k in range(n):
            i = (start + k) % n
            if c[_CONS + _PER * i] == IDLE:
                return i
        return -1

    def _place_locked(self, frame):
        """Lock held: put `frame` in an idle consumer's inbox (returns its
        index: the caller wakes it through ZeroMQ) or, when every consumer is
        busy or an idle one is awake, in the ring: -2 - k when awake consumer
        k is now posted (the caller posts its semaphore), else -1. None: the
        ring is full."""
        c = self.c
        awake = self._awake_locked()
        i = self._pick_locked() if awake == -2 else -1
        if i >= 0:
            st = _CONS + _PER * i
            self._put(self._inbox(i), frame)
            self._begin(_ACCEPTED, _RR, st)
            c[_ACCEPTED] += 1
            c[_RR] = (i + 1) % self.n
            c[st] = HANDED
            c[_JLEN] = 0
            return i
        tail = c[_TAIL]
        if tail - c[_HEAD] >= self.ring:
            return None
        self._put(self._ring_slot(tail), frame)
        # the hot path under load: the journal written inline (see _begin)
        c[_JOURNAL], c[_JOURNAL + 1] = _ACCEPTED, c[_ACCEPTED]
        c[_JOURNAL + 2], c[_JOURNAL + 3] = _TAIL, tail
        c[_JLEN] = 2
        c[_ACCEPTED] += 1
        c[_TAIL] = tail + 1
        c[_JLEN] = 0
        if awake >= 0:
            self.aw[awake] = POSTED
            return -2 - awake
        return -1

    def _wake(self, i):
        """Empty wake-up to consumer i. A failed send loses nothing: the frame
        is in its inbox, which it also looks at on every poll timeout."""
        try:
            self.pushers.get(i).send(b"", zmq.NOBLOCK)
        except zmq.ZMQError as e:
            log.err("core", f"dispatch {self.name}: cannot wake consumer {i}: {e}")

    def _tell(self, placed):
        """After the lock: tell the consumer what _place_locked returned for
        (a ZeroMQ wake-up, a semaphore post, or nobody)."""
        if placed >= 0:
            self._wake(placed)
        elif placed < -1:
            self._posts[-2 - placed]()

    def _refuse(self):
        self._acquire()
        self.c[_REJECTED] += 1
        self._release()
        return -1

    def offer(self, frame):
        """Give `frame` to an idle consumer now (awake: through the ring;
        asleep: its inbox and a wake-up). False when every consumer is busy
        or the frame does not fit a slot: nothing was queued or counted."""
        if self.n <= 0 or len(frame) > MAX_FRAME:
            return False
        self._acquire()
        try:
            if self._pick_locked() < 0:
                return False            # every consumer busy: the caller keeps it
            i = self._place_locked(frame)
        finally:
            self._release()
        if i is None:
            return False
        self._tell(i)
        return True

    def push(self, frame, nonblock=None):
        """Claim room and queue `frame` under one lock round trip: 0, or -1
        when full (at once for a non-blocking dispatcher, after at most
        `block_wait` s for a blocking one) or when the frame is larger than
        a slot; counted as rejected, the caller logs why_refused()."""
        if self.n <= 0:
            return -1
        if len(frame) > MAX_FRAME:
            return self._refuse()
        nb = self.nonblock if nonblock is None else nonblock
        deadline = None
        delay = 0.0002
        while True:
            self._acquire()
            try:
                i = self._place_locked(frame)
            finally:
                self._release()
            if i is not None:
                break
            now = time.monotonic()
            if not nb and deadline is None:
                deadline = now + self.block_wait
            if nb or now >= deadline:
                return self._refuse()
            time.sleep(delay)
            delay = min(delay * 2, 0.005)
        self._tell(i)
        return 0

    @staticmethod
    def why_refused(frame):
        """The reason push() refused `frame`, for the caller's log line."""
        if len(frame) > MAX_FRAME:
            return f"task too big ({len(frame)} bytes, at most {MAX_FRAME})"
        return "queue is full"

    def connect_all(self):
        """Open the PUSH sockets to every consumer now (call after fork)."""
        for i in range(self.n):
            self.pushers.get(i)

    # ---- consumer side -------------------------------------------------

    def bind(self, i):
        """PULL socket for consumer i (call in the consumer process)."""
        return self.pushers.bind(i)

    def _take_ring_locked(self, i):
        """Lock held, consumer i idle: the oldest ring frame into its inbox as
        running, or None when the ring is empty."""
        c = self.c
        head = c[_HEAD]
        if c[_TAIL] <= head:
            return None
        frame = self._move(self._ring_slot(head), self._inbox_off + SLOT * i)
        st = _CONS + _PER * i
        c[_JOURNAL], c[_JOURNAL + 1] = _HEAD, head
        c[_JOURNAL + 2], c[_JOURNAL + 3] = st, c[st]
        c[_JLEN] = 2
        c[_HEAD] = head + 1
        c[st] = RUNNING
        c[_JLEN] = 0
        return frame

    def claim(self, i):
        """Consumer i, woken up or at a poll timeout: the frame to run now
        (its handed inbox frame, else, when idle, a ring frame nobody awake
        took) or None. Lock-free when there is nothing to do."""
        c = self.c
        st = _CONS + _PER * i
        if c[st] == IDLE and c[_TAIL] <= c[_HEAD]:
            return None
        self._acquire()
        try:
            if c[st] == HANDED:
                c[st] = RUNNING
                return self._get(self._inbox(i))
            if c[st] == IDLE:
                return self._take_ring_locked(i)
            return None
        finally:
            self._release()

    def finish(self, i, skipped=False):
        """Consumer i finished its running frame. Returns the next ring frame
        (now running in its inbox) or None (idle again)."""
        c = self.c
        st = _CONS + _PER * i
        cnt = st + (_SKIP if skipped else _RUN)
        self._acquire()
        try:
            c[_JOURNAL], c[_JOURNAL + 1] = cnt, c[cnt]
            c[_JOURNAL + 2], c[_JOURNAL + 3] = st, c[st]
            c[_JLEN] = 2
            c[cnt] += 1
            c[st] = IDLE
            c[_JLEN] = 0
            if c[_TAIL] <= c[_HEAD]:
                return None
            return self._take_ring_locked(i)
        finally:
            self._release()

    def stay_awake(self, i, limit):
        """Idle consumer i stays awake up to `limit` s, waiting on its
        semaphore for a producer to post it a ring frame. Returns a claimed
        frame (running in its inbox) or None (asleep again: wait on the
        ZeroMQ socket)."""
        c, aw = self.c, self.aw
        mono, wait = time.monotonic, self._waits[i]
        aw[i] = AWAKE
        end = mono() + limit
        st = _CONS + _PER * i
        while True:
            if c[_TAIL] > c[_HEAD] or c[st] != IDLE:
                break
            left = end - mono()
            if left <= 0:
                break
            if wait(True, left) and c[_TAIL] <= c[_HEAD] and c[st] == IDLE:
                aw[i] = AWAKE       # posted for a frame another consumer took: post us again
        return self._doze(i)

    def _doze(self, i):
        """Clear the awake flag and, in the same section, take what arrived:
        a frame handed to us by a producer that missed the flag, else a ring
        frame."""
        c = self.c
        st = _CONS + _PER * i
        self._acquire()
        try:
            self.aw[i] = 0
            if c[st] == HANDED:
                c[st] = RUNNING         # its wake-up stays in the pipe: claim() finds nothing then
                return self._get(self._inbox(i))
            if c[st] != IDLE:
                return None
            return self._take_ring_locked(i)
        finally:
            self._release()

    def recover(self, i):
        """Called by consumer i before its loop, which may replace one that
        died: clear its awake flag and report its inbox: (IDLE, None),
        (HANDED, frame) -- never started, now running: run it -- or
        (RUNNING, frame) -- started by the dead one: abandon it, then finish
        it as skipped."""
        c = self.c
        st = _CONS + _PER * i
        self._acquire()
        try:
            self.aw[i] = 0
            state = c[st]
            if state == IDLE:
                return IDLE, None
            c[st] = RUNNING
            return state, self._get(self._inbox(i))
        finally:
            self._release()

    def record_wait(self, i):
        """Consumer i starts the frame in its inbox: add its queue wait (now
        - push time) to row i of the histogram. A few µs, no lock."""
        (_ln, pushed) = _HDR.unpack_from(self._mm, self._inbox(i))
        wait = max(0.0, time.monotonic() - pushed)
        row = _HROW * i
        h = self.hist
        h[row + bisect.bisect_left(WAIT_BOUNDS, wait)] += 1
        h[row + _HROW - 2] += 1
        h[row + _HROW - 1] += int(wait * 1e9)

    def wait_histogram(self):
        """-> (bounds_seconds, cumulative_counts, sum_seconds, count): the
        Prometheus histogram shape; cumulative_counts has one more entry
        than bounds (+Inf, equal to count)."""
        h = self.hist
        nb = len(WAIT_BOUNDS) + 1
        sums = [0] * _HROW
        for i in range(self.n):
            row = _HROW * i
            for k in range(_HROW):
                sums[k] += h[row + k]
        cum, total = [], 0
        for k in range(nb):
            total += sums[k]
            cum.append(total)
        return WAIT_BOUNDS, cum, sums[_HROW - 1] / 1e9, sums[_HROW - 2]

    # ---- introspection -------------------------------------------------

    def state(self, i):
        return self.c[_CONS + _PER * i]

    def outstanding(self, i=None):
        """Frames consumer i holds (0 or 1), or all pending frames."""
        c = self.c
        if i is not None:
            return int(c[_CONS + _PER * i] != IDLE)
        return sum(self.outstanding(k) for k in range(self.n)) + (c[_TAIL] - c[_HEAD])

    def busy(self):
        """Consumers holding a frame (handed or running)."""
        return sum(self.outstanding(k) for k in range(self.n))

    def queued(self):
        """Frames in the backlog ring, waiting for a consumer."""
        return self.c[_TAIL] - self.c[_HEAD]

    def stats(self):
        c = self.c
        run = sum(c[_CONS + _PER * i + _RUN] for i in range(self.n))
        skipped = sum(c[_CONS + _PER * i + _SKIP] for i in range(self.n))
        return {"accepted": c[_ACCEPTED], "rejected": c[_REJECTED], "run": run,
                "skipped": skipped, "pending": self.outstanding()}
