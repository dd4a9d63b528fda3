"""ZeroMQ plumbing shared by every process that talks to another one.

Runs in: udp receivers, async task workers, ASYNC MOD TIMER / MS TIMER, tm timer
(any child); never in the main process before fork.

One `zmq.Context` per process, made lazily on first use and remembered with
the pid that made it: a context must never cross a fork (libzmq's I/O thread
does not survive it), so a child that inherited a parent's ProcState simply
gets a fresh one. Endpoints are `ipc://` paths under the run directory the
supervisor creates (contracts §7); frames are msgpack (asyncd.ipc.codec),
never pickle.
"""
import os

import zmq

_ctx = None
_ctx_pid = 0


def context(proc=None):
    """This process's zmq.Context, created after fork on first use."""
    global _ctx, _ctx_pid
    pid = os.getpid()
    if proc is not None:
        c = getattr(proc, "zmq_ctx", None)
        if c is not None and getattr(proc, "_zmq_pid", pid) == pid:
            return c
    if _ctx is None or _ctx_pid != pid:
        # a context inherited through fork is unusable; drop the reference only
        _ctx = zmq.Context(io_threads=1)
        _ctx_pid = pid
    if proc is not None:
        try:
            proc.zmq_ctx = _ctx
            proc._zmq_pid = pid
        except AttributeError:
            pass
    return _ctx


def endpoint(rundir, name):
    """The ipc:// address of a named endpoint under the run directory.

    Unix socket paths are limited to ~107 bytes; callers keep `name` short and
    the supervisor keeps the run dir short (a tmp dir)."""
    path = os.path.join(rundir or "/tmp", name)
    return "ipc://" + path


def endpoint_path(rundir, name):
    return os.path.join(rundir or "/tmp", name)


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
