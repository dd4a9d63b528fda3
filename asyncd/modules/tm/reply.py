"""Replies: local replies (t_reply), replies received on our branches (relay
upstream, best-reply selection, failure_route), retransmission of the last
reply, and the end of a transaction's active life (wait state).

Runs in: udp receivers (reply_in, t_reply), the tm `timer` process (fr_timer
expiry runs failure routes there, as Kamailio's timer does), async workers
(t_reply from resumed routes).

Kamailio counterpart: t_reply.c (relay_reply, t_should_relay_response,
run_failure_handlers, t_pick_branch, _reply). RFC 3261 16.7 for the proxy
response processing, 17.2.1 for INVITE server transactions.
"""
import msgpack

from asyncd.core import log
from asyncd.core.errors import ScriptExit
from asyncd.core.route_types import FAILURE_ROUTE, TM_ONREPLY_ROUTE
from asyncd.modules.tm.cancel import cancel_pending, send_ack, send_cancel
from asyncd.modules.tm.cell import (B_BLIND, B_CANCEL, B_CANCEL_SENT, B_DISCARD, B_PROV, B_REPLIED,
                                    B_TIMEOUT, BR_FLAGS, BR_REPLY, BR_REQ, BR_STATUS, F_CANCELED, F_FINAL,
                                    F_IN_FAILURE, F_INVITE, F_LOCAL, F_SUSPENDED, Cell, Handle)
from asyncd.modules.tm.lookup import ack2xx_key, parse_branch, rebuild_request
from asyncd.modules.tm.state import (MOD, TMCB_ON_FAILURE, TMCB_RESPONSE_OUT, S, arm_fr,
                                     arm_rpl_retr, arm_wait, flush, hard_deadline, now, run_tmcb)
from asyncd.sip.build import build_reply, local_to_tag, strip_top_via
from shm.avp import AvpList, XavpList

TIMEOUT_REASON = "Request Timeout"


# ---- local replies ------------------------------------------------------------
def local_reply(ctx, code, reason, extra_headers=()):
    """t_reply on ctx.t (lock taken here, or re-entered when already held)."""
    h = ctx.t
    cell = h.acquire()
    if cell is None:
        return -1
    try:
        rc = reply_cell(h, cell, ctx.msg, code, reason, extra_headers)
        if rc > 0:
            h.done = True
        return rc
    finally:
        h.release(flush)


def auto_100(h, cell, msg):
    """An INVITE to which nothing was sent yet gets the automatic 100 (modparams
    auto_inv_100, auto_inv_100_reason), on a held cell. Kamailio sends it when the
    request is relayed (t_funcs.c t_relay_to) or suspended (t_suspend.c t_suspend),
    not when t_newtran creates the transaction: a script that answers a new
    transaction itself (`t_newtran(); send_reply("404", ...)`) sends the 404 alone."""
    if cell.flags & F_INVITE and S.auto_inv_100 and cell.uas_status < 100:
        reply_cell(h, cell, msg, 100, S.auto_inv_100_reason)


def reply_cell(h, cell, msg, code, reason, extra_headers=()):
    """Build and queue a local reply on a held cell. 1 ok, -1 refused."""
    if cell.flags & F_FINAL:
        log.warn(MOD, f"t_reply(): cannot send {code}: a final reply ({cell.uas_status}) was sent already")
        return -1
    if msg is None:
        msg = rebuild_request(cell, S.proc)
    if code > 100 and not cell.to_tag:
        cell.to_tag = local_to_tag(msg)
    # build_reply adds msg.reply_lumps itself: once, as Kamailio's
    # build_res_buf_from_sip_req does (src/core/msg_translator.c)
    data = build_reply(msg, code, reason, to_tag=(cell.to_tag if code > 100 else None),
                       extra_headers=extra_headers)
    cell.uas_status = code
    cell.uas_reply = data
    h.dirty = True
    h.out.append((data, tuple(cell.reply_to), cell.sock))
    cnt, st = S.cnt, S.st             # t_reply.c _reply_light: update_reply_stats, generated, sent
    cnt[st.rpl_generated] += 1
    cnt[st.rpl_sent] += 1
    if code >= 200:
        cnt[st.by_class[code // 100]] += 1
        cell.flags |= F_FINAL | F_LOCAL
        if cell.flags & F_INVITE:
            if code < 300:
                cell.aliases.append(list(_add_alias(h, msg, cell)))
            arm_rpl_retr(h, cell)      # until the ACK (17.2.1)
        else:
            arm_wait(h, cell)
        cancel_pending(h, cell)
        run_tmcb(TMCB_RESPONSE_OUT, h, cell, code, reason, None)
    return 1


def _add_alias(h, msg, cell):
    key = ack2xx_key(msg.callid, msg.cseq_num or 0, cell.to_tag)
    try:
        created, i, l = S.table.insert(key, msgpack.packb([h.index, h.label]), hard_deadline(cell))
    except Exception as e:
        log.err(MOD, f"cannot index the 2xx for its ACK: {e}")
        return (-1, 0)
    return (i, l)


def resend_last(proc, h):
    """A retransmitted request: re-send the last reply, if any (17.2.1/17.2.2)."""
    raw = S.table.get(h.index, h.label)
    if raw is None:
        return
    cell = Cell.decode(raw)
    if cell.uas_reply:
        proc.send(cell.uas_reply, tuple(cell.reply_to), cell.sock)


# ---- replies received on our branches ------------------------------------------
def reply_in(ctx):
    """Hook: a reply whose top Via is one of our branches."""
    msg = ctx.msg
    via = msg.via1
    ids = parse_branch(via.branch if via is not None else None)
    if ids is None:
        return False
    if msg.cseq_method == "CANCEL":
        S.cnt[S.st.rpl_received] += 1
        return True                           # the 200 to our CANCEL ends there
    index, label, bno = ids
    h = Handle(S.table, index, label)
    cell = h.acquire()
    if cell is None:
        return False                          # gone: core forwards 2xx retransmissions statelessly
    S.cnt[S.st.rpl_received] += 1             # t_reply.c reply_received: t_stats_rpl_received
    try:
        on_reply(ctx.proc, h, cell, bno, msg, msg.status)
    except Exception as e:
        log.err(MOD, f"reply processing failed: {e!r}")
    finally:
        h.release(flush)
    return True


def on_reply(proc, h, cell, bno, msg, status):
    """One reply (or a timeout: msg None, status 408) on branch bno, cell held.
    A received reply marks its branch B_REPLIED once it has been handled, so
    the failure route it leads to does not see it yet (Kamailio t_reply.c
    reply_received sets F_RB_REPLIED after relay_reply)."""
    if bno >= len(cell.branches):
        return
    _on_reply(proc, h, cell, bno, msg, status)
    if msg is not None:
        c = h.cell if h.cell is not None else cell
        if bno < len(c.branches):
            c.branches[bno][BR_FLAGS] |= B_REPLIED


def _on_reply(proc, h, cell, bno, msg, status):
    br = cell.branches[bno]
    h.dirty = True
    if br[BR_STATUS] >= 200:
        # a retransmitted final from downstream
        if msg is not None and cell.flags & F_INVITE:
            if 200 <= status < 300:
                _relayed(status)
                h.out.append((strip_top_via(msg), tuple(cell.reply_to), cell.sock))
            elif status >= 300:
                send_ack(h, cell, br, msg)
        return
    if msg is not None and cell.on_reply:
        dropped = _run_onreply(proc, h, cell, msg, status, bno)
    else:
        dropped = False
    if status < 200:
        if not br[BR_FLAGS] & B_PROV:
            br[BR_FLAGS] |= B_PROV
            if cell.flags & F_INVITE:
                arm_fr(h, cell, bno, min(now() + cell.fr_inv_ms / 1000.0, cell.eol))
            if br[BR_FLAGS] & B_CANCEL and not br[BR_FLAGS] & B_CANCEL_SENT:
                send_cancel(h, cell, br)
        # drop in onreply_route keeps a provisional from going upstream (Kamailio)
        if status > 100 and not cell.flags & F_FINAL and msg is not None and not dropped:
            data = strip_top_via(msg)
            cell.uas_status = status
            cell.uas_reply = data
            S.cnt[S.st.rpl_sent] += 1
            h.out.append((data, tuple(cell.reply_to), cell.sock))
            run_tmcb(TMCB_RESPONSE_OUT, h, cell, status, msg.reason, msg.buf)
        return
    if msg is None:
        br[BR_FLAGS] |= B_TIMEOUT              # t_branch_timeout() in the failure route
        if cell.flags & F_INVITE and br[BR_FLAGS] & B_PROV and not br[BR_FLAGS] & B_BLIND:
            send_cancel(h, cell, br)           # fr_inv_timer hit a ringing branch
    br[BR_STATUS] = status
    if 200 <= status < 300:
        br[BR_REQ] = b""
        if cell.flags & F_INVITE or not cell.flags & F_FINAL:
            data = strip_top_via(msg)
            _relayed(status)
            h.out.append((data, tuple(cell.reply_to), cell.sock))
            run_tmcb(TMCB_RESPONSE_OUT, h, cell, status, msg.reason, msg.buf)
            if not cell.flags & F_FINAL:
                cell.uas_status = status
                cell.uas_reply = data
                cell.flags |= F_FINAL
                cancel_pending(h, cell)      # RFC 3261 16.7 step 10
                arm_wait(h, cell)
        return
    if msg is not None:
        br[BR_REPLY] = strip_top_via(msg)
        if cell.flags & F_INVITE:
            send_ack(h, cell, br, msg)
    br[BR_REQ] = b"" if not cell.flags & F_INVITE else br[BR_REQ]
    if br[BR_FLAGS] & B_BLIND:
        cell.flags &= ~F_SUSPENDED             # docs/kamailio-tm.md §4: the timeout ends the suspension
    if not cell.flags & F_FINAL and not cell.has_pending():
        final_decision(proc, h, cell)


def _relayed(code):
    """A final reply relayed upstream (t_reply.c relay_reply: update_reply_stats, rpl_sent)."""
    cnt, st = S.cnt, S.st
    cnt[st.rpl_sent] += 1
    cnt[st.by_class[code // 100]] += 1


def _prio(code):
    cls = code // 100
    base = {6: 0, 2: 1000, 3: 2000, 4: 3000, 5: 4000}.get(cls, 9000)
    if code in (401, 407, 415, 420, 484):
        return base
    if code == 503:
        return base + 99
    return base + code % 100 + 1


def pick_branch(cell):
    """Kamailio t_pick_branch: 6xx first, then the lowest class; within 4xx the
    ones a UAC can act on (auth, unsupported) win."""
    best, bprio = -1, 1 << 30
    for i, b in enumerate(cell.branches):
        if b[BR_STATUS] >= 300 and not b[BR_FLAGS] & B_DISCARD:
            p = _prio(b[BR_STATUS])
            if p < bprio:
                best, bprio = i, p
    return best


def final_decision(proc, h, cell):
    """Every branch is final and negative: failure_route, else relay the best."""
    bi = pick_branch(cell)
    code = cell.branches[bi][BR_STATUS] if bi >= 0 else 500
    if cell.flags & F_CANCELED:
        code = 487 if code == 408 else code
    if not cell.flags & F_IN_FAILURE:
        run_tmcb(TMCB_ON_FAILURE, h, cell, code, bi)
    if cell.on_failure and not cell.flags & F_IN_FAILURE:
        route, cell.on_failure = cell.on_failure, None     # one shot, as Kamailio
        nb = len(cell.branches)
        run_failure_route(proc, h, cell, route, code, bi)
        if len(cell.branches) > nb and S.failure_reply_mode:
            # modparam failure_reply_mode 1-3: the replies that led here no longer
            # compete with the new branches' (0 keeps them all)
            for b in cell.branches[:nb]:
                b[BR_FLAGS] |= B_DISCARD
        if cell.flags & F_FINAL or cell.has_pending(with_blind=True):
            return
        bi = pick_branch(cell)
        code = cell.branches[bi][BR_STATUS] if bi >= 0 else 500
        if cell.flags & F_CANCELED and code == 408:
            code = 487
    data = cell.branches[bi][BR_REPLY] if bi >= 0 else b""
    if data and code == cell.branches[bi][BR_STATUS]:
        cell.uas_status = code
        cell.uas_reply = data
        cell.flags |= F_FINAL
        _relayed(code)
        h.out.append((data, tuple(cell.reply_to), cell.sock))
        arm_wait(h, cell)
        if S.cbs[TMCB_RESPONSE_OUT]:       # the reason is cut from the reply only for a listener
            run_tmcb(TMCB_RESPONSE_OUT, h, cell, code, _reason_of(data), None if bi < 0 else data)
    else:
        reason = {408: TIMEOUT_REASON, 487: "Request Terminated"}.get(
            code, "I'm terribly sorry, server error occurred (1/TM)")
        reply_cell(h, cell, None, code, reason)


def _reason_of(data):
    """The reason phrase of a stored reply's status line."""
    line = data[:data.find(b"\r\n")].decode("utf-8", "replace")
    parts = line.split(" ", 2)
    return parts[2] if len(parts) > 2 else ""


def fake_ctx(proc, h, cell, route_type):
    """The ctx a failure or resumed route runs on: the stored request, the
    transaction's flags, AVPs and XAVPs (Kamailio's faked_env)."""
    msg = rebuild_request(cell, proc)
    ctx = S.script.new_ctx(msg, proc, route_type)
    ctx.t = h
    ctx.flags = cell.msg_flags
    if cell.avps:
        ctx.avps = AvpList.loads(cell.avps)
    if cell.xavps:
        ctx.xavps = XavpList.loads(cell.xavps)
    return ctx


def save_ctx_state(ctx, cell):
    """AVPs/XAVPs and message flags live on the transaction (docs/kamailio-tm.md
    §1; docs/kamailio-async.md §7)."""
    if ctx.avps is not None:
        cell.avps = ctx.avps.dumps()
    if ctx.xavps is not None:
        cell.xavps = ctx.xavps.dumps()
    cell.msg_flags = ctx.flags


def run_failure_route(proc, h, cell, route, code, bi):
    try:
        ctx = fake_ctx(proc, h, cell, FAILURE_ROUTE)
    except Exception as e:
        log.err(MOD, f"failure_route[{route}]: cannot rebuild the request: {e!r}")
        return
    h.reply_code = code
    h.reply_msg = cell.branches[bi][BR_REPLY] if bi >= 0 else None
    h.branch = bi
    cell.flags |= F_IN_FAILURE
    try:
        S.script.run_failure_route(route, ctx)
    except ScriptExit:
        pass
    except Exception as e:
        log.err(MOD, f"failure_route[{route}] failed: {e!r}")
    finally:
        cell = h.cell
        cell.flags &= ~F_IN_FAILURE
        save_ctx_state(ctx, cell)
        h.dirty = True


def _run_onreply(proc, h, cell, msg, status, bno):
    ctx = S.script.new_ctx(msg, proc, TM_ONREPLY_ROUTE)
    ctx.t = h
    h.reply_code = status
    h.reply_msg = msg.buf
    h.branch = bno
    try:
        S.script.run_onreply_route(cell.on_reply, ctx)
    except ScriptExit as e:
        ctx.dropped = ctx.dropped or e.drop
    except Exception as e:
        log.err(MOD, f"onreply_route[{cell.on_reply}] failed: {e!r}")
    return ctx.dropped
