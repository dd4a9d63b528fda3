"""Per-process state and per-message run context.

Runs in: every process.
"""
from collections import defaultdict


class ProcState:
    """One per process: who we are and what we own privately."""

    def __init__(self, script=None, rank=0, desc="main", role="main"):
        self.script = script
        self.rank = rank
        self.desc = desc
        self.role = role          # "main", or the role of its row (asyncd.core.procs.ROLE_*)
        self.pid = 0
        self.vars = {}            # $var(...) values, private to the process
        self.sockets = []         # bound UDP sockets inherited from main, index = socket id
        self.async_gname = None   # $async(gname) in core async workers
        self.stopping = False
        # the receive queue is late (workers/receiver.py Backlog): tm answers new
        # requests 503 before the script runs (docs/kamailio-tm.md §7)
        self.overloaded = False
        self.extra = {}           # per-module private state, keyed by module name
        # this process's statistics row (asyncd.core.counters.Stats.row): cnt[handle] += n;
        # a private dict until the supervisor binds the shm row after fork
        self.cnt = defaultdict(int)

    def send(self, data, addr, sock_index=0):
        """Send a datagram from one of our UDP sockets. Never raises."""
        try:
            self.sockets[sock_index].sendto(data, addr)
            return True
        except (OSError, IndexError):
            return False


class RunCtx:
    """Per-message execution state, handed to every compiled route and function."""

    __slots__ = ("msg", "proc", "route_type", "t", "avps", "xavps", "retcode",
                 "async_data", "tkv", "flags", "replied", "relayed", "dropped",
                 "site", "extra")

    def __init__(self, msg, proc, route_type=1):
        self.msg = msg              # asyncd.sip SipMsg (or a faked request)
        self.proc = proc            # ProcState
        self.route_type = route_type
        self.t = None               # tm: current transaction handle, or None
        self.avps = None            # shm.avp AvpList, created on first use
        self.xavps = None           # shm.avp XavpList, created on first use
        self.retcode = 1            # $rc / $retcode
        self.async_data = None      # $async(data) while running an async data task
        self.tkv = None             # (type, key, value, gname) while running a tkv event
        self.flags = 0              # message flags (setflag)
        self.replied = False        # a final reply was sent for this request (sl or tm)
        self.relayed = False
        self.dropped = False
        self.site = None            # CallSite of the function being run (for error logs)
        self.extra = None           # dict for modules, created on demand
