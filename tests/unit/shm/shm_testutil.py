"""Fork helpers for the shm tests (children always leave through os._exit,
so no pytest machinery runs twice).

Runs in: the pytest process and the processes it forks.
"""
import os
import signal
import time
import traceback


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
