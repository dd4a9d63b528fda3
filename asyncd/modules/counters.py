"""counters: script counters and the `cnt.*` RPCs (Kamailio 5.6's counters
module, src/modules/counters/counters.c).

Runs in: main (modparams, fixups, mod_init registers the counters), every
process running routes (cnt_inc / cnt_add / cnt_reset), the RPC processes
(cnt.*).

A script counter is a statistic like any other (asyncd/core/counters.py):
`modparam("counters", "script_counter", "[grp.]name[( |:)description]")`
declares one, in the group `script_cnt_grp_name` (default `script`) unless
the name says another; `cnt_inc("name")` / `cnt_inc("grp.name")` adds to
it. The same store serves `stats.*` (kex) and `cnt.*`, as Kamailio's
counters and statistics are one framework (src/core/counters.c).

A counter named in cnt_* must exist, checked at startup as Kamailio's
cnt_fixup1 does; a name of a group no script_counter declares (a module's
statistic, `sl.200_replies`) is looked up on first use instead, because
modules register theirs after the fixups here (docs/operations.md).
"""
from asyncd.core import log
from asyncd.core.exports import FuncExport, ModuleExports, P, ParamExport
from asyncd.core.route_types import FAILURE_ROUTE, ONREPLY_ROUTE, ONSEND_ROUTE, REQUEST_ROUTE
from asyncd.core.rpc import RET_ARRAY, RpcExport, RpcFault

MOD = "counters"
DEFAULT_DESC = "custom script counter."
ROUTES = REQUEST_ROUTE | ONREPLY_ROUTE | FAILURE_ROUTE | ONSEND_ROUTE

_handles = {}        # (group, name) -> handle, filled by mod_init and on first use


def parse_decl(text, default_grp):
    """add_script_counter's syntax -> (group, name, description)."""
    name, desc = str(text), DEFAULT_DESC
    for sep in (":", " "):
        if sep in name:
            name, _, rest = name.partition(sep)
            rest = rest.lstrip(" \t")
            desc = rest or desc
            break
    grp = default_grp
    if "." in name:
        grp, _, name = name.partition(".")
    return grp, name, desc


def _decls(mp):
    grp = str(mp.get("script_cnt_grp_name") or "script")
    return grp, [parse_decl(d, grp) for d in mp.get("script_counter") or ()]


def split_name(text, default_grp):
    """cnt_fixup1: `grp.name` or `name` (in the script group)."""
    if "." in text:
        g, _, n = text.partition(".")
        return g, n
    return default_grp, text


def mod_init(script):
    grp, decls = _decls(script.modparams.get(MOD) or {})
    _handles.clear()
    for g, n, desc in decls:
        if (g, n) in _handles:
            log.err(MOD, f"counter {g}.{n} already registered")
            continue
        _handles[(g, n)] = script.stats.register(g, n, doc=desc)


def _fixup_counter(site):
    a = site.args[0]
    if not a.literal:
        site.arg_error(0, f"{site.name}(): the counter name must be a literal")
    grp, decls = _decls(site.script.modparams.get(MOD) or {})
    g, n = split_name(str(a.value), grp)
    declared = {(dg, dn) for dg, dn, _ in decls}
    if (g, n) not in declared and g in {dg for dg, _, _ in decls} | {grp}:
        site.arg_error(0, f"counter {g}.{n} does not exist (forgot to define it?)")
    site.data["cnt"] = (g, n)


def _fixup_add(site):
    _fixup_counter(site)
    v = site.args[1]
    if v.literal and v.int_value is None:
        site.arg_error(1, f"cnt_add(): {v.value!r} is not an integer")


def _handle(ctx, site):
    key = site.data.get("cnt") if site is not None else None
    h = _handles.get(key)
    if h is None and key is not None:
        h = ctx.proc.script.stats.handle(*key)
        if h is None:
            log.err(MOD, f"counter {key[0]}.{key[1]} does not exist (forgot to define it?)")
            return None
        _handles[key] = h
    return h


def w_cnt_inc(ctx, site, _name):
    h = _handle(ctx, site)
    if h is None:
        return -1
    ctx.proc.cnt[h] += 1
    return 1


def w_cnt_add(ctx, site, _name, value):
    h = _handle(ctx, site)
    if h is None:
        return -1
    if value is None:
        log.err(MOD, "cnt_add(): non integer parameter")
        return -1
    ctx.proc.cnt[h] += int(value)
    return 1


def w_cnt_reset(ctx, site, _name):
    h = _handle(ctx, site)
    if h is None:
        return -1
    ctx.proc.script.stats.reset(h)
    return 1


# -- RPC (counters.c cnt_*_rpc) -------------------------------------------------------
def _lookup(call, group, name):
    h = call.script.stats.handle(group, name)
    if h is None:
        raise RpcFault(400, f"non-existent counter {group}.{name}\n")
    return h


def _group_struct(stats, group):
    return {n: _int32(v) for g, n, v in sorted(stats.items(group))}


def _int32(v):
    """Kamailio adds counter values as "d", a C int: what BINRPC carries."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def rpc_get(call):
    """cnt.get GROUP [NAME]: one value, or without NAME the group's struct."""
    group, = call.scan("s")
    rest = call.params[1:]
    if not rest:
        call.add(_group_struct(call.script.stats, group))
        return
    name = call.scan("ss")[1]
    call.add(_int32(call.script.stats.get(_lookup(call, group, name))))


def rpc_get_raw(call):
    group, name = call.scan("ss")
    call.add(_int32(call.script.stats.get_raw(_lookup(call, group, name))))


def rpc_reset(call):
    group, name = call.scan("ss")
    call.script.stats.reset(_lookup(call, group, name))


def rpc_grps_list(call):
    for g in sorted(call.script.stats.groups()):
        call.add(g)


def rpc_var_list(call):
    group, = call.scan("s")
    for _g, n, _v in sorted(call.script.stats.items(group)):
        call.add(n)


def rpc_grp_get_all(call):
    group, = call.scan("s")
    call.add(_group_struct(call.script.stats, group))


def rpc_help(call):
    group, name = call.scan("ss")
    stats = call.script.stats
    d = stats.defs[_lookup(call, group, name)]
    if not d.doc:
        raise RpcFault(400, f"no description for counter {group}.{name}\n")
    call.add(d.doc)


_GET_DOC = "GROUP [NAME]: the value of a counter, or of every counter of GROUP"
_LIST_DOC = "The names of the counter groups."
_VARS_DOC = "GROUP: the names of its counters."
_ALL_DOC = "GROUP: a struct of its counters and their values."

EXPORTS = ModuleExports(
    name="counters",
    functions=[
        FuncExport("cnt_inc", (P.STR,), w_cnt_inc, ROUTES, _fixup_counter),
        FuncExport("cnt_add", (P.STR, P.INT), w_cnt_add, ROUTES, _fixup_add),
        FuncExport("cnt_reset", (P.STR,), w_cnt_reset, ROUTES, _fixup_counter),
    ],
    params=[
        ParamExport("script_cnt_grp_name", str, "script"),
        ParamExport("script_counter", str, None, multi=True),
    ],
    mod_init=mod_init,
    rpc=[
        RpcExport("cnt.get", rpc_get, _GET_DOC),
        RpcExport("cnt.reset", rpc_reset, "GROUP NAME: set a counter back to 0."),
        RpcExport("cnt.get_raw", rpc_get_raw, "GROUP NAME: the value without the last reset taken off."),
        RpcExport("cnt.list_groups", rpc_grps_list, _LIST_DOC, RET_ARRAY),
        RpcExport("cnt.grps_list", rpc_grps_list, _LIST_DOC, RET_ARRAY),
        RpcExport("cnt.list_vars", rpc_var_list, _VARS_DOC, RET_ARRAY),
        RpcExport("cnt.var_list", rpc_var_list, _VARS_DOC, RET_ARRAY),
        RpcExport("cnt.get_vars", rpc_grp_get_all, _ALL_DOC),
        RpcExport("cnt.grp_get_all", rpc_grp_get_all, _ALL_DOC),
        RpcExport("cnt.help", rpc_help,
                  "GROUP NAME: what the counter counts."),
    ],
)
