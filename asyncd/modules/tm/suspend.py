"""Suspending a transaction in one process and continuing it in another
(Kamailio's t_suspend.c; docs/kamailio-tm.md §2-6).

Runs in: udp receivers (t_suspend from request/failure routes), async task
workers and ASYNC MOD TIMER (t_continue), any process (t_cancel_suspend),
the replacement of an async task worker that died resuming (t_abandon).

A suspension is a *blind branch*: no request is sent, but its final response
timer runs with the transaction's fr_timer (never fr_inv_timer,
docs/kamailio-tm.md §4), so a transaction nobody continues still ends with
its failure_route or a 408. The resumed route runs as FAILURE_ROUTE under
the transaction's lock, as Kamailio holds the reply lock for the whole
resumed route (docs/kamailio-tm.md §3).
"""
from asyncd.core import log
from asyncd.core.errors import ScriptExit
from asyncd.core.route_types import FAILURE_ROUTE
from asyncd.modules.tm.cell import (B_BLIND, BR_FLAGS, BR_REQ, BR_STATUS, F_CANCELED, F_CONTINUE, F_FINAL,
                                    F_NOISY, F_SUSPENDED, F_WAIT, Handle)
from asyncd.modules.tm.lookup import rebuild_request
from asyncd.modules.tm.reply import auto_100, fake_ctx, reply_cell, save_ctx_state
from asyncd.modules.tm.state import MOD, S, arm_fr, arm_retr, claim, flush, now, unclaim

AUTO_500 = "I'm terribly sorry, server error occurred (1/TM)"


def t_suspend(ctx):
    """(rc, tindex, tlabel): rc 0 suspended, 1 CANCELed meanwhile (not
    suspended; the 487 is out), -1 no transaction, -3 already replied."""
    h = ctx.t
    if h is None:
        return -1, 0, 0
    cell = h.acquire()
    if cell is None:
        return -1, 0, 0
    try:
        if cell.flags & F_CANCELED:
            return 1, h.index, h.label
        if cell.flags & F_FINAL:
            return -3, h.index, h.label
        auto_100(h, cell, ctx.msg)          # t_suspend.c t_suspend, step 2 (docs/kamailio-tm.md §2)
        bno, fr, h.saved = suspend_cell(ctx, cell)
        arm_fr(h, cell, bno, fr)
        h.done = True
        return 0, h.index, h.label
    finally:
        h.release(flush)


def suspend_cell(ctx, cell):
    """What t_suspend stores (docs/kamailio-tm.md §2): lumps (once, before the first branch),
    message flags, AVP/XAVP bytes, and a blind branch whose fr timer is the
    transaction's fr_timer. Returns (branch number, fr deadline, the AVP/XAVP
    bytes written, for Handle.saved); the caller arms the timer. Also used on
    a cell not yet in the table (tm/newtran.py t_newtran(suspend=True))."""
    msg = ctx.msg
    if not cell.branches:
        cell.lumps = [list(msg.hdr_adds or ()), sorted(msg.hdr_removes or ()),
                      list(msg.reply_lumps or ())]
    cell.msg_flags = ctx.flags
    if ctx.avps is not None:
        cell.avps = ctx.avps.dumps()
    if ctx.xavps is not None:
        cell.xavps = ctx.xavps.dumps()
    bno = len(cell.branches)
    fr = min(now() + cell.fr_ms / 1000.0, cell.eol)
    cell.branches.append(["", ["", 0], cell.sock, "", b"", 0, b"", B_BLIND, fr])
    cell.flags = (cell.flags | F_SUSPENDED | F_NOISY) & ~F_CONTINUE
    cell.susp_route_type = ctx.route_type
    return bno, fr, (cell.avps if ctx.avps is not None else None,
                     cell.xavps if ctx.xavps is not None else None)


def _blind(cell):
    for i in range(len(cell.branches) - 1, -1, -1):
        if cell.branches[i][BR_FLAGS] & B_BLIND:
            return i
    return -1


def t_cancel_suspend(tindex, tlabel):
    """Undo a suspend whose resume could not be queued (PR #3629): the blind
    branch is final, the flag cleared. The caller still owns the request."""
    h = Handle(S.table, tindex, tlabel)
    cell = h.acquire()
    if cell is None:
        return -1
    try:
        b = _blind(cell)
        if b >= 0 and cell.branches[b][BR_STATUS] < 200:
            cell.branches[b][BR_STATUS] = 500
        cell.flags &= ~F_SUSPENDED
        h.dirty = True
        return 1
    finally:
        h.release(flush)


def t_continue(proc, tindex, tlabel, runner):
    """Run runner(ctx) on the suspended transaction (docs/kamailio-tm.md §3). Returns 0 when it
    ran, 1 when skipped (CANCELed, timed out), -1 not found, -2 not suspended."""
    h = Handle(S.table, tindex, tlabel)
    cell = h.acquire()
    if cell is None:
        log.warn(MOD, f"active transaction not found ({tindex}:{tlabel})")
        return -1
    ctx = None
    try:
        if cell.flags & F_WAIT and not cell.flags & F_SUSPENDED:
            log.warn(MOD, f"active transaction not found ({tindex}:{tlabel})")
            return -1
        if not cell.flags & F_SUSPENDED:
            log.warn(MOD, f"transaction is not suspended ({tindex}:{tlabel})")
            return -2
        h.dirty = True
        if cell.flags & F_CANCELED:
            cell.flags &= ~F_SUSPENDED
            return 1
        cell.flags = (cell.flags | F_CONTINUE) & ~F_SUSPENDED
        claim(tindex, tlabel)     # a death from here on: the replacement answers it (t_abandon)
        b = _blind(cell)
        if b < 0 or cell.branches[b][BR_STATUS] >= 200:
            return 1
        cell.branches[b][BR_STATUS] = 500          # never pending again (step 5)
        try:
            ctx = fake_ctx(proc, h, cell, FAILURE_ROUTE)
        except Exception as e:
            log.err(MOD, f"cannot rebuild the request: {e!r}")
            reply_cell(h, cell, None, 500, AUTO_500)
            return 0
        try:
            runner(ctx)
        except ScriptExit:
            pass
        except Exception as e:
            log.err(MOD, f"resumed route failed: {e!r}")
        cell = h.cell
        save_ctx_state(ctx, cell)
        if not cell.flags & F_FINAL and not cell.has_pending():
            # step 9: the error of a relay that failed in the route (tm_error), else 500
            err = ctx.extra.get("ser_error") if ctx.extra else None
            if err:
                reply_cell(h, cell, ctx.msg, err[0], f"{err[1]} ({err[0]}/TM)")
            else:
                reply_cell(h, cell, ctx.msg, 500, AUTO_500)
        cell.flags &= ~F_CONTINUE
        return 0
    finally:
        h.release(flush)
        unclaim()


def _rearm_pending(h, cell):
    """The dead process may have relayed a branch and died before its timers
    were armed (they leave when the lock is dropped, state.flush), or even
    before the request was sent: a retransmission timer per pending branch
    sends the request again at T1 and arms its fr timer on that first run
    (tm/timer.py _retr_request), so the transaction cannot be left without
    timers. If they were armed, the branch is retransmitted twice as often
    until it answers: harmless."""
    for bno, br in enumerate(cell.branches):
        if br[BR_STATUS] < 200 and br[BR_REQ]:
            arm_retr(h, bno, S.t1)


def t_abandon(proc, tindex, tlabel):
    """The process that was continuing (tindex, tlabel) died (docs/kamailio-async.md
    §10.7): the resumed route may have run in part, so it is not run again;
    the transaction gets its final reply now instead of at its fr_timer.
    The dead process may have held the cell's lock: the robust lock takes it
    over. Nothing is changed when a final reply is out; relayed branches
    pending (the route got that far) are left to their replies, with their
    retransmission timers armed again (_rearm_pending); otherwise
    the suspension ends as a resume that fails does (t_continue step 9: 500;
    a CANCEL meanwhile got its 487 from e2e_cancel, which takes the lock over
    too). Returns 1 replied, 0 nothing to do, -1 not found or no reply could
    be built."""
    h = Handle(S.table, tindex, tlabel)
    cell = h.acquire()
    if cell is None:
        return -1
    try:
        if cell.flags & F_FINAL:
            return 0
        if cell.has_pending(with_blind=False):
            _rearm_pending(h, cell)
            return 0
        try:
            msg = rebuild_request(cell, proc)
        except Exception as e:
            log.err(MOD, f"cannot rebuild the request of {tindex}:{tlabel}: {e!r}")
            return -1
        cell.flags &= ~(F_SUSPENDED | F_CONTINUE)
        b = _blind(cell)
        if b >= 0 and cell.branches[b][BR_STATUS] < 200:
            cell.branches[b][BR_STATUS] = 500          # never pending again
        h.dirty = True
        reply_cell(h, cell, msg, 500, AUTO_500)
        return 1
    finally:
        h.release(flush)
