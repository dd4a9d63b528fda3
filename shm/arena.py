"""The shared-memory arena: one `multiprocessing.shared_memory` segment, a
static area for fixed structures and a slab allocator for variable-size slots.

Runs in: main process (create before fork, static_alloc, unlink at shutdown),
every child (alloc/free through the inherited mapping).

Rules that keep it alive across fork (Python 3.11):
* created once in main, **never attached by name** in a child: the children
  use the inherited mapping (`arena.buf`).  The segment is unregistered from
  the resource tracker right after creation, so no tracker can unlink it
  while in use; `close()`/`unlink()` in main at shutdown removes it.
* the name is `asyncd_<main pid>_<n>`: `cleanup_stale()` at startup unlinks
  segments whose main pid is dead (killed runs).

Sizing: `-m MB` (default `DEFAULT_MB` = 64, like Kamailio's default).  A tm
transaction with its request, last reply and AVPs takes ~1-6 KB while it is
active; a completed non-INVITE one waits its 5 s in a compact record of
~500 bytes (docs/kamailio-tm.md §8), so 64 MB holds ~75k of those next to a
few htables. The static area (static_default) is 1/16 of -m for the fixed
structures plus 1/32 (at most 4 MiB) for tm's table slots.

Segment layout (all little endian):

    offset            size         what
    0                 HDR (4096)   header, below
    HDR               static_size  static area (bump allocated: bucket arrays,
                                   lock owner words, proc table, counters)
    pages_off         npages*32    page descriptors, below
    data_off          npages*PAGE  data pages (PAGE = 64 KiB)

Header:
    0   8  magic b"ASYNCDSH"
    8   4  u32 layout version
    12  4  u32 page size
    16  8  u64 static area top (next free static byte; main only, before fork)
    24  4  u32 free-page list head (page number + 1; 0 = empty)
    28  4  u32 pages in use
    32  8  u64 failed allocations (counter, best effort)
    40  8  u64 offset of the process table (proctable.py)
    48  4  u32 most pages ever in use at once (core.shmmem max_used)
    64  4*NCLASS  u32 partial-page list head per size class (page + 1)

Page descriptor (32 bytes):
    0   1  u8  size class (0xFF = page is free)
    1   1  u8  -
    2   2  u16 slots in use
    4   2  u16 slots carved so far (fresh slots are handed out from here up)
    6   2  -
    8   4  u32 free-slot list head (slot byte offset in page + 1; 0 = empty);
               each free slot holds the next link (u32) in its first bytes
    12  4  u32 next page in its list (page + 1)
    16  4  u32 prev page in its list (page + 1)

Allocation: size -> class (slot sizes 32..65536 in steps of 1.5x/2x); one
robust lock per class protects its partial pages, one lock the free-page list.
A page whose last slot is freed goes back to the free-page list (unless it is
the class's only partial page), so memory freed by one size serves another.
Offsets handed out are absolute byte offsets in the segment (never 0).

A holder killed mid-operation: each page descriptor is written with one store,
but the lists linking them take a few more, so a death can leave a full page
at the head of a partial list (the next alloc would hand out a slot past the
page's end), a page on no list, or a wrong page count.  The lists are
therefore derived data: after a takeover (locks.py) `_repair_class(c)` rebuilds
class c's partial list from the descriptors of its pages and `_repair_pages`
the free-page list from the pages marked free.  That holds because a page's
class byte only changes under that class's lock, and a page is marked free
only while on the free list or under the page lock (docs/contracts.md, shm).
"""
import os
import re
import struct
from multiprocessing import resource_tracker, shared_memory

from asyncd.core import log
from shm.locks import LockSet, pid_alive
from shm.shv import ShvStore
from shm.slots import CLASS_OF, MAX_ALLOC, NCLASS, NSLOTS, PAGE, SLOT_SIZES

DEFAULT_MB = 64
HDR = 4096
MAGIC = b"ASYNCDSH"
VERSION = 1
PREFIX = "asyncd_"
_NAME_RE = re.compile(r"^asyncd_(\d+)_\d+$")
FREE_PAGE = 0xFF

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
# cls, -, used, carved, -, free_head, next, prev
_PD = struct.Struct("<BxHHxxIII")
# the same without the class byte: written at +2 while slots of the page are
# live, so the class byte that free() reads before locking never flickers
_PDR = struct.Struct("<HHxxIII")
_PD_SIZE = 32
_PD_LINKS = struct.Struct("<II")  # next, prev at +12
_CLS_HEAD = 64
_FREE_HEAD = 24
_INUSE = 28
_FAILED = 32
_PEAK = 48

_counter = [0]


class ArenaFull(MemoryError):
    pass


def cleanup_stale(verbose=True):
    """Unlink /dev/shm segments left by asyncd runs whose main process is dead."""
    removed = []
    try:
        names = os.listdir("/dev/shm")
    except OSError:
        return removed
    for name in names:
        m = _NAME_RE.match(name)
        if not m or pid_alive(int(m.group(1))):
            continue
        try:
            os.unlink(os.path.join("/dev/shm", name))
            removed.append(name)
        except OSError:
            pass
    if removed and verbose:
        log.notice("shm", f"removed {len(removed)} stale segment(s) of killed runs: {', '.join(removed)}")
    return removed


def static_default(size_bytes):
    """The static area for `-m` of size_bytes: 1/16 of it (>= 1 MiB) for the
    fixed structures, plus 1/32 (at most 4 MiB) for tm's transaction table,
    whose slots grow with -m (shm/tm_table.py default_nslots: one 48-byte slot
    per 896 bytes of -m; 6 MiB at the default -m 64, 3.6 MiB of it tm's)."""
    return max(1 << 20, size_bytes // 16) + min(size_bytes // 32, 4 << 20)


class ShmArena:
    """Create with `ShmArena.create(size_bytes)` in main, before fork."""

    def __init__(self, seg, size, static_size):
        self._seg = seg
        self.name = seg.name
        self.size = size
        self.buf = seg.buf            # memoryview over the whole segment
        # native-order word views for plain aligned stores (no transient zeros,
        # unlike struct.pack_into which zero-fills first); little endian hosts
        self.words = self.buf.cast("I")
        self.qwords = self.buf.cast("Q")
        self.doubles = self.buf.cast("d")   # f64 fields (tm deadlines)
        self.lock_fd = seg._fd        # fcntl recovery locks (see locks.py)
        self.owner_pid = os.getpid()
        self.static_off = HDR
        self.static_end = HDR + static_size
        avail = size - self.static_end
        self.npages = max(1, avail // (PAGE + _PD_SIZE))
        self.pages_off = self.static_end
        self.data_off = (self.pages_off + self.npages * _PD_SIZE + 4095) & ~4095
        while self.data_off + self.npages * PAGE > size and self.npages > 1:
            self.npages -= 1
        buf = self.buf
        buf[0:8] = MAGIC
        _U32.pack_into(buf, 8, VERSION)
        _U32.pack_into(buf, 12, PAGE)
        _U64.pack_into(buf, 16, self.static_off)
        # thread every page onto the free-page list
        for p in range(self.npages):
            _PD.pack_into(buf, self._pd(p), FREE_PAGE, 0, 0, 0, p + 2 if p + 1 < self.npages else 0, 0)
        _U32.pack_into(buf, _FREE_HEAD, 1)
        self._cls_locks = LockSet(self, NCLASS, "arena classes", on_recover=self._repair_class)
        self._page_lock = LockSet(self, 1, "arena pages", on_recover=self._repair_pages)
        self.closed = False
        # $shv is always there: made here in main before fork (its bucket array is
        # static); pv_shm.mod_init only applies modparam shvset values to it
        self.shv = ShvStore(self)

    @classmethod
    def create(cls, size_bytes=DEFAULT_MB << 20, static_bytes=None):
        """static_bytes: room for fixed structures (default: static_default)."""
        if static_bytes is None:
            static_bytes = static_default(size_bytes)
        static_bytes = (static_bytes + 4095) & ~4095
        size = max(size_bytes, HDR + static_bytes + PAGE + 8192)
        _counter[0] += 1
        name = f"{PREFIX}{os.getpid()}_{_counter[0]}"
        seg = shared_memory.SharedMemory(name=name, create=True, size=size)
        try:
            # never let a resource tracker unlink a segment other processes use
            resource_tracker.unregister(seg._name, "shared_memory")
        except Exception:
            pass
        return cls(seg, size, static_bytes)

    # -- static area: fixed structures, main process before fork ----------
    def static_alloc(self, nbytes, align=8):
        top = _U64.unpack_from(self.buf, 16)[0]
        top = (top + align - 1) & ~(align - 1)
        if top + nbytes > self.static_end:
            raise ArenaFull(f"shm static area exhausted ({nbytes} bytes wanted); raise -m")
        _U64.pack_into(self.buf, 16, top + nbytes)
        self.buf[top:top + nbytes] = bytes(nbytes)
        return top

    # -- slots ----------------------------------------------------------------
    def _pd(self, p):
        return self.pages_off + p * _PD_SIZE

    def alloc(self, size):
        """Return the offset of a slot of at least `size` bytes, or 0 when full."""
        if size > MAX_ALLOC or size < 0:
            log.err("shm", f"alloc of {size} bytes refused (max {MAX_ALLOC})")
            return 0
        c = CLASS_OF[(size + 15) >> 4]
        locks = self._cls_locks
        locks.acquire(c)
        try:
            buf = self.buf
            head = _CLS_HEAD + 4 * c
            p1 = _U32.unpack_from(buf, head)[0]
            if p1 == 0:
                p1 = self._new_page(c)
                if p1 == 0:
                    n = _U64.unpack_from(buf, _FAILED)[0]
                    _U64.pack_into(buf, _FAILED, n + 1)
                    return 0
            p = p1 - 1
            pd = self.pages_off + p * _PD_SIZE
            _cls, used, carved, fh, nxt, _prev = _PD.unpack_from(buf, pd)
            base = self.data_off + p * PAGE
            if fh:
                off = base + fh - 1
                nfh = _U32.unpack_from(buf, off)[0]
            else:
                off = base + carved * SLOT_SIZES[c]
                carved += 1
                nfh = 0
            used += 1
            full = used == NSLOTS[c]
            _PDR.pack_into(buf, pd + 2, used, carved, nfh, 0 if full else nxt, 0)
            if full:
                # unlink from the partial list (it is the head)
                _U32.pack_into(buf, head, nxt)
                if nxt:
                    _U32.pack_into(buf, self._pd(nxt - 1) + 16, 0)
            return off
        finally:
            locks.release(c)

    def _new_page(self, c):
        """Take a free page for class c and make it the class's partial head (class lock held)."""
        buf = self.buf
        self._page_lock.acquire(0)
        try:
            p1 = _U32.unpack_from(buf, _FREE_HEAD)[0]
            if p1 == 0:
                p1 = self._steal_empty_page(c)
            else:
                nxt = _U32.unpack_from(buf, self._pd(p1 - 1) + 12)[0]
                _U32.pack_into(buf, _FREE_HEAD, nxt)
                inuse = _U32.unpack_from(buf, _INUSE)[0] + 1
                _U32.pack_into(buf, _INUSE, inuse)
                if inuse > _U32.unpack_from(buf, _PEAK)[0]:
                    _U32.pack_into(buf, _PEAK, inuse)
                # marked before the page lock goes: a free-marked page off the free
                # list would be given back by _repair_pages while we still use it
                self._mark(c, p1)
        finally:
            self._page_lock.release(0)
        if p1:
            _U32.pack_into(buf, _CLS_HEAD + 4 * c, p1)
        return p1

    def _mark(self, c, p1):
        """Make page p1 an empty page of class c, on no list yet."""
        _PD.pack_into(self.buf, self._pd(p1 - 1), c, 0, 0, 0, 0, 0)

    def _steal_empty_page(self, c):
        """No free page left: take an empty page another class keeps cached
        (free() keeps a class's last partial page even when empty).  Other class
        locks are only tried, never waited for: no lock-order deadlock."""
        buf = self.buf
        locks = self._cls_locks
        for k in range(NCLASS):
            if k == c or not locks.try_acquire(k):
                continue
            try:
                p1 = _U32.unpack_from(buf, _CLS_HEAD + 4 * k)[0]
                while p1:
                    pd = self._pd(p1 - 1)
                    _k, used, _cv, _fh, nxt, prev = _PD.unpack_from(buf, pd)
                    if used == 0:
                        self._unlink_partial(k, nxt, prev)
                        # re-classed under k's lock: _repair_class(k) must not relink it
                        self._mark(c, p1)
                        return p1
                    p1 = nxt
            finally:
                locks.release(k)
        return 0

    def slot_size(self, off):
        p = (off - self.data_off) // PAGE
        return SLOT_SIZES[self.buf[self.pages_off + p * _PD_SIZE]]

    def free(self, off):
        if off < self.data_off or off >= self.data_off + self.npages * PAGE:
            log.err("shm", f"free of bad offset {off}")
            return
        buf = self.buf
        p = (off - self.data_off) // PAGE
        pd = self.pages_off + p * _PD_SIZE
        locks = self._cls_locks
        while True:
            c = buf[pd]
            if c >= NCLASS:
                log.err("shm", f"free of offset {off} in a free page")
                return
            locks.acquire(c)
            if buf[pd] == c:
                break
            locks.release(c)
        try:
            _c, used, carved, fh, nxt, prev = _PD.unpack_from(buf, pd)
            base = self.data_off + p * PAGE
            _U32.pack_into(buf, off, fh)
            was_full = used == NSLOTS[c]
            used -= 1
            head = _CLS_HEAD + 4 * c
            if was_full:
                # back onto the partial list, at the head
                h = _U32.unpack_from(buf, head)[0]
                _PDR.pack_into(buf, pd + 2, used, carved, off - base + 1, h, 0)
                if h:
                    _U32.pack_into(buf, self._pd(h - 1) + 16, p + 1)
                _U32.pack_into(buf, head, p + 1)
                nxt, prev = h, 0
            else:
                _PDR.pack_into(buf, pd + 2, used, carved, off - base + 1, nxt, prev)
            if used == 0 and (nxt or prev):
                self._release_page(c, p, nxt, prev)
        finally:
            locks.release(c)

    def _unlink_partial(self, c, nxt, prev):
        """Take a page (its neighbours nxt/prev, 1-based, 0 = none) off class
        c's partial list (class lock held)."""
        buf = self.buf
        if prev:
            _U32.pack_into(buf, self._pd(prev - 1) + 12, nxt)
        else:
            _U32.pack_into(buf, _CLS_HEAD + 4 * c, nxt)
        if nxt:
            _U32.pack_into(buf, self._pd(nxt - 1) + 16, prev)

    def _release_page(self, c, p, nxt, prev):
        """Unlink empty page p from class c's partial list, give it back (class lock held)."""
        buf = self.buf
        self._unlink_partial(c, nxt, prev)
        self._page_lock.acquire(0)
        try:
            h = _U32.unpack_from(buf, _FREE_HEAD)[0]
            _PD.pack_into(buf, self._pd(p), FREE_PAGE, 0, 0, 0, h, 0)
            _U32.pack_into(buf, _FREE_HEAD, p + 1)
            _U32.pack_into(buf, _INUSE, _U32.unpack_from(buf, _INUSE)[0] - 1)
        finally:
            self._page_lock.release(0)

    # -- recovery after a dead lock holder (see the module docstring) ----------
    def _repair_class(self, c):
        """Relink every page of class c with a free slot, in page order (class lock held)."""
        buf = self.buf
        partial = []
        for p in range(self.npages):
            pd = self._pd(p)
            if buf[pd] != c:
                continue
            if _PD.unpack_from(buf, pd)[1] < NSLOTS[c]:
                partial.append(p)
            else:
                _PD_LINKS.pack_into(buf, pd + 12, 0, 0)
        self._relink(partial)
        _U32.pack_into(buf, _CLS_HEAD + 4 * c, partial[0] + 1 if partial else 0)
        log.warn("shm", f"arena: class {c} list rebuilt ({len(partial)} partial pages)")

    def _repair_pages(self, _i):
        """Thread every free-marked page onto the free-page list, recount (page lock held)."""
        buf = self.buf
        free = [p for p in range(self.npages) if buf[self._pd(p)] == FREE_PAGE]
        self._relink(free)
        _U32.pack_into(buf, _FREE_HEAD, free[0] + 1 if free else 0)
        _U32.pack_into(buf, _INUSE, self.npages - len(free))
        log.warn("shm", f"arena: free-page list rebuilt ({len(free)} free pages)")

    def _relink(self, pages):
        """Doubly link `pages` (page numbers) in that order."""
        for j, p in enumerate(pages):
            nxt = pages[j + 1] + 1 if j + 1 < len(pages) else 0
            _PD_LINKS.pack_into(self.buf, self._pd(p) + 12, nxt, pages[j - 1] + 1 if j else 0)

    # -- stats and lifetime ---------------------------------------------------
    def stats(self):
        buf = self.buf
        return {
            "size": self.size,
            "pages": self.npages,
            "pages_used": _U32.unpack_from(buf, _INUSE)[0],
            "static_used": _U64.unpack_from(buf, 16)[0] - self.static_off,
            "static_size": self.static_end - self.static_off,
            "failed_allocs": _U64.unpack_from(buf, _FAILED)[0],
        }

    def usage(self):
        """Kamailio's shm summary (core.shmmem, the shmem: statistics;
        src/core/mem/shm.h shm_info): bytes of the segment, taken (static
        area, page descriptors and the pages in use: `real_used`), handed
        out (static area plus the live slots: `used`), free, the most ever
        taken, and `fragments`: pages with free slots between live ones
        (allocations of another size cannot use them)."""
        buf = self.buf
        fixed = self.data_off - self.static_off
        static_used = _U64.unpack_from(buf, 16)[0] - self.static_off
        inuse = _U32.unpack_from(buf, _INUSE)[0]
        peak = max(inuse, _U32.unpack_from(buf, _PEAK)[0])
        live = frags = 0
        for p in range(self.npages):
            c, used, _carved, _h, _n, _p = _PD.unpack_from(buf, self._pd(p))
            if c == FREE_PAGE or not used:
                continue
            size = SLOT_SIZES[c]
            live += used * size
            if used < PAGE // size:
                frags += 1
        total = self.size - self.static_off
        real_used = fixed + inuse * PAGE
        return {"total": total, "free": total - real_used, "used": static_used + live,
                "real_used": real_used, "max_used": fixed + peak * PAGE, "fragments": frags}

    def close(self):
        """Drop the mapping (main at shutdown); children just exit."""
        if self.closed:
            return
        self.closed = True
        # every cast view must go, or the segment cannot close: a view kept
        # elsewhere makes SharedMemory's own close (at garbage collection) raise
        for v in (self.words, self.qwords, self.doubles):
            try:
                v.release()
            except Exception:
                pass
        self.buf = None
        try:
            self._seg.close()
        except BufferError:
            # exported views (struct users) still alive: the OS unmaps at exit
            pass

    def unlink(self):
        """Remove the segment name (main process only, at shutdown)."""
        if os.getpid() != self.owner_pid:
            return
        try:
            os.unlink(os.path.join("/dev/shm", self.name.lstrip("/")))
        except OSError:
            pass

    def destroy(self):
        self.unlink()
        self.close()
