"""Shared variables ($shv) store.

Runs in: main process (creation with the arena, initial values from
modparam "shvset"), every child (get/set).

Kamailio keeps $shv in the pv module's shared memory (src/modules/pv/pv_shv.c),
one locked cell per name, visible to every process (docs/kamailio-async.md §7), created at
startup with the int value 0.  Here the names are keys of an HTable with
initval 0 (htable.py: same byte layout, same lock-free reads): an unset
$shv reads 0, assigning $null resets it to 0, ints and strings keep their type.
"""
from asyncd.core import log
from shm.htable import HTable


class ShvStore(HTable):
    def __init__(self, arena):
        super().__init__(arena, "$shv", initval=0, nbuckets=256, nstripes=16)

    def set(self, name, value):
        """-> False if shared memory is full (logged)."""
        if value is None:
            self.delete(name)
            return True
        ok = super().set(name, value)
        if not ok:
            log.err("pv", f"$shv({name}): out of shared memory, value not stored (raise -m)")
        return ok

    def items(self):
        return sorted(super().items())


def parse_shvset(spec):
    """modparam("pv", "shvset", "name=i:1") / "name=s:text" -> (name, value)."""
    name, sep, rest = spec.partition("=")
    name = name.strip()
    if not sep or not name or len(rest) < 2 or rest[1] != ":" or rest[0] not in "isIS":
        raise ValueError(f"invalid shvset value {spec!r} (expected name=i:INT or name=s:TEXT)")
    if rest[0] in "iI":
        return name, int(rest[2:].strip(), 0)
    return name, rest[2:]
