"""The ASYNC module (script name "async"): the nine functions, modparams
`workers`, `ms_timer`, `return`, `mode`, and `$async(...)` / `$atkv(...)`.

Runs in: main (fixups, mod_init, procs), any process running a route (the
functions: udp receivers, resumed routes, task workers), `ASYNC MOD TIMER`
and `ASYNC MOD MS TIMER` (timer loops), `Async Task Worker - <group>`
(resumes of task/ms functions, data tasks).

Kamailio: src/modules/async/async_mod.c, async_sleep.c (spec B §2, §3, §8).
asyncd policy (spec A): invalid literals, unknown routes/groups, ms functions
without ms_timer or core workers, suspending functions in mode=1 and
async_sleep last in its block are startup errors; the same problems from
variables, or a full queue, return -1 with an error naming the cfg file:line
and leave no transaction suspended. Timers are accurate (workers/async_timer).

Suspend path (receiver): validate -> t_newtran if no T -> t_suspend -> queue
`[kind, (due,) tindex, tlabel, target]` (room check and send in one lock
round trip; a full queue undoes the suspension, so none is left behind) ->
return the `return` modparam (0 ends the script, B §2.0).
"""
import time
from functools import partial

from asyncd.core import async_task, log
from asyncd.core import runtime as rt
from asyncd.core.exports import (FuncExport, ModuleExports, P, ParamExport, PROC_TIMER,
                                 ProcSpec, PvExport)
from asyncd.core.route_types import ANY_ROUTE, FAILURE_ROUTE, REQUEST_ROUTE
from asyncd.ipc import codec
from asyncd.ipc.dispatch import TimerDispatcher

MOD = "async"
SEC_RANGE = (1, 100)           # spec A §1 (Kamailio's code: 1..99)
MS_RANGE = (1, 30000)          # spec A §1 (Kamailio's code: 1..29999)
MS_LEAD = 0.002               # the ms timer hands items to an idle worker this early (async_timer)
CBNAME_MAX = 62                # ASYNC_CBNAME_SIZE 64 - 1, names must be shorter (B §2.0)
SEC_QUEUE = 100000             # pending seconds items per ASYNC MOD TIMER
MS_QUEUE = 10000               # Kamailio's ms list limit (B §2.2)
SUSPEND_FLAGS = REQUEST_ROUTE | FAILURE_ROUTE

K_ROUTE = "ar"                 # resume with route[target]
K_CONT = "ac"                  # resume with continuation id target (async_sleep)
K_DATA = "ad"                  # async_task_data: route target, data on a faked request


class _State:
    """Built in main by mod_init, inherited by every child."""
    script = None
    ret = 0
    workers = 1
    ms_timer = 0
    mode = 0
    secs = None                # Dispatcher over the ASYNC MOD TIMER processes
    ms = None                  # Dispatcher over the ASYNC MOD MS TIMER


_st = _State()
_tm_api = None


def _tm():
    global _tm_api
    if _tm_api is None:
        try:
            from asyncd.modules import tm
            _tm_api = tm.api
        except (ImportError, AttributeError):
            from asyncd.modules import tm_api
            _tm_api = tm_api
    return _tm_api


def _mp(script):
    mp = (getattr(script, "modparams", None) or {}).get(MOD, {})
    return {p.name: mp.get(p.name, p.default) for p in EXPORTS.params}


def _groups(script):
    """{name: workers} of the core groups with workers, without building the
    framework (fixups run before event routes matter)."""
    out = {}
    for g in (script.core.get("async_groups") or []):
        name, workers = async_task._gfield(g, "name", 0), async_task._gfield(g, "workers", 1)
        if workers and int(workers) > 0:
            out.setdefault(name, int(workers))
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


# ---- fixups (startup checks, spec A §1-2) -------------------------------

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
    if len(name) > CBNAME_MAX:
        site.arg_error(i, f"{site.func.name}(): route name [{name}] too long "
                          f"(max {CBNAME_MAX} characters)")
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


def _route_ok(ctx, site, name):
    if name is None or name == "":
        _err(site, "empty route name")
        return False
    name = str(name)
    if len(name) > CBNAME_MAX:
        _err(site, f"callback name is too long [{name}]")
        return False
    if name != "0" and not ctx.proc.script.has_route(name):
        # "0" is the main request_route, as Kamailio's route_lookup (B §2.1)
        _err(site, f"route block not found [{name}]")
        return False
    if name != "0" and ctx.proc.script.route_is_empty(name):
        # Kamailio's route_lookup finds it but its action list is NULL:
        # refused before any transaction exists (B §2.1)
        _err(site, f"empty action lists in route block [{name}]")
        return False
    return True


_FAKED_BUF = None


def _is_faked(msg):
    """The core faked request (event routes, data/tkv tasks): B §2.0, GH #1727."""
    global _FAKED_BUF
    if getattr(msg, "faked", False):
        return True
    if _FAKED_BUF is None:
        try:
            from asyncd.sip import msg as sipmsg
            _FAKED_BUF = sipmsg._FAKED
        except (ImportError, AttributeError):
            _FAKED_BUF = b""
    buf = getattr(msg, "buf", None)
    return buf is _FAKED_BUF or buf == _FAKED_BUF


def _suspend(ctx, site, disp, kind, target, due=None):
    """Create/suspend T and queue its resume. Returns modparam `return`,
    -1 on error (nothing left suspended), 0 for an absorbed retransmission.

    Kamailio's order (B §2.5): suspend, then queue the task. A queue that is
    full (or a send that fails) undoes the suspension (t_cancel_suspend, A §2)
    instead of leaving T suspended until its fr_timer as Kamailio does. Room
    is claimed and the frame queued under one dispatcher lock round trip."""
    if _is_faked(ctx.msg):
        _err(site, "invalid usage for faked message")
        return -1
    if disp is None:
        _err(site, "async framework not initialized")
        return -1
    tm = _tm()
    if ctx.t is None:
        # no transaction yet: create it suspended (one table write, tm_lookup.t_newtran)
        rc, tindex, tlabel = tm.t_newtran_suspend(ctx)
        if rc < 0:
            _err(site, "cannot create the transaction")
            return -1
        if rc == 2:
            return 0            # retransmission, absorbed by tm: end the script
    else:
        rc, tindex, tlabel = tm.t_suspend(ctx)
        if rc < 0:
            _err(site, f"failed to suspend the transaction ({rc})")
            return -1
        if rc == 1:
            return _st.ret      # CANCELled meanwhile: 487 sent, nothing to resume
    item = [kind, tindex, tlabel, target] if due is None else [kind, due, tindex, tlabel, target]
    frame = codec.pack(item)
    # timers: the due time lets the producer skip the wake-up (TimerDispatcher)
    if (disp.push(frame) if due is None else disp.push(frame, due=due)) < 0:
        tm.t_cancel_suspend(tindex, tlabel)
        ctx.t.done = False      # the route still owns the request: it may reply
        _err(site, "queue is full - request not suspended")
        return -1
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


def _sleep(ctx, site, value, rng, unit, disp, scale):
    """async_sleep / async_ms_sleep: resume with the rest of the block (B §2.3)."""
    due = time.monotonic()
    d = _delay(site, value, rng, unit)
    if d is None:
        return -1
    if site.continuation is None:
        _err(site, "cannot be executed as last action in a route block")
        return -1
    return _suspend(ctx, site, disp, K_CONT, site.continuation, due + d * scale)


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
        _err(site, f"async task group [{grp.name}] queue is full")
        return -1
    return 1                    # data functions return 1/-1, not `return` (B §2.6)


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
    rc = _tm().t_continue(proc, tindex, tlabel, runner)
    return rc == 0 or rc is None


def _run_route(script, name, ctx):
    return script.run_route(name, ctx)


def _run_cont(script, cid, ctx):
    return script.run_continuation(cid, ctx)


def _task_resume(proc, item):
    kind, tindex, tlabel, target = item[:4]
    if len(item) > 4:
        # handed over early by the ms timer (workers/async_timer.py): never resume before due
        wait = float(item[4]) - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, MS_LEAD * 2))
    return _resume(proc, tindex, tlabel, kind, target)


def _task_data(proc, item):
    _, route, data = item
    script = proc.script
    ctx = script.new_ctx(async_task.faked_msg(), proc, REQUEST_ROUTE)
    ctx.async_data = data
    script.run_route(route, ctx)
    return True


async_task.register_handler(K_ROUTE, _task_resume)
async_task.register_handler(K_CONT, _task_resume)
async_task.register_handler(K_DATA, _task_data)


def _sec_due(proc, item):
    kind, _due, tindex, tlabel, target = item
    return _resume(proc, tindex, tlabel, kind, target)


def _ms_due(proc, item):
    """Hand a due ms item to the default task group (B §8.2); None = full, retry."""
    kind, _due, tindex, tlabel, target = item
    grp = async_task.framework().default
    return True if grp.disp.push(codec.pack([kind, tindex, tlabel, target]), nonblock=True) == 0 else None


def _ms_early(proc, item):
    """Offer an ms item to an idle default-group worker MS_LEAD s before it is
    due; the worker sleeps out the rest (workers/async_timer.py). False: none idle."""
    kind, due, tindex, tlabel, target = item
    return async_task.framework().default.disp.offer(codec.pack([kind, tindex, tlabel, target, due]))


def _run_sec_timer(idx, proc):
    from workers import async_timer
    proc.role = "async_timer"
    async_timer.run(proc, _st.secs, idx, _sec_due)


def _run_ms_timer(proc):
    from workers import async_timer
    proc.role = "async_timer"
    async_timer.run(proc, _st.ms, 0, _ms_due, MS_LEAD, _ms_early)


# ---- lifecycle ----------------------------------------------------------

def mod_init(script):
    mp = _mp(script)
    _st.script = script
    _st.ret, _st.mode = mp["return"], mp["mode"]
    _st.workers, _st.ms_timer = mp["workers"], mp["ms_timer"]
    fw = async_task.init(script)
    if _st.mode == 0 and "tm" not in [m.name for m in getattr(script, "modules", [])]:
        raise RuntimeError("async: the tm module must be loaded before async "
                           "(or set modparam(\"async\", \"mode\", 1))")
    _st.secs = _st.ms = None
    if _st.workers > 0:
        _st.secs = TimerDispatcher("ast", _st.workers, SEC_QUEUE, rundir=fw.rundir)
        if _st.ms_timer > 0:
            _st.ms = TimerDispatcher("ams", 1, MS_QUEUE, rundir=fw.rundir)
    if _st.mode == 0:
        _tm()                   # import before fork, not on the first request
    async_task.warm_imports()
    if _st.ms_timer <= 0:
        rt.info(MOD, "ms timer disabled (ms_timer=0): async_ms_sleep()/async_ms_route() unavailable")


def child_init(proc, rank):
    """Connect this process's PUSH sockets now, not on the first request: the
    first resume would otherwise pay the ipc connect (a few ms, spec A §3).
    Any child may produce (receivers, and workers/timers running routes that
    suspend again or queue data tasks)."""
    disps = [d for d in (_st.secs, _st.ms) if d is not None]
    fw = async_task.framework()
    if fw is not None:
        disps += [g.disp for g in fw.groups]
    for d in disps:
        d.connect_all()


def procs(script):
    out = []
    if _st.secs is not None:
        out += [ProcSpec("ASYNC MOD TIMER", PROC_TIMER, partial(_run_sec_timer, i), 1)
                for i in range(_st.workers)]
        if _st.ms is not None:
            out.append(ProcSpec("ASYNC MOD MS TIMER", PROC_TIMER, _run_ms_timer, 1))
    return out


def mod_destroy(script):
    """Account for every accepted item (spec A §7): accepted = run + skipped + pending."""
    for name, disp in (("seconds timer", _st.secs), ("ms timer", _st.ms)):
        if disp is not None:
            rt.info(MOD, f"{name}: " + _fmt(disp.stats()))
    fw = async_task.framework()
    if fw is not None:
        for g in fw.groups:
            rt.info(MOD, f"task group [{g.name}]: " + _fmt(g.disp.stats()))
        fw.cleanup()


def _fmt(s):
    return ", ".join(f"{k}={v}" for k, v in s.items())


# ---- pseudo-variables ----------------------------------------------------

def parse_async(inner):
    # Kamailio's pv_parse_async_name switches on the length only: any 4-letter
    # name reads $async(data), any 5-letter one that is not "gname" too (B §2.8)
    if inner is None or len(inner) not in (4, 5):
        raise ValueError(f"unknown PV async name {inner}")
    return 1 if inner == "gname" else 0


def get_async(ctx, spec, index):
    if spec == 1:
        return ctx.proc.async_gname
    return ctx.async_data


def parse_atkv(inner):
    # same length-only quirk as $async (B §5): 3 key/val, 4 type, 5 gname
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
)
