"""The siputils module: has_totag, is_request, is_reply, is_first_hop (and a few cheap helpers).

Runs in: every process running routes.

Kamailio: src/modules/siputils/checks.c, siputils.c, sipops.c.
"""
import ipaddress

from asyncd.core.exports import FuncExport, ModuleExports, P, ParamExport
from asyncd.core.route_types import ANY_ROUTE
from asyncd.modules import rr
from asyncd.sip.uri import parse_cur_uri, parse_uri, parse_uri_cached


def w_has_totag(ctx, site):
    try:
        return 1 if ctx.msg.to_tag else -1
    except Exception:       # unparsable To: no tag as far as the script knows
        return -1


def w_is_request(ctx, site):
    return 1 if ctx.msg.is_request else -1


def w_is_reply(ctx, site):
    return -1 if ctx.msg.is_request else 1


def w_is_user(ctx, site, user):
    m = ctx.msg
    try:
        u = parse_uri_cached(m.from_.uri)
    except Exception:
        return -1
    return 1 if u is not None and u.user == user else -1


# uri_param(name) and uri_param(name, value) stay two functions: a $null
# value is compared, not taken to mean "any value"
def w_uri_param_1(ctx, site, name):
    u = parse_cur_uri(ctx.msg)
    return 1 if u is not None and name.lower() in u.params else -1


def w_uri_param_2(ctx, site, name, value):
    u = parse_cur_uri(ctx.msg)
    return 1 if u is not None and u.params.get(name.lower()) == value else -1


def is_first_hop(ctx, mode=0):
    """sipops.c is_first_hop_mode(). A request: 1 without a second Via value
    (or one that does not parse). A reply: 1 without Record-Route; else the top
    Record-Route must be ours (mode 0: an IP address, and the reply not from that
    same address and port: a loop)."""
    msg = ctx.msg
    if msg.is_request:
        try:
            return -1 if msg.via2 is not None else 1
        except Exception:           # a second Via that does not parse counts as none
            return 1
    try:
        rrs = msg.record_routes
        if not rrs:
            return 1
        u = parse_uri(rrs[0].uri)
    except Exception:
        return -1
    host = (u.host or "").strip("[]")
    if mode == 0 and not _is_ip(host):
        return -1
    if not rr.is_myself(ctx, u):
        return -1
    if mode == 0 and msg.src[0] == host and msg.src[1] == (u.port or 5060) \
            and (u.transport or "udp") == msg.proto:
        return -1                   # sent to us by ourselves: a loop
    return 1


def _is_ip(host):
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def w_is_first_hop(ctx, site, mode=0):
    return is_first_hop(ctx, mode or 0)


EXPORTS = ModuleExports(
    name="siputils",
    functions=[
        FuncExport("has_totag", (), w_has_totag, ANY_ROUTE),
        FuncExport("is_request", (), w_is_request, ANY_ROUTE),
        FuncExport("is_reply", (), w_is_reply, ANY_ROUTE),
        FuncExport("is_first_hop", (), w_is_first_hop, ANY_ROUTE),
        FuncExport("is_first_hop", (P.INT,), w_is_first_hop, ANY_ROUTE),
        FuncExport("is_user", (P.STR,), w_is_user, ANY_ROUTE),
        FuncExport("uri_param", (P.STR,), w_uri_param_1, ANY_ROUTE),
        FuncExport("uri_param", (P.STR, P.STR), w_uri_param_2, ANY_ROUTE),
    ],
    params=[ParamExport("options_accept", str, "*/*"),
            ParamExport("options_support", str, ""),
            ParamExport("rpid_prefix", str, ""), ParamExport("rpid_suffix", str, "")],
)
