"""The dispatcher module: destination sets, selection and failover, probing.

Runs in: main process (modparams, the list loaded and put in shm by
mod_init before fork), every process that routes (udp/tcp receivers, async
task workers: ds_* functions, $dsv), the "secondary timer" process
and the receivers that take its replies (asyncd/modules/dispatcher_ping.py),
the RPC processes (dispatcher.*: asyncd/modules/dispatcher_rpc.py).

Kamailio: src/modules/dispatcher (dispatcher.c exports and wrappers,
dispatch.c ds_manage_routes, ds_update_dst, ds_mark_dst, ds_update_state,
ds_is_addr_from_list, ds_run_route). The list and every destination's state
are in shared memory (shm/dispatcher.py), so a destination marked down by
one process -- a failure_route, the pinger, an RPC -- is skipped by all of
them at once. The failover list is kept as Kamailio 5.6 keeps it: one
$xavp(_dsdst_) item per destination (uri, grp, attrs), the chosen one first,
and $xavp(_dsctx_=>cnt); both names are modparams (xavp_dst, xavp_ctx).
Differences, on purpose (docs/kamailio-dispatcher.md):
- algorithms 0-12 are built (10 with ds_load_update/ds_load_unset); 13
  (latency) logs Kamailio's "algo N not implemented - using first
  entry..." warning and uses the first entry.
- with db_url the list is read through asyncd's DB API (db_redis):
  asyncd/modules/dispatcher_db.py; its rows come in the driver's order.
- the `sock` field of a _dsdst_ item is the socket's text (Kamailio: a
  pointer that reads as $null), and only when the destination has a socket.
- hosts are resolved once, at load (ds_dns_mode's timer and per-call
  lookups are not built); event_callback (KEMI) is not built.
"""
import ipaddress
import random
import re

from asyncd.cfg.pvcore import fmt
from asyncd.core import log
from asyncd.core.cfg_groups import CfgVar
from asyncd.core.errors import CfgError
from asyncd.core.exports import FuncExport, ModuleExports, P, ParamExport, PvExport
from asyncd.core.params import split_socket
from asyncd.core.procs import PROC_TIMER, ROLE_TIMER, Periodic, ProcRow, TimerHandlers
from asyncd.core.route_types import ANY_ROUTE, BRANCH_ROUTE, FAILURE_ROUTE, ONREPLY_ROUTE, REQUEST_ROUTE
from asyncd.modules import dispatcher_load, dispatcher_ping
from asyncd.modules.dispatcher_db import DsDbFailed
from asyncd.modules.dispatcher_list import (DS_FAILOVER_ON, DS_HASH_USER_ONLY, DS_INACTIVE_DST,
                                            DS_PROBING_DST, DS_STATES_ALL, DS_DISABLED_DST,
                                            DS_TRYING_DST, PROTOS, ListError, hash_str, hash_uri,
                                            resolve, skip_dst)
from asyncd.modules.dispatcher_rpc import DispatcherRpc
from asyncd.modules.registrar_lookup import Branch
from asyncd.modules.dispatcher_state import (S, Rctx, flags_of, load_list, parse_reply_codes, publish,
                                             reload, update_state)
from asyncd.sip import parse_uri
from shm.avp import XavpList
from shm.dispatcher import S_LAST, S_RWLAST, S_WLAST, DsStore

MOD = "dispatcher"
SETOP_DSTURI, SETOP_RURI, SETOP_XAVP = 0, 1, 2
USE_CRT, USE_NEXT = 0, 1
MATCH_NOPORT, MATCH_NOPROTO, MATCH_ACTIVE = 1, 2, 4
PROBE_NONE, PROBE_ALL, PROBE_INACTIVE, PROBE_ONLYFLAGGED = 0, 1, 2, 3
RR_ROUTES = REQUEST_ROUTE | FAILURE_ROUTE


# -- selection ------------------------------------------------------------------------------
class NoDestination(Exception):
    """Algorithm 10 finds no destination below its maxload: -1, no log (Kamailio's)."""


def _hash(ctx, s, alg):
    """-> (hash, round-robin cursor value or None, the algorithm in effect);
    ValueError when the request lacks what the algorithm hashes."""
    msg = ctx.msg
    uflags = S.mp["flags"] & DS_HASH_USER_ONLY
    if alg == 0:
        if msg.callid is None:
            raise ValueError("can't get callid hash")
        return hash_str(msg.callid), None, alg
    if alg in (1, 2):
        na = msg.from_ if alg == 1 else msg.to
        if na is None:
            raise ValueError("can't get From uri hash" if alg == 1 else "can't get To uri hash")
        return hash_uri(na.uri, uflags), None, alg
    if alg == 3:
        return hash_uri(msg.cur_uri, uflags), None, alg
    half = S.cache[1]
    if alg == 5:
        user = auth_user(msg)
        if user:
            return hash_str(user), None, alg
        alg = 4         # no credentials: round-robin (ds_manage_routes)
    if alg == 4:
        v = S.store.cursor_step(half, _setno(s), S_LAST, len(s.dests))
        return v, (v + 1) % len(s.dests), alg
    if alg == 6:
        return random.getrandbits(31), None, alg
    if alg == 7:
        if S.hash_model is None:
            raise ValueError("can't get PV hash")
        text = fmt(ctx, S.hash_model).strip(" \t\r\n")
        if not text:
            raise ValueError("can't get PV hash")
        return hash_str(text), None, alg
    if alg == 8:
        return 0, None, alg
    if alg == 9:
        return s.wlist[S.store.cursor_step(half, _setno(s), S_WLAST, 100)], None, alg
    if alg == 10:
        return _call_load(ctx.msg, half, s)
    if alg == 11:
        setno = _setno(s)
        return S.store.rw_slot(half, setno, S.store.cursor_step(half, setno, S_RWLAST, 100)), None, alg
    if alg == 12:
        return 0, None, alg
    log.warn(MOD, f"algo {alg} not implemented - using first entry...")
    return 0, None, alg


def _call_load(msg, half, s):
    """Algorithm 10 in ds_manage_routes: INVITEs go to the least loaded."""
    if msg.method != "INVITE":
        return 0, None, 0
    if not S.mp["xavp_dst"]:
        log.err(MOD, "no dst xavp for load distribution - using first entry...")
        return 0, None, 0
    i = dispatcher_load.least_loaded(half, s)
    if i < 0:
        raise NoDestination()
    if msg.callid is None or dispatcher_load.load_add(msg.callid, half, s, i) < 0:
        log.err(MOD, "unable to update destination load - classic dispatching")
        return i, None, 0
    return i, None, 10


_USERNAME = re.compile(r'(?:^|[\s,])username\s*=\s*(?:"([^"]*)"|([^\s,]+))', re.I)


def auth_user(msg):
    """ds_hash_authusername: the user part of the digest username of the
    Proxy-Authorization header, else of the Authorization one; None without."""
    for name in ("Proxy-Authorization", "Authorization"):
        value = msg.hdr(name)
        m = _USERNAME.search(value or "")
        if m:
            return (m.group(1) if m.group(1) is not None else m.group(2)).partition("@")[0]
    return None


def _setno(s):
    return S.cache[2].order.index(s)


def _pick(half, s, h):
    """The first usable destination from h on (ds_manage_routes), -1 if none."""
    nr = len(s.dests)
    mod = nr - 1 if S.mp["use_default"] and nr != 1 else nr
    h %= mod
    i = h
    while skip_dst(flags_of(half, s, i)):
        i = (i + 1) % mod
        if i == h:
            if S.mp["use_default"]:
                i = nr - 1
                return -1 if skip_dst(flags_of(half, s, i)) else i
            return -1
    return i


class Sel:
    """ds_select_state_t: one selection (or the rules of ds_select_routes),
    its update mode, the failover records added so far and where the next go."""
    __slots__ = ("setid", "alg", "umode", "limit", "cnt", "pos", "emode")

    def __init__(self, limit, umode):
        self.limit = 0xFFFFFFFF if limit is None or limit <= 0 else limit
        self.umode, self.cnt, self.pos, self.emode = umode, 0, 0, False
        self.setid = self.alg = 0


def select(ctx, setid, alg, limit, mode):
    """ds_select_dst_limit -> 1, 2 (parallel, a branch failed) or -1."""
    if setid is None or alg is None:
        log.err(MOD, "unable to get destination set" if setid is None else "unable to get algorithm")
        return -1
    st = Sel(limit, mode)
    st.setid, st.alg = setid, alg
    ret = manage_routes(ctx, st)
    if ret < 0:
        return ret
    if not S.mp["xavp_ctx_mode"] & 1 and S.mp["xavp_ctx"]:
        _ctx_cnt(ctx, st.cnt)
    return ret


def manage_routes(ctx, st):
    """ds_manage_routes: pick from set st.setid with st.alg, set $du / the
    R-URI host (st.umode), add the failover records. -> 1, 2 or -1."""
    half, lst = S.current()
    msg = ctx.msg
    if not lst.order:
        log.err(MOD, "no destination sets")
        return -1
    if st.umode == SETOP_DSTURI and not S.mp["force_dst"] and msg.dst_uri:
        log.err(MOD, f"destination already set [{msg.dst_uri}]")
        return -1
    s = lst.set_or_log(st.setid)
    if s is None:
        return -1
    try:
        h, vlast, st.alg = _hash(ctx, s, st.alg)
    except NoDestination:
        return -1
    except Exception as e:
        log.err(MOD, str(e) if isinstance(e, ValueError) else f"can't get hash: {e!r}")
        return -1
    i = _pick(half, s, h)
    if i < 0:
        return -1
    d = s.dests[i]
    if st.umode != SETOP_XAVP:
        if push_dst(ctx, d.uri, d.socket or S.mp["ds_default_socket"], st.umode) != 0:
            log.err(MOD, f"cannot set next hop address with: {d.uri}")
            return -1
        st.emode = True
    if vlast is not None:
        S.store.cursor_cas(half, lst.order.index(s), S_LAST, vlast, (i + 1) % len(s.dests))
    if st.alg == 12:
        return add_branches(ctx, s, i, st.umode)
    if _failover():
        try:
            _fill_xavp(ctx, half, s, i, st)
        except ValueError as e:
            log.err(MOD, str(e))
            return -1
    return 1


def select_routes(ctx, rules, mode, limit=0):
    """ds_select_routes("1=4;2=8", mode[, limit]): each set=alg rule in turn;
    the first that selects sets $du (mode 0/d) or the R-URI (1/r), the rest
    only add failover records (mode 2/x: records only), one shared limit.
    -> the last success code, else the last failure."""
    if limit is None:
        log.err(MOD, "unable to get dst number limit")
        return -1
    st = Sel(limit, SETOP_XAVP)
    vret = gret = -1
    i, n = 0, len(rules)
    while i < n:
        st.setid, i = _rule_number(rules, i, "=")
        st.alg, i = _rule_number(rules, i, ";")
        if st.setid is None or st.alg is None:
            log.err(MOD, f"invalid character in [{rules}] at [{i}]")
            return -1
        st.umode = SETOP_XAVP
        if not st.emode:
            st.umode = {"0": SETOP_DSTURI, "d": SETOP_DSTURI, "1": SETOP_RURI, "r": SETOP_RURI,
                        "2": SETOP_XAVP, "x": SETOP_XAVP}.get((mode or " ")[0].lower(), -1)
            if st.umode < 0:
                log.err(MOD, f"invalid routing mode parameter: {mode}")
                return -1
        vret = manage_routes(ctx, st)
        if vret > 0:
            gret = vret
    if gret < 0:
        return vret
    if not S.mp["xavp_ctx_mode"] & 1 and S.mp["xavp_ctx"]:
        _ctx_cnt(ctx, st.cnt)
    return gret


def _rule_number(rules, i, stop):
    """Digits up to `stop` (or the end) -> (number, index after), (None, i) on junk."""
    v = 0
    while i < len(rules):
        c = rules[i]
        if c == stop:
            return v, i + 1
        if not c.isdigit():
            return None, i
        v = v * 10 + ord(c) - 48
        i += 1
    return v, i


def add_branches(ctx, s, first, mode):
    """ds_add_branches (algorithm 12): a branch for every destination after the
    chosen one (from it with ds_select()), whatever its state, as Kamailio
    adds them; t_relay() forks to them. -> 1, or 2 when one cannot be added."""
    nr = len(s.dests)
    if mode != SETOP_XAVP and first + 1 >= nr:
        return 1
    msg = ctx.msg
    try:
        user = parse_uri(msg.cur_uri).user if mode == SETOP_RURI else None
    except Exception:
        log.err(MOD, "failed to parse sip msg uri")
        return 2
    dset = list(msg.dset or ())
    for i in range(first + 1 if mode != SETOP_XAVP else first, nr):
        uri = s.dests[i].uri
        if mode != SETOP_RURI:
            dset.append(Branch(msg.cur_uri, uri))
        elif not user:
            dset.append(Branch(uri))
        elif len(uri) < 6 or not uri.lower().startswith(("sip:", "sips:")):
            log.warn(MOD, f"invalid dispatcher uri - skipping ({i})" if len(uri) < 6 else
                     "unsupported protocol schema - ignoring")
        else:
            scheme, _, rest = uri.partition(":")
            dset.append(Branch(f"{scheme}:{user}@{rest}"))
    msg.dset = dset
    return 1


def _failover():
    return S.mp["flags"] & DS_FAILOVER_ON and S.mp["xavp_dst"]


def _record(s, i, alg):
    d = s.dests[i]
    rec = {"uri": [d.uri], "grp": [s.id]}
    if alg == 10:
        if not d.duid:
            raise ValueError(f"no uid for destination: {s.id} {d.uri}")
        rec["dstid"] = [d.duid]
    if not S.mp["xavp_dst_mode"] & 1 and d.body:
        rec["attrs"] = [d.body]
    sock = d.socket or S.mp["ds_default_socket"]
    if sock:
        rec["sock"] = [sock]
        if S.mp["xavp_dst_mode"] & 2 and d.socket:
            rec["socket"] = [d.socket]
    return rec


def _fill_xavp(ctx, half, s, first, st):
    """ds_manage_routes_fill_xavp + the default entry: the chosen destination
    (always), then the usable ones after it, then those before it, while the
    selection's count is under its limit; placed after the records this
    selection added before (xavp_add_value_after)."""
    nr = len(s.dests)
    use_default = S.mp["use_default"]
    recs = [_record(s, first, st.alg)]
    for j in list(range(first + 1, nr)) + list(range(first)):
        if st.cnt + len(recs) >= st.limit:
            break
        if skip_dst(flags_of(half, s, j)) or (use_default and j == nr - 1) \
                or (st.alg == 10 and dispatcher_load.over_maxload(half, s, j)):
            continue
        recs.append(_record(s, j, st.alg))
    if use_default and first != nr - 1 and st.cnt + len(recs) < st.limit:
        recs.append(_record(s, nr - 1, st.alg))
    if ctx.xavps is None:
        ctx.xavps = XavpList()
    ctx.xavps.xavp.setdefault(S.mp["xavp_dst"], [])[st.pos:st.pos] = recs
    st.pos += len(recs)
    st.cnt += len(recs)


def _ctx_cnt(ctx, cnt):
    """xavp_add_xavp_value(_dsctx_, cnt): into the first _dsctx_ item, or a new one."""
    if ctx.xavps is None:
        ctx.xavps = XavpList()
    name = S.mp["xavp_ctx"]
    if ctx.xavps.count("xavp", name):
        ctx.xavps.set("xavp", name, 0, "cnt", None, cnt)
    else:
        ctx.xavps.set("xavp", name, None, "cnt", None, cnt)


def push_dst(ctx, uri, sock, mode):
    """ds_push_dst: $du (and the R-URI kept for the next branch), or the
    R-URI's host part (SET_HOSTALL: host, port, params, headers)."""
    msg = ctx.msg
    if mode == SETOP_RURI:
        low = uri.lower()
        rest = uri[4:] if low.startswith("sip:") and len(uri) > 4 else (
            uri[5:] if low.startswith("sips:") and len(uri) > 5 else uri)
        try:
            cur = parse_uri(msg.cur_uri)
        except Exception:
            log.err(MOD, f"error while setting r-uri domain with: {uri}")
            return -1
        userinfo = ""
        if cur.user is not None:
            userinfo = cur.raw.partition(":")[2].rpartition("@")[0] + "@"
        msg.new_uri = f"{cur.scheme}:{userinfo}{rest}"
    elif mode == SETOP_DSTURI:
        msg.dst_uri = uri
    if sock:
        idx = _sock_index(ctx.proc, sock)
        if idx is not None:
            msg.force_sock = idx
    return 0


def _sock_index(proc, spec):
    parts = split_socket(spec)
    addrs = getattr(getattr(proc, "script", None), "sock_addrs", None) or ()
    if parts is None:
        return None
    proto, host, port = parts
    for i, (p, ip, pt) in enumerate(addrs):
        if (not proto or p == proto) and ip == host.strip("[]") and (not port or int(port) == pt):
            return i
    return None


def update_dst(ctx, upos, mode):
    """ds_update_dst: ds_next_dst / ds_set_dst (and the _domain forms)."""
    if upos == USE_NEXT and not _failover():
        log.warn(MOD, "failover support disabled")
        return -1
    xl = ctx.xavps
    items = xl.xavp.get(S.mp["xavp_dst"]) if xl is not None and S.mp["xavp_dst"] else None
    if not items or type(items[0]) is not dict:
        return -1
    while True:
        if upos == USE_NEXT:
            del items[0]
            if not items or type(items[0]) is not dict:
                if not items:
                    del xl.xavp[S.mp["xavp_dst"]]
                return -1
        rc = _use_record(ctx, items[0], upos, mode)
        if rc != -2:
            return rc


def _use_record(ctx, rec, upos, mode):
    """The rest of ds_update_dst for one record: -> 1, -1, or -2 (its call-load
    destination is gone: the caller moves on to the next record)."""
    uri = (rec.get("uri") or [None])[0]
    if type(uri) is not str:
        log.warn(MOD, "no xavp uri field in next destination record")
        return -1
    sock = (rec.get("sock") or [None])[0]
    if push_dst(ctx, uri, sock if type(sock) is str else None, mode) != 0:
        log.err(MOD, f"cannot set dst addr: {uri}")
        return -1
    dstid = (rec.get("dstid") or [None])[0]
    if type(dstid) is not str or upos != USE_NEXT:
        return 1
    if ctx.msg.callid is None:
        return -1
    ret = dispatcher_load.load_replace(ctx.msg.callid, dstid)
    if ret == -2:
        log.err(MOD, f"cannot update load with {dstid}, skipping dst.")
        return -2
    if ret < 0:
        log.err(MOD, "cannot update load distribution")
        return -1
    return 1


def mark_dst(ctx, state):
    """ds_mark_dst: the state of the destination in the first _dsdst_ item."""
    if not S.mp["flags"] & DS_FAILOVER_ON:
        log.warn(MOD, "failover support disabled")
        return -1
    if not S.mp["xavp_dst"]:
        log.warn(MOD, "no xavp name to store dst records")
        return -1
    xl = ctx.xavps
    items = xl.xavp.get(S.mp["xavp_dst"]) if xl is not None else None
    rec = items[0] if items and type(items[0]) is dict else {}
    grp = (rec.get("grp") or [None])[0]
    uri = (rec.get("uri") or [None])[0]
    if type(grp) is not int or type(uri) is not str:
        return -1
    msg = ctx.msg
    if msg.is_request:
        rctx = Rctx(820)
    else:
        rctx = Rctx(int(msg.status), msg.reason, 1)
    return 1 if update_state(ctx.proc, msg, grp, uri, state, rctx) == 0 else -1


def parse_state_flags(text):
    """ds_parse_flags: a, i, d, t, p -> the bits; -1 for anything else."""
    flag = 0
    for ch in text.lower():
        if ch == "a":
            flag &= ~DS_STATES_ALL
        elif ch in "idtp":
            flag |= {"i": DS_INACTIVE_DST, "d": DS_DISABLED_DST, "t": DS_TRYING_DST,
                     "p": DS_PROBING_DST}[ch]
        else:
            return -1
    return flag


# -- ds_is_from_list ------------------------------------------------------------------------
def _same_ip(a, b):
    try:
        return ipaddress.ip_address(a.strip("[]")) == ipaddress.ip_address(b.strip("[]"))
    except ValueError:
        return False


def is_from_list(ctx, group, uri, mode):
    """ds_is_addr_from_list -> 1, -1 (no match), -2/-3 (the pv could not be set)."""
    msg = ctx.msg
    if not uri:
        ip, port, proto = msg.src[0], msg.src[1], PROTOS.get(str(msg.proto).lower(), 0)
    else:
        try:
            u = parse_uri(uri)
        except Exception:
            log.err(MOD, f"bad uri [{uri}]")
            return -1
        port, proto = u.port or 0, PROTOS.get(u.transport or "", 0)
        ip = resolve(u.host)
        if ip is None:
            log.err(MOD, f"could not resolve {u.host}")
            return -1
    _half, lst = S.current()
    sets = lst.order if group == -1 else [lst.sets[group]] if group in lst.sets else []
    for s in sets:
        rc = _match_set(ctx, s, ip, port, proto, mode, group == -1)
        if rc != -1:
            return rc
    return -1


def _match_set(ctx, s, ip, port, proto, mode, export_set):
    half = S.cache[1]
    for j, d in enumerate(s.dests):
        if d.ip is None or not _same_ip(ip, d.ip):
            continue
        if not (mode & MATCH_NOPORT or d.port == 0 or port == d.port):
            continue
        if not (mode & MATCH_NOPROTO or proto == d.proto):
            continue
        if mode & MATCH_ACTIVE and skip_dst(flags_of(half, s, j)):
            continue
        if export_set and S.setid_pv is not None and S.setid_pv.set(ctx, s.id) is False:
            log.err(MOD, "setting PV failed")
            return -2
        if S.attrs_pv is not None and d.body and S.attrs_pv.set(ctx, d.body) is False:
            log.err(MOD, "setting attrs pv failed")
            return -3
        return 1
    return -1


# -- script functions -------------------------------------------------------------------------
def _sel(mode):
    def w2(ctx, site, setid, alg):
        return select(ctx, setid, alg, None, mode)

    def w3(ctx, site, setid, alg, limit):
        if limit is None:
            log.err(MOD, "unable to get dst number limit")
            return -1
        return select(ctx, setid, alg, limit, mode)
    return w2, w3


def w_ds_mark_dst0(ctx, site):
    state = DS_INACTIVE_DST | (DS_PROBING_DST if S.mp["ds_probing_mode"] == PROBE_ALL else 0)
    return mark_dst(ctx, state)


def w_ds_mark_dst1(ctx, site, text):
    if not text:
        return w_ds_mark_dst0(ctx, site)
    state = parse_state_flags(text)
    if state < 0:
        log.warn(MOD, f"Failed to parse state flags: {text}")
        return -1
    return mark_dst(ctx, state)


def _from_list(ctx, group, mode=MATCH_NOPROTO, uri=None):
    if group is None or mode is None:
        log.err(MOD, "cannot get set id value" if group is None else "cannot get mode value")
        return -1
    return is_from_list(ctx, group, uri, mode)


def w_ds_list_exist(ctx, site, setid):
    if setid is None:
        log.err(MOD, "cannot get set id param value")
        return -2
    return 1 if setid in S.current()[1].sets else -1


def w_ds_is_active(ctx, site, setid, uri=None):
    """ds_is_active_uri: any (or this) destination of the set usable -> 1."""
    if setid is None:
        log.err(MOD, "cannot get set id value")
        return -1
    half, lst = S.current()
    s = lst.sets.get(setid)
    for j, d in enumerate(s.dests if s else ()):
        if not skip_dst(flags_of(half, s, j)) and (not uri or d.uri == uri):
            return 1
    return -1


def w_ds_load_update(ctx, site):
    return -1 if dispatcher_load.load_update(ctx.msg) < 0 else 1


def w_ds_load_unset(ctx, site):
    return -1 if dispatcher_load.load_unset(ctx, S.mp["xavp_dst"]) < 0 else 1


def w_ds_reload(ctx, site):
    return 1 if reload() is None else -1


def _warn_fixup(site):
    """ds_warn_fixup: the failover functions need both xavp names."""
    if not S.mp.get("xavp_dst", "_dsdst_") or not S.mp.get("xavp_ctx", "_dsctx_"):
        log.err(MOD, "failover functions used, but required XAVP parameters are NULL -- feature disabled")


# -- $dsv ------------------------------------------------------------------------------------
_DSV = ("code", "reason", "flags")


def _dsv_parse(inner):
    if inner not in _DSV:
        raise ValueError(f"unknown PV key: {inner}")
    return inner


def _dsv_get(ctx, spec, idx):
    r = S.rctx
    if r is None:
        return None
    return r.code if spec == "code" else r.flags if spec == "flags" else (r.reason or None)


# -- lifecycle -------------------------------------------------------------------------------
_UNBUILT = ("ds_ping_latency_stats", "ds_default_sockname", "event_callback",
            "ds_dns_mode")


def _warn_unbuilt(mp):
    for name in _UNBUILT:
        default = next(p.default for p in EXPORTS.params if p.name == name)
        if mp[name] not in (default, str(default)):
            log.warn(MOD, f"modparam {name} is not implemented by asyncd and is ignored "
                          f"(docs/kamailio-dispatcher.md)")


def _cfg_vars():
    """Kamailio's runtime cfg group "dispatcher" (src/modules/dispatcher/config.c):
    `cfg.seti dispatcher probing_threshold 3` reaches every process."""
    def setter(name):
        def apply(value):
            S.mp[name] = int(value)
        return apply

    def codes(value):
        S.reply_codes = parse_reply_codes(str(value or ""))
    return [CfgVar("probing_threshold", int, "Number of failed requests, before a destination is set "
                   "to probing.", S.mp["ds_probing_threshold"], on_change=setter("ds_probing_threshold")),
            CfgVar("inactive_threshold", int, "Number of successful requests, before a destination "
                   "is set to active.", S.mp["ds_inactive_threshold"],
                   on_change=setter("ds_inactive_threshold")),
            CfgVar("ping_reply_codes", str, "Additional, valid reply codes for the OPTIONS Pinger. "
                   "Default is \"\"", str(S.mp["ds_ping_reply_codes"] or ""), on_change=codes)]


def mod_init(script):
    mp = script.modparams[MOD]
    S.configure(script, mp)
    if script.cfg.buf is None:
        script.cfg.declare(MOD, _cfg_vars())
    _warn_unbuilt(mp)
    lst = _first_load(script)
    data = lst.dumps()
    # a DB's list is expected to grow by reloads: more room from the start
    blob, dests, sets = (256 << 10, 1024, 256) if S.db is not None else (64 << 10, 256, 64)
    S.store = DsStore(script.shm, max(blob, 4 * len(data)), max(dests, 4 * lst.ndests),
                      max(sets, 4 * len(lst.order)))
    S.cache = (None, 0, lst)
    publish(lst)
    S.current()
    dispatcher_ping.configure(S, script, mp)
    dispatcher_load.L.configure(script, mp)


def _first_load(script):
    """dispatcher.c mod_init: the list from list_file, or with db_url from the
    DB (ds_init_db; list_file is then ignored). A failure stops the startup."""
    if S.db is None:
        try:
            return load_list()
        except ListError as e:
            raise CfgError(f"dispatcher: {e}; no dispatching list loaded from file") from None
    S.db.bind(script)
    try:
        return load_list()
    except DsDbFailed as e:
        raise CfgError(f"dispatcher: could not initiate a connect to the database "
                       f"{S.db.url}: {e}") from None


def procs(script):
    """Kamailio runs ds_check_timer (pings) and ds_ht_timer (call-load expiry)
    on the core timer, or with ds_timer_mode=1 on the "secondary timer"
    (sr_wtimer); asyncd's "timer" is tm's, so they get a process titled as
    Kamailio's secondary timer."""
    jobs = dispatcher_ping.periodic_jobs()
    if dispatcher_load.L.table is not None:
        jobs.append(Periodic(float(dispatcher_load.L.interval), dispatcher_load.expire_tick))
    if not jobs:
        return []
    return [ProcRow(ROLE_TIMER, "secondary timer", PROC_TIMER, 1, TimerHandlers(every=tuple(jobs)))]


_SEL_DST, _SEL_DST3 = _sel(SETOP_DSTURI)
_SEL_DOM, _SEL_DOM3 = _sel(SETOP_RURI)
_SEL_X, _SEL_X3 = _sel(SETOP_XAVP)
_FROM_ROUTES = REQUEST_ROUTE | FAILURE_ROUTE | ONREPLY_ROUTE | BRANCH_ROUTE

EXPORTS = ModuleExports(
    name=MOD,
    functions=[
        FuncExport("ds_select", (P.INT, P.INT), _SEL_X, ANY_ROUTE),
        FuncExport("ds_select", (P.INT, P.INT, P.INT), _SEL_X3, RR_ROUTES),
        FuncExport("ds_select_dst", (P.INT, P.INT), _SEL_DST, RR_ROUTES),
        FuncExport("ds_select_dst", (P.INT, P.INT, P.INT), _SEL_DST3, RR_ROUTES),
        FuncExport("ds_select_domain", (P.INT, P.INT), _SEL_DOM, RR_ROUTES),
        FuncExport("ds_select_domain", (P.INT, P.INT, P.INT), _SEL_DOM3, RR_ROUTES),
        FuncExport("ds_select_routes", (P.STR, P.STR), lambda ctx, site, r, m: select_routes(ctx, r, m),
                   RR_ROUTES),
        FuncExport("ds_select_routes", (P.STR, P.STR, P.INT),
                   lambda ctx, site, r, m, n: select_routes(ctx, r, m, n), RR_ROUTES),
        FuncExport("ds_next_dst", (), lambda ctx, site: update_dst(ctx, USE_NEXT, SETOP_DSTURI),
                   RR_ROUTES, fixup=_warn_fixup),
        FuncExport("ds_next_domain", (), lambda ctx, site: update_dst(ctx, USE_NEXT, SETOP_RURI),
                   RR_ROUTES, fixup=_warn_fixup),
        FuncExport("ds_set_dst", (), lambda ctx, site: update_dst(ctx, USE_CRT, SETOP_DSTURI),
                   RR_ROUTES, fixup=_warn_fixup),
        FuncExport("ds_set_domain", (), lambda ctx, site: update_dst(ctx, USE_CRT, SETOP_RURI),
                   RR_ROUTES, fixup=_warn_fixup),
        FuncExport("ds_mark_dst", (), w_ds_mark_dst0, RR_ROUTES | ONREPLY_ROUTE, fixup=_warn_fixup),
        FuncExport("ds_mark_dst", (P.STR,), w_ds_mark_dst1, RR_ROUTES | ONREPLY_ROUTE,
                   fixup=_warn_fixup),
        FuncExport("ds_is_from_list", (), lambda ctx, site: _from_list(ctx, -1), _FROM_ROUTES),
        FuncExport("ds_is_from_list", (P.INT,), lambda ctx, site, g: _from_list(ctx, g), ANY_ROUTE),
        FuncExport("ds_is_from_list", (P.INT, P.INT),
                   lambda ctx, site, g, m: _from_list(ctx, g, m), ANY_ROUTE),
        FuncExport("ds_is_from_list", (P.INT, P.INT, P.STR),
                   lambda ctx, site, g, m, u: _from_list(ctx, g, m, u), ANY_ROUTE),
        FuncExport("ds_list_exist", (P.INT,), w_ds_list_exist, ANY_ROUTE),
        FuncExport("ds_list_exists", (P.INT,), w_ds_list_exist, ANY_ROUTE),
        FuncExport("ds_is_active", (P.INT,), w_ds_is_active, ANY_ROUTE),
        FuncExport("ds_is_active", (P.INT, P.STR), w_ds_is_active, ANY_ROUTE),
        FuncExport("ds_load_update", (), w_ds_load_update, ANY_ROUTE),
        FuncExport("ds_load_unset", (), w_ds_load_unset, ANY_ROUTE),
        FuncExport("ds_reload", (), w_ds_reload, ANY_ROUTE),
    ],
    params=[
        ParamExport("list_file", str, "/etc/kamailio/dispatcher.list"),
        ParamExport("db_url", str, ""),
        ParamExport("table_name", str, "dispatcher"),
        ParamExport("setid_col", str, "setid"),
        ParamExport("destination_col", str, "destination"),
        ParamExport("flags_col", str, "flags"),
        ParamExport("priority_col", str, "priority"),
        ParamExport("attrs_col", str, "attrs"),
        ParamExport("force_dst", int, 1),
        ParamExport("flags", int, 0),
        ParamExport("use_default", int, 0),
        ParamExport("xavp_dst", str, "_dsdst_"),
        ParamExport("xavp_dst_mode", int, 0),
        ParamExport("xavp_ctx", str, "_dsctx_"),
        ParamExport("xavp_ctx_mode", int, 0),
        ParamExport("hash_pvar", str, ""),
        ParamExport("setid_pvname", str, ""),
        ParamExport("attrs_pvname", str, ""),
        ParamExport("ds_probing_threshold", int, 1),
        ParamExport("ds_inactive_threshold", int, 1),
        ParamExport("ds_ping_method", str, "OPTIONS"),
        ParamExport("ds_ping_from", str, "sip:dispatcher@localhost"),
        ParamExport("ds_ping_interval", int, 0),
        ParamExport("ds_ping_reply_codes", str, ""),
        ParamExport("ds_probing_mode", int, 0),
        ParamExport("outbound_proxy", str, ""),
        ParamExport("ds_default_socket", str, ""),
        ParamExport("ds_attrs_none", int, 0),
        ParamExport("ds_load_mode", int, 0),
        ParamExport("reload_delta", int, 5),
        ParamExport("ds_timer_mode", int, 0),
        ParamExport("ds_hash_size", int, 0),
        ParamExport("ds_db_extra_attrs", str, ""),
        # accepted so that a Kamailio cfg loads; what they drive is not built
        # (docs/kamailio-dispatcher.md): a non-default value logs a warning
        ParamExport("ds_ping_latency_stats", int, 0),
        ParamExport("ds_latency_estimator_alpha", int, 900),
        ParamExport("ds_hash_expire", int, 7200),
        ParamExport("ds_hash_initexpire", int, 7200),
        ParamExport("ds_hash_check_interval", int, 30),
        ParamExport("ds_default_sockname", str, ""),
        ParamExport("event_callback", str, ""),
        ParamExport("ds_dns_mode", int, 1),
        ParamExport("ds_dns_interval", int, 600),
        ParamExport("ds_dns_ttl", int, 0),
    ],
    pvs=[PvExport("dsv", _dsv_get, None, _dsv_parse, True)],
    mod_init=mod_init,
    procs=procs,
    hooks={"reply_in": dispatcher_ping.reply_in},
    depends=(),
    rpc=DispatcherRpc(S).exports(),
)
