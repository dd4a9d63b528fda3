"""Forwarding: t_relay (new branches), CANCEL of an INVITE transaction
(e2e_cancel), stateless forwarding of an ACK to a 2xx.

Runs in: udp receivers (request_route, failure routes on replies), the tm
`timer` process (failure routes on timeout), async workers (resumed routes).

Kamailio counterpart: t_fwd.c (t_relay_to, add_uac, e2e_cancel, t_forward_nonack).
RFC 3261 16.6 (request forwarding), 9.1 (CANCEL), 16.10 (CANCEL processing).
"""
import socket

from asyncd.core import log
from asyncd.core.errors import ScriptExit
from asyncd.core.net import proto_socket
from asyncd.core.route_types import BRANCH_ROUTE, REQUEST_ROUTE
from asyncd.modules.tm.cancel import send_cancel
from asyncd.modules.tm.cell import (B_BLIND, B_CANCEL, B_PROV, BR_FLAGS, BR_STATUS, F_CANCELED,
                                    F_CONTINUE, F_FINAL, F_IN_FAILURE, F_INVITE, Handle)
from asyncd.modules.tm.lookup import make_branch, request_key
from asyncd.modules.tm.newtran import new_cell, t_newtran
from asyncd.modules.tm.reply import auto_100, reply_cell, resend_last
from asyncd.modules.tm.state import (K_FR, K_RETR, MOD, S, arm, arm_fr, arm_retr, flush, insert_claimed,
                                     hard_deadline, now, sock_addr, sock_proto)
from asyncd.sip import parse_uri
from asyncd.sip.build import build_reply, build_request_fwd, reply_addr, via_line
from shm.tm_table import TableFull

_dns = {}


def resolve(host, port):
    """(ip, port) for a host; literal IPs skip the resolver. None on failure."""
    if host.startswith("["):
        host = host[1:-1]
    ip = _dns.get(host)
    if ip is None:
        try:
            socket.inet_pton(socket.AF_INET, host)
            ip = host
        except OSError:
            try:
                ip = socket.gethostbyname(host)
            except OSError:
                return None
            _dns[host] = ip
    return (ip, int(port or 5060))


def _target(msg, host, port, proto=None):
    """(ruri, (ip, port), transport) where this branch goes: explicit host/port,
    else $du, else R-URI; the transport is the explicit one (t_relay_to_tcp),
    else the URI's `transport` parameter, else UDP (RFC 3263 §4.1 without
    NAPTR/SRV: UDP for sip:, TLS for sips:)."""
    ruri = msg.new_uri or msg.ruri
    if host is not None:
        return ruri, resolve(str(host), port or 5060), proto or "udp"
    u = parse_uri(msg.dst_uri or ruri)
    if proto is None:
        proto = u.transport or ("tls" if u.scheme == "sips" else "udp")
    return ruri, resolve(u.host, u.port or 5060), proto


def out_sock(msg, proto, dst):
    """The socket a branch to `dst` over `proto` leaves from (Kamailio
    get_send_socket): force_send_socket() when the script set one, else the
    one the request came on when its protocol matches, else the first listen
    socket of that protocol and address family; None when there is none."""
    forced = msg.force_sock
    if forced is not None:
        return forced
    sock = msg.sock or 0
    addrs = getattr(S.script, "sock_addrs", None)
    if not addrs:
        return sock
    return proto_socket(addrs, proto, sock, ":" in dst[0])


def _fwd_data(msg, ruri, via, sock):
    """The request as this branch sends it; with a double Record-Route when
    rr asked for one and the branch leaves from another socket (rr._DoubleRR)."""
    rr = msg.rr_out
    pair = rr(sock) if rr is not None else None
    if pair is None:
        return build_request_fwd(msg, ruri, via)
    adds = msg.hdr_adds
    msg.hdr_adds = adds[:rr.pos] + list(pair) + adds[rr.pos + 1:]
    try:
        return build_request_fwd(msg, ruri, via)
    finally:
        msg.hdr_adds = adds


def _transport(sock):
    return sock_proto(sock).upper()


def t_relay(ctx, host=None, port=None, proto=None):
    """1 relayed, 0 retransmission absorbed (ends the script), -1 error.
    With a destination set (registrar's lookup() with append_branches,
    `msg.dset`), a branch for the R-URI and one per entry: parallel forking."""
    dset = ctx.msg.dset
    if dset and host is None and ctx.msg.method != "ACK":
        ctx.msg.dset = None                 # used up, as Kamailio's after t_forward_nonack
        return _relay_set(ctx, dset, proto)
    return _relay_one(ctx, host, port, proto)


def _set_targets(ctx, dset, proto):
    """[(ruri, dst, sock)] of the R-URI branch and each dset entry (the request's
    own R-URI and $du put back); unusable entries are logged and left out."""
    msg = ctx.msg
    saved = msg.new_uri, msg.dst_uri
    out = []
    try:
        for uri, du, path in [saved + (None,)] + [(b.uri, b.dst_uri, b.path) for b in dset]:
            msg.new_uri, msg.dst_uri = uri, du
            try:
                ruri, dst, pr = _target(msg, None, None, proto)
            except Exception as e:
                log.err(MOD, f"bad destination {uri}: {e!r}")
                continue
            sock = None if dst is None else out_sock(msg, pr, dst)
            if sock is None:
                log.err(MOD, f"no socket or address for the branch to {uri}")
                continue
            out.append((ruri, dst, sock, path))
    finally:
        msg.new_uri, msg.dst_uri = saved
    return out


def _relay_set(ctx, dset, proto):
    """All the branches added under one hold of the cell and sent together (as
    Kamailio's t_forward_nonack builds every branch before sending): a reply to
    the first never finds the transaction with only some of them."""
    targets = _set_targets(ctx, dset, proto)
    if not targets:
        return relay_error(ctx, E_BAD_ADDRESS)
    if ctx.t is None:
        rc = t_newtran(ctx)
        if rc <= 0:
            return 0 if rc == 0 else -1
    h = ctx.t
    cell = h.acquire()
    if cell is None:
        return -1
    added = 0
    try:
        auto_100(h, cell, ctx.msg)          # Kamailio t_relay_to: before forwarding
        if cell.flags & F_FINAL:
            log.warn(MOD, "a final reply was already sent")
            return -1
        if cell.flags & F_CANCELED and (cell.flags & (F_IN_FAILURE | F_CONTINUE)):
            return -1                       # Kamailio refuses new branches of a CANCELed T
        adds = ctx.msg.hdr_adds
        own = ctx.msg.path_route     # the R-URI branch's Path (registrar)
        base = [a for a in adds if a is not own]
        for ruri, dst, sock, path in targets:
            if path is not None:        # a dset branch: its own Path as Route, if any
                ctx.msg.hdr_adds = base + ([f"Route: {path}\r\n"] if path else [])
            try:
                if cell.on_branch and _run_branch_route(ctx, h, cell) is False:
                    continue
                _add_branch(ctx, h, cell, ruri, dst, sock)
                added += 1
            except _SendDropped:
                log.err(MOD, "onsend_route dropped the request")
            finally:
                ctx.msg.hdr_adds = adds
    finally:
        h.release(flush)
    if not added:
        return relay_error(ctx, E_SEND)
    ctx.relayed = True
    h.done = True
    return 1


def _relay_one(ctx, host=None, port=None, proto=None):
    msg = ctx.msg
    if msg.method == "ACK" and ctx.t is None:
        return _forward_ack(ctx, host, port, proto)
    try:
        ruri, dst, proto = _target(msg, host, port, proto)
    except Exception as e:
        log.err(MOD, f"bad destination: {e!r}")
        return relay_error(ctx, E_BAD_ADDRESS)
    if dst is None:
        log.err(MOD, "cannot resolve the destination")
        return relay_error(ctx, E_BAD_ADDRESS)
    sock = out_sock(msg, proto, dst)
    if sock is None:
        log.err(MOD, f"no {proto} socket to send to {dst[0]}:{dst[1]}")
        return relay_error(ctx, E_NO_SOCKET)
    if msg.fwd_flags and sock in S.reliable:
        dst = (dst[0], dst[1], msg.fwd_flags)     # set_forward_no_connect()/_close(): for tcp main
    if ctx.t is None:
        pend = ctx.extra.get("tm") if ctx.extra else None
        if not (pend and pend.get("on_branch")) and not getattr(S.script, "has_onsend_route", False):
            return _relay_new(ctx, ruri, dst, sock)
        rc = t_newtran(ctx)
        if rc <= 0:
            return 0 if rc == 0 else -1
    h = ctx.t
    cell = h.acquire()
    if cell is None:
        return -1
    send_dropped = False
    try:
        auto_100(h, cell, ctx.msg)          # Kamailio t_relay_to: before forwarding
        if cell.flags & F_FINAL:
            log.warn(MOD, "a final reply was already sent")
            return -1
        if cell.flags & F_CANCELED and (cell.flags & (F_IN_FAILURE | F_CONTINUE)):
            return -1                       # Kamailio refuses new branches of a CANCELed T
        if cell.on_branch:
            if _run_branch_route(ctx, h, cell) is False:
                return -1
        _add_branch(ctx, h, cell, ruri, dst, sock)
    except _SendDropped:
        send_dropped = True
    finally:
        h.release(flush)
    if send_dropped:
        # no branch went out: t_forward_nonack's E_SEND, delayed 477 (t_send_branch)
        log.err(MOD, "onsend_route dropped the request")
        return relay_error(ctx, E_SEND)
    ctx.relayed = True
    h.done = True
    return 1


class _SendDropped(Exception):
    pass


def _add_branch(ctx, h, cell, ruri, dst, sock):
    """One more branch of the held cell, queued on h.out (sent at release)."""
    msg = ctx.msg
    bno = len(cell.branches)
    vb = make_branch(h.index, h.label, bno)
    ip, p = sock_addr(ctx.proc, sock)
    data = _fwd_data(msg, ruri, via_line(ip, p, vb, _transport(sock)), sock)
    if getattr(S.script, "has_onsend_route", False) and not run_onsend(ctx, data, dst, sock):
        raise _SendDropped()
    fr = min(now() + cell.fr_ms / 1000.0, cell.eol)
    cell.branches.append([ruri, list(dst), sock, vb, data, 0, b"", 0, fr])
    cell.msg_flags = ctx.flags
    if ctx.avps is not None:
        cell.avps = ctx.avps.dumps()
    if ctx.xavps is not None:
        cell.xavps = ctx.xavps.dumps()
    if ctx.route_type == 1:
        h.saved = (cell.avps if ctx.avps is not None else None,
                   cell.xavps if ctx.xavps is not None else None)
    h.dirty = True
    h.out.append((data, dst, sock))
    arm_retr(h, bno, S.t1)
    if fr - now() <= S.t1 / 1000.0:
        arm_fr(h, cell, bno, fr)            # else armed by the first Timer A/E run


def run_onsend(ctx, data, dst, sock):
    """onsend_route just before a request leaves (Kamailio run_onsend from
    t_send_branch): the request's own ctx, $snd(...) describing the outgoing
    datagram; False when the route used `drop`."""
    if ctx.extra is None:
        ctx.extra = {}
    ctx.extra["snd"] = (dst[0], int(dst[1]), data, sock)
    try:
        return _run_droppable(ctx, S.script.run_onsend_route, "onsend_route")
    finally:
        ctx.extra.pop("snd", None)


def _run_droppable(ctx, run, what, *args, route_type=None):
    """Run a route that may `drop` what is about to be sent (onsend_route,
    branch_route) on the request's own ctx, as route_type when given: True
    unless it dropped. Its errors are logged; ctx.route_type and ctx.dropped
    are as they were."""
    rt, dropped = ctx.route_type, ctx.dropped
    if route_type is not None:
        ctx.route_type = route_type
    ctx.dropped = False
    try:
        run(*args, ctx)
    except ScriptExit as e:
        ctx.dropped = ctx.dropped or e.drop
    except Exception as e:
        log.err(MOD, f"{what} failed: {e!r}")
    finally:
        ctx.route_type = rt
    out, ctx.dropped = not ctx.dropped, dropped
    return out


# Kamailio's error.h codes and err2reason_phrase texts for what t_relay can fail on
E_BAD_ADDRESS = (478, "Unresolvable destination")
E_SEND = (477, "Unfortunately error on sending to next hop occurred")
E_NO_SOCKET = (500, "No socket to send from")


def record_error(ctx, err):
    """Kamailio's ser_error/tm_error for this message: sl_reply_error() answers
    with it ("<text> (<code>/SL)"), the delayed tm reply with "(<code>/TM)"."""
    if ctx.extra is None:
        ctx.extra = {}
    code, text = err
    ctx.extra["ser_error"] = err
    ctx.extra["sl_error"] = (code, f"{text} ({code}/SL)")


def relay_error(ctx, err):
    """A forward that failed before anything was sent. In request_route the
    transaction is still created (Kamailio t_relay_to: t_newtran comes first)
    and the error reply is delayed to the end of the script (TM_DELAYED_REPLY,
    REQ_ERR_DELAYED): request_done sends it unless the script replied or
    relayed meanwhile. Returns -1, or 0 for an absorbed retransmission."""
    record_error(ctx, err)
    if ctx.route_type != REQUEST_ROUTE or ctx.msg.method in ("ACK", "CANCEL"):
        return -1           # failure routes: tm_error only (t_continue's 500 covers resumes)
    if ctx.t is None:
        rc = t_newtran(ctx)
        if rc <= 0:
            return 0 if rc == 0 else -1
    _relay_100(ctx)
    ctx.extra["tm_delayed"] = err
    return -1


def _relay_100(ctx):
    """t_relay_to sends an INVITE's 100 before t_forward_nonack, so a relay that
    fails still has it out ahead of the delayed error reply. Not h.done: the
    100 answers nothing, request_done still sends the delayed reply."""
    h = ctx.t
    cell = h.acquire()
    if cell is None:
        return
    try:
        auto_100(h, cell, ctx.msg)
    finally:
        h.release(flush)


def _relay_new(ctx, ruri, dst, sock):
    """The common case, t_relay() with no transaction yet: the cell is stored
    once, already holding its first branch (one table insert, no re-read)."""
    msg = ctx.msg
    try:
        key = getattr(msg, "_tmkey", None) or request_key(msg)
        cell = new_cell(ctx)
    except Exception as e:
        log.err(MOD, f"cannot create transaction: {e!r}")
        return -1
    ip, p = sock_addr(ctx.proc, sock)
    out = []
    if cell.flags & F_INVITE and S.auto_inv_100:
        cell.uas_status = 100
        cell.uas_reply = build_reply(msg, 100, S.auto_inv_100_reason)
        out.append((cell.uas_reply, tuple(cell.reply_to), cell.sock))
    if ctx.avps is not None:
        cell.avps = ctx.avps.dumps()
    if ctx.xavps is not None:
        cell.xavps = ctx.xavps.dumps()
    fr = min(now() + cell.fr_ms / 1000.0, cell.eol)
    made = []

    def make(index, label):
        vb = make_branch(index, label, 0)
        data = _fwd_data(msg, ruri, via_line(ip, p, vb, _transport(sock)), sock)
        cell.branches.append([ruri, list(dst), sock, vb, data, 0, b"", 0, fr])
        made.append(data)
        return cell.encode()
    try:
        created, index, label = insert_claimed(key, make, hard_deadline(cell))
    except TableFull as e:
        log.err(MOD, str(e))
        return -1
    h = ctx.t = Handle(S.table, index, label)
    h.saved = (cell.avps, cell.xavps)
    if not created:
        resend_last(ctx.proc, h)
        return 0
    cnt, st = S.cnt, S.st
    cnt[st.transactions] += 1
    cnt[st.t_created] += 1
    send = ctx.proc.send
    for data, addr, s in out:
        cnt[st.rpl_generated] += 1    # the automatic 100 (t_reply.c _reply_light)
        cnt[st.rpl_sent] += 1
        send(data, addr, s)
    send(made[0], dst, sock)
    t = now()
    # the fr timer is armed by the first Timer A/E run when the branch is still
    # pending then: most transactions end before T1 and never cost a heap entry
    timers = [[K_RETR, t + S.t1 / 1000.0, index, label, 0, S.t1]]
    if fr - t <= S.t1 / 1000.0:
        timers.append([K_FR, fr, index, label, 0, 0])
    arm(timers)
    ctx.relayed = True
    h.done = True
    return 1


def _run_branch_route(ctx, h, cell):
    """branch_route runs once per new branch, before it is sent; drop cancels it."""
    name = cell.on_branch
    return _run_droppable(ctx, S.script.run_branch_route, f"branch_route[{name}]", name,
                          route_type=BRANCH_ROUTE)


def _forward_ack(ctx, host, port, proto=None):
    """ACK for a 2xx is end to end: forwarded statelessly (Kamailio t_relay on
    an ACK without transaction)."""
    msg = ctx.msg
    try:
        ruri, dst, proto = _target(msg, host, port, proto)
    except Exception:
        return -1
    if dst is None:
        return -1
    sock = out_sock(msg, proto, dst)
    if sock is None:
        return -1
    if msg.fwd_flags and sock in S.reliable:
        dst = (dst[0], dst[1], msg.fwd_flags)
    v = msg.via1
    br = "z9hG4bKsl%x" % (hash((S.secret, v.branch if v else msg.callid, msg.cseq_num)) & 0xFFFFFFFF)
    ip, p = sock_addr(ctx.proc, sock)
    data = _fwd_data(msg, ruri, via_line(ip, p, br, _transport(sock)), sock)
    ctx.proc.send(data, dst, sock)
    ctx.relayed = True
    return 1


def e2e_cancel(ctx, h):
    """A CANCEL matching an INVITE transaction (RFC 3261 16.10, docs/kamailio-tm.md §5):
    200 to the CANCEL; CANCEL to ringing branches (the others once they ring);
    with no live branch (only a suspension), 487 to the INVITE here."""
    msg = ctx.msg
    try:
        ctx.proc.send(build_reply(msg, 200, "canceling"), reply_addr(msg), msg.sock or 0)
    except Exception as e:
        log.err(MOD, f"cannot reply to CANCEL: {e!r}")
    cell = h.acquire()
    if cell is None:
        return
    try:
        if cell.flags & F_FINAL or not cell.flags & F_INVITE:
            return
        cell.flags |= F_CANCELED
        h.dirty = True
        live = False
        for br in cell.branches:
            if br[BR_STATUS] >= 200 or br[BR_FLAGS] & B_BLIND:
                continue
            live = True
            if br[BR_FLAGS] & B_PROV:
                send_cancel(h, cell, br)
            else:
                br[BR_FLAGS] |= B_CANCEL           # sent when it rings (RFC 3261 9.1)
        if not live and not cell.flags & F_CONTINUE:
            reply_cell(h, cell, None, 487, "Request Terminated")
    finally:
        h.release(flush)
