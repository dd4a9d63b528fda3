"""Process table in shm: one row per process (pid, rank, description).

Runs in: main process (creation, the supervisor fills a row per fork),
children (may update their own row), control tools (read, possibly from a
separate process that attaches the segment by name read-only).

Kamailio keeps `pt[]` in shm for `kamctl ps` / `core.psx` (src/core/pt.c);
this is the same idea.  The table's offset is recorded in the arena header
(offset 40) so an outside reader can find it.

Layout (static area):
    0   4  u32 number of rows
    4   4  u32 -
    8   .  rows, ROW bytes each:
           0   4  u32 pid (0 = unused row)
           4   4  i32 rank
           8   120 desc, utf-8, NUL padded
"""
import os
import struct
from multiprocessing import resource_tracker, shared_memory

ROW = 128
DESC = 120
HDR_FIELD = 40
_HDR = struct.Struct("<II")
_ROW = struct.Struct("<Ii120s")
_U64 = struct.Struct("<Q")


class ProcTable:
    def __init__(self, arena, nrows=256):
        self.buf = arena.buf
        self.n = nrows
        self.off = arena.static_alloc(8 + ROW * nrows)
        _HDR.pack_into(self.buf, self.off, nrows, 0)
        _U64.pack_into(self.buf, HDR_FIELD, self.off)

    def set(self, slot, pid, rank, desc):
        """Fill row `slot` (the supervisor: slot 0 = main, then one per fork)."""
        if not 0 <= slot < self.n:
            return False
        d = desc.encode("utf-8", "replace")[:DESC]
        _ROW.pack_into(self.buf, self.off + 8 + ROW * slot, pid, rank, d)
        return True

    def clear(self, slot):
        if 0 <= slot < self.n:
            _ROW.pack_into(self.buf, self.off + 8 + ROW * slot, 0, 0, b"")

    def rows(self):
        return _read_rows(self.buf, self.off)


def _read_rows(buf, off):
    n = _HDR.unpack_from(buf, off)[0]
    out = []
    for i in range(n):
        pid, rank, d = _ROW.unpack_from(buf, off + 8 + ROW * i)
        if pid:
            out.append((i, pid, rank, d.rstrip(b"\0").decode("utf-8", "replace")))
    return out


def read_segment(name):
    """For a control tool outside the process tree: attach `name` read-only,
    read the rows, detach.  Unregisters from the resource tracker at once so
    exiting never unlinks the server's segment."""
    seg = shared_memory.SharedMemory(name=name, create=False)
    try:
        try:
            resource_tracker.unregister(seg._name, "shared_memory")
        except Exception:
            pass
        off = _U64.unpack_from(seg.buf, HDR_FIELD)[0]
        rows = _read_rows(seg.buf, off) if off else []
    finally:
        seg.close()
    return rows


def find_segments():
    """Names of live asyncd segments (prefix + main pid) for control tools."""
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith("asyncd_"))
