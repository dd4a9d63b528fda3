"""Fork helpers for the shm tests (children always leave through os._exit,
so no pytest machinery runs twice).

Runs in: the pytest process and the processes it forks.
"""
import os
import select
import signal
import sys
import time
import traceback

import shm.locks


def fork(fn, *args):
    """Run fn(*args) in a forked child; exit code 0 on success, 1 on exception."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn(*args)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def kill_holder(take):
    """Fork a child that runs take() (it grabs a lock), wait until it did,
    kill -9 it and reap it: the lock is left held by a dead pid."""
    r, w = os.pipe()

    def holder():
        take()
        os.write(w, b"x")
        time.sleep(60)

    pid = fork(holder)
    try:
        assert os.read(r, 1) == b"x"
    finally:
        os.close(r)
        os.close(w)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return pid


def wait_all(pids, timeout):
    """Wait for every pid; kill leftovers after `timeout`. -> {pid: exit status}."""
    deadline = time.monotonic() + timeout
    left = set(pids)
    out = {}
    while left and time.monotonic() < deadline:
        for pid in list(left):
            r, status = os.waitpid(pid, os.WNOHANG)
            if r:
                out[pid] = os.waitstatus_to_exitcode(status)
                left.discard(pid)
        time.sleep(0.01)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        out[pid] = "timeout"
    return out


# -- killing a child in the middle of a real operation ---------------------------------
_SHM_DIR = os.path.dirname(os.path.abspath(shm.__file__)) + os.sep
_LOCKS_PY = os.path.abspath(shm.locks.__file__)


class Death:
    """Where a child was killed: its pid and the shm/ line it was about to run."""

    def __init__(self, pid, where):
        self.pid = pid
        self.where = where

    def __repr__(self):
        return f"<killed {self.pid} before {self.where}>"


def _stopper(ls, i, nth, w, only, at):
    """A sys.settrace function: at the nth line of shm/ code run while this
    process owns lock i of ls (i None: any of its locks), or at the first
    such line that is `at` (function name, line number), say where and
    SIGSTOP (the parent kills or continues us)."""
    me = os.getpid()
    seen = [0]
    which = range(ls.n) if i is None else (i,)

    def line(frame, event, _arg):
        if event == "line" and any(ls.owner(j) == me for j in which):
            seen[0] += 1
            if (seen[0] == nth) if at is None else ((frame.f_code.co_name, frame.f_lineno) == at):
                code = frame.f_code
                os.write(w, f"{os.path.basename(code.co_filename)}:{code.co_name}:{frame.f_lineno}".encode())
                os.kill(me, signal.SIGSTOP)
        return line

    def call(frame, _event, _arg):
        f = frame.f_code.co_filename
        # not inside locks.py itself: a stop between taking a semaphore and writing
        # its owner word is the zero-owner window (locks.py ZERO_OWNER_GRACE)
        if not f.startswith(_SHM_DIR) or f == _LOCKS_PY:
            return None
        return line if only is None or os.path.basename(f) in only else None

    return call


def kill_inside(ls, i, nth, fn, *args, only=None):
    """Fork a child that runs fn(*args) and kill -9 it just before the nth line
    of shm/ code it runs while owning lock i of `ls` (i None: any of them;
    lines of nested calls, e.g. the arena allocator under a bucket lock, count
    too).  The code under test is not patched: the child stops itself from a
    line tracer.  only: a set of shm/ file names to stop in (e.g. leave out
    the arena's lines, which test_dead_holder_arena.py covers).
    -> Death, or None when fn returned before its nth such line."""
    d = stop_inside(ls, i, nth, fn, *args, only=only)
    if d is not None:
        os.kill(d.pid, signal.SIGKILL)
        os.waitpid(d.pid, 0)
    return d


def stop_inside(ls, i, nth, fn, *args, only=None, at=None):
    """kill_inside without the kill: the child is left stopped (SIGSTOP) there,
    alive and holding its locks; the caller continues or kills it and reaps it.
    at: (function name, line number) to stop at instead of the nth line."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 1
        try:
            sys.settrace(_stopper(ls, i, nth, w, only, at))
            fn(*args)
            sys.settrace(None)
            code = 0
        except BaseException:
            sys.settrace(None)
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], 10)
        where = os.read(r, 200).decode() if ready else "timeout"
    finally:
        os.close(r)
    if not where:
        _p, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the operation failed in the child"
        return None
    if where == "timeout":
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError("child never reached its stop line")
    _p, status = os.waitpid(pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status)
    return Death(pid, where)


def held_by(pid, *locksets):
    """[(lockset, i)] of every lock whose owner word names pid."""
    return [(ls, i) for ls in locksets for i in range(ls.n) if ls.owner(i) == pid]


def recover_rest(held):
    """Take and drop every lock of `held` still owned by a dead pid (the ones the
    normal operation after the kill did not need), so each is taken over once."""
    for ls, i in held:
        if ls.owner(i) and not shm.locks.pid_alive(ls.owner(i)):
            ls.acquire(i)
            ls.release(i)


def sweep(make, op, lock_of, after, check, only=None, reuse=False):
    """Kill a child before every line it runs under one lock, each time on a fresh
    structure, and check the recovery.  make() -> (arena, state, locksets): a new
    arena (destroyed here) with the structure under test, and every LockSet the
    child could hold.  lock_of(state) -> (lockset, i): the lock the deaths
    happen under (i None: any of the set's).  op(state) runs in the child.
    After each death after(state, death) (a normal operation that needs that
    lock) must finish within 1 s; then every other lock the child held is
    taken over too, each exactly once, and check(state, death) must pass.
    only: as for kill_inside.  reuse: make() once and put its arena's bytes
    back before each death (lock words and counters included; every lock is
    free again by then), for structures with hundreds of semaphores that are
    slow to make.  -> the Death of every point."""
    deaths = []
    n = 1
    made = make() if reuse else None
    snapshot = bytes(made[0].buf) if reuse else None
    try:
        while True:
            arena, state, locksets = made or make()
            if reuse:
                arena.buf[:] = snapshot
            try:
                d = _one_death(n, state, locksets, op, lock_of, after, check, only)
            finally:
                if not reuse:
                    arena.destroy()
            if d is None:
                return deaths
            deaths.append(d)
            n += 1
    finally:
        if reuse:
            made[0].destroy()


def _one_death(n, state, locksets, op, lock_of, after, check, only):
    d = None
    try:
        ls, i = lock_of(state)
        d = kill_inside(ls, i, n, op, state, only=only)
        if d is None:
            return None
        held = held_by(d.pid, *locksets)
        assert any(hl is ls and i in (None, hi) for hl, hi in held)
        t0 = time.monotonic()
        after(state, d)
        assert time.monotonic() - t0 < 1.0
        recover_rest(held)
        for hl, hi in held:
            assert hl.takeovers(hi) == 1, f"{hl.name} lock {hi} taken over {hl.takeovers(hi)} times"
            assert hl.owner(hi) == 0
        check(state, d)
        return d
    except AssertionError as e:
        raise AssertionError(f"death point {n} ({d}): {e}") from e
