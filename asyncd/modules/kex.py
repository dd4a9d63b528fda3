"""kex: Kamailio's "core extensions" module, the part stock cfgs use.

Runs in: every process running routes.

Kamailio's default kamailio.cfg loads kex.so; in 5.x it exports the
destination-URI helpers (setdsturi/resetdsturi/isdsturiset and their
`duri` spellings), pv_printf and is_myself (src/modules/kex/kex_mod.c).
The flag functions it also exports (setbflag...) are core functions here.

kex also owns the reading side of the core statistics: the `stats.*` RPCs
(src/modules/kex/core_stats.c), Kamailio 5.6's shapes: get_statistics
answers one "group:name = value" string per statistic, fetch / fetchn one
struct keyed "group.name" (string / integer values), clear_statistics
answers like get_statistics with the value before a reset in parentheses,
reset_statistics nothing. A name is `all`, `group:` or a statistic's bare
name (fetch also takes `group.name` / `group:name`); groups and names come
sorted, as Kamailio's counter iteration gives them. The core: and shmem:
groups themselves are registered whether kex is loaded or not
(asyncd/core/core_stats.py; docs/operations.md "Statistics").
"""
from asyncd.core.counters import INTERNAL
from asyncd.core.exports import FuncExport, ModuleExports, P
from asyncd.core.route_types import ANY_ROUTE
from asyncd.core.rpc import RET_ARRAY, RpcExport, RpcFault, Struct

U64 = (1 << 64) - 1     # Kamailio prints counter values as unsigned long (%lu)


def w_setdsturi(ctx, site, uri):
    """The same as `$du = uri` (an empty value unsets it)."""
    ctx.msg.dst_uri = uri or None
    return 1


def w_resetdsturi(ctx, site):
    ctx.msg.dst_uri = None
    return 1


def w_isdsturiset(ctx, site):
    return 1 if ctx.msg.dst_uri else -1


def w_pv_printf(ctx, site, pv, text):
    """pv_printf("$var(x)", "fmt with $vars"): format, then assign."""
    pv.set(ctx, text)
    return 1


def w_is_myself(ctx, site, uri):
    script = ctx.proc.script
    return 1 if script is not None and script.is_myself(uri, True) else -1


# -- stats.* RPCs ---------------------------------------------------------------------
def _select(stats, name, qualified):
    """-> [(group, name, handle)] a stats.* argument names, sorted."""
    if name == "all":
        return sorted((d.group, d.name, h) for h, d in _listed(stats))
    if name.endswith(":"):
        g = name[:-1]
        return sorted((d.group, d.name, h) for h, d in _listed(stats) if d.group == g)
    h = stats.find(name, qualified)
    if h is None:
        return []
    d = stats.defs[h]
    return [(d.group, d.name, h)]


def _listed(stats):
    return [(h, d) for h, d in enumerate(stats.defs) if not d.flags & INTERNAL]


def _names(call):
    """The statistic names of the call: at least one (kex's 400 otherwise)."""
    if not call.params:
        raise RpcFault(400, "Please provide which stats to retrieve")
    return [str(p) for p in call.params]


def rpc_get_statistics(call):
    stats = call.script.stats
    for name in _names(call):
        for g, n, h in _select(stats, name, False):
            call.add(f"{g}:{n} = {stats.get(h) & U64}")


def _fetch(call, numeric):
    stats = call.script.stats
    out = Struct()
    for name in _names(call):
        for g, n, h in _select(stats, name, True):
            v = stats.get(h) & U64
            out.append((f"{g}.{n}", v if numeric else str(v)))
    call.add(out)


def rpc_fetch(call):
    _fetch(call, False)


def rpc_fetchn(call):
    _fetch(call, True)


def _reset(call, verbose):
    stats = call.script.stats
    if not call.params:
        raise RpcFault(400, "Please provide stats name")
    for name in (str(p) for p in call.params):
        for g, n, h in _select(stats, name, False):
            old = stats.get(h) & U64
            stats.reset(h)
            new = stats.get(h) & U64
            if verbose:
                call.add(f"{g}:{n} = {new}" if new == old else f"{g}:{n} = {new} ({old})")


def rpc_reset_statistics(call):
    _reset(call, False)


def rpc_clear_statistics(call):
    _reset(call, True)


RPC = [
    RpcExport("stats.get_statistics", rpc_get_statistics,
              "NAME...: 'group:name = value' lines (all, group:, or a name).", RET_ARRAY),
    RpcExport("stats.fetch", rpc_fetch, "NAME...: a struct of group.name: value as strings."),
    RpcExport("stats.fetchn", rpc_fetchn, "NAME...: a struct of group.name: value as numbers."),
    RpcExport("stats.reset_statistics", rpc_reset_statistics, "NAME...: reset, answering nothing."),
    RpcExport("stats.clear_statistics", rpc_clear_statistics,
              "NAME...: reset, answering each value and the one before."),
]


EXPORTS = ModuleExports(
    name="kex",
    functions=[
        FuncExport("setdsturi", (P.STR,), w_setdsturi, ANY_ROUTE),
        FuncExport("setduri", (P.STR,), w_setdsturi, ANY_ROUTE),
        FuncExport("resetdsturi", (), w_resetdsturi, ANY_ROUTE),
        FuncExport("resetduri", (), w_resetdsturi, ANY_ROUTE),
        FuncExport("isdsturiset", (), w_isdsturiset, ANY_ROUTE),
        FuncExport("isduriset", (), w_isdsturiset, ANY_ROUTE),
        FuncExport("pv_printf", (P.PV, P.STR), w_pv_printf, ANY_ROUTE),
        FuncExport("is_myself", (P.STR,), w_is_myself, ANY_ROUTE),
    ],
    rpc=RPC,
)
