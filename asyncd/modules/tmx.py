"""tmx: t_suspend() and t_continue(tindex, tlabel, rtname) for scripts
(Kamailio's tmx module; docs/kamailio-tm.md §2-3); $T(...) lives in tm/mod.py.

Runs in: udp receivers (t_suspend, and t_continue called from another
request's route), async task workers and timer-driven event routes
(t_continue).

The usual pattern: suspend, keep `$T(id_index)`/`$T(id_label)` somewhere
shared ($sht, $shv), exit; later any process calls t_continue with them and
route[rtname] runs as a failure route with the stored request and AVPs.

Statistics: the tmx: group, Kamailio 5.6's names and formulas (src/modules/
tmx/tmx_mod.c mod_stats[]), all computed on read from tm's counts
(asyncd/modules/tm/stats.py), so, as in Kamailio, none of them resets.
"""
from asyncd.core import log
from asyncd.core.exports import FuncExport, ModuleExports, P, PvExport
from asyncd.core.route_types import REQUEST_ROUTE, FAILURE_ROUTE, ANY_ROUTE, BRANCH_ROUTE
from asyncd.modules.tm import api as tm_api
from asyncd.modules.tm import stats as tm_stats

MOD = "tmx"


def w_t_suspend(ctx, site):
    if ctx.t is None:
        rc = tm_api.t_newtran(ctx)
        if rc < 0:
            log.err(MOD, "cannot create the transaction")
            return -1
        if rc == 0:
            return 0            # a retransmission, absorbed: end the script
    rc, tindex, tlabel = tm_api.t_suspend(ctx)
    if rc < 0:
        log.err(MOD, f"failed to suspend request processing ({rc})")
        return -1
    return 1


def w_t_continue(ctx, site, tindex, tlabel, rtname):
    if tindex is None or tlabel is None:
        log.err(MOD, "transaction index and label must be numbers")
        return -1
    script = ctx.proc.script
    name = str(rtname)
    if not script.has_route(name):
        log.err(MOD, f"no route[{name}]")
        return -1
    rc = tm_api.t_continue(ctx.proc, int(tindex), int(tlabel),
                           lambda c: script.run_route(name, c))
    if rc < 0:
        log.err(MOD, f"resuming the processing of transaction [{tindex}:{tlabel}] failed")
        return -1
    return 1


def _fixup_continue(site):
    a = site.args[2]
    script = site.script
    if a.literal and hasattr(script, "has_route") and not script.has_route(str(a.value)):
        site.arg_error(2, f"t_continue(): no route[{a.value}] block")


def _branch_idx(ctx, spec, index):
    """$T_branch_idx: in branch_route the index of the branch being created
    (the branches made so far: the cell is loaded while the route runs), in
    reply and failure routes the branch the reply came on; 0 otherwise (as
    the stock kamailio.cfg's xdbg in branch_route[MANAGE_BRANCH] expects)."""
    t = ctx.t
    if t is None:
        return 0
    if ctx.route_type == BRANCH_ROUTE:
        cell = getattr(t, "cell", None)
        return len(cell.branches) if cell is not None else 0
    b = getattr(t, "branch", -1)
    return b if isinstance(b, int) and b >= 0 else 0


def w_t_is_branch_route(ctx, site):
    """tmx_mod.c t_is_branch_route(): 1 while a branch_route runs."""
    return 1 if ctx.route_type == BRANCH_ROUTE else -1


# (name, formula over tm's totals) in tmx_mod.c's order
STATS = (
    ("UAS_transactions", lambda t: t["transactions"]),
    ("UAC_transactions", lambda t: t["client_transactions"]),
    ("2xx_transactions", lambda t: t["completed_2xx"]),
    ("3xx_transactions", lambda t: t["completed_3xx"]),
    ("4xx_transactions", lambda t: t["completed_4xx"]),
    ("5xx_transactions", lambda t: t["completed_5xx"]),
    ("6xx_transactions", lambda t: t["completed_6xx"]),
    ("inuse_transactions", lambda t: t["transactions"] - t["deleted"]),
    ("active_transactions", lambda t: t["transactions"] - t["waiting"]),
    ("rpl_received", lambda t: t["rpl_received"]),
    ("rpl_absorbed", lambda t: t["rpl_received"] - (t["rpl_sent"] - t["rpl_generated"])),
    ("rpl_generated", lambda t: t["rpl_generated"]),
    ("rpl_relayed", lambda t: t["rpl_sent"] - t["rpl_generated"]),
    ("rpl_sent", lambda t: t["rpl_sent"]),
)


def mod_init(script):
    """Register tmx: (tm's mod_init ran first: tmx depends on tm)."""
    stats = script.stats
    for name, formula in STATS:
        stats.register("tmx", name, func=lambda f=formula: max(0, f(tm_stats.totals(stats))))


EXPORTS = ModuleExports(
    name="tmx",
    mod_init=mod_init,
    functions=[
        FuncExport("t_suspend", (), w_t_suspend, REQUEST_ROUTE | FAILURE_ROUTE),
        FuncExport("t_is_branch_route", (), w_t_is_branch_route, ANY_ROUTE),
        FuncExport("t_continue", (P.INT, P.INT, P.ROUTE), w_t_continue, ANY_ROUTE, _fixup_continue),
    ],
    pvs=[PvExport("T_branch_idx", _branch_idx, None, None, False)],
    depends=("tm",),
)
