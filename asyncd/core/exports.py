"""Module export tables: what a module offers the cfg (functions, modparams,
pseudo-variables), its lifecycle hooks and the process rows it declares.

Runs in: main process (compile, fixups, mod_init), every child (lookups).

Every module in asyncd/modules/ defines a module-level `EXPORTS =
ModuleExports(...)`, mirroring Kamailio's `struct module_exports`.
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from asyncd.core.route_types import ANY_ROUTE


class P:
    """Parameter kinds of script functions (Kamailio's fixup families).

    What the implementation receives at run time, per kind:
      STR    -- str: a string, may embed pseudo-variables ("caller $fU"), formatted at call time
      INT    -- int, or None when a variable's value is not numeric (fixup `igp`:
                an int literal, a numeric string literal, or a single pseudo-variable)
      ROUTE  -- str: a route name (STR semantics); a literal is checked at startup
      REGEX  -- compiled re.Pattern (literal compiled once at startup)
      PV     -- a PvRef (writable pseudo-variable): .get(ctx), .set(ctx, value)
      ANY    -- int | str | None: any expression value
    """
    STR = "str"
    INT = "int"
    ROUTE = "route"
    REGEX = "regex"
    PV = "pv"
    ANY = "any"


@dataclass
class FuncExport:
    """One script function overload (name + arity).

    impl(ctx, site, *args) -> int. `site` is the CallSite (location, fixup data).
    Return value: > 0 true, < 0 false, 0 ends the script (Kamailio semantics).
    fixup(site) runs once at startup; it raises site.error("...") for bad literals
    and may store precomputed data in site.data.
    """
    name: str
    params: tuple = ()
    impl: Optional[Callable] = None
    flags: int = ANY_ROUTE
    fixup: Optional[Callable] = None
    suspends: bool = False      # suspends the transaction (async; refused with async mode=1)
    continuation: bool = False  # async_sleep-style: the rest of the block is compiled as a continuation


@dataclass
class ParamExport:
    """A modparam: name, type (int or str), default. multi: may be given several times
    (each value is appended to a list, e.g. htable's "htable")."""
    name: str
    type: type = str
    default: Any = None
    multi: bool = False


@dataclass
class PvExport:
    """A pseudo-variable class, e.g. `ru`, `var`, `hdr`, `sht`.

    parse(inner) -> spec: called once at startup with the text inside the
    parentheses (None when written without them); raise ValueError(msg) when
    malformed. get(ctx, spec, index) -> int | str | None; set(ctx, spec, index, value)
    where value None means $null (unset). index is None, an int, or "*" for [*].
    """
    name: str
    get: Callable
    set: Optional[Callable] = None
    parse: Optional[Callable] = None
    inner: Optional[bool] = None   # True: (name) required; False: forbidden; None: optional


@dataclass
class ModuleExports:
    name: str
    functions: list = field(default_factory=list)
    params: list = field(default_factory=list)
    pvs: list = field(default_factory=list)
    # mod_init(script): main process, after fixups and shm creation, before fork
    mod_init: Optional[Callable] = None
    # child_init(proc, rank): in every child after fork, before its loop
    child_init: Optional[Callable] = None
    mod_destroy: Optional[Callable] = None
    # procs(script) -> list[asyncd.core.procs.ProcRow]: processes to fork (after
    # mod_init; Kamailio's register_procs): the loop is its role's, in workers/
    procs: Optional[Callable] = None
    # message-path hooks, see docs/contracts.md: request_in, request_done, reply_in
    hooks: dict = field(default_factory=dict)
    depends: tuple = ()
    # RPC methods: asyncd.core.rpc.RpcExport rows (Kamailio's rpc_export_t array)
    rpc: list = field(default_factory=list)

    def param_defaults(self):
        """{modparam: default} as the compiler starts `script.modparams[name]`
        (a multi modparam starts as an empty list)."""
        return {p.name: ([] if p.multi else p.default) for p in self.params}
