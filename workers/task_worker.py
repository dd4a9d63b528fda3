"""The core async task worker loop.

Runs in: `Async Task Worker - <group>` processes (rank PROC_RPC), forked by
the supervisor from the rows asyncd.ipc.async_task declares (one row per
group; the row's handlers are the group: its dispatcher and the task kinds
modules registered), and forked again, same row and index, when one dies.

Kamailio's `async_task_run` (src/core/async_task.c): set the current group (for
`$async(gname)` / `$atkv(gname)`), then forever: optional `usleep` before each
receive, receive one task, execute it. Here the task waits in this worker's
inbox in shared memory (asyncd.ipc.dispatch picked us because we were idle)
and a ZeroMQ message only wakes us; after executing it we take the next task
of the group's backlog, if any, or mark ourselves idle again
(Dispatcher.finish). A task that raises is logged and counted; the loop never
dies of it. Before the loop, recover() looks at what a dead predecessor left
in the inbox (docs/kamailio-async.md §10.7): a task it had not started runs
here; the one it was running is abandoned (its kind's abandon handler).
"""
import gc
import time

import zmq

from asyncd import ipc
from asyncd.core import log
from asyncd.core.cfg_groups import updater
from asyncd.ipc import async_task, codec
from asyncd.ipc.dispatch import HANDED, IDLE

POLL_MS = 200       # how often a quiet worker looks at proc.stopping
AWAKE_FOR = 0.005   # stay awake this long after a task (asyncd.ipc.dispatch "Awake consumers")
AWAKE_GAP = 0.005   # ... but only while the group's tasks arrive closer than this
RATE_WINDOW = 0.02  # the group's arrival rate is re-estimated over this much time


def _execute(proc, group, frame, handlers):
    """Run one task; True when it was skipped. A bad task never kills us."""
    try:
        item = codec.unpack(frame)
        handler = handlers.get(item[0]) if item else None
        if handler is None:
            log.err("core", f"async worker [{group.name}]: unknown task kind {item[:1]}")
            return False
        return handler(proc, item) is False
    except Exception as e:
        log.err("core", f"async worker [{group.name}]: task failed: {e!r}")
        return False


def _recover(proc, group, disp, widx):
    """What a dead worker of this index left: the frame to run first, or None."""
    state, frame = disp.recover(widx)
    if state == IDLE:
        return None
    prefix = f"async worker [{group.name}] {widx}: took over"
    if state == HANDED:
        log.warn("core", f"{prefix} 1 queued task(s) of the dead worker")
        return frame
    try:
        what = async_task.describe(codec.unpack(frame))
    except Exception:
        what = f"{len(frame)} bytes"
    log.warn("core", f"{prefix} 0 queued task(s) of the dead worker; abandoned the running one ({what})")
    async_task.abandon(proc, frame)
    return disp.finish(widx, skipped=True)


def run(proc, row, widx):
    """The loop of worker `widx` of the group `row.handlers`."""
    group = row.handlers
    handlers = group.handlers
    proc.async_gname = group.name
    gc.freeze()     # what we inherited from main is never garbage: keep it out of GC scans
    disp = group.disp
    sock = disp.bind(widx)
    usleep = group.usleep / 1e6 if group.usleep > 0 else 0.0
    stay_awake = disp.stay_awake if not usleep else None
    mono = time.monotonic
    cfg_update = updater(proc.script)     # Kamailio's cfg_update() per task
    # A worker stays awake (waiting on its semaphore, no CPU) only while its
    # group is busy, so that the next task is likely to come within AWAKE_FOR;
    # a quiet group's workers sleep on ZeroMQ. The group's mean gap between
    # tasks comes from its shared "accepted" counter.
    counts = disp.c
    win_t, win_n, gap = mono(), counts[0], 1.0
    try:
        # a ring task a predecessor that died awake was waiting for: take it now
        frame = _recover(proc, group, disp, widx) or disp.claim(widx)
        while not proc.stopping:
            if frame is None:
                if usleep:
                    time.sleep(usleep)
                try:
                    if sock.poll(POLL_MS):
                        sock.recv(zmq.NOBLOCK)      # a wake-up: the task is in our inbox
                except zmq.Again:
                    pass
                except zmq.ZMQError as e:
                    if proc.stopping:
                        break
                    log.err("core", f"async worker [{group.name}]: receive failed: {e}")
                # also at a poll timeout: a lost wake-up costs at most POLL_MS
                frame = disp.claim(widx)
                if frame is None:
                    continue
            cfg_update()
            group.disp.record_wait(widx)
            t0 = mono()
            skipped = _execute(proc, group, frame, handlers)
            # next backlog task (we stay busy) or None (idle again, docs/kamailio-async.md §10.7)
            frame = disp.finish(widx, skipped)
            if t0 - win_t >= RATE_WINDOW:
                n = counts[0]
                gap = (t0 - win_t) / max(1, n - win_n)
                win_t, win_n = t0, n
            if frame is None and stay_awake is not None and gap < AWAKE_GAP:
                # the next task is likely a few ms away at most: wait for it on
                # the semaphore rather than make its producer pay a ZeroMQ wake-up
                frame = stay_awake(widx, AWAKE_FOR)
            if frame is not None and usleep:
                time.sleep(usleep)
    finally:
        try:
            sock.close(0)
        except zmq.ZMQError:
            pass
        ipc.close_all()
