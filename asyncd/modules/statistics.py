"""statistics: script-defined statistics and update_stat / reset_stat
(Kamailio 5.6's statistics module, src/modules/statistics/).

Runs in: main (modparams, mod_init registers the statistics), every process
running routes (update_stat, reset_stat).

`modparam("statistics", "variable", "name[/no_reset]")` declares a statistic
in the `script` group (stats_funcs.c: MODULE_STATS; `/no_reset` is
STAT_NO_RESET). `update_stat(name, value)` adds a signed number to any
statistic by its bare name (kex's get_stat lookup: a module's too, e.g.
`update_stat("rcv_requests", "+1")`); `reset_stat(name)` sets it back to 0.
The name may hold pseudo-variables. Kamailio checks a literal name at
startup; asyncd's modules register their statistics in mod_init, after the
fixups, so an unknown name is reported when the function runs (logged, -1).
$stat(name), which reads one, is the pv module's, as in Kamailio.
"""
from asyncd.core import log
from asyncd.core.counters import NO_RESET
from asyncd.core.exports import FuncExport, ModuleExports, P, ParamExport
from asyncd.core.route_types import (ANY_ROUTE, BRANCH_ROUTE, FAILURE_ROUTE, LOCAL_ROUTE,
                                     ONREPLY_ROUTE, REQUEST_ROUTE)

MOD = "statistics"
GROUP = "script"


def parse_variable(text):
    """reg_statistic: `name[/no_reset]` -> (name, flags); ValueError when malformed."""
    name, sep, flag = str(text).partition("/")
    if not name:
        raise ValueError("empty statistic name")
    if sep and flag.lower() != "no_reset":
        raise ValueError(f"unsupported flag <{flag}>")
    return name, NO_RESET if sep else 0


def mod_init(script):
    for text in script.modparams.get(MOD, {}).get("variable") or ():
        try:
            name, flags = parse_variable(text)
        except ValueError as e:
            raise RuntimeError(f"statistics: variable {text!r}: {e}") from None
        script.stats.register(GROUP, name, flags)


def parse_value(v):
    """A signed integer ("+3", "-1", 4) or None."""
    if isinstance(v, int):
        return v
    try:
        return int(str(v).strip())
    except ValueError:
        return None


def _find(ctx, name):
    h = ctx.proc.script.stats.find(str(name), qualified=False)
    if h is None:
        log.err(MOD, f"variable <{name}> not defined")
    return h


def w_update_stat(ctx, site, name, value):
    n = parse_value(value)
    if n is None:
        log.err(MOD, f"update_stat(): bad update number <{value}>")
        return -1
    h = _find(ctx, name)
    if h is None:
        return -1
    ctx.proc.cnt[h] += n
    return 1


def w_reset_stat(ctx, site, name):
    h = _find(ctx, name)
    if h is None:
        return -1
    ctx.proc.script.stats.reset(h)
    return 1


def _fixup_update(site):
    v = site.args[1]
    if v.literal:
        n = parse_value(v.value)
        if n is None:
            site.arg_error(1, f"bad update number <{v.value}>")
        if n == 0:
            site.arg_error(1, "update with 0 has no sense")


EXPORTS = ModuleExports(
    name="statistics",
    functions=[
        FuncExport("update_stat", (P.STR, P.STR), w_update_stat, ANY_ROUTE, _fixup_update),
        FuncExport("reset_stat", (P.STR,), w_reset_stat,
                   REQUEST_ROUTE | BRANCH_ROUTE | FAILURE_ROUTE | ONREPLY_ROUTE | LOCAL_ROUTE),
    ],
    params=[ParamExport("variable", str, None, multi=True)],
    mod_init=mod_init,
)
