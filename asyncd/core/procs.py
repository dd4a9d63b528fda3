"""The process model as data: the rows the core and the modules declare, and
the supervisor forks from.

Runs in: main process (rows are declared after mod_init and read by the
supervisor before the forks), every child (the loop of its role reads its
own row's handlers).

Kamailio asks a module for its processes twice: `register_procs()` counts
them in mod_init, and `child_init(PROC_MAIN)` forks them with
`fork_process(rank, desc, ...)` running a loop the module wrote itself
(src/core/pt.c, src/core/sr_module.c). asyncd keeps the counting and the
ranks but splits the rest: a row names the *role* whose loop runs the
process (one file per role in workers/: receiver, task_worker, timer), its
Kamailio title, how many, its rank, and the *handlers* that loop calls. A
module writes handlers, never a loop; the supervisor knows a child's role
from its row, never from its title. A respawned process is forked again
from the same row (docs/architecture.md, "Processes").

Ranks are Kamailio's (src/core/pt.h): SIP workers get consecutive positive
ranks, the others one of the negative constants below.
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

PROC_MAIN = 0
PROC_TIMER = -1
PROC_RPC = -2
PROC_TCP_MAIN = -4
PROC_NOCHLDINIT = -128

# the roles: each is one loop in workers/<role>.py
ROLE_RECEIVER = "receiver"          # handlers: the listen socket's index
ROLE_TASK_WORKER = "task_worker"    # handlers: the asyncd.ipc.async_task group
ROLE_TIMER = "timer"                # handlers: TimerHandlers
ROLE_TCP_MAIN = "tcp_main"          # handlers: the asyncd.ipc.tcp TcpPlan
ROLE_TCP_RECEIVER = "tcp_receiver"  # handlers: the TcpPlan (instance i reads channel i)
ROLE_RPC = "rpc"                    # handlers: RpcHandlers (ctl handler, JSONRPCS FIFO/DATAGRAM)

# a timer handler's answers (anything else, None included, counts as RAN)
RAN, SKIPPED, RETRY = True, False, "retry"


@dataclass(frozen=True)
class ProcRow:
    """`count` processes of one role. `title` may hold `{i}`, the instance
    number (0..count-1); a positive `rank` is the first instance's, the next
    ones count up from it (Kamailio's receivers), a negative one is shared."""
    role: str
    title: str
    rank: int
    count: int = 1
    handlers: Any = None

    def title_of(self, i):
        return self.title.replace("{i}", str(i))

    def rank_of(self, i):
        return self.rank + i if self.rank > 0 else self.rank


@dataclass(frozen=True)
class Periodic:
    """A job a timer process runs every `interval` s; `aligned`: on whole
    seconds of the monotonic clock (htable expiry ticks as Kamailio's)."""
    interval: float
    fn: Callable            # fn(proc)
    aligned: bool = False


@dataclass(frozen=True)
class TimerHandlers:
    """What a ROLE_TIMER process (workers/timer.py) calls.

    feed: the asyncd.ipc.timers.TimerFeed its entries arrive on (instance i
    of the row is consumer i), or None for a process with periodic jobs only.
    An entry is a list `[kind, due, ...]`, `due` on the monotonic clock.
    on_due[kind](proc, entry) -> RAN / SKIPPED (counted) or RETRY (the loop
    tries again 1 ms later: delay, never drop).
    early[kind] = (lead, fn): fn(proc, entry) is offered the entry `lead` s
    before it is due; True means it took it, False means fire at due as usual.
    every: Periodic jobs.
    rings: asyncd.ipc.delay_ring.DelayRing objects this process drains (entries
    of one kind with one delay, due in ring order), run by on_due[ring.kind].
    """
    feed: Optional[Any] = None
    on_due: dict = field(default_factory=dict)
    early: dict = field(default_factory=dict)
    every: tuple = ()
    rings: tuple = ()


@dataclass(frozen=True)
class RpcHandlers:
    """What a ROLE_RPC process (workers/rpc_server.py) serves.

    open(proc, instance) -> list of endpoints, called once in the child
    after child_init. An endpoint is any object with `fileno()` and
    `on_readable(proc)`; on_readable returns a list of new endpoints to
    watch as well (a connection a listener accepted) or None, and an
    endpoint whose `closed` attribute turns true is dropped from the loop
    (the endpoint closes its own socket). The listening sockets themselves
    are made in mod_init, so a bad address is a startup error and a
    respawned process serves the same sockets.

    tick(proc), optional: called after every poll round (at least every
    0.2 s), for time-outs no socket event would report (Kamailio's
    io_listen_loop closes idle stream connections on its poll time-out,
    src/modules/ctl/io_listener.c).
    """
    open: Callable
    tick: Optional[Callable] = None
