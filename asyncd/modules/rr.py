"""rr: Record-Route insertion and loose routing (Kamailio's rr module,
RFC 3261 16.4, 16.6 step 4, 16.12).

Runs in: main process (mod_init), udp receivers, async task workers (any
process running a request route).

record_route() adds `Record-Route: <sip:IP:PORT;lr;ftag=...>` for the socket
the request came in on. loose_route() consumes a top Route that is ours and
routes by the next one ($du), or by a foreign top Route directly; it also
undoes a strict router's R-URI rewrite (16.4). Returns 1 when the request was
routed by Route headers, -1 when there were none (an initial request), -3
when an initial request's preloaded Route set was only us (Kamailio's
RR_PRELOADED: false in the script, the Route is removed all the same).
add_rr_param() adds to our Record-Route (before or after record_route());
check_route_param() and is_direction() read the parameters of the Route
that loose_route() found to be ours (Kamailio: record.c, loose.c).
"""
import re

from asyncd.core import log
from asyncd.core.exports import FuncExport, ModuleExports, P, ParamExport
from asyncd.core.route_types import REQUEST_ROUTE, FAILURE_ROUTE, BRANCH_ROUTE
from asyncd.sip import parse_uri
from asyncd.sip.hdrs import split_commas

MOD = "rr"


class RrState:
    """The append_fromtag modparam: set in main by mod_init, inherited by
    every child. (The addresses that mean us are cached per process in
    proc.extra["rr_ours"]: they come from that process's sockets.)"""
    __slots__ = ("append_fromtag", "double_rr")

    def __init__(self):
        self.append_fromtag = None
        self.double_rr = 1

    def configure(self, mp):
        """`mp` holds every modparam of the export table."""
        self.append_fromtag = bool(mp["append_fromtag"])
        self.double_rr = int(mp["enable_double_rr"])


S = RrState()


def _our_addrs(ctx):
    """(host, port) pairs that mean us: our sockets and the cfg aliases."""
    proc = ctx.proc
    cache = proc.extra.get("rr_ours") if proc.extra is not None else None
    if cache is not None:
        return cache
    ours = set()
    for s in proc.sockets:
        try:
            ip, port = s.getsockname()[:2]
        except OSError:
            continue
        ours.add((ip, port))
        if ip == "127.0.0.1":
            ours.add(("localhost", port))
    script = proc.script
    aliases = (getattr(script, "core", None) or {}).get("alias") or []
    if isinstance(aliases, str):
        aliases = [aliases]
    ports = {p for _, p in ours} or {5060}
    for a in aliases:
        host, port = (a[1], a[2]) if isinstance(a, (tuple, list)) else (str(a), None)
        for p in ([int(port)] if port else ports):
            ours.add((str(host).lower(), p))
    proc.extra["rr_ours"] = ours
    return ours


def is_myself(ctx, uri):
    """The URI names one of our addresses (Kamailio check_self)."""
    try:
        u = parse_uri(uri) if isinstance(uri, str) else uri
    except Exception:
        return False
    host = (u.host or "").lower().strip("[]")
    return (host, u.port or 5060) in _our_addrs(ctx)


def _rr_uri(ip, port, proto, tail):
    """Our Record-Route URI for a socket: `;transport=` for anything but UDP (a
    later in-dialog request must reach us over the same transport)."""
    host = "[%s]" % ip if ":" in ip else ip
    tp = "" if proto in (None, "udp") else ";transport=" + proto
    return "sip:%s:%d%s%s" % (host, port, tp, tail)


class _DoubleRR:
    """Kamailio's enable_double_rr: when a request leaves from another socket
    (UDP in, TCP out; another interface) than it came on, two Record-Routes
    with `;r2=on`, the outbound one on top, so each side of the dialog routes
    back to the socket it knows (rr's record_route and loose_route, r2).
    Called by tm for the socket a branch leaves from."""
    __slots__ = ("pos", "inbound", "tail", "addrs", "always")

    def __init__(self, pos, inbound, tail, addrs, always):
        self.pos, self.inbound, self.tail, self.addrs, self.always = pos, inbound, tail, addrs, always

    def __call__(self, sock):
        """(outbound RR line, inbound RR line) replacing our single one, or None."""
        if not 0 <= sock < len(self.addrs):
            return None
        out = self.addrs[sock]
        if out == self.inbound and not self.always:
            return None
        line = "Record-Route: <%s>\r\n"
        tail = ";r2=on" + self.tail
        return (line % _rr_uri(out[1], out[2], out[0], tail),
                line % _rr_uri(self.inbound[1], self.inbound[2], self.inbound[0], tail))


def record_route(ctx, params=None):
    msg = ctx.msg
    ip, port = msg.dst[0], msg.dst[1]
    tail = ";lr"
    try:
        ft = msg.from_tag
    except Exception:
        ft = None
    if ft and S.append_fromtag:
        tail += ";ftag=" + ft
    if params:
        tail += params if params.startswith(";") else ";" + params
    tail += getattr(msg, "_rr_params", "")      # add_rr_param() before record_route()
    uri = _rr_uri(ip, port, msg.proto, tail)
    existing = msg.hdrs("record-route")
    pos = msg._rr_pos = len(msg.hdr_adds)
    if existing and "record-route" not in msg.hdr_removes:
        # ours must be the topmost value (RFC 3261 16.6 step 4) but added headers
        # go last: move the received ones after it, order kept
        msg.hdr_removes.add("record-route")
        msg.hdr_adds.append("Record-Route: <%s>\r\n" % uri)
        msg.hdr_adds.extend("Record-Route: %s\r\n" % v for v in existing)
    else:
        msg.hdr_adds.append("Record-Route: <%s>\r\n" % uri)
    addrs = getattr(ctx.proc.script, "sock_addrs", None)
    if S.double_rr and addrs and 0 <= (msg.sock or 0) < len(addrs):
        msg.rr_out = _DoubleRR(pos, addrs[msg.sock or 0], tail, addrs, S.double_rr == 2)
    return 1


def _uri_of(value):
    v = value.strip()
    if "<" in v:
        return v[v.index("<") + 1:v.index(">", v.index("<"))]
    return v.split(";", 1)[0]


def _preloaded(msg):
    """loose.c is_preloaded(): no To tag (a To that does not parse counts as none)."""
    try:
        return not msg.to_tag
    except Exception:
        return True


def loose_route(ctx):
    msg = ctx.msg
    routes = []
    for line in msg.hdrs("route"):
        routes.extend(r.strip() for r in split_commas(line) if r.strip())
    if not routes:
        return -1
    changed = False
    first = _uri_of(routes[0])
    if is_myself(ctx, first):
        routes.pop(0)
        changed = True
        msg._rr_routed = _uri_params(first)
        if routes and ";r2=on" in first.lower() and is_myself(ctx, _uri_of(routes[0])):
            routes.pop(0)       # the other half of our double Record-Route
        if not routes:
            msg.hdr_removes.add("route")
            # last hop of the route set: route by the R-URI. An initial request (no
            # To tag) had it preloaded: Kamailio's RR_PRELOADED, -3 (loose.c after_loose)
            return -3 if _preloaded(msg) else 1
        first = _uri_of(routes[0])
    try:
        pu = parse_uri(first)
    except Exception:
        log.err(MOD, f"loose_route(): bad Route URI '{first}'")
        return -1
    if "lr" in (pu.params or {}):
        msg.dst_uri = first
    else:
        # next hop is a strict router: it gets the R-URI, ours goes last (16.6 step 6)
        routes.pop(0)
        routes.append("<%s>" % msg.cur_uri)
        msg.new_uri = first
        changed = True
    if changed:
        msg.hdr_removes.add("route")
        for r in routes:
            msg.hdr_adds.append("Route: %s\r\n" % r)
    return 1


def _uri_params(uri):
    """The parameters of a Route URI with their leading ';' (Kamailio's routed_params,
    loose.c: what check_route_param() and is_direction() look at)."""
    semi = uri.find(";")
    return uri[semi:].split("?", 1)[0] if semi >= 0 else ""


def add_rr_param(ctx, param):
    """record.c add_rr_param(): into our Record-Route when record_route() ran on this
    message (both of a double Record-Route), else kept for the record_route() to come."""
    msg = ctx.msg
    pos = getattr(msg, "_rr_pos", None)
    if pos is None or pos >= len(msg.hdr_adds):
        msg._rr_params = getattr(msg, "_rr_params", "") + param
        return 1
    line = msg.hdr_adds[pos]
    gt = line.rfind(">")
    msg.hdr_adds[pos] = line[:gt] + param + line[gt:]
    if msg.rr_out is not None:
        msg.rr_out.tail += param
    return 1


def check_route_param(ctx, rx):
    """loose.c check_route_param(): the regex (case-insensitive, as Kamailio's
    fixup_regexp_null compiles it) against the params of the Route that was ours."""
    params = getattr(ctx.msg, "_rr_routed", "")
    if not params:
        return -1
    return 1 if re.search(rx.pattern, params, rx.flags | re.I) else -1


def is_direction(ctx, direction):
    """loose.c is_direction(): upstream when the ftag of our Route differs from the
    From tag; downstream otherwise (no ftag, no From tag)."""
    params = getattr(ctx.msg, "_rr_routed", "")
    ftag = ""
    for p in params.split(";")[1:]:
        name, _, val = p.partition("=")
        if name.strip().lower() == "ftag":
            ftag = val.strip()
            break
    try:
        tag = ctx.msg.from_tag
    except Exception:
        tag = None
    flow = "upstream" if ftag and tag and tag != ftag else "downstream"
    return 1 if flow == direction else -1


def _fixup_direction(site):
    a = site.args[0]
    if a.literal and str(a.value).lower() not in ("upstream", "downstream"):
        site.arg_error(0, f"is_direction(): unknown direction {a.value!r} (upstream, downstream)")
    if not S.append_fromtag:
        site.arg_error(0, 'usage of "is_direction" function requires parameter "append_fromtag" enabled')


def w_add_rr_param(ctx, site, param):
    return add_rr_param(ctx, param)


def w_check_route_param(ctx, site, rx):
    return check_route_param(ctx, rx)


def w_is_direction(ctx, site, direction):
    return is_direction(ctx, direction.lower())


def w_record_route(ctx, site, params=None):
    return record_route(ctx, params)


def w_loose_route(ctx, site):
    try:
        return loose_route(ctx)
    except Exception as e:
        log.err(MOD, f"loose_route(): {e!r}")
        return -1


def mod_init(script):
    S.configure(script.modparams[MOD])


EXPORTS = ModuleExports(
    name=MOD,
    functions=[
        FuncExport("record_route", (), w_record_route, REQUEST_ROUTE | BRANCH_ROUTE | FAILURE_ROUTE),
        FuncExport("record_route", (P.STR,), w_record_route, REQUEST_ROUTE | BRANCH_ROUTE | FAILURE_ROUTE),
        FuncExport("loose_route", (), w_loose_route, REQUEST_ROUTE),
        FuncExport("add_rr_param", (P.STR,), w_add_rr_param, REQUEST_ROUTE | BRANCH_ROUTE | FAILURE_ROUTE),
        FuncExport("check_route_param", (P.REGEX,), w_check_route_param, REQUEST_ROUTE),
        FuncExport("is_direction", (P.STR,), w_is_direction, REQUEST_ROUTE, _fixup_direction),
    ],
    # Kamailio's rr modparams, accepted so stock cfgs load unchanged; append_fromtag
    # (no ;ftag= when 0) and enable_double_rr (0 never, 1 when the sockets differ, 2 always)
    # change what asyncd does.
    params=[ParamExport("enable_full_lr", int, 0), ParamExport("append_fromtag", int, 1),
            ParamExport("enable_double_rr", int, 1), ParamExport("add_username", int, 0),
            ParamExport("enable_socket_mismatch_warning", int, 1),
            ParamExport("custom_user_avp", str, ""), ParamExport("force_send_socket", int, 0),
            ParamExport("ignore_user", int, 0), ParamExport("ignore_sips", int, 0)],
    mod_init=mod_init,
)

S.configure(EXPORTS.param_defaults())     # until mod_init: the export table's defaults
