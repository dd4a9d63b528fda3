"""Call sites and argument descriptions handed to module fixups.

Runs in: main process (fixups at compile time); CallSite objects are then
read by every process (they are part of the compiled script).

Kamailio runs a function's fixup once per call in the cfg, at startup, to
check literal arguments and precompute what it can (src/core/sr_module.c
`fix_actions`). Our fixups receive a CallSite describing the call: its
location, its arguments (literal or not), the Script being compiled (for
route/group/modparam existence checks) and a `data` dict for precomputed
values. `site.error()` raises the one-line `file:line:col: message` error.
"""
from dataclasses import dataclass, field
from typing import Any, Optional

from asyncd.core.errors import CfgError


@dataclass(frozen=True)
class Loc:
    file: str
    line: int
    col: int

    def __str__(self):
        return f"{self.file}:{self.line}:{self.col}"

    @property
    def where(self):
        """`file:line` as log lines name it."""
        return f"{self.file}:{self.line}"

    def error(self, msg):
        return CfgError(msg, self.file, self.line, self.col)


@dataclass
class ArgInfo:
    """One argument as written in the cfg.

    literal: True for a constant (int, or a string without pseudo-variables).
    value: the literal value as written (str or int) when literal, else None.
    text: the source form (a string's text, variables included) when known.
    is_pv: the argument is exactly one pseudo-variable (`$var(x)` or "$var(x)").
    """
    literal: bool
    value: Any = None
    loc: Optional[Loc] = None
    text: Optional[str] = None
    is_pv: bool = False

    @property
    def int_value(self):
        """The literal as an int (ints, numeric strings), else None."""
        if not self.literal:
            return None
        if isinstance(self.value, int):
            return self.value
        try:
            return int(str(self.value).strip(), 0)
        except ValueError:
            return None


@dataclass(eq=False)
class CallSite:
    func: Any                        # FuncExport
    loc: Loc
    args: list = field(default_factory=list)
    script: Any = None
    block_kind: str = "request"
    block_name: Optional[str] = None
    data: dict = field(default_factory=dict)
    continuation: Optional[int] = None
    module: Optional[str] = None     # script name of the module exporting func

    @property
    def name(self):
        return self.func.name

    @property
    def where(self):
        return self.loc.where

    def error(self, msg):
        raise CfgError(msg, self.loc.file, self.loc.line, self.loc.col)

    def arg_error(self, i, msg):
        loc = self.args[i].loc if 0 <= i < len(self.args) and self.args[i].loc else self.loc
        raise CfgError(msg, loc.file, loc.line, loc.col)

    def __repr__(self):
        return f"CallSite({self.func.name} at {self.loc})"
