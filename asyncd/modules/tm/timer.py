"""tm's timer handlers: request retransmissions (RFC 3261 Timers A/E), final
response timers (B/F: fr_timer, fr_inv_timer), local final reply
retransmissions until the ACK (G/H), the wait timer that frees a
transaction, and the table sweep; and the row of the `timer` process that
runs them.

Runs in: the tm `timer` process (workers/timer.py calls these handlers);
arming happens anywhere (tm/state.py arm_*).

Cancel is by marking: a handler re-reads the cell and does nothing when the
state moved on (a branch got its reply, the fr deadline on the branch is no
longer the one this entry was armed for, the ACK came). Kamailio runs these
in its `timer` and `slow timer` processes (timer.c); the sweep is our safety
net: a slot whose hard deadline passed is freed whatever was lost.
"""
import time

import msgpack

from asyncd.core import log
from asyncd.core.procs import PROC_TIMER, RAN, ROLE_TIMER, SKIPPED, Periodic, ProcRow, TimerHandlers
from asyncd.modules.tm.cell import (B_PROV, BR_DST, BR_FLAGS, BR_FR, BR_REQ, BR_SOCK, BR_STATUS,
                                    F_ACKED, F_FINAL, F_INVITE, F_LOCAL, Cell, Handle)
from asyncd.modules.tm.reply import on_reply
from asyncd.modules.tm.state import K_FR, K_RETR, K_RPL, K_WAIT, MOD, S, arm_retr, arm_wait, flush

SWEEP_EVERY = 1.0
_NFIELDS = len(Cell.__slots__)
_ALIASES = Cell.__slots__.index("aliases")


def proc_row():
    """The `timer` process (Kamailio's tm timer, rank PROC_TIMER)."""
    handlers = TimerHandlers(feed=S.timers,
                             on_due={K_RETR: on_timer, K_FR: on_timer, K_RPL: on_timer, K_WAIT: on_wait},
                             every=(Periodic(SWEEP_EVERY, sweep),), rings=tuple(S.rings.values()))
    return ProcRow(ROLE_TIMER, "timer", PROC_TIMER, 1, handlers)


def on_wait(proc, e):
    """End of the wait state: the transaction and its ACK aliases go."""
    free(e[2], e[3])
    return RAN


def on_timer(proc, e):
    """Timers A/E (K_RETR), B/F (K_FR) and G/H (K_RPL) on a held cell."""
    kind, due, index, label, arg, interval = e
    table = S.table
    if kind != K_RPL and table.is_done(index, label):
        return SKIPPED                          # final reply out: retransmissions/fr are moot
    if table.get(index, label) is None:
        return SKIPPED                          # freed: nothing to cancel
    h = Handle(table, index, label)
    cell = h.acquire()
    if cell is None:
        return SKIPPED
    try:
        if kind == K_RETR:
            _retr_request(h, cell, arg, interval)
        elif kind == K_FR:
            br = cell.branches[arg] if arg < len(cell.branches) else None
            if br is not None and br[BR_STATUS] < 200:
                if abs(br[BR_FR] - due) < 1e-6 or due > br[BR_FR]:
                    # the deadline (a probe kept in ring order may come after it)
                    on_reply(proc, h, cell, arg, None, 408)
                elif due < br[BR_FR]:
                    # a probe (tm/state.py FR_PROBE) and the branch still waits: fire at the deadline
                    h.timers.append([K_FR, br[BR_FR], h.index, h.label, arg, 0])
        else:
            _retr_reply(h, cell, arg, interval)
    finally:
        h.release(flush)
    return RAN


def _retr_request(h, cell, bno, interval):
    """Timer A (INVITE: doubling, stops at the first reply) / E (non-INVITE:
    doubling up to T2, T2 after a provisional), RFC 3261 17.1.1.2, 17.1.2.2."""
    br = cell.branches[bno] if bno < len(cell.branches) else None
    if br is None or br[BR_STATUS] >= 200 or not br[BR_REQ] or cell.flags & F_FINAL:
        return
    if interval == S.t1 and not (cell.flags & F_INVITE and br[BR_FLAGS] & B_PROV):
        # first run: the branch outlived T1, now its fr timer is worth a heap entry
        h.timers.append([K_FR, br[BR_FR], h.index, h.label, bno, 0])
    if br[BR_SOCK] in S.reliable:
        return                                  # timers A/E are for unreliable transports only
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
    if not cell.flags & F_FINAL or cell.flags & F_ACKED or not cell.flags & F_LOCAL:
        return
    left = started_ms + 64 * S.t1 - time.monotonic() * 1000
    if left <= 0:
        arm_wait(h, cell)
        return
    if cell.sock in S.reliable and cell.uas_status >= 300:
        # timer G is for unreliable transports only: on to H; a 2xx of our own is
        # retransmitted on every transport (RFC 3261 13.3.1.4; docs/kamailio-tcp.md §7)
        nxt = int(left) + 1
    else:
        h.out.append((cell.uas_reply, tuple(cell.reply_to), cell.sock))
        nxt = min(interval * 2, S.t2)
    # G's interval doubles up to T2, which may pass 64*T1 by up to T2: H still fires on time
    due = time.monotonic() + min(nxt, left) / 1000.0
    h.timers.append([K_RPL, due, h.index, h.label, started_ms, nxt])


def free(index, label):
    """End of the wait state: the transaction and its ACK aliases go. A
    compact wait-state cell (its slot's "plain" bit) names no alias: it is
    deleted without being read."""
    table = S.table
    cell = table.is_plain(index, label)
    if not cell:
        raw = table.get(index, label)
        if raw is None:
            return
        try:
            cell = _drop_aliases(table, raw)
        except Exception as e:
            log.err(MOD, f"freeing {index}:{label}: {e!r}")
    if table.delete(index, label) and cell:
        cnt, st = S.cnt, S.st         # h_table.h remove_from_hash_table: t_stats_deleted
        cnt[st.deleted] += 1
        cnt[st.t_freed] += 1


def _drop_aliases(table, raw):
    """Delete the ACK aliases a cell names (one decode, read in place). False
    when raw is an ACK alias itself ([index, label]), not a cell."""
    obj = msgpack.unpackb(raw)
    if len(obj) != _NFIELDS:
        return False
    for a in obj[_ALIASES]:
        if a and a[0] >= 0:
            table.delete(a[0], a[1])
    return True


def sweep(proc):
    table = S.table
    now = time.monotonic()
    for index, label in table.expired(now):
        if table.still_expired(index, label, now):
            log.warn(MOD, f"transaction {index}:{label} outlived its end of life: freed by the sweep")
            free(index, label)
            table.delete(index, label)
