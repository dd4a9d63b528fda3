"""How processes hand each other work: ZeroMQ plumbing shared by the task
dispatcher (dispatch.py), the timer feeds (timers.py, mailbox.py) and the
core async task framework (async_task.py).

Runs in: every child that sends to or receives from another process; never
in the main process before fork (only the objects made there, which open
no socket until a child uses them).

One `zmq.Context` per process, made on first use and remembered with the
pid that made it: a context must never cross a fork (libzmq's I/O thread
does not survive it), so a child simply gets a fresh one. Endpoints are
`ipc://` paths under the run directory the supervisor creates; frames are
msgpack (codec.py), never pickle.
"""
import os
import tempfile

import zmq

_ctx = None
_ctx_pid = 0


def context():
    """This process's zmq.Context, created after fork on first use."""
    global _ctx, _ctx_pid
    pid = os.getpid()
    if _ctx is None or _ctx_pid != pid:
        # a context inherited through fork is unusable; drop the reference only
        _ctx = zmq.Context(io_threads=1)
        _ctx_pid = pid
    return _ctx


def endpoint_path(rundir, name):
    """Unix socket paths are limited to ~107 bytes: callers keep `name`
    short and the supervisor keeps the run dir short (a tmp dir)."""
    return os.path.join(rundir, name)


def endpoint(rundir, name):
    return "ipc://" + endpoint_path(rundir, name)


def bind_pull(rundir, name):
    """The PULL socket of a consumer (call in the consumer process)."""
    path = endpoint_path(rundir, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.unlink(path)         # stale socket file of an earlier run
    except OSError:
        pass
    s = context().socket(zmq.PULL)
    s.setsockopt(zmq.RCVHWM, 0)
    s.setsockopt(zmq.LINGER, 0)
    s.bind("ipc://" + path)
    return s


class Pushers:
    """This process's PUSH sockets to the consumers of one feed, `prefix-<i>`
    under the run directory; made on first use, never reused across a fork.
    `rundir` is a path or a callable returning it (known only after setup);
    made in main, before fork."""

    def __init__(self, prefix, rundir):
        self.prefix = prefix
        self.rundir = rundir
        self._socks = {}
        self._pid = 0
        # no run directory (a test or bench rig without the supervisor): one per
        # main process, named as the supervisor's so its stale-run cleanup removes it
        self._spare = os.path.join(tempfile.gettempdir(), f"asyncd-run-{os.getpid()}-rig")

    def dir(self):
        d = self.rundir() if callable(self.rundir) else self.rundir
        return d or self._spare

    def name(self, i):
        return f"{self.prefix}-{i}"

    def get(self, i):
        pid = os.getpid()
        if self._pid != pid:
            self._socks = {}        # sockets never cross a fork
            self._pid = pid
        s = self._socks.get(i)
        if s is None:
            s = context().socket(zmq.PUSH)
            s.setsockopt(zmq.SNDHWM, 0)        # bounded by the feed's own counters
            s.setsockopt(zmq.LINGER, 1000)
            s.setsockopt(zmq.RECONNECT_IVL, 10)
            s.connect(endpoint(self.dir(), self.name(i)))
            self._socks[i] = s
        return s

    def bind(self, i):
        return bind_pull(self.dir(), self.name(i))


def close_all():
    """Close this process's context (at process exit), dropping unsent frames
    after a short linger."""
    global _ctx
    if _ctx is not None and _ctx_pid == os.getpid():
        try:
            _ctx.destroy(linger=200)
        except zmq.ZMQError:
            pass
    _ctx = None
