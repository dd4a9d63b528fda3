"""tm timers: request retransmissions (RFC 3261 Timers A/E), final response
timers (B/F: fr_timer, fr_inv_timer), local final reply retransmissions until
the ACK (G/H), the wait timer that frees a transaction, and the table sweep.

Runs in: the tm `timer` process (the heap and every handler); any process
(arming: one small msgpack frame per locked section into the timer's shared
mailbox, asyncd.ipc.mailbox; a ZeroMQ wake-up only when the frame is due
before the timer's next planned wake-up, e.g. a retransmission while the heap
holds only wait timers).

Entries are [kind, tindex, tlabel, arg, due, interval]; `due` is absolute on
the monotonic clock (shared by all processes), so queueing delay never shifts
a timer. Cancel is by marking: a handler re-reads the cell and does nothing
when the state moved on (a branch got its reply, the fr deadline on the
branch is no longer the one this entry was armed for, the ACK came).
Kamailio runs these in `timer`/`slow timer` (B §1.2); the sweep is our
safety net: a slot whose hard deadline passed is freed whatever was lost.
"""
import heapq
import os
import time

import msgpack

from asyncd.core import log
from asyncd.ipc.mailbox import STORED, STORED_WAKE
from asyncd.modules.tm_cell import (Cell, Handle, F_FINAL, F_LOCAL, F_ACKED, F_INVITE, F_WAIT,
                                    B_PROV, BR_STATUS, BR_REQ, BR_FR, BR_FLAGS, BR_DST, BR_SOCK)

K_RETR, K_FR, K_RPL, K_WAIT = 1, 2, 3, 4
SWEEP_EVERY = 1.0


from asyncd.modules.tm_lookup import S as _STATE, flush, set_proc, timer_endpoint


def _S():
    return _STATE


# ---- arming (any process, lock held: entries leave when it is dropped) -------
def arm_retr(h, bno, interval_ms):
    h.timers.append([K_RETR, h.index, h.label, bno, time.monotonic() + interval_ms / 1000.0,
                     interval_ms])


def arm_fr(h, cell, bno, deadline):
    cell.branches[bno][BR_FR] = deadline
    h.dirty = True
    h.timers.append([K_FR, h.index, h.label, bno, deadline, 0])


def arm_rpl_retr(h, cell):
    S = _S()
    h.timers.append([K_RPL, h.index, h.label, int(time.monotonic() * 1000),
                     time.monotonic() + S.t1 / 1000.0, S.t1])


def arm_wait(h, cell):
    if cell.flags & F_WAIT:
        return
    cell.flags |= F_WAIT
    h.dirty = True
    h.timers.append([K_WAIT, h.index, h.label, 0, time.monotonic() + _S().wt_ms / 1000.0, 0])


_local = {"heap": None}
_mb = [None]


def init_mailbox():
    """Main, before fork (tm mod_init): the shared mailbox every producer
    writes to. Entries are ~25 bytes, a locked section arms 1-3: 128-byte
    slots; 16384 of them hold several seconds at the top rate."""
    from asyncd.ipc.mailbox import Mailbox
    _mb[0] = Mailbox(16384)


def push_many(entries):
    """Hand entries to the timer process (directly when we are it)."""
    heap = _local["heap"]
    if heap is not None:
        for e in entries:
            heapq.heappush(heap, (e[4], id(e), e))
        return
    frame = msgpack.packb(entries)
    mb = _mb[0]
    wake = frame
    if mb is not None:
        r = mb.put(frame, min(e[4] for e in entries))
        if r == STORED:
            return
        if r == STORED_WAKE:
            wake = b""
    S = _S()
    pid = os.getpid()
    if S.push is None or S.push_pid != pid:
        import zmq
        from asyncd import ipc
        sock = ipc.context().socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 500)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.connect(timer_endpoint())
        S.push, S.push_pid = sock, pid
    try:
        S.push.send(wake, copy=False)
    except Exception as e:
        log.err("tm", f"cannot arm tm timers: {e!r}")


# ---- the timer process ---------------------------------------------------------
def run(proc):
    import zmq
    from asyncd import ipc
    set_proc(proc)
    pull = ipc.context(proc).socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 0)
    pull.bind(timer_endpoint())
    heap = _local["heap"] = []
    mb = _mb[0]
    next_sweep = time.monotonic() + SWEEP_EVERY
    try:
        while not proc.stopping:
            t = time.monotonic()
            wake = t + 0.2 if not heap else min(t + 0.2, heap[0][0])
            if mb is not None and mb.publish(wake):
                wait = 0.0                      # frames arrived meanwhile
            else:
                wait = max(0.0, wake - t)
            if pull.poll(int(wait * 1000 + 0.999)):
                while True:
                    try:
                        frame = pull.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if frame:                   # empty: a wake-up for the mailbox
                        _add(heap, frame)
            if mb is not None:
                mb.awake()
                for frame in mb.take():
                    _add(heap, frame)
            t = time.monotonic()
            while heap and heap[0][0] <= t + 0.0002:
                _, _, e = heapq.heappop(heap)
                try:
                    fire(proc, e)
                except Exception as ex:
                    log.err("tm", f"timer {e[0]} failed: {ex!r}")
            if t >= next_sweep:
                next_sweep = t + SWEEP_EVERY
                sweep()
    finally:
        pull.close(0)
        _local["heap"] = None


def _add(heap, frame):
    try:
        for e in msgpack.unpackb(frame):
            heapq.heappush(heap, (e[4], id(e), e))
    except Exception as e:
        log.err("tm", f"bad timer frame: {e!r}")


def fire(proc, e):
    kind, index, label, arg, due, interval = e
    if kind == K_WAIT:
        free(index, label)
        return
    table = _STATE.table
    if kind != K_RPL and table.is_done(index, label):
        return                                  # final reply out: retransmissions/fr are moot
    if table.get(index, label) is None:
        return                                  # freed: nothing to cancel
    h = Handle(table, index, label)
    cell = h.acquire()
    if cell is None:
        return
    try:
        if kind == K_RETR:
            _retr_request(h, cell, arg, interval)
        elif kind == K_FR:
            br = cell.branches[arg] if arg < len(cell.branches) else None
            if br is not None and br[BR_STATUS] < 200 and abs(br[BR_FR] - due) < 1e-6:
                from asyncd.modules.tm_reply import on_reply
                on_reply(proc, h, cell, arg, None, 408)
        elif kind == K_RPL:
            _retr_reply(h, cell, arg, interval)
    finally:
        h.release(flush)


def _retr_request(h, cell, bno, interval):
    """Timer A (INVITE: doubling, stops at the first reply) / E (non-INVITE:
    doubling up to T2, T2 after a provisional), RFC 3261 17.1.1.2, 17.1.2.2."""
    S = _S()
    br = cell.branches[bno] if bno < len(cell.branches) else None
    if br is None or br[BR_STATUS] >= 200 or not br[BR_REQ] or cell.flags & F_FINAL:
        return
    if interval == S.t1 and not (cell.flags & F_INVITE and br[BR_FLAGS] & B_PROV):
        # first run: the branch outlived T1, now its fr timer is worth a heap entry
        h.timers.append([K_FR, h.index, h.label, bno, br[BR_FR], 0])
    if cell.flags & F_INVITE:
        if br[BR_FLAGS] & B_PROV:
            return
        nxt = interval * 2
    else:
        nxt = S.t2 if br[BR_FLAGS] & B_PROV else min(interval * 2, S.t2)
    h.out.append((br[BR_REQ], tuple(br[BR_DST]), br[BR_SOCK]))
    arm_retr(h, bno, nxt)


def _retr_reply(h, cell, started_ms, interval):
    """Timer G until the ACK, given up after 64*T1 (Timer H), RFC 3261 17.2.1."""
    S = _S()
    if not cell.flags & F_FINAL or cell.flags & F_ACKED or not cell.flags & F_LOCAL:
        return
    if time.monotonic() * 1000 - started_ms >= 64 * S.t1:
        arm_wait(h, cell)
        return
    h.out.append((cell.uas_reply, tuple(cell.reply_to), cell.sock))
    nxt = min(interval * 2, S.t2)
    h.timers.append([K_RPL, h.index, h.label, started_ms, time.monotonic() + nxt / 1000.0, nxt])


def free(index, label):
    """End of the wait state: the transaction and its ACK aliases go."""
    S = _S()
    raw = S.table.get(index, label)
    if raw is None:
        return
    try:
        obj = msgpack.unpackb(raw)
        if len(obj) == len(Cell.__slots__):      # not an ACK alias ([index, label])
            for a in Cell.decode(raw).aliases:
                if a and a[0] >= 0:
                    S.table.delete(a[0], a[1])
    except Exception as e:
        log.err("tm", f"freeing {index}:{label}: {e!r}")
    S.table.delete(index, label)


def sweep():
    S = _S()
    now = time.monotonic()
    for index, label in S.table.expired(now):
        if S.table.still_expired(index, label, now):
            log.warn("tm", f"transaction {index}:{label} outlived its end of life: freed by the sweep")
            free(index, label)
            S.table.delete(index, label)
