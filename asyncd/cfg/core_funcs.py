"""Core cfg functions that Kamailio implements in the core, not in a module
(setflag, force_rport, strip, prefix, rewrite*, log ...).

Runs in: every process running routes.

Kamailio: src/core/action.c (SETFLAG_T, STRIP_T, PREFIX_T, SET_*_T ...).
They are always available, like Kamailio's core actions.
"""
from asyncd.core import log
from asyncd.core.exports import FuncExport, ModuleExports, P
from asyncd.core.params import split_socket
from asyncd.sip.uri import parse_cur_uri

MAX_FLAG = 31


def _flag_fixup(site):
    a = site.args[0]
    if a.literal:
        v = a.int_value
        if v is None or not 0 <= v <= MAX_FLAG:
            site.arg_error(0, f"{site.name}(): bad flag {a.value!r} (0..{MAX_FLAG})")


def w_setflag(ctx, site, n):
    if n is None or not 0 <= n <= MAX_FLAG:
        return -1
    ctx.flags |= 1 << n
    ctx.msg.flags = ctx.flags
    return 1


def w_resetflag(ctx, site, n):
    if n is None or not 0 <= n <= MAX_FLAG:
        return -1
    ctx.flags &= ~(1 << n)
    ctx.msg.flags = ctx.flags
    return 1


def w_isflagset(ctx, site, n):
    if n is None or not 0 <= n <= MAX_FLAG:
        return -1
    return 1 if ctx.flags & (1 << n) else -1


def _bflags(ctx):
    if ctx.extra is None:
        ctx.extra = {}
    return ctx.extra.get("bflags", 0)


def w_setbflag(ctx, site, n):
    """Branch flags of the R-URI branch (branch 0); private, as Kamailio's (docs/kamailio-async.md §7)."""
    if n is None or not 0 <= n <= MAX_FLAG:
        return -1
    ctx.extra["bflags"] = _bflags(ctx) | (1 << n)
    return 1


def w_resetbflag(ctx, site, n):
    if n is None or not 0 <= n <= MAX_FLAG:
        return -1
    ctx.extra["bflags"] = _bflags(ctx) & ~(1 << n)
    return 1


def w_isbflagset(ctx, site, n):
    if n is None or not 0 <= n <= MAX_FLAG:
        return -1
    return 1 if _bflags(ctx) & (1 << n) else -1


def w_force_rport(ctx, site):
    ctx.msg.force_rport = True
    return 1


def _uri_obj(ctx):
    u = parse_cur_uri(ctx.msg)
    if u is None:
        raise ValueError("R-URI cannot be parsed")
    return type(u)(u.scheme, u.user, u.password, u.host, u.port, dict(u.params), dict(u.headers))


def w_strip(ctx, site, n):
    u = _uri_obj(ctx)
    u.user = (u.user or "")[n or 0:] or None
    ctx.msg.new_uri = u.build()
    return 1


def w_strip_tail(ctx, site, n):
    u = _uri_obj(ctx)
    user = u.user or ""
    u.user = user[:max(len(user) - (n or 0), 0)] or None
    ctx.msg.new_uri = u.build()
    return 1


def w_prefix(ctx, site, s):
    u = _uri_obj(ctx)
    u.user = s + (u.user or "")
    ctx.msg.new_uri = u.build()
    return 1


def w_rewriteuser(ctx, site, s):
    u = _uri_obj(ctx)
    u.user = s or None
    ctx.msg.new_uri = u.build()
    return 1


def w_rewritehost(ctx, site, s):
    u = _uri_obj(ctx)
    u.host = s
    ctx.msg.new_uri = u.build()
    return 1


def w_rewritehostport(ctx, site, s):
    u = _uri_obj(ctx)
    host, _, port = s.rpartition(":") if ":" in s and not s.endswith("]") else (s, "", "")
    u.host = host
    u.port = int(port) if port else None
    ctx.msg.new_uri = u.build()
    return 1


def w_rewriteuri(ctx, site, s):
    ctx.msg.new_uri = s
    return 1


def w_revert_uri(ctx, site):
    ctx.msg.new_uri = None
    return 1


# log(text) and log(level, text): the argument positions differ, so one
# function per arity
def w_log_1(ctx, site, text):
    log.log(log.L_ERR, "core", text.rstrip("\n"), where=site.loc.where)
    return 1


def w_log_2(ctx, site, level, text):
    log.log(level if level is not None else log.L_ERR, "core", text.rstrip("\n"), where=site.loc.where)
    return 1


# TCP send flags (Kamailio's SND_F_FORCE_CON_REUSE / SND_F_CON_CLOSE, src/core/ip_addr.h):
# set on the message, honoured where a reply (rpl_flags) or a forwarded request
# (fwd_flags) is handed to tcp main (asyncd.ipc.tcp SND_NO_CONNECT, SND_CLOSE)
_NO_CONNECT, _CLOSE = 1, 2


def w_set_reply_no_connect(ctx, site):
    """A reply to this request uses the connection it came on, or none: never a new one."""
    ctx.msg.rpl_flags |= _NO_CONNECT
    return 1


def w_set_forward_no_connect(ctx, site):
    """The forwarded request uses an open connection to the next hop, or fails."""
    ctx.msg.fwd_flags |= _NO_CONNECT
    return 1


def w_set_reply_close(ctx, site):
    """The connection the request came on is closed once the reply is written."""
    ctx.msg.rpl_flags |= _CLOSE
    return 1


def w_set_forward_close(ctx, site):
    """The connection the request goes out on is closed once it is written."""
    ctx.msg.fwd_flags |= _CLOSE
    return 1


def w_force_tcp_alias(ctx, site, port=None):
    """Kamailio's force_tcp_alias([port]): whatever is sent to the source IP and
    `port` (default: the top Via's port, else 5060) reuses the connection this
    request came on (phones behind NAT listen on the Via port but connect from
    another one). -1 for a request that did not come over TCP."""
    msg = ctx.msg
    if msg.proto != "tcp" or not msg.conid:
        return -1
    if port is None:
        v = msg.via1
        port = (v.port if v is not None else None) or 5060
    try:
        ctx.proc.sockets[msg.sock].alias(msg.conid, msg.src[0], int(port))
    except (AttributeError, IndexError, OSError, ValueError) as e:
        log.err("core", f"force_tcp_alias(): {e!r}", where=site.loc.where)
        return -1
    return 1


def w_force_send_socket(ctx, site, spec):
    """force_send_socket([proto:]ip[:port]): forwarded requests leave from this
    listen socket (Kamailio's FORCE_SEND_SOCKET_T); -1 when it is not one of ours."""
    index = _find_socket(ctx.proc.script, str(spec))
    if index is None:
        log.err("core", f"force_send_socket(): '{spec}' is not a listen socket", where=site.loc.where)
        return -1
    ctx.msg.force_sock = index
    return 1


def _find_socket(script, spec):
    parts = split_socket(spec)
    if parts is None:
        return None
    proto, host, port = parts
    for i, (p, ip, pt) in enumerate(getattr(script, "sock_addrs", None) or ()):
        if (proto is None or p == proto) and ip == host and (not port or int(port) == pt):
            return i
    return None


def w_add_local_rport(ctx, site):
    """Accepted so stock cfgs load; succeeds and changes nothing."""
    return 1


def w_true(ctx, site):
    return 1


def w_false(ctx, site):
    return -1


EXPORTS = ModuleExports(
    name="core",
    functions=[
        FuncExport("setflag", (P.INT,), w_setflag, fixup=_flag_fixup),
        FuncExport("resetflag", (P.INT,), w_resetflag, fixup=_flag_fixup),
        FuncExport("isflagset", (P.INT,), w_isflagset, fixup=_flag_fixup),
        FuncExport("setbflag", (P.INT,), w_setbflag, fixup=_flag_fixup),
        FuncExport("resetbflag", (P.INT,), w_resetbflag, fixup=_flag_fixup),
        FuncExport("isbflagset", (P.INT,), w_isbflagset, fixup=_flag_fixup),
        FuncExport("force_rport", (), w_force_rport),
        FuncExport("add_local_rport", (), w_add_local_rport),
        FuncExport("add_rport", (), w_force_rport),
        FuncExport("strip", (P.INT,), w_strip),
        FuncExport("strip_tail", (P.INT,), w_strip_tail),
        FuncExport("prefix", (P.STR,), w_prefix),
        FuncExport("rewriteuser", (P.STR,), w_rewriteuser),
        FuncExport("setuser", (P.STR,), w_rewriteuser),
        FuncExport("rewritehost", (P.STR,), w_rewritehost),
        FuncExport("sethost", (P.STR,), w_rewritehost),
        FuncExport("rewritehostport", (P.STR,), w_rewritehostport),
        FuncExport("sethostport", (P.STR,), w_rewritehostport),
        FuncExport("rewriteuri", (P.STR,), w_rewriteuri),
        FuncExport("seturi", (P.STR,), w_rewriteuri),
        FuncExport("revert_uri", (), w_revert_uri),
        FuncExport("set_reply_no_connect", (), w_set_reply_no_connect),
        FuncExport("set_forward_no_connect", (), w_set_forward_no_connect),
        FuncExport("set_reply_close", (), w_set_reply_close),
        FuncExport("set_forward_close", (), w_set_forward_close),
        FuncExport("force_tcp_alias", (), w_force_tcp_alias),
        FuncExport("force_tcp_alias", (P.INT,), w_force_tcp_alias),
        FuncExport("force_send_socket", (P.STR,), w_force_send_socket),
        FuncExport("log", (P.STR,), w_log_1),
        FuncExport("log", (P.INT, P.STR), w_log_2),
        FuncExport("true", (), w_true),
        FuncExport("false", (), w_false),
    ],
)
