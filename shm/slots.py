"""Slot size classes of the arena's slab allocator.

Runs in: every process (constants only).

The arena (arena.py) carves its 64 KiB pages into slots of these sizes; the
hash tables (hashtable.py, htable.py) record an entry's size class in the
entry and check whether a new value still fits its slot.  They live here,
below the arena, so that the tables need not import the arena module that
creates the $shv table on top of them.
"""
PAGE = 65536

SLOT_SIZES = (32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072,
              4096, 6144, 8192, 12288, 16384, 24576, 32768, 49152, 65536)
NCLASS = len(SLOT_SIZES)
MAX_ALLOC = PAGE

# size in 16-byte units -> class: CLASS_OF[(size + 15) >> 4]
CLASS_OF = []
for _u in range(PAGE // 16 + 1):
    CLASS_OF.append(next(c for c, s in enumerate(SLOT_SIZES) if s >= _u * 16))
NSLOTS = [PAGE // s for s in SLOT_SIZES]
