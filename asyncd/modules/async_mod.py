"""The ASYNC module (script name "async"): the nine functions, modparams
`workers`, `ms_timer`, `return`, `mode`, and `$async(...)` / `$atkv(...)`.

Runs in: main (fixups, mod_init, procs), any process running a route (the
functions: udp receivers, resumed routes, task workers), `ASYNC MOD TIMER`
and `ASYNC MOD MS TIMER` (their timer handlers, called by workers/timer.py),
`Async Task Worker - <group>` (resumes of task/ms functions, data tasks, and
their abandon handlers in the replacement of a worker that died running one).

Kamailio: src/modules/async/async_mod.c, async_sleep.c (docs/kamailio-async.md §2, §3, §8).
asyncd policy (docs/kamailio-async.md §10): invalid literals, unknown routes/groups, ms functions
without ms_timer or core workers, suspending functions in mode=1 and
async_sleep last in its block are startup errors; the same problems from
variables, or a full queue, return -1 with an error naming the cfg file:line
and leave no transaction suspended. Timers are accurate (workers/timer.py).

Suspend path (receiver): validate -> t_newtran if no T -> t_suspend -> queue
`[kind, (due,) tindex, tlabel, target]` (room check and send in one lock
round trip; a full queue undoes the suspension, so none is left behind) ->
return the `return` modparam (0 ends the script, docs/kamailio-async.md §2.0).
"""
import time
from functools import partial

from asyncd.core import log
from asyncd.core.exports import FuncExport, ModuleExports, P, ParamExport, PvExport
from asyncd.core.procs import PROC_TIMER, RETRY, ROLE_TIMER, ProcRow, TimerHandlers
from asyncd.core.route_types import ANY_ROUTE, FAILURE_ROUTE, REQUEST_ROUTE
from asyncd.ipc import async_task, codec
from asyncd.ipc.timers import TimerFeed
from asyncd.modules import async_rpc
from asyncd.modules.tm import api as tm_api
from asyncd.sip import faked_request

MOD = "async"
SEC_RANGE = (1, 100)           # docs/kamailio-async.md §10.1 (Kamailio's code: 1..99)
MS_RANGE = (1, 30000)          # docs/kamailio-async.md §10.1 (Kamailio's code: 1..29999)
MS_LEAD = 0.002               # the ms timer hands items to an idle worker this early (workers/timer.py)
# ASYNC_CBNAME_SIZE 64 - 1 (docs/kamailio-async.md §2.0), in bytes as Kamailio's str lengths: it
# also keeps an async timer entry within 86 bytes, one mailbox frame (asyncd/ipc/mailbox.py FRAME_MAX)
CBNAME_MAX = 62
SEC_QUEUE = 100000             # pending seconds items per ASYNC MOD TIMER (journal: 128 B each, when used)
MS_QUEUE = 10000               # Kamailio's ms list limit (docs/kamailio-async.md §2.2)
SUSPEND_FLAGS = REQUEST_ROUTE | FAILURE_ROUTE

K_ROUTE = "ar"                 # resume with route[target]
K_CONT = "ac"                  # resume with continuation id target (async_sleep)
K_DATA = "ad"                  # async_task_data: route target, data on a faked request


class _State:
    """Built in main by mod_init from the modparams (defaults: EXPORTS),
    inherited by every child."""
    __slots__ = ("ret", "workers", "ms_timer", "mode", "secs", "ms")

    def __init__(self, mp=None):
        mp = mp or EXPORTS.param_defaults()
        self.ret, self.mode = int(mp["return"]), int(mp["mode"])
        self.workers, self.ms_timer = int(mp["workers"]), int(mp["ms_timer"])
        self.secs = None         # TimerFeed of the ASYNC MOD TIMER processes
        self.ms = None           # TimerFeed of the ASYNC MOD MS TIMER


def _mp(script):
    return script.modparams.get(MOD) or EXPORTS.param_defaults()


def _groups(script):
    """{name: workers} of the core groups with workers, without building the
    framework (fixups run before event routes matter)."""
    out = {}
    for g in script.core.get("async_groups") or ():
        if g.workers and int(g.workers) > 0:
            out.setdefault(g.name, int(g.workers))
    return out


def _to_int(v):
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        s = v.strip()
        if s[:1] in "+-":
            return int(s) if s[1:].isdigit() else None
        return int(s) if s.isdigit() else None
    return None


def _err(site, text):
    where = site.loc.where if site is not None and getattr(site, "loc", None) else ""
    name = site.func.name if site is not None and getattr(site, "func", None) else MOD
    log.err(MOD, f"{name}(): {text}", where)


# ---- fixups (startup checks, docs/kamailio-async.md §10.1-10.2) -------------------------------

def _fix_delay(site, i, rng, unit):
    a = site.args[i]
    if not a.literal:
        return
    v = _to_int(a.value)
    if v is None:
        site.arg_error(i, f"{site.func.name}(): {unit} value {a.value!r} is not an integer")
    if not rng[0] <= v <= rng[1]:
        site.arg_error(i, f"{site.func.name}(): {unit} value {v} out of range "
                          f"{rng[0]}..{rng[1]}")
    site.data["delay"] = v


def _fix_route(site, i):
    a = site.args[i]
    if not a.literal:
        return
    name = str(a.value)
    if len(name.encode()) > CBNAME_MAX:
        site.arg_error(i, f"{site.func.name}(): route name [{name}] too long "
                          f"(max {CBNAME_MAX} bytes)")
    if name != "0" and not site.script.has_route(name):
        site.arg_error(i, f"{site.func.name}(): route [{name}] is not defined "
                          f"(no route[{name}] block)")


def _fix_group(site, i):
    a = site.args[i]
    if a.literal and a.value not in (None, "") and str(a.value) not in _groups(site.script):
        site.arg_error(i, f"{site.func.name}(): async task group [{a.value}] is not defined "
                          f"(see the async_workers_group core parameter)")


def _fix_suspending(site):
    if _mp(site.script)["mode"] == 1:
        site.error(f"{site.func.name}() suspends the transaction, but "
                   f"modparam(\"async\", \"mode\", 1) does not bind tm")


def _fix_need_timer(site):
    if _mp(site.script)["workers"] <= 0:
        site.error(f"{site.func.name}() needs ASYNC MOD TIMER processes: "
                   f"modparam(\"async\", \"workers\") is {_mp(site.script)['workers']}")


def _fix_need_ms(site):
    mp = _mp(site.script)
    if mp["ms_timer"] <= 0:
        site.error(f"{site.func.name}() needs the millisecond timer: "
                   f"set modparam(\"async\", \"ms_timer\", N) with N > 0")
    _fix_need_timer(site)
    _fix_need_core(site)


def _fix_need_core(site):
    if not _groups(site.script):
        site.error(f"{site.func.name}(): async task framework was not initialized - "
                   f"set async_workers parameter in core")


def _fix_last_action(site):
    if site.continuation is None:
        site.error(f"{site.func.name}() cannot be the last action in its block: "
                   f"nothing would run after the sleep (use async_route() instead)")


def fix_async_route(site):
    _fix_suspending(site)
    _fix_need_timer(site)
    _fix_route(site, 0)
    _fix_delay(site, 1, SEC_RANGE, "seconds")


def fix_async_ms_route(site):
    _fix_suspending(site)
    _fix_need_ms(site)
    _fix_route(site, 0)
    _fix_delay(site, 1, MS_RANGE, "milliseconds")


def fix_async_sleep(site):
    _fix_suspending(site)
    _fix_need_timer(site)
    _fix_delay(site, 0, SEC_RANGE, "seconds")
    _fix_last_action(site)


def fix_async_ms_sleep(site):
    _fix_suspending(site)
    _fix_need_ms(site)
    _fix_delay(site, 0, MS_RANGE, "milliseconds")
    _fix_last_action(site)


def fix_task_route(site):
    _fix_suspending(site)
    _fix_need_core(site)
    _fix_route(site, 0)
    if len(site.args) > 1:
        _fix_group(site, 1)


def fix_task_data(site):
    _fix_need_core(site)
    _fix_route(site, 0)
    if len(site.args) > 2:
        _fix_group(site, 1)


def fix_tkv_emit(site):
    a = site.args[0]
    if a.literal and _to_int(a.value) is None:
        site.arg_error(0, f"async_tkv_emit(): type {a.value!r} is not an integer")
    script = site.script
    core = script.core
    groups = _groups(script)
    gname = core.get("async_tkv_gname") or ("tkv" if "tkv" in groups else "")
    evcb = core.get("async_tkv_evcb") or ("core:tkv" if "core:tkv" in _events(script) else "")
    if not gname or not evcb or gname not in groups or evcb not in _events(script):
        site.error("async_tkv_emit(): tkv events are not configured: set the core parameters "
                   "async_tkv_gname (an existing async_workers_group) and async_tkv_evcb "
                   "(an event_route), or define a group named tkv and event_route[core:tkv]")


def _events(script):
    return getattr(script, "event_routes", None) or set()


# ---- run time -----------------------------------------------------------

def _delay(site, v, rng, unit):
    d = _to_int(v)
    if d is None or not rng[0] <= d <= rng[1]:
        _err(site, f"invalid {unit} value [{v}] (allowed {rng[0]}..{rng[1]})")
        return None
    return d


_ROUTES_OK = set()       # names that passed: the compiled script's routes never change


def _route_ok(ctx, site, name):
    if name in _ROUTES_OK:
        return True
    if name is None or name == "":
        _err(site, "empty route name")
        return False
    name = str(name)
    if len(name.encode()) > CBNAME_MAX:
        _err(site, f"callback name is too long [{name}]")
        return False
    if name != "0" and not ctx.proc.script.has_route(name):
        # "0" is the main request_route, as Kamailio's route_lookup (docs/kamailio-async.md §2.1)
        _err(site, f"route block not found [{name}]")
        return False
    if name != "0" and ctx.proc.script.route_is_empty(name):
        # Kamailio's route_lookup finds it but its action list is NULL:
        # refused before any transaction exists (docs/kamailio-async.md §2.1)
        _err(site, f"empty action lists in route block [{name}]")
        return False
    if len(_ROUTES_OK) < 1024:      # names come from variables too: keep it bounded
        _ROUTES_OK.add(name)
    return True


def _suspend(ctx, site, queue, kind, target, due=None):
    """Create/suspend T and queue its resume on `queue` (a TimerFeed when
    `due` is given, else a task group's Dispatcher). Returns modparam
    `return`, -1 on error (nothing left suspended), 0 for an absorbed
    retransmission.

    Kamailio's order (docs/kamailio-async.md §2.5): suspend, then queue the
    task. A queue that is full (or a send that fails) undoes the suspension
    (t_cancel_suspend) instead of leaving T suspended until its fr_timer as
    Kamailio does. Room is claimed and the entry queued under one lock round
    trip."""
    if ctx.msg.faked:
        # the core faked request (event routes, data/tkv tasks): GH #1727
        _err(site, "invalid usage for faked message")
        return -1
    if queue is None:
        _err(site, "async framework not initialized")
        return -1
    if ctx.t is None:
        # no transaction yet: create it suspended (one table write, tm/newtran.py)
        rc, tindex, tlabel = tm_api.t_newtran_suspend(ctx)
        if rc < 0:
            _err(site, "cannot create the transaction")
            return -1
        if rc == 2:
            return 0            # retransmission, absorbed by tm: end the script
    else:
        rc, tindex, tlabel = tm_api.t_suspend(ctx)
        if rc < 0:
            _err(site, f"failed to suspend the transaction ({rc})")
            return -1
        if rc == 1:
            return _st.ret      # CANCELled meanwhile: 487 sent, nothing to resume
    if due is None:
        queued = queue.push(codec.pack([kind, tindex, tlabel, target]))
    else:
        queued = queue.arm([[kind, due, tindex, tlabel, target]])
    if queued < 0:
        tm_api.t_cancel_suspend(tindex, tlabel)
        ctx.t.done = False      # the route still owns the request: it may reply
        _err(site, "queue is full - request not suspended")
        return -1
    tm_api.t_handed_over()
    return _st.ret


def w_async_route(ctx, site, route, seconds):
    due = time.monotonic()
    d = _delay(site, seconds, SEC_RANGE, "seconds")
    if d is None or not _route_ok(ctx, site, route):
        return -1
    return _suspend(ctx, site, _st.secs, K_ROUTE, str(route), due + d)


def w_async_ms_route(ctx, site, route, ms):
    due = time.monotonic()
    d = _delay(site, ms, MS_RANGE, "milliseconds")
    if d is None or not _route_ok(ctx, site, route):
        return -1
    return _suspend(ctx, site, _st.ms, K_ROUTE, str(route), due + d / 1000.0)


def _sleep(ctx, site, value, rng, unit, feed, scale):
    """async_sleep / async_ms_sleep: resume with the rest of the block (docs/kamailio-async.md §2.3)."""
    due = time.monotonic()
    d = _delay(site, value, rng, unit)
    if d is None:
        return -1
    if site.continuation is None:
        _err(site, "cannot be executed as last action in a route block")
        return -1
    return _suspend(ctx, site, feed, K_CONT, site.continuation, due + d * scale)


def w_async_sleep(ctx, site, seconds):
    return _sleep(ctx, site, seconds, SEC_RANGE, "seconds", _st.secs, 1)


def w_async_ms_sleep(ctx, site, ms):
    return _sleep(ctx, site, ms, MS_RANGE, "milliseconds", _st.ms, 1 / 1000.0)


def _task_group(site, gname):
    fw = async_task.framework()
    grp = fw.group(gname) if fw is not None else None
    if grp is None:
        _err(site, f"async task group [{gname or 'default'}] not found")
    return grp


def w_async_task_route(ctx, site, route):
    return w_async_task_group_route(ctx, site, route, None)


def w_async_task_group_route(ctx, site, route, gname):
    if not _route_ok(ctx, site, route):
        return -1
    grp = _task_group(site, gname)
    if grp is None:
        return -1
    return _suspend(ctx, site, grp.disp, K_ROUTE, str(route))


def w_async_task_data(ctx, site, route, data):
    return w_async_task_group_data(ctx, site, route, None, data)


def w_async_task_group_data(ctx, site, route, gname, data):
    if not _route_ok(ctx, site, route):
        return -1
    grp = _task_group(site, gname)
    if grp is None:
        return -1
    frame = codec.pack([K_DATA, str(route), "" if data is None else str(data)])
    if grp.disp.push(frame) < 0:
        _err(site, f"async task group [{grp.name}]: {grp.disp.why_refused(frame)}")
        return -1
    return 1                    # data functions return 1/-1, not `return` (docs/kamailio-async.md §2.6)


def w_async_tkv_emit(ctx, site, ttype, key, value):
    t = _to_int(ttype)
    if t is None:
        _err(site, f"invalid type value [{ttype}]")
        return -1
    if async_task.tkv_emit(t, "" if key is None else str(key), value) < 0:
        _err(site, "failed to emit the tkv event")
        return -1
    return 1


# ---- resumes (timer processes and task workers) --------------------------

def _resume(proc, tindex, tlabel, kind, target):
    script = proc.script
    if kind == K_CONT:
        runner = partial(_run_cont, script, target)
    else:
        runner = partial(_run_route, script, target)
    rc = tm_api.t_continue(proc, tindex, tlabel, runner)
    return rc == 0 or rc is None


def _run_route(script, name, ctx):
    return script.run_route(name, ctx)


def _run_cont(script, cid, ctx):
    return script.run_continuation(cid, ctx)


def _task_resume(proc, item):
    kind, tindex, tlabel, target = item[:4]
    if len(item) > 4:
        # handed over early by the ms timer (workers/timer.py): never resume before due
        wait = float(item[4]) - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, MS_LEAD * 2))
    return _resume(proc, tindex, tlabel, kind, target)


def _task_data(proc, item):
    _, route, data = item
    script = proc.script
    ctx = script.new_ctx(faked_request(), proc, REQUEST_ROUTE)
    ctx.async_data = data
    script.run_route(route, ctx)
    return True


def _abandon_resume(proc, item):
    """The worker resuming this transaction died (docs/kamailio-async.md §10.7):
    its route may have run in part, so tm ends it with a 500 now rather than
    run it twice or leave it to its fr_timer."""
    kind, tindex, tlabel, target = item[:4]
    what = f"route [{target}]" if kind == K_ROUTE else f"continuation {target}"
    if tm_api.t_abandon(proc, tindex, tlabel) == 1:
        log.err(MOD, f"async worker [{proc.async_gname}]: the resume of transaction "
                     f"{tindex}:{tlabel} ({kind} {what}) died with its worker: replied 500")
    return False


def _abandon_data(proc, item):
    return async_task.task_lost(proc, K_DATA, item[1])


async_task.register_handler(K_ROUTE, _task_resume, abandon=_abandon_resume)
async_task.register_handler(K_CONT, _task_resume, abandon=_abandon_resume)
async_task.register_handler(K_DATA, _task_data, abandon=_abandon_data)


def _sec_due(proc, entry):
    """ASYNC MOD TIMER: resume in this process, as Kamailio's timer does."""
    kind, _due, tindex, tlabel, target = entry
    return _resume(proc, tindex, tlabel, kind, target)


def _ms_due(proc, entry):
    """ASYNC MOD MS TIMER: hand a due ms item to the default task group
    (docs/kamailio-async.md §8.2); a full group means try again shortly."""
    kind, _due, tindex, tlabel, target = entry
    grp = async_task.framework().default
    return True if grp.disp.push(codec.pack([kind, tindex, tlabel, target]), nonblock=True) == 0 else RETRY


def _ms_early(proc, entry):
    """Offer an ms item to an idle default-group worker MS_LEAD s before it is
    due; the worker sleeps out the rest (_task_resume). False: none idle."""
    kind, due, tindex, tlabel, target = entry
    return async_task.framework().default.disp.offer(codec.pack([kind, tindex, tlabel, target, due]))


# ---- lifecycle ----------------------------------------------------------

def mod_init(script):
    global _st
    _st = _State(_mp(script))
    fw = async_task.init(script)        # the supervisor made it already; tests may not have
    if _st.mode == 0 and "tm" not in [m.name for m in getattr(script, "modules", [])]:
        raise RuntimeError("async: the tm module must be loaded before async "
                           "(or set modparam(\"async\", \"mode\", 1))")
    if _st.workers > 0:
        _st.secs = TimerFeed("ast", _st.workers, SEC_QUEUE, rundir=fw.rundir)
        if _st.ms_timer > 0:
            _st.ms = TimerFeed("ams", 1, MS_QUEUE, rundir=fw.rundir)
    if _st.ms_timer <= 0:
        log.info(MOD, "ms timer disabled (ms_timer=0): async_ms_sleep()/async_ms_route() unavailable")


def child_init(proc, rank):
    """Connect this process's PUSH sockets now, not on the first request: the
    first resume would otherwise pay the ipc connect (a few ms). Any child
    may produce (receivers, and workers/timers running routes that suspend
    again or queue data tasks)."""
    for feed in (_st.secs, _st.ms):
        if feed is not None:
            feed.connect_all()
    fw = async_task.framework()
    if fw is not None:
        fw.connect_all()


def procs(script):
    """ASYNC MOD TIMER × workers (resumes run there) and, with ms_timer > 0,
    one ASYNC MOD MS TIMER (hands due items to the default task group)."""
    rows = []
    if _st.secs is not None:
        rows.append(ProcRow(ROLE_TIMER, "ASYNC MOD TIMER", PROC_TIMER, _st.workers,
                            TimerHandlers(_st.secs, {K_ROUTE: _sec_due, K_CONT: _sec_due})))
        if _st.ms is not None:
            early = (MS_LEAD, _ms_early)
            rows.append(ProcRow(ROLE_TIMER, "ASYNC MOD MS TIMER", PROC_TIMER, 1,
                                TimerHandlers(_st.ms, {K_ROUTE: _ms_due, K_CONT: _ms_due},
                                              {K_ROUTE: early, K_CONT: early})))
    return rows


def mod_destroy(script):
    """Account for every accepted item: accepted = run + skipped + pending."""
    counted = [(name, feed.stats()) for name, feed in (("seconds timer", _st.secs), ("ms timer", _st.ms))
               if feed is not None]
    fw = async_task.framework()
    if fw is not None:
        counted += [(f"task group [{g.name}]", g.disp.stats()) for g in fw.groups]
    for name, st in counted:
        # a queue that was full at some point is worth an operator's attention
        (log.notice if st["rejected"] else log.info)(MOD, f"{name}: " + _fmt(st))


def _timer_feeds():
    """async.stats: the timer feeds as mod_init made them, with their process titles."""
    return [("ASYNC MOD TIMER", _st.secs, _st.workers),
            ("ASYNC MOD MS TIMER", _st.ms if _st.secs is not None else None, 1)]


def _fmt(s):
    return ", ".join(f"{k}={v}" for k, v in s.items())


# ---- pseudo-variables ----------------------------------------------------

def parse_async(inner):
    # Kamailio's pv_parse_async_name switches on the length only: any 4-letter
    # name reads $async(data), any 5-letter one that is not "gname" too (docs/kamailio-async.md §2.8)
    if inner is None or len(inner) not in (4, 5):
        raise ValueError(f"unknown PV async name {inner}")
    return 1 if inner == "gname" else 0


def get_async(ctx, spec, index):
    if spec == 1:
        return ctx.proc.async_gname
    return ctx.async_data


def parse_atkv(inner):
    # same length-only quirk as $async (docs/kamailio-async.md §5): 3 key/val, 4 type, 5 gname
    if inner is None or len(inner) not in (3, 4, 5):
        raise ValueError(f"unknown PV atkv name {inner}")
    return {"key": 1, "val": 2, "gname": 3}.get(inner, 0)


def get_atkv(ctx, spec, index):
    tkv = ctx.tkv
    if tkv is None:
        return None
    return tkv[spec]


EXPORTS = ModuleExports(
    name=MOD,
    functions=[
        FuncExport("async_route", (P.ROUTE, P.INT), w_async_route, SUSPEND_FLAGS,
                   fix_async_route, suspends=True),
        FuncExport("async_ms_route", (P.ROUTE, P.INT), w_async_ms_route, SUSPEND_FLAGS,
                   fix_async_ms_route, suspends=True),
        FuncExport("async_sleep", (P.INT,), w_async_sleep, SUSPEND_FLAGS,
                   fix_async_sleep, suspends=True, continuation=True),
        FuncExport("async_ms_sleep", (P.INT,), w_async_ms_sleep, SUSPEND_FLAGS,
                   fix_async_ms_sleep, suspends=True, continuation=True),
        FuncExport("async_task_route", (P.ROUTE,), w_async_task_route, SUSPEND_FLAGS,
                   fix_task_route, suspends=True),
        FuncExport("async_task_group_route", (P.ROUTE, P.STR), w_async_task_group_route,
                   SUSPEND_FLAGS, fix_task_route, suspends=True),
        FuncExport("async_task_data", (P.ROUTE, P.STR), w_async_task_data, ANY_ROUTE,
                   fix_task_data),
        FuncExport("async_task_group_data", (P.ROUTE, P.STR, P.STR), w_async_task_group_data,
                   ANY_ROUTE, fix_task_data),
        FuncExport("async_tkv_emit", (P.INT, P.STR, P.STR), w_async_tkv_emit, ANY_ROUTE,
                   fix_tkv_emit),
    ],
    params=[
        ParamExport("workers", int, 1),
        ParamExport("ms_timer", int, 0),
        ParamExport("return", int, 0),
        ParamExport("mode", int, 0),
    ],
    pvs=[
        PvExport("async", get_async, None, parse_async, True),
        PvExport("atkv", get_atkv, None, parse_atkv, True),
    ],
    mod_init=mod_init,
    child_init=child_init,
    mod_destroy=mod_destroy,
    procs=procs,
    rpc=async_rpc.rpc_exports(_timer_feeds),
)

_st = _State()       # until mod_init: the export table's defaults
