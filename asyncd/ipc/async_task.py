"""Core async task framework: task groups, their worker processes' rows, the
push API, and type-key-value (tkv) events.

Runs in: main (init, before fork), every producer (task_push, tkv_emit), and
`Async Task Worker - <group>` processes (the handlers, called by
workers/task_worker.py).

Mirrors Kamailio's src/core/async_task.c (docs/kamailio-async.md §4, §5):
groups come from the core parameters `async_workers`, `async_workers_group`,
`async_usleep`, `async_nonblock`, which the cfg compiler turns into
`script.core["async_groups"]` (asyncd.core.params.AsyncGroup, Kamailio list
order, head is "default"). Differences (docs/kamailio-async.md §10.2,
§10.7): an unknown group or a full queue is a -1, never a silent success;
blocking groups wait a bounded time; a task goes to an idle worker of its
group (dispatch.py).

A task is a msgpack list whose first element names its handler; modules
register handlers with `register_handler(kind, fn, abandon)` at import time,
so every forked worker has them. fn(proc, item) returns False when it
skipped the item (its transaction ended meanwhile), anything else when it
ran it. abandon(proc, item) is called instead, in the replacement of a worker
that died while running the item (dispatch.py recover()): running it again
could do its work twice, so the kind decides how to end it (the async
module's resumes give the transaction its final reply); without one the
loss is logged. An abandoned item counts as skipped.
"""
from asyncd.core import log
from asyncd.core.procs import PROC_RPC, ROLE_TASK_WORKER, ProcRow
from asyncd.core.route_types import REQUEST_ROUTE
from asyncd.ipc import codec
from asyncd.ipc.dispatch import Dispatcher
from asyncd.sip import faked_request

QUEUE_LEN = 1024            # tasks waiting for a busy group before it is "full"
BLOCK_WAIT = 1.0            # blocking groups: longest a producer waits for room (s)
TKV_VALUE_MAX = 1024        # Kamailio's formatting buffer (docs/kamailio-async.md §5)

K_TKV = "tkv"
HANDLERS = {}
ABANDON = {}


def register_handler(kind, fn, abandon=None):
    HANDLERS[kind] = fn
    if abandon is not None:
        ABANDON[kind] = abandon


def describe(item):
    """A short text naming a task for the log: its kind and first fields."""
    text = " ".join(str(x) for x in item[1:4])
    return f"{item[0]} {text[:120]}"


def task_lost(proc, kind, route):
    """The default abandon: the task is gone, say which (docs/kamailio-async.md §10.7)."""
    log.err("core", f"async worker [{proc.async_gname}]: task lost with its dead worker: "
                    f"{kind} route [{route}]")
    return False


def abandon(proc, frame):
    """Run the abandon handler of a task its dead worker had started. Never raises."""
    try:
        item = codec.unpack(frame)
        fn = ABANDON.get(item[0])
        if fn is None:
            return task_lost(proc, item[0], "?")
        fn(proc, item)
    except Exception as e:
        log.err("core", f"async worker [{proc.async_gname}]: abandoning a task failed: {e!r}")


class Group:
    """One task group: its name, workers, and the dispatcher that feeds them.
    The row of its worker processes hands this object to each of them."""
    __slots__ = ("name", "workers", "nonblock", "usleep", "disp", "index", "handlers")

    def __init__(self, index, grp, rundir_fn):
        self.index = index
        self.name = grp.name
        self.workers = int(grp.workers)
        self.nonblock = bool(grp.nonblock)
        self.usleep = int(grp.usleep or 0)
        self.handlers = HANDLERS
        self.disp = Dispatcher(f"atg{index}", self.workers, QUEUE_LEN, self.nonblock,
                               BLOCK_WAIT, rundir=rundir_fn)


class Framework:
    """Per-script framework state, built in main before fork and inherited."""

    def __init__(self, script):
        self.script = script
        self.groups = []
        self.by_name = {}
        for g in script.core.get("async_groups") or ():
            if int(g.workers or 0) <= 0:
                continue
            grp = Group(len(self.groups), g, self.rundir)
            self.groups.append(grp)
            self.by_name.setdefault(grp.name, grp)   # duplicates: first in list order wins
        self.tkv_group, self.tkv_route = self._resolve_tkv()

    def rundir(self):
        """The supervisor's run directory, set after this object is made."""
        return getattr(self.script, "rundir", None)

    @property
    def default(self):
        return self.groups[0] if self.groups else None

    def group(self, name):
        """Group by name; None or "" means the first ("default") group."""
        if not name:
            return self.default
        return self.by_name.get(name)

    def _resolve_tkv(self):
        core = self.script.core
        gname = core.get("async_tkv_gname") or ""
        evcb = core.get("async_tkv_evcb") or ""
        events = getattr(self.script, "event_routes", set()) or set()
        defaulted = []
        # docs/kamailio-async.md §5: the admin guide's example sets neither
        # parameter; fall back to a group named "tkv" and event_route[core:tkv]
        if not gname and "tkv" in self.by_name:
            gname = "tkv"
            defaulted.append("async_tkv_gname=tkv")
        if not evcb and "core:tkv" in events:
            evcb = "core:tkv"
            defaulted.append("async_tkv_evcb=core:tkv")
        if not gname or not evcb:
            return None, None
        grp = self.by_name.get(gname)
        if grp is None:
            log.warn("core", f"tkv: async_tkv_gname group [{gname}] not found - tkv disabled")
            return None, None
        if evcb not in events:
            log.warn("core", f"tkv: event_route[{evcb}] not found - tkv disabled")
            return None, None
        if defaulted:
            log.info("core", "tkv: using " + " and ".join(defaulted) + " (core parameters not set)")
        return grp, evcb

    def proc_rows(self):
        """`Async Task Worker - <group>` × workers, rank PROC_RPC, groups in
        list order (Kamailio forks them from main, after the receivers)."""
        return [ProcRow(ROLE_TASK_WORKER, f"Async Task Worker - {g.name}", PROC_RPC, g.workers, g)
                for g in self.groups]

    def connect_all(self):
        """Any child may push tasks: open its PUSH sockets after fork, not on
        the first task (a few ms for the first ipc connect)."""
        for g in self.groups:
            g.disp.connect_all()

    def stats(self):
        return {g.name: g.disp.stats() for g in self.groups}

    def group_stats(self):
        """One dict per group, in list order (async.stats, the metrics
        exporter): name, workers, busy (workers holding a task), queued
        (tasks in the backlog), accepted, rejected, run, skipped, pending
        (accepted == run + skipped + pending)."""
        out = []
        for g in self.groups:
            d = g.disp
            row = {"name": g.name, "workers": g.workers, "busy": d.busy(), "queued": d.queued()}
            row.update(d.stats())
            out.append(row)
        return out

    def wait_histogram(self, gname):
        """The queue wait of group `gname` (push -> a worker starts the task):
        (bounds_seconds, cumulative_counts, sum_seconds, count), Prometheus's
        histogram shape (cumulative_counts ends with +Inf); None for an
        unknown group."""
        g = self.by_name.get(gname)
        return None if g is None else g.disp.wait_histogram()


_fw = None


def init(script):
    """Build (once per script) the framework. Main process, before fork."""
    global _fw
    if _fw is None or _fw.script is not script:
        _fw = Framework(script)
    return _fw


def framework():
    return _fw


def task_push(group, payload, nonblock=None):
    """Queue a task (a msgpack-able list, payload[0] a registered handler kind)
    to a group (None/"" = default). 0 on success, -1 on unknown group, no
    workers or a full queue (never a silent success)."""
    fw = _fw
    grp = fw.group(group) if fw is not None else None
    if grp is None:
        log.err("core", f"async task group [{group or 'default'}] not found or has no workers")
        return -1
    frame = codec.pack(payload)
    if grp.disp.push(frame, nonblock) < 0:
        log.err("core", f"async task group [{grp.name}]: {grp.disp.why_refused(frame)}")
        return -1
    return 0


# ---- tkv (docs/kamailio-async.md §5) ---------------------------------------

def tkv_emit(ttype, key, value):
    """Emit a type-key-value event to the tkv group. 0 ok, -1 otherwise."""
    fw = _fw
    if fw is None or fw.tkv_group is None:
        log.dbg("core", "tkv: not configured")
        return -1
    value = "" if value is None else str(value)
    n = len(value.encode())
    if n > TKV_VALUE_MAX:
        log.err("core", f"tkv: value too long ({n} > {TKV_VALUE_MAX})")
        return -1
    if n == TKV_VALUE_MAX:
        # Kamailio's snprintf buffer keeps 1023 chars and counts the NUL
        value = value.encode()[:TKV_VALUE_MAX - 1].decode(errors="ignore") + "\0"
    frame = codec.pack([K_TKV, int(ttype), str(key), value, fw.tkv_route])
    if fw.tkv_group.disp.push(frame) < 0:
        log.err("core", f"tkv: group [{fw.tkv_group.name}] queue is full")
        return -1
    return 0


def _exec_tkv(proc, item):
    _, ttype, key, value, evname = item
    script = proc.script
    ctx = script.new_ctx(faked_request(), proc, REQUEST_ROUTE)
    ctx.tkv = (ttype, key, value, proc.async_gname)
    script.run_event_route(evname, ctx)
    return True


def _lost_tkv(proc, item):
    return task_lost(proc, K_TKV, item[4])


register_handler(K_TKV, _exec_tkv, abandon=_lost_tkv)
