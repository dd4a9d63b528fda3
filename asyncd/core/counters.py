"""Statistics: Kamailio's counters (`group:name`), one slot per process in
shared memory, summed when read.

Runs in: main process (register in mod_init, allocate before the fork),
every child (adds to its own row), the RPC and metrics processes (read,
reset). The rows live in the shm arena's static area; this file only needs
the arena's `buf` and `static_alloc`, so it sits in the core, below shm.

Kamailio's statistics are its counters framework (src/core/counters.c;
src/core/kstats_types.h maps `stat_var` onto it): each process adds to its
own copy of every counter (`counter_inc` touches no lock and no shared
cache line), and a read sums the copies. The same here: a process bumps
`proc.cnt[h] += 1` on a memoryview of its own row (one 8-byte store, ~50
ns), so a statistic costs the hot path nothing measurable, and no reader
ever waits. A respawned process takes over the row of its slot, so what
the dead one counted is kept.

Reset without touching another process's row (that would race with its
owner's next add and lose it): `reset` records the current sum in the
counter's base, and a read returns sum - base. Computed statistics
(Kamailio's STAT_IS_FUNC: `tmx:active_transactions`, `shmem:used_size`)
are a function called on read.

Layout (arena static area, `stride` = 8 x number of counters):
    slot 0 .. nslots-1   one row per process-table slot: i64 per counter
    row nslots           bases: i64 per counter (the sum at the last reset)
"""
from dataclasses import dataclass
from typing import Callable, Optional

NO_RESET = 1          # Kamailio's STAT_NO_RESET: reset leaves it alone
# a module's own bookkeeping kept in these rows (tm's t_proc_stats, which Kamailio
# keeps in a per-process array of its own, src/modules/tm/t_stats.c): read by
# handle, never listed (not a Kamailio statistic: no group or name an operator sees)
INTERNAL = 2


@dataclass
class StatDef:
    group: str
    name: str
    flags: int = 0
    func: Optional[Callable] = None      # computed on read: func() -> int
    doc: str = ""


class Stats:
    """The registry (names, before the fork) and the shm rows (after allocate)."""

    def __init__(self):
        self.defs = []                  # StatDef, index = handle
        self.by_name = {}               # "group:name" -> handle
        self.buf = None
        self.off = 0
        self.nslots = 0
        self.stride = 0
        self._bare_names = None         # (number of defs, {bare name: first handle})

    # -- main, before the fork -------------------------------------------
    def register(self, group, name, flags=0, func=None, doc=""):
        """-> the handle of `group:name` (the same one when registered again,
        as a module registering in mod_init twice would get)."""
        key = f"{group}:{name}"
        h = self.by_name.get(key)
        if h is None:
            if self.buf is not None:
                raise RuntimeError(f"statistic {key} registered after the shm rows were made")
            h = len(self.defs)
            self.defs.append(StatDef(group, name, flags, func, doc))
            self.by_name[key] = h
        return h

    def allocate(self, arena, nslots):
        """One row per process slot plus the bases, in the arena's static area."""
        self.nslots = nslots
        self.stride = 8 * max(1, len(self.defs))
        self.buf = arena.buf
        self.off = arena.static_alloc(self.stride * (nslots + 1))

    # -- any process -------------------------------------------------------
    def row(self, slot):
        """This process's counters: a memoryview of int64, indexed by handle
        (`row[h] += n`). A slot out of range gets a private row, never
        someone else's."""
        n = max(1, len(self.defs))
        if self.buf is None or not 0 <= slot < self.nslots:
            return memoryview(bytearray(8 * n)).cast("q")
        start = self.off + slot * self.stride
        return self.buf[start:start + self.stride].cast("q")

    def _bases(self):
        start = self.off + self.nslots * self.stride
        return self.buf[start:start + self.stride].cast("q")

    def handle(self, group, name):
        return self.by_name.get(f"{group}:{name}")

    def get(self, h):
        d = self.defs[h]
        if d.func is not None:
            try:
                return int(d.func())
            except Exception:  # noqa: BLE001 - a broken gauge reads 0, never breaks a scrape
                return 0
        if self.buf is None:
            return 0
        # counter h of every row is one strided column; the last row holds the bases.
        # The view lives for this call only: one kept would stop the arena closing.
        col = self.buf[self.off:self.off + self.stride * (self.nslots + 1)].cast("q")[h::self.stride // 8]
        return sum(col[:self.nslots]) - col[self.nslots]

    def get_raw(self, h):
        """The sum of the rows, the last reset not taken off (cnt.get_raw)."""
        v = self.get(h)
        if self.defs[h].func is None and self.buf is not None:
            v += self._bases()[h]
        return v

    def reset(self, h):
        """Kamailio's reset_stat: reads 0 from now on (not for NO_RESET or computed ones)."""
        d = self.defs[h]
        if d.func is not None or d.flags & NO_RESET or self.buf is None:
            return False
        bases = self._bases()
        bases[h] = bases[h] + self.get(h)
        return True

    def groups(self):
        """Group names in registration order."""
        seen = []
        for d in self.defs:
            if d.group not in seen and not d.flags & INTERNAL:
                seen.append(d.group)
        return seen

    def items(self, group=None):
        """[(group, name, value)] in registration order, of one group or all."""
        return [(d.group, d.name, self.get(h)) for h, d in enumerate(self.defs)
                if (group is None or d.group == group) and not d.flags & INTERNAL]

    def find(self, name, qualified=True):
        """A handle by bare name, as Kamailio's get_stat() (the first group that
        has it), or with `qualified` also by `group:name` / `group.name` (kex's
        stats.fetch fallback); None when unknown or INTERNAL."""
        h = self._bare().get(name)
        if h is None and qualified:
            for sep in (".", ":"):
                g, s, n = name.partition(sep)
                if s and f"{g}:{n}" in self.by_name:
                    h = self.by_name[f"{g}:{n}"]
                    break
        if h is None or self.defs[h].flags & INTERNAL:
            return None
        return h

    def _bare(self):
        cached = self._bare_names
        if cached is None or cached[0] != len(self.defs):
            names = {}
            for h, d in enumerate(self.defs):
                if not d.flags & INTERNAL:
                    names.setdefault(d.name, h)
            cached = self._bare_names = (len(self.defs), names)
        return cached[1]
