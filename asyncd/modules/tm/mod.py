"""tm's face to the cfg: the export table (script functions, modparams with
their defaults, pseudo-variables), the message-path hooks, and the
lifecycle (Kamailio's tm.c).

Runs in: main (fixups, mod_init: the shm table and the timer feed),
udp receivers (hooks, request/failure/onreply routes), the `timer` process
(its row comes from tm/timer.py), async task workers and ASYNC MOD TIMER
(resumed routes, through tm/api.py).
"""
from asyncd.cfg.pvcore import PvTable, parse_pv
from asyncd.core import log
from asyncd.core.cfg_groups import CfgVar
from asyncd.core.errors import CfgError
from asyncd.core.exports import FuncExport, ModuleExports, P, ParamExport, PvExport
from asyncd.core.route_types import ANY_ROUTE, BRANCH_ROUTE, FAILURE_ROUTE, ONREPLY_ROUTE, REQUEST_ROUTE
from asyncd.core.rpc import RpcExport
from asyncd.modules.tm import api, fwd, newtran, reply, suspend
from asyncd.modules.tm import stats as tm_stats
from asyncd.modules.tm import timer as tm_timer
from asyncd.modules.tm.cell import (B_REPLIED, B_TIMEOUT, BR_FLAGS, F_CANCELED, F_COMPACT, F_FINAL,
                                    F_SUSPENDED, Cell, Handle)
from asyncd.modules.tm.lookup import lookup_request, rebuild_request, request_key, ack2xx_key
from asyncd.modules.tm.state import MOD, S, arm_wait, flush, left_claim, sock_proto, unclaim
from asyncd.sip import build_reply, parse_msg, reply_addr

RF = REQUEST_ROUTE | FAILURE_ROUTE
RFB = RF | BRANCH_ROUTE
RFO = RF | ONREPLY_ROUTE


# ---- settings made before or after the transaction exists -------------------------
def _pending(ctx):
    if ctx.extra is None:
        ctx.extra = {}
    return ctx.extra.setdefault("tm", {})


def _set(ctx, **kv):
    """Write through to the transaction, or keep for t_newtran (Kamailio keeps
    t_on_*/t_set_fr in per-process variables until the transaction exists)."""
    h = ctx.t
    if h is None:
        _pending(ctx).update(kv)
        return 1
    cell = h.acquire()
    if cell is None:
        return -1
    try:
        for k, v in kv.items():
            setattr(cell, k, v)
        h.dirty = True
    finally:
        h.release(flush)
    return 1


def w_t_newtran(ctx, site):
    rc = newtran.t_newtran(ctx)
    return 1 if rc > 0 else (0 if rc == 0 else -1)


def w_t_check_trans(ctx, site):
    """1 when the request belongs to a transaction; a retransmission is
    absorbed (last reply re-sent) and ends the script (0). In failure routes
    (and resumed routes) it is a no-op returning 1 (docs/kamailio-tm.md §3)."""
    if ctx.route_type & FAILURE_ROUTE or ctx.t is not None:
        return 1
    msg = ctx.msg
    if msg.method == "CANCEL":
        return 1 if S.table.find(request_key(msg, "INVITE")) else -1
    if getattr(msg, "_tm_miss", False) and msg.method != "ACK":
        # request_in looked for it a moment ago (newtran.match_request): a
        # retransmission that created it since, on another receiver, is still
        # caught by t_newtran's insert, which matches under the bucket lock
        return -1
    h = lookup_request(ctx)
    if h is None:
        if msg.method == "ACK" and msg.to_tag:
            k = ack2xx_key(msg.callid, msg.cseq_num or 0, msg.to_tag)
            return 1 if S.table.find(k) else -1
        return -1
    if msg.method == "ACK":
        return 0
    reply.resend_last(ctx.proc, h)
    return 0


def w_t_precheck_trans(ctx, site):
    if ctx.msg.method in ("ACK", "CANCEL"):
        return -1
    return 1 if lookup_request(ctx) is not None else -1


def w_t_relay(ctx, site, host=None, port=None, proto=None):
    rc = fwd.t_relay(ctx, host, port, proto)
    if rc > 0 and ctx.t is not None:
        ctx.t.done = True
    return rc


def w_t_relay_to_udp(ctx, site, host=None, port=None):
    return w_t_relay(ctx, site, host, port, "udp")


def w_t_relay_to_tcp(ctx, site, host=None, port=None):
    return w_t_relay(ctx, site, host, port, "tcp")


def w_t_reply(ctx, site, code, reason):
    if ctx.t is None:
        # as Kamailio: no T-state, no stateful reply (t_newtran() first)
        log.err(MOD, "cannot send a t_reply to a message for which no T-state has been established")
        return -1
    rc = api.t_reply(ctx, code, reason)
    if rc > 0:
        ctx.t.done = True
        if code >= 200:
            ctx.replied = True
    return rc


def w_t_on_failure(ctx, site, route):
    return _set(ctx, on_failure=str(route))


def w_t_on_reply(ctx, site, route):
    return _set(ctx, on_reply=str(route))


def w_t_on_branch(ctx, site, route):
    return _set(ctx, on_branch=str(route))


_IS_SET = {"failure_route": "on_failure", "branch_route": "on_branch", "onreply_route": "on_reply"}


def w_t_is_set(ctx, site, target):
    """t_is_set("failure_route"|"branch_route"|"onreply_route"): 1 when the
    route is armed for this transaction (or for the one t_relay will create),
    as stock kamailio.cfg's route[RELAY] checks before arming its own."""
    attr = _IS_SET.get(str(target))
    if attr is None:
        log.err(MOD, f"t_is_set(): unknown target [{target}]", site.loc.where if site else None)
        return -1
    if ctx.t is None:
        pend = ctx.extra.get("tm") if ctx.extra else None
        return 1 if pend and pend.get(attr) else -1
    c = ctx.t.cell if ctx.t.depth else _cell(ctx)
    return 1 if c is not None and getattr(c, attr, None) else -1


def _fixup_is_set(site):
    a = site.args[0]
    if a.literal and str(a.value) not in _IS_SET:
        site.arg_error(0, f"t_is_set(): unknown target '{a.value}' "
                          f"(failure_route, branch_route or onreply_route)")


def w_t_set_fr(ctx, site, fr_inv, fr=0):
    """t_set_fr(fr_inv_timeout [, fr_timeout]) in ms; 0 leaves a value as it is."""
    kv = {}
    if fr_inv:
        kv["fr_inv_ms"] = int(fr_inv)
    if fr:
        kv["fr_ms"] = int(fr)
    return _set(ctx, **kv) if kv else 1


def w_t_is_canceled(ctx, site):
    c = _cell(ctx)
    return 1 if c is not None and c.flags & F_CANCELED else -1


def _failed_branch(ctx):
    """The branch whose failure runs this failure route (Kamailio's
    get_t_branch()), or None."""
    h = ctx.t
    c = _cell(ctx)
    if c is None or not 0 <= h.branch < len(c.branches):
        return None
    return c.branches[h.branch]


def _branch_has(flag):
    def w(ctx, site):
        br = _failed_branch(ctx)
        return 1 if br is not None and br[BR_FLAGS] & flag else -1
    return w


def _any_branch_has(flag):
    def w(ctx, site):
        c = _cell(ctx)
        if c is None:
            log.err(MOD, "cannot check a message for which no T-state has been established")
            return -1
        return 1 if any(b[BR_FLAGS] & flag for b in c.branches) else -1
    return w


# tm.c t_branch_timeout / t_branch_replied (the failed branch) and t_any_timeout /
# t_any_replied (any branch): ended by its fr timer (F_RB_TIMEOUT); received a
# reply that has been handled (F_RB_REPLIED: in the failure route a branch's own
# final reply does not count yet, only what came before it, e.g. a 180)
w_t_branch_timeout, w_t_branch_replied = _branch_has(B_TIMEOUT), _branch_has(B_REPLIED)
w_t_any_timeout, w_t_any_replied = _any_branch_has(B_TIMEOUT), _any_branch_has(B_REPLIED)


def w_t_check_status(ctx, site, regex):
    code = _reply_code(ctx)
    if code is None:
        return -1
    return 1 if regex.search(str(code)) else -1


def _cell(ctx):
    h = ctx.t
    if h is None:
        return None
    if h.cell is not None:
        return h.cell
    raw = S.table.get(h.index, h.label)
    return Cell.decode(raw) if raw is not None else None


def _reply_code(ctx):
    h = ctx.t
    if h is None:
        return None
    if ctx.route_type & (FAILURE_ROUTE | ONREPLY_ROUTE) and h.reply_code:
        return h.reply_code
    c = _cell(ctx)
    return c.uas_status if c is not None else None


# ---- pseudo-variables --------------------------------------------------------------
_T_NAMES = ("id_index", "id_label", "id_index_n", "id_label_n", "reply_code", "reply_reason",
            "reply_type", "branch_index", "reply_last", "ruid")


def _parse_T(inner):
    if inner not in _T_NAMES:
        raise ValueError(f"unknown $T name '{inner}'")
    return inner


def _get_T(ctx, spec, index):
    h = ctx.t
    if h is None:
        return None
    if spec in ("id_index", "id_index_n"):
        return h.index
    if spec in ("id_label", "id_label_n"):
        return h.label
    if spec in ("reply_code", "reply_last"):
        return _reply_code(ctx)
    if spec == "reply_type":
        return 1 if h.reply_msg is None and ctx.route_type & FAILURE_ROUTE else 0
    if spec == "branch_index":
        return max(h.branch, 0)
    if spec == "reply_reason":
        m = _reply_msg(ctx)
        return m.reason if m is not None else None
    return None


def _get_reply_code(ctx, spec, index):
    return _reply_code(ctx)


def _reply_msg(ctx):
    h = ctx.t
    if h is None or not h.reply_msg:
        return None
    if isinstance(h.reply_msg, (bytes, bytearray, memoryview)):
        try:
            h.reply_msg = parse_msg(bytes(h.reply_msg))
        except Exception:
            return None
    return h.reply_msg


_pv_cache = {}


def _inner_pv(text):
    spec = _pv_cache.get(text)
    if spec is None:
        try:
            spec = parse_pv(text, None, PvTable(getattr(S.script, "modules", ()) or ()))
        except (CfgError, AttributeError, ValueError) as e:
            raise ValueError(str(e))
        _pv_cache[text] = spec
    return spec


def _parse_inner(inner):
    if not inner or not inner.startswith("$"):
        raise ValueError("a pseudo-variable is expected inside")
    return inner


def _inner_get(ctx, spec, make_msg, name):
    """$T_req(pv) / $T_rpl(pv): the inner pv read on the message make_msg()
    gives (None: no such message)."""
    try:
        msg = make_msg()
        if msg is None:
            return None
        return _inner_pv(spec).get(S.script.new_ctx(msg, ctx.proc, ctx.route_type))
    except Exception as e:
        log.err(MOD, f"${name}({spec}): {e!r}")
        return None


def _get_T_req(ctx, spec, index):
    c = _cell(ctx)
    if c is None:
        return None
    if c.flags & F_COMPACT:
        # a completed non-INVITE keeps no request (docs/kamailio-tm.md §8): in the
        # request route that answered it, the request is the message at hand
        msg = ctx.msg if getattr(ctx.msg, "is_request", False) else None
        return _inner_get(ctx, spec, lambda: msg, "T_req")
    return _inner_get(ctx, spec, lambda: rebuild_request(c, ctx.proc), "T_req")


def _get_T_rpl(ctx, spec, index):
    return _inner_get(ctx, spec, lambda: _reply_msg(ctx), "T_rpl")


# $snd / $sndto in onsend_route (Kamailio's pv module; tm is the only sender
# that runs onsend_route in asyncd, so it owns the outgoing datagram's view)
_SND_NAMES = ("ip", "port", "proto", "sproto", "af", "buf", "len")


_PROTO_IDS = {"udp": 1, "tcp": 2, "tls": 3, "sctp": 4}      # Kamailio's PROTO_* (src/core/ip_addr.h)


def _parse_snd(inner):
    if inner not in _SND_NAMES:
        raise ValueError(f"unknown $snd name '{inner}' (one of {', '.join(_SND_NAMES)})")
    return inner


def _get_snd(ctx, spec, index):
    snd = ctx.extra.get("snd") if ctx.extra else None
    if snd is None:
        return None
    ip, port, data, _sock = snd
    if spec == "ip":
        return ip
    if spec == "port":
        return port
    if spec in ("proto", "sproto"):
        proto = sock_proto(_sock)
        return proto if spec == "sproto" else _PROTO_IDS.get(proto, 0)
    if spec == "af":
        return 10 if ":" in ip else 2       # AF_INET6 / AF_INET
    if spec == "buf":
        return bytes(data).decode("utf-8", "replace")
    return len(data)


# ---- hooks --------------------------------------------------------------------------
BUSY_RETRY_AFTER = 5     # seconds (Retry-After of the 503 a full table or a late receive queue gets)
_BUSY_HDRS = (f"Retry-After: {BUSY_RETRY_AFTER}",)     # one tuple: build_reply keeps its text


def request_in(ctx):
    if S.table is None:
        return False
    try:
        if ctx.msg.method == "CANCEL":
            found = S.table.find(request_key(ctx.msg, "INVITE"))
            if not found:
                return False
            fwd.e2e_cancel(ctx, Handle(S.table, *found))
            return True
        if newtran.match_request(ctx):
            return True
        if (ctx.proc.overloaded or S.table.is_full()) and ctx.msg.method != "ACK":
            return _busy(ctx)
    except Exception as e:
        log.err(MOD, f"request matching failed: {e!r}")
    return False


def _busy(ctx):
    """The table is full, or the receive queue late (proc.overloaded,
    workers/receiver.py Backlog), before the script runs: answer 503 with Retry-After
    (RFC 3261 §21.5.4) at once rather than let the request's transaction fail
    later or be dropped (docs/kamailio-tm.md §7). True: absorbed."""
    msg = ctx.msg
    try:
        data = build_reply(msg, 503, "Service Unavailable", extra_headers=_BUSY_HDRS)
    except Exception as e:      # too broken to answer: the script gets it as usual
        log.dbg(MOD, f"no 503 possible: {e!r}")
        return False
    ctx.proc.send(data, reply_addr(msg), msg.sock)
    S.cnt[S.st.busy] += 1       # this process's row: no shared lock on the overload path
    return True


def reply_in(ctx):
    if S.table is None:
        return False
    return reply.reply_in(ctx)


def request_done(ctx):
    """End of request_route: a transaction nobody relayed, replied or
    suspended is released to the wait timer (Kamailio t_unref: "script writer
    didn't release transaction"); AVPs set after the last relay land in T."""
    h = ctx.t
    if h is None or h.depth:
        return
    unclaim()
    if not h.done and (h.new or ctx.extra and "tm_delayed" in ctx.extra):
        _unreleased(ctx, h)
    cur = (ctx.avps.dumps() if ctx.avps is not None else None,
           ctx.xavps.dumps() if ctx.xavps is not None else None)
    if h.done and (cur == h.saved or cur == (None, None)):
        return          # never clobber what a resumed route may be changing meanwhile
    cell = h.acquire()
    if cell is None:
        return
    try:
        if cur != h.saved and not cell.flags & F_COMPACT:     # nobody reads a completed one's
            if cur[0] is not None:
                cell.avps = cur[0]
            if cur[1] is not None:
                cell.xavps = cur[1]
            h.dirty = True
        if not cell.flags & (F_FINAL | F_SUSPENDED) and not cell.has_pending():
            arm_wait(h, cell)
    finally:
        h.release(flush)


def _unreleased(ctx, h):
    """Kamailio t_unref at the end of the script: a t_relay error waiting for
    its reply (REQ_ERR_DELAYED) gets it now, "478 Unresolvable destination
    (478/TM)"; a transaction this route created and left with no reply, relay
    or suspension is logged and released to the wait timer."""
    err = ctx.extra.get("tm_delayed") if ctx.extra else None
    h.done = True
    cell = h.acquire()
    if cell is None:
        return
    try:
        if cell.flags & (F_FINAL | F_SUSPENDED) or cell.has_pending(with_blind=True):
            return
        if err is not None and not ctx.replied:
            code, text = err
            if reply.reply_cell(h, cell, ctx.msg, code, f"{text} ({code}/TM)") > 0:
                return                  # reply_cell armed the wait / retransmission timer
        elif err is None:
            log.warn(MOD, f"script writer didn't release transaction "
                          f"({ctx.msg.method} {ctx.msg.callid})")
        arm_wait(h, cell)
    finally:
        h.release(flush)


# ---- lifecycle ----------------------------------------------------------------------
def mod_init(script):
    """Main, before fork: the parameters, the shm table, the timer feed, the
    runtime cfg group "tm"."""
    S.configure(script, script.modparams["tm"])
    tm_stats.register(script)
    if script.cfg.buf is None:
        script.cfg.declare("tm", _cfg_vars())


# the timers of Kamailio's runtime cfg group "tm" (src/modules/tm/config.c),
# in ms: a new transaction copies fr_timer, fr_inv_timer and the lifetimes
# when it is created (newtran.py), wt_timer is read when the wait timer is
# armed, so `cfg.seti tm fr_timer 5000` applies to transactions created
# after the change in each process, as in Kamailio
_CFG_TIMERS = (("fr_timer", "fr_ms", "final response timer for non-INVITE and INVITE before a provisional (ms)"),
               ("fr_inv_timer", "fr_inv_ms", "final response timer for INVITE after a provisional (ms)"),
               ("wt_timer", "wt_ms", "time a transaction is kept after its final reply (ms)"),
               ("max_inv_lifetime", "max_inv_ms", "longest life of an INVITE transaction (ms)"),
               ("max_noninv_lifetime", "max_noninv_ms", "longest life of a non-INVITE transaction (ms)"))


def _cfg_vars():
    def setter(attr):
        return lambda value: setattr(S, attr, int(value))
    return [CfgVar(name, int, doc, getattr(S, attr), lo=1, hi=(1 << 31) - 1, on_change=setter(attr))
            for name, attr, doc in _CFG_TIMERS]


def mod_destroy(script):
    """Say what is left: after the wait timer a quiet server holds nothing."""
    if S.table is not None:
        log.notice(MOD, f"transaction table: {S.table.count()} entries at exit")
        refused, busy = S.table.overload()["refused"], script.stats.get(S.st.busy)
        if refused or busy:
            log.notice(MOD, f"transaction table full or overloaded: {refused} transaction(s) refused "
                       f"(the function returned its error code), {busy} request(s) "
                       f"answered 503 before the script ran")


def child_init(proc, rank):
    S.child_init(proc)
    if S.timers is not None:
        S.timers.connect_all()
    left = left_claim()
    if left is not None:
        # a respawn: the dead process of this slot was working on this transaction
        unclaim()
        rc = suspend.t_abandon(proc, *left)
        log.warn(MOD, f"transaction {left[0]}:{left[1]} was in the hands of the dead process "
                 f"of this slot: " + ("replied 500" if rc == 1 else "left to its timers"))


def procs(script):
    return [tm_timer.proc_row()]


def _fixup_route(site):
    a = site.args[0]
    if a.literal and hasattr(site.script, "has_route") and a.value:
        kinds = {"t_on_failure": "failure_route_names", "t_on_reply": "onreply_route_names",
                 "t_on_branch": "branch_route_names"}
        fname = getattr(site.func, "name", site.func)
        names = getattr(site.script, kinds.get(fname, ""), None)
        if names is not None and a.value not in names:
            site.arg_error(0, f"{fname}(): no such route block '{a.value}'")


EXPORTS = ModuleExports(
    name="tm",
    functions=[
        FuncExport("t_newtran", (), w_t_newtran, RF),
        FuncExport("t_check_trans", (), w_t_check_trans, RFB),
        FuncExport("t_precheck_trans", (), w_t_precheck_trans, REQUEST_ROUTE),
        FuncExport("t_relay", (), w_t_relay, RF),
        FuncExport("t_relay", (P.STR, P.INT), w_t_relay, RF),
        FuncExport("t_relay_to_udp", (), w_t_relay_to_udp, RF),
        FuncExport("t_relay_to_udp", (P.STR, P.INT), w_t_relay_to_udp, RF),
        FuncExport("t_relay_to_tcp", (), w_t_relay_to_tcp, RF),
        FuncExport("t_relay_to_tcp", (P.STR, P.INT), w_t_relay_to_tcp, RF),
        FuncExport("t_reply", (P.INT, P.STR), w_t_reply, RF),
        FuncExport("t_on_failure", (P.ROUTE,), w_t_on_failure, RFB, _fixup_route),
        FuncExport("t_on_reply", (P.ROUTE,), w_t_on_reply, RFB, _fixup_route),
        FuncExport("t_on_branch", (P.ROUTE,), w_t_on_branch, RF, _fixup_route),
        FuncExport("t_is_set", (P.STR,), w_t_is_set, ANY_ROUTE, _fixup_is_set),
        FuncExport("t_set_fr", (P.INT,), w_t_set_fr, RFB),
        FuncExport("t_set_fr", (P.INT, P.INT), w_t_set_fr, RFB),
        FuncExport("t_is_canceled", (), w_t_is_canceled, ANY_ROUTE),
        FuncExport("t_branch_timeout", (), w_t_branch_timeout, FAILURE_ROUTE),
        FuncExport("t_branch_replied", (), w_t_branch_replied, FAILURE_ROUTE),
        FuncExport("t_any_timeout", (), w_t_any_timeout, RF | ONREPLY_ROUTE | BRANCH_ROUTE),
        FuncExport("t_any_replied", (), w_t_any_replied, RF | ONREPLY_ROUTE | BRANCH_ROUTE),
        FuncExport("t_check_status", (P.REGEX,), w_t_check_status, ANY_ROUTE),
    ],
    params=[
        ParamExport("fr_timer", int, 30000),
        ParamExport("fr_inv_timer", int, 120000),
        ParamExport("wt_timer", int, 5000),
        ParamExport("max_inv_lifetime", int, 180000),
        ParamExport("max_noninv_lifetime", int, 32000),
        ParamExport("auto_inv_100", int, 1),
        ParamExport("auto_inv_100_reason", str, "trying -- your call is important to us"),
        ParamExport("failure_reply_mode", int, 3),
        ParamExport("retr_timer1", int, 500),
        ParamExport("retr_timer2", int, 4000),
    ],
    pvs=[
        PvExport("T", _get_T, None, _parse_T, True),
        PvExport("T_reply_code", _get_reply_code, None, None, False),
        PvExport("T_req", _get_T_req, None, _parse_inner, True),
        PvExport("T_rpl", _get_T_rpl, None, _parse_inner, True),
        PvExport("snd", _get_snd, None, _parse_snd, True),
        PvExport("sndto", _get_snd, None, _parse_snd, True),
    ],
    mod_init=mod_init,
    child_init=child_init,
    mod_destroy=mod_destroy,
    procs=procs,
    hooks={"request_in": request_in, "request_done": request_done, "reply_in": reply_in},
    rpc=[RpcExport("tm.stats", tm_stats.rpc_stats, "The transactions and replies tm handled.")],
)
