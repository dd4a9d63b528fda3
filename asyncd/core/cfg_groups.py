"""The runtime configuration framework: groups of variables that an operator
changes while the server runs (`cfg.seti core debug 3`), seen by every
process at its next message.

Runs in: main process (groups declared at compile time and in mod_init,
values put in shared memory before the fork), every child (`update()` once
per message or loop turn), the RPC processes (get, set, delayed changes:
asyncd/modules/cfg_rpc.py).

Kamailio's framework (src/core/cfg/cfg_struct.c, cfg_ctx.c): each group is
a block of values; a change makes a new shm copy, and every process calls
cfg_update() at the start of each message (src/core/cfg/cfg_struct.h) to
switch its local pointer to the newest copy. Here a variable is one fixed
shm field; a change writes the field and then bumps a generation word. A
process's `update()` compares the generation word with the one it last
applied (one 8-byte read: nothing measurable next to a SIP message) and,
when it moved, re-reads every value into its local copy and runs the
variable's `on_change` (for `debug`: the process's log level), so a value
is never half applied within one message.

Differences, on purpose: no group instances (`group[id]`: Kamailio's
cfg.add_group_inst; asyncd refuses them with Kamailio's fault), and two
RPC processes writing the same variable at the same instant are not
serialised (the last write wins; each write is one store).

Layout (arena static area):
    0   8  i64 generation (bumped after every committed change)
    then per variable, in declaration order:
        int: 8 bytes, i64
        str: STR_MAX bytes: u16 length + utf-8 bytes
"""
import struct
import syslog
from dataclasses import dataclass
from typing import Any, Callable, Optional

from asyncd.core import log

STR_MAX = 256
_LEN = struct.Struct("<H")
_Q = struct.Struct("<q")


class CfgError(ValueError):
    """A value the variable refuses (type, range, fixup): Kamailio's
    cfg_set_now() error, which cfg_rpc words as "Failed to set the variable"."""


@dataclass(frozen=True)
class CfgVar:
    """One variable (Kamailio's cfg_def_t).

    type: int or str, what is stored. input: what a setter gives (str for
    log_facility: a name stored as a number); None = type. lo, hi: a range
    (both 0: none, as Kamailio). fixup(value) -> the stored value, or raises
    CfgError. on_change(value): runs in every process when it applies a new
    value. readable: False for Kamailio's values cfg.get refuses.
    """
    name: str
    type: type
    doc: str
    default: Any = 0
    lo: int = 0
    hi: int = 0
    input: Optional[type] = None
    fixup: Optional[Callable] = None
    on_change: Optional[Callable] = None
    readable: bool = True

    @property
    def input_type(self):
        return self.input or self.type


class CfgGroups:
    """Every group and its variables; the shm fields after allocate()."""

    def __init__(self):
        self.groups = {}            # name -> [CfgVar], declaration order
        self.local = {}             # (group, name) -> this process's value
        self.offs = {}              # (group, name) -> field offset
        self.buf = None
        self.gen = None             # offset of the generation word (no view kept: the arena can close)
        self.seen = 0
        self.pending = {}           # (group, name) -> value: cfg.set_delayed, per process
        self.startup = {}           # (group, name) -> the value at allocate(): cfg.reset

    # -- main, before the fork ---------------------------------------------
    def declare(self, group, variables):
        """Add a group (or more variables to one); before allocate()."""
        if self.buf is not None:
            raise RuntimeError(f"cfg group {group} declared after the shm fields were made")
        have = self.groups.setdefault(group, [])
        names = {v.name for v in have}
        for v in variables:
            if v.name not in names:
                have.append(v)
                self.local[(group, v.name)] = v.default

    def set_default(self, group, name, value):
        """The startup value (from the cfg file), before allocate()."""
        self.local[(group, name)] = value

    def allocate(self, arena):
        """The shm fields, filled with the startup values (main, before fork)."""
        if self.buf is not None:
            return
        size = 8
        for g, vs in self.groups.items():
            for v in vs:
                self.offs[(g, v.name)] = size
                size += 8 if v.type is int else STR_MAX
        base = arena.static_alloc(size)
        self.buf = arena.buf
        self.gen = base
        self.offs = {k: base + off for k, off in self.offs.items()}
        for key, off in self.offs.items():
            self._write(off, self.var(*key), self.local[key])
        self.seen = _Q.unpack_from(self.buf, base)[0]
        self.startup = dict(self.local)

    # -- any process ------------------------------------------------------
    def update(self):
        """Kamailio's cfg_update(): apply what changed since the last call."""
        gen = self.gen
        if gen is not None and _Q.unpack_from(self.buf, gen)[0] != self.seen:
            self._apply()

    def _apply(self):
        self.seen = _Q.unpack_from(self.buf, self.gen)[0]
        for key, off in self.offs.items():
            v = self.var(*key)
            value = self._read(off, v)
            if value != self.local[key]:
                self.local[key] = value
                if v.on_change is not None:
                    try:
                        v.on_change(value)
                    except Exception as e:  # noqa: BLE001 - a bad hook never stops a process
                        log.err("core", f"cfg {key[0]}.{key[1]}: applying {value!r} failed: {e!r}")

    def var(self, group, name):
        """-> CfgVar or None."""
        for v in self.groups.get(group, ()):
            if v.name == name:
                return v
        return None

    def get(self, group, name):
        """This process's value (KeyError for an unknown variable)."""
        return self.local[(group, name)]

    def current(self, group, name):
        """The newest committed value, from shm (KeyError for an unknown
        variable): what cfg.get reports, as Kamailio's cfg_get_by_name."""
        off = self.offs.get((group, name))
        if off is None:
            return self.local[(group, name)]
        return self._read(off, self.var(group, name))

    def check(self, group, name, value):
        """-> the value to store, converted and fixed up; CfgError when the
        variable is unknown or refuses it (Kamailio's cfg_set_now checks)."""
        v = self.var(group, name)
        if v is None:
            raise CfgError(f"variable not found: {group}.{name}")
        value = _convert(value, v.input_type, f"{group}.{name}")
        if v.fixup is not None:
            value = v.fixup(value)
        if v.type is int and (v.lo or v.hi) and not v.lo <= value <= v.hi:
            raise CfgError(f"{group}.{name}: integer value is out of range")
        if v.type is str and len(value.encode()) > STR_MAX - 2:
            raise CfgError(f"{group}.{name}: string value is too long")
        return value

    def set_now(self, group, name, value):
        """Check, store in shm, bump the generation, apply here at once."""
        value = self.check(group, name, value)
        self._store({(group, name): value})
        log.info("core", f"{group}.{name} has been changed to {value}")

    def _store(self, changes):
        if self.buf is None:
            # no shm (a compile-only run): this process alone
            for key, value in changes.items():
                self.local[key] = value
            return
        for key, value in changes.items():
            self._write(self.offs[key], self.var(*key), value)
        _Q.pack_into(self.buf, self.gen, _Q.unpack_from(self.buf, self.gen)[0] + 1)
        self.update()

    # -- delayed changes (cfg.set_delayed / commit / rollback / diff) -------
    def set_delayed(self, group, name, value):
        self.pending[(group, name)] = self.check(group, name, value)

    def commit(self):
        changes, self.pending = self.pending, {}
        if changes:
            self._store(changes)

    def rollback(self):
        self.pending = {}

    def diff(self):
        """[(group, name, old, new)] of the changes not committed yet."""
        return [(g, n, self.local[(g, n)], new) for (g, n), new in self.pending.items()]

    # -- shm fields ------------------------------------------------------
    def _write(self, off, v, value):
        if v.type is int:
            _Q.pack_into(self.buf, off, int(value))
            return
        b = str(value).encode("utf-8", "surrogateescape")[:STR_MAX - 2]
        _LEN.pack_into(self.buf, off, len(b))
        self.buf[off + 2:off + 2 + len(b)] = b

    def _read(self, off, v):
        if v.type is int:
            return _Q.unpack_from(self.buf, off)[0]
        (n,) = _LEN.unpack_from(self.buf, off)
        return bytes(self.buf[off + 2:off + 2 + n]).decode("utf-8", "surrogateescape")


def _convert(value, want, what):
    """A setter's value as the variable's input type: Kamailio's
    cfg_ctx.c convert_val turns a number into a string and back."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise CfgError(f"{what}: wrong type of value")
    if want is int and isinstance(value, str):
        try:
            return int(value.strip(), 0)
        except ValueError:
            raise CfgError(f"{what}: not an integer: {value!r}") from None
    if want is str and isinstance(value, int):
        return str(value)
    return value


def updater(script):
    """The one call a process loop makes per message: the script's
    `cfg.update`, or a no-op for a script without the framework."""
    groups = getattr(script, "cfg", None)
    return groups.update if groups is not None else _noop


def _noop():
    return None


# -- the core group (Kamailio's src/core/cfg_core.c core_cfg_def, the part
#    asyncd has a meaning for) ------------------------------------------------

def _facility(name):
    """log_facility: a syslog facility name (LOG_LOCAL0 ...) stored as its
    number, as Kamailio's log_facility_fixup."""
    n = getattr(syslog, str(name).strip().upper(), None)
    if not str(name).strip().upper().startswith("LOG_") or not isinstance(n, int):
        raise CfgError(f"invalid log facility: {name}")
    return n


def _set_level(value):
    log.configure(level=int(value))


def _set_facility(value):
    log.configure(facility=int(value))


def core_vars(core):
    """The core group, its startup values from the cfg's core parameters
    (`core`: script.core). debug and log_facility act live in every process;
    memdbg, memlog and corelog are kept and reported (asyncd has no
    allocator to debug, and logs core errors at their own level)."""
    def num(name, default):
        try:
            return int(core.get(name, default))
        except (TypeError, ValueError):
            return default
    fac = core.get("log_facility") or "LOG_DAEMON"
    try:
        fac_n = _facility(fac) if isinstance(fac, str) else int(fac)
    except CfgError:
        fac_n = syslog.LOG_DAEMON
    return [
        CfgVar("debug", int, "debug level", num("debug", 0), on_change=_set_level),
        CfgVar("log_facility", int, 'syslog facility, see "man 3 syslog"', fac_n, input=str,
               fixup=_facility, on_change=_set_facility, readable=False),
        CfgVar("memdbg", int, "log level for memory debugging messages", num("memdbg", 0)),
        CfgVar("memlog", int, "log level for memory status/summary information", num("memlog", 0)),
        CfgVar("corelog", int, "log level for non-critical core error messages", num("corelog", -1)),
    ]
