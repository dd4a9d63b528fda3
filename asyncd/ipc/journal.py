"""A timer consumer's journal: every frame its mailbox handed over stays here,
in shared memory, until each of its entries ran, was skipped or was handed
off early, so a timer process killed at any instant (kill -9 included) is
replaced by one that rebuilds its heap from here (workers/timer.py
TimerLoop.recover; docs/architecture.md, "The timer service").

Runs in: main (made with its mailbox, before fork) and the one consumer of
that mailbox (take, finish, recover): a process of workers/timer.py, then,
after its death, the process that replaces it. One writer at a time: no lock.

Why frames, not entries: a frame is copied as it came (no re-encoding; tm
arms 1-3 entries per frame), and a bit mask says which of its entries are
still pending, so retiring one is a single store. A frame holds at most
FRAME_MAX bytes (mailbox.py) and MAX_COUNT entries. Slots are used from the
bottom up (the high-water mark bounds the recovery scan and the pages ever
touched: a journal sized for 100,000 frames costs nothing until used).
There are `cap` slots, the feed's bound on pending entries per consumer, and
a live slot holds at least one pending entry, so the journal never fills
before the mailbox refuses.

Ordering (a successor reads what a dead writer left, so program order is
all that matters), per frame p taken from the mailbox:
    1. a free slot s (the high-water mark moves first when s is new)
    2. source p, length, count, frame bytes
    3. mask = all entries                    the commit
    4. mailbox head = p + 1                  frame p leaves the mailbox
Killed before 3: slot s is free and frame p still in the mailbox. Between
3 and 4: recovery finds a live slot whose source is the mailbox head and
moves the head past it instead of journaling p twice. Retiring entry j of
slot s (finish; the counter is the mailbox header's run or skipped):
    1. target = counter + 1, then fin = (s, j, ran or skipped)   the intent
    2. clear bit j of the mask                                   the commit
    3. counter = target
    4. fin = 0
Killed before 2: the entry is still pending. Between 2 and 4: recovery sees
fin with the bit clear and sets the counter to target (idempotent), so
accepted == run + skipped + pending holds across a death (a producer's
put() has its own repair, mailbox.py).

What this cannot promise: a handler that ran but whose process died before
its finish runs again in the successor; one that re-armed its entry and
then died leaves the old entry journaled beside the new one. Both are
acceptable because handlers re-read the state they act on and do nothing
when it moved on (cancel by marking: a transaction answered, a resume
already done).

Layout (anonymous MAP_SHARED mmap made in main), header of int64 words:
    0 hwm       slots ever used (recovery scans [0, hwm))
    1 starts    consumers started on this journal (> 1: a replacement)
    2 fin       0, or 1 + (s << 6 | j << 1 | skipped): a finish under way
    3 target    the counter's value once that finish is counted
    4-7 (spare)
then `cap` slots of SLOT bytes:
    0 i64 source: the mailbox frame number p it was copied from
    8 u16 length | 10 u16 entries in the frame
    12 u32 mask: bit j set while entry j is pending (0: the slot is free)
    16 frame (<= FRAME_MAX bytes)
"""
import mmap
import struct

from asyncd.core import log
from asyncd.ipc.mailbox import FRAME_MAX, H_HEAD, H_RUN, H_SKIPPED, H_TAIL, MAX_COUNT

MOD = "core"
_HDR = 64
SLOT = 16 + FRAME_MAX
J_HWM, J_STARTS, J_FIN, J_TARGET = range(4)
_SRC = struct.Struct("<qHH")


class Journal:
    """The consumer half of one Mailbox: its pending frames, and its
    run/skipped counters (kept in the mailbox header, where producers read
    them for the cap check)."""

    def __init__(self, box, cap):
        self.box = box
        self.cap = int(cap)
        self._mm = mmap.mmap(-1, _HDR + self.cap * SLOT)
        self.jh = memoryview(self._mm)[:_HDR].cast("q")
        self.w = memoryview(self._mm).cast("I")
        self.free = []          # this process's free slots below hwm (recover() fills it)
        self._said_full = False

    @staticmethod
    def _mask_word(s):
        return (_HDR + s * SLOT + 12) >> 2

    # ---- taking frames from the mailbox ------------------------------------
    def take(self):
        """Journal the mailbox's frames, oldest first: [(slot, frame, mask)]."""
        box = self.box
        p, tail = box.h[H_HEAD], box.h[H_TAIL]
        out = []
        while p < tail:
            count, frame = box.frame(p)
            s = self._slot()
            if s < 0:
                break                   # stays in the mailbox until entries retire
            mask = (1 << min(count, MAX_COUNT)) - 1     # put() refused any other count
            self._keep(s, p, frame, count, mask)
            out.append((s, frame, mask))
            p += 1
            box.advance(p)
        return out

    def _slot(self):
        if self.free:
            return self.free.pop()
        jh = self.jh
        s = jh[J_HWM]
        if s >= self.cap:
            if not self._said_full:
                # cannot happen while the counts are exact: the mailbox refuses first
                self._said_full = True
                log.err(MOD, f"timer journal full ({self.cap} frames): taking no more")
            return -1
        jh[J_HWM] = s + 1
        return s

    def _keep(self, s, p, frame, count, mask):
        k = _HDR + s * SLOT
        mm = self._mm
        _SRC.pack_into(mm, k, p, len(frame), count)
        mm[k + 16:k + 16 + len(frame)] = frame
        self.w[(k + 12) >> 2] = mask        # the commit

    # ---- retiring entries --------------------------------------------------
    def finish(self, s, j, skipped=False):
        """Entry j of slot s ran (skipped: was skipped); it leaves the journal."""
        w, k, bit = self.w, self._mask_word(s), 1 << j
        m = w[k]
        if not m & bit:
            log.err(MOD, f"timer journal: entry {s}.{j} finished twice")
            return
        h, jh = self.box.h, self.jh
        c = H_SKIPPED if skipped else H_RUN
        target = h[c] + 1
        jh[J_TARGET] = target
        jh[J_FIN] = ((s << 6) | (j << 1) | bool(skipped)) + 1
        w[k] = m ^ bit
        h[c] = target
        jh[J_FIN] = 0
        if m == bit:
            self.free.append(s)

    # ---- a consumer starting -----------------------------------------------
    def recover(self):
        """([(slot, frame, mask)] of every live slot, restarted): settle what a
        dead predecessor left half done. restarted: another consumer ran on
        this journal before."""
        jh = self.jh
        restarted = jh[J_STARTS] > 0
        jh[J_STARTS] += 1
        self._settle_finish()
        box, mm, w = self.box, self._mm, self.w
        items, free = [], []
        for s in range(jh[J_HWM]):
            k = _HDR + s * SLOT
            mask = w[(k + 12) >> 2]
            if not mask:
                free.append(s)
                continue
            src, ln, _ = _SRC.unpack_from(mm, k)
            if src >= box.h[H_HEAD]:
                box.advance(src + 1)    # journaled, but the head had not moved past it yet
            items.append((s, mm[k + 16:k + 16 + ln], mask))
        free.reverse()                  # the lowest slots are reused first
        self.free = free
        return items, restarted

    def _settle_finish(self):
        jh = self.jh
        fin = jh[J_FIN]
        if not fin:
            return
        fin -= 1
        s, j, skipped = fin >> 6, (fin >> 1) & 31, fin & 1
        if not self.w[self._mask_word(s)] >> j & 1:
            self.box.h[H_SKIPPED if skipped else H_RUN] = jh[J_TARGET]
        jh[J_FIN] = 0

    def live(self):
        """Pending entries held here (tests, introspection)."""
        w = self.w
        return sum(bin(w[self._mask_word(s)]).count("1") for s in range(self.jh[J_HWM]))
