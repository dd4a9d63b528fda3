"""The tm API other modules bind to (docs/contracts.md §6; Kamailio's
tm_binds / tmx's t_suspend/t_continue): `from asyncd.modules.tm import api
as tm_api; tm_api.t_newtran(ctx)`.

Runs in: whichever process calls it: udp receivers (t_newtran, t_suspend,
t_reply, t_relay), async task workers and ASYNC MOD TIMER (t_continue,
t_cancel_suspend, and whatever the resumed route calls; t_abandon in the
replacement of a task worker that died resuming).
"""
from asyncd.core import log
from asyncd.modules.tm import fwd, newtran, reply, suspend
from asyncd.modules.tm.cell import Handle
from asyncd.modules.tm.state import MOD, S, unclaim


def t_newtran(ctx):
    """1 created (ctx.t set), 0 retransmission absorbed (last reply re-sent,
    ctx.t points at the existing transaction), <0 error."""
    return newtran.t_newtran(ctx)


def t_newtran_suspend(ctx):
    """t_newtran then t_suspend for a request that has no transaction yet, in
    one table write. -> (rc, tindex, tlabel): rc 0 suspended (the INVITE's 100
    went out), 2 a retransmission (absorbed, nothing suspended), <0 t_newtran's
    error."""
    rc = newtran.t_newtran(ctx, suspend=True)
    if rc == 1:
        return 0, ctx.t.index, ctx.t.label
    return (2 if rc == 0 else rc), 0, 0


def t_suspend(ctx):
    """-> (rc, tindex, tlabel). rc 0: suspended (request, AVP/XAVP bytes, flags
    and lumps stored; an INVITE's 100 sent if nothing was yet); 1: the
    transaction was CANCELed (487 sent, nothing to resume); -1: no transaction;
    -3: a final reply was already sent (docs/kamailio-tm.md §2)."""
    return suspend.t_suspend(ctx)


def t_cancel_suspend(tindex, tlabel):
    """Undo t_suspend when the resume could not be queued. 1 ok, -1 not found."""
    return suspend.t_cancel_suspend(tindex, tlabel)


def t_continue(proc, tindex, tlabel, runner):
    """Run runner(ctx) on the suspended transaction, as FAILURE_ROUTE, with the
    stored request, AVPs and XAVPs; automatic 500 when it neither replied,
    relayed nor suspended again. Returns 0 ran, 1 skipped (CANCELed or timed
    out), -1 not found (already ended), -2 not suspended (docs/kamailio-tm.md §3)."""
    return suspend.t_continue(proc, tindex, tlabel, runner)


def t_handed_over():
    """The suspended transaction's resume is queued: it is no longer this
    process's to answer if it dies (its claim goes, docs/architecture.md
    "Respawn")."""
    unclaim()


def t_abandon(proc, tindex, tlabel):
    """The process continuing (tindex, tlabel) died: do not run the route
    again, end the suspension with a final reply now (500) unless a final
    reply is out or relayed branches are pending. Returns 1 replied, 0
    nothing to do, -1 not found (docs/kamailio-async.md §10.7)."""
    return suspend.t_abandon(proc, tindex, tlabel)


def t_reply(ctx, code, reason):
    """Stateful reply on ctx.t (created when missing, as Kamailio's t_reply
    does not: it fails without a transaction, so do we). 1 ok, -1 error."""
    if ctx.t is None:
        return -1
    try:
        return reply.local_reply(ctx, int(code), str(reason))
    except Exception as e:
        log.err(MOD, repr(e))
        return -1


def t_relay(ctx, host=None, port=None):
    """Relay ctx.msg statefully (creates the transaction if needed) to host:port,
    else $du, else the R-URI. 1 ok, 0 retransmission (absorbed), -1 error."""
    return fwd.t_relay(ctx, host, port)


def t_lookup_ident(tindex, tlabel):
    """A handle on (tindex, tlabel) or None (Kamailio t_lookup_ident)."""
    if S.table is None or S.table.get(tindex, tlabel) is None:
        return None
    return Handle(S.table, tindex, tlabel)


def table_count():
    """Transactions (and 2xx ACK aliases) held in shm right now."""
    t = S.table
    return t.count() if t is not None else 0


def register_tmcb(kind, owner, fn):
    """Kamailio's register_tmcb for every transaction (kind: state.TMCB_*):
    called from another module's mod_init; `owner` names it (a second
    registration by the same owner replaces the first)."""
    S.cbs[kind][owner] = fn
