"""Striped robust locks for data in the shm arena.

Runs in: main process (creation, before fork), every child (use).

Why this lock kind (measured on the 2-core dev box, lock+unlock pair,
Python 3.11): a POSIX semaphore through `_multiprocessing.SemLock` costs
~65 ns, a robust pthread mutex through ctypes ~380 ns, an fcntl byte-range
lock ~1400 ns.  So the fast path is the semaphore; robustness is added on
top:

* the holder writes its pid into an owner word in shm right after taking
  the semaphore, and clears it right before posting it;
* a waiter never blocks forever: it waits in slices of `SLICE` seconds; after
  each slice it reads the owner word and, if that pid is dead
  (`os.kill(pid, 0)` -> ProcessLookupError), it *takes the lock over*: under
  an fcntl byte-range lock on the arena's fd (the kernel drops those when a
  process dies, so recovery itself cannot wedge) it re-checks that the owner
  word still names the dead pid and writes its own pid.  The semaphore is
  left at 0: ownership moves, it is not released and re-taken, so two
  recoverers can never both win;
* the one unobservable window (killed between taking the semaphore and
  writing the pid: a few bytecodes) is covered by a fallback: owner word 0
  while the lock stays taken for `ZERO_OWNER_GRACE` seconds means the taker
  died there (locks are never held across I/O or script execution, so no
  live holder keeps one that long).

Sequence readers rely on x86's store order (stores are seen in program
order, loads are not reordered with loads); a port to a weakly ordered CPU
needs fences around the sequence reads and writes.

After a takeover the lock set calls its `on_recover(i)` callback so the
structure it protects can check itself (the hash table re-walks the chains
of that stripe; see hashtable.py).

Each lock also carries a sequence counter (odd while held): readers that
do not take the lock (hashtable.py optimistic reads) read it before and
after and retry if it moved -- a seqlock.  It costs writers one extra read
per acquire/release and saves readers the whole lock round trip.

Lock words (one per lock, in the arena's static area):

    offset  size  field
    0       4     u32 owner pid (0 = free or not yet written)
    4       4     u32 sequence (odd while held; bumped by acquire and release)
Then n x u32 takeover counters (how many times each lock was recovered).
"""
import fcntl
import mmap
import os
import time
from _multiprocessing import SemLock

from asyncd.core import log

SLICE = 0.05
ZERO_OWNER_GRACE = 2.0
_SEMAPHORE = 1

_pid = os.getpid()


def _refresh_pid():
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_refresh_pid)


def current_pid():
    """os.getpid() without the system call (refreshed in every forked child)."""
    return _pid


def pid_alive(pid):
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours is dead for locking purposes
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().split(b") ", 1)[1][:1] != b"Z"
    except (OSError, IndexError):
        return False


class LockSet:
    """`n` robust mutexes, addressed by index (a stripe number).

    Create in the main process before fork; the object (semaphores and the
    shm mapping) is inherited by the children.  acquire(i)/release(i) are the
    hot path: keep them tiny.
    """

    def __init__(self, arena, n, name="locks", on_recover=None):
        self.n = n
        self.name = name
        self.arena = arena
        self.on_recover = on_recover
        self.off = arena.static_alloc(12 * n)
        self.toff = self.off + 8 * n
        self._buf = arena.buf
        # plain 4-byte stores through a cast view: struct.pack_into zero-fills its
        # target before writing, which lock-free readers could see as a torn word
        self._w = arena.words
        self._k = self.off >> 2
        tag = f"/asyncd-{os.getpid()}-{id(self):x}"
        # unlink=True: the name is removed at once, only the inherited
        # handles keep the semaphores alive (no resource tracker, no leftovers)
        self._sems = [SemLock(_SEMAPHORE, 1, 1, f"{tag}-{i}", True) for i in range(n)]
        self._acq = [s.acquire for s in self._sems]
        self._rel = [s.release for s in self._sems]
        self.recoveries = 0

    def acquire(self, i):
        if not self._acq[i](False):
            self._slow_acquire(i)
        w = self._w
        k = self._k + 2 * i
        w[k] = _pid
        w[k + 1] = (w[k + 1] + 1) & 0xFFFFFFFF

    def try_acquire(self, i):
        """Non-blocking acquire (for out-of-order lock grabs that must not deadlock)."""
        if not self._acq[i](False):
            return False
        w = self._w
        k = self._k + 2 * i
        w[k] = _pid
        w[k + 1] = (w[k + 1] + 1) & 0xFFFFFFFF
        return True

    def release(self, i):
        w = self._w
        k = self._k + 2 * i
        w[k + 1] = (w[k + 1] + 1) & 0xFFFFFFFF
        w[k] = 0
        self._rel[i]()

    def owner(self, i):
        return self._w[self._k + 2 * i]

    def held_here(self, i):
        """This process holds lock i (its pid in the owner word; the pid is
        cached per process, os.getpid() is a system call)."""
        return self._w[self._k + 2 * i] == _pid

    def seq_off(self, i):
        """Offset of lock i's sequence word (for optimistic readers)."""
        return self.off + 8 * i + 4

    def takeovers(self, i):
        return self._w[self.toff // 4 + i]

    def _slow_acquire(self, i):
        acq = self._acq[i]
        zero_since = None
        said = False
        while True:
            if acq(True, SLICE):
                return
            owner = self.owner(i)
            if owner == 0:
                now = time.monotonic()
                if zero_since is None:
                    zero_since = now
                    continue
                if now - zero_since < ZERO_OWNER_GRACE:
                    continue
            else:
                zero_since = None
                if owner == _pid and not said:
                    # a recursive take would deadlock silently: say so loudly, once
                    said = True
                    log.err("shm", f"{self.name}: lock {i} already held by this process (deadlock)")
                if pid_alive(owner):
                    continue
            if self._take_over(i, owner):
                return

    def _take_over(self, i, dead):
        fd = self.arena.lock_fd
        off = self.off + 8 * i
        fcntl.lockf(fd, fcntl.LOCK_EX, 8, off)
        try:
            w = self._w
            k = off >> 2
            if w[k] != dead:
                return False
            w[k] = _pid
            # held => odd sequence, whatever moment the dead holder stopped at
            w[k + 1] |= 1
            w[self.toff // 4 + i] += 1
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN, 8, off)
        self.recoveries += 1
        log.warn("shm", f"{self.name}: lock {i} taken over from dead process {dead or '?'}")
        if self.on_recover is not None:
            try:
                self.on_recover(i)
            except Exception as e:  # repair must never wedge the lock
                log.err("shm", f"{self.name}: repair after takeover of lock {i} failed: {e!r}")
        return True


class LockArea:
    """Room for the lock words of structures that live outside the arena (an
    anonymous MAP_SHARED mapping made before fork: the async task
    dispatchers, the timer mailboxes). It offers what LockSet uses of an
    arena: static_alloc, words, and an fd for the fcntl recovery lock (a
    memfd: the kernel drops the byte-range lock of a dead process)."""

    def __init__(self, nbytes):
        self._mm = mmap.mmap(-1, max(8, (nbytes + 7) & ~7))
        self.buf = memoryview(self._mm)
        self.words = self.buf.cast("I")
        self.lock_fd = os.memfd_create("asyncd-locks", os.MFD_CLOEXEC)
        os.ftruncate(self.lock_fd, len(self._mm))
        self._top = 0

    def static_alloc(self, nbytes, align=8):
        top = (self._top + align - 1) & ~(align - 1)
        if top + nbytes > len(self._mm):
            raise MemoryError(f"lock area of {len(self._mm)} bytes exhausted")
        self._top = top + nbytes
        return top


def robust_lock(name, n=1):
    """A LockSet of `n` in its own LockArea (12 bytes of words per lock)."""
    return LockSet(LockArea(12 * n), n, name)


class Guard:
    """`with Guard(lockset, i):` for the rare callers that prefer a block."""

    __slots__ = ("ls", "i")

    def __init__(self, ls, i):
        self.ls = ls
        self.i = i

    def __enter__(self):
        self.ls.acquire(self.i)
        return self

    def __exit__(self, *exc):
        self.ls.release(self.i)
        return False
