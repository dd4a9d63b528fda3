"""The process table in shared memory (Kamailio's `pt[]`): pid, rank and
description of every process, for `kamctl ps`-style tools.

Runs in: main process (creates and fills it; children never write it).

Layout, in the arena's static area (little endian):

    offset  size          field
    0       8             magic b"ASYNCDPT" (lets a tool find the table in the segment)
    8       4             u32 number of slots
    12      4             u32 slots in use
    16      SLOT * n      slots

    slot (SLOT = 160 bytes):
    0       4             u32 pid (0 = slot unused or process gone)
    4       4             i32 rank (1.. receivers, -1 PROC_TIMER, -2 PROC_RPC, 0 main)
    8       2             u16 description length
    10      118           description, utf-8, truncated (Kamailio's MAX_PT_DESC is 128)
    128     32            4 x u64 message counters, written only by the slot's own process:
                          requests received, replies received, datagrams dropped
                          (malformed, not for us, oversized), 400s sent for malformed requests

Slot 0 is the main process ("main process - attendant"); the others follow
fork order, as in Kamailio.
"""
import struct

MAGIC = b"ASYNCDPT"
HDR = 16
SLOT = 160
DESC_MAX = 118
CNT_OFF = 128
COUNTERS = ("requests", "replies", "dropped", "bad_replied")
_HDR = struct.Struct("<8sII")
_SLOT = struct.Struct("<IiH")
_CNT = struct.Struct("<4Q")


class ProcTable:
    def __init__(self, arena, nslots):
        self.arena = arena
        self.n = nslots
        self.off = arena.static_alloc(HDR + SLOT * nslots)
        _HDR.pack_into(arena.buf, self.off, MAGIC, nslots, 0)

    def set(self, idx, pid, rank, desc):
        if not 0 <= idx < self.n:
            raise IndexError(f"process table slot {idx} out of range (size {self.n})")
        raw = desc.encode("utf-8", "replace")[:DESC_MAX]
        at = self.off + HDR + idx * SLOT
        buf = self.arena.buf
        _SLOT.pack_into(buf, at, pid, rank, len(raw))
        buf[at + 10:at + 10 + len(raw)] = raw
        used = max(_HDR.unpack_from(buf, self.off)[2], idx + 1)
        _HDR.pack_into(buf, self.off, MAGIC, self.n, used)

    def clear_pid(self, idx):
        _SLOT.pack_into(self.arena.buf, self.off + HDR + idx * SLOT, 0,
                        *_SLOT.unpack_from(self.arena.buf, self.off + HDR + idx * SLOT)[1:])

    def write_counters(self, idx, requests, replies, dropped, bad_replied):
        _CNT.pack_into(self.arena.buf, self.off + HDR + idx * SLOT + CNT_OFF,
                       requests, replies, dropped, bad_replied)

    def counters(self, idx=None):
        """dict of counter name -> value, for one slot or summed over all."""
        rng = range(self.n) if idx is None else (idx,)
        tot = [0, 0, 0, 0]
        for i in rng:
            for k, v in enumerate(_CNT.unpack_from(self.arena.buf, self.off + HDR + i * SLOT + CNT_OFF)):
                tot[k] += v
        return dict(zip(COUNTERS, tot))

    def entries(self):
        """[(idx, pid, rank, desc)] of slots with a live pid, in table order."""
        return read_table(self.arena.buf, self.off)


def read_table(buf, off):
    magic, n, used = _HDR.unpack_from(buf, off)
    if magic != MAGIC:
        raise ValueError("no process table at this offset")
    out = []
    for i in range(used):
        at = off + HDR + i * SLOT
        pid, rank, ln = _SLOT.unpack_from(buf, at)
        if pid:
            out.append((i, pid, rank, bytes(buf[at + 10:at + 10 + ln]).decode("utf-8", "replace")))
    return out
