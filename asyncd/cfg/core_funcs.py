"""Core cfg functions that Kamailio implements in the core, not in a module
(setflag, force_rport, strip, prefix, rewrite*, log ...).

Runs in: every process running routes.

Kamailio: src/core/action.c (SETFLAG_T, STRIP_T, PREFIX_T, SET_*_T ...).
They are always available, like Kamailio's core actions.
"""
from asyncd.core import log
from asyncd.core.exports import FuncExport, ModuleExports, P
from asyncd.sip.uri import parse_cur_uri

MAX_FLAG = 31


def _flag_fixup(site):
    a = site.args[0]
    if a.literal:
        v = a.int_value
        if v is None or not 0 <= v <= MAX_FLAG:
            site.arg_error(0, f"{site.name}(): bad flag {a.value!r} (0..{MAX_FLAG})")


def setflag(ctx, site, n):
    if n is None or not 0 <= n <= MAX_FLAG:
        return -1
    ctx.flags |= 1 << n
    ctx.msg.flags = ctx.flags
    return 1


def resetflag(ctx, site, n):
    if n is None or not 0 <= n <= MAX_FLAG:
        return -1
    ctx.flags &= ~(1 << n)
    ctx.msg.flags = ctx.flags
    return 1


def isflagset(ctx, site, n):
    if n is None or not 0 <= n <= MAX_FLAG:
        return -1
    return 1 if ctx.flags & (1 << n) else -1


def _bflags(ctx):
    if ctx.extra is None:
        ctx.extra = {}
    return ctx.extra.get("bflags", 0)


def setbflag(ctx, site, n):
    """Branch flags of the R-URI branch (branch 0); private, as Kamailio's (docs/kamailio-async.md §7)."""
    if n is None or not 0 <= n <= MAX_FLAG:
        return -1
    ctx.extra["bflags"] = _bflags(ctx) | (1 << n)
    return 1


def resetbflag(ctx, site, n):
    if n is None or not 0 <= n <= MAX_FLAG:
        return -1
    ctx.extra["bflags"] = _bflags(ctx) & ~(1 << n)
    return 1


def isbflagset(ctx, site, n):
    if n is None or not 0 <= n <= MAX_FLAG:
        return -1
    return 1 if _bflags(ctx) & (1 << n) else -1


def force_rport(ctx, site):
    ctx.msg.force_rport = True
    return 1


def _uri_obj(ctx):
    u = parse_cur_uri(ctx.msg)
    if u is None:
        raise ValueError("R-URI cannot be parsed")
    return type(u)(u.scheme, u.user, u.password, u.host, u.port, dict(u.params), dict(u.headers))


def strip(ctx, site, n):
    u = _uri_obj(ctx)
    u.user = (u.user or "")[n or 0:] or None
    ctx.msg.new_uri = u.build()
    return 1


def strip_tail(ctx, site, n):
    u = _uri_obj(ctx)
    user = u.user or ""
    u.user = user[:max(len(user) - (n or 0), 0)] or None
    ctx.msg.new_uri = u.build()
    return 1


def prefix(ctx, site, s):
    u = _uri_obj(ctx)
    u.user = s + (u.user or "")
    ctx.msg.new_uri = u.build()
    return 1


def rewriteuser(ctx, site, s):
    u = _uri_obj(ctx)
    u.user = s or None
    ctx.msg.new_uri = u.build()
    return 1


def rewritehost(ctx, site, s):
    u = _uri_obj(ctx)
    u.host = s
    ctx.msg.new_uri = u.build()
    return 1


def rewritehostport(ctx, site, s):
    u = _uri_obj(ctx)
    host, _, port = s.rpartition(":") if ":" in s and not s.endswith("]") else (s, "", "")
    u.host = host
    u.port = int(port) if port else None
    ctx.msg.new_uri = u.build()
    return 1


def rewriteuri(ctx, site, s):
    ctx.msg.new_uri = s
    return 1


def revert_uri(ctx, site):
    ctx.msg.new_uri = None
    return 1


_LEVELS = {"L_ALERT": log.L_ALERT, "L_BUG": log.L_BUG, "L_CRIT": log.L_CRIT, "L_ERR": log.L_ERR,
           "L_WARN": log.L_WARN, "L_NOTICE": log.L_NOTICE, "L_INFO": log.L_INFO, "L_DBG": log.L_DBG}


def log1(ctx, site, text):
    log.log(log.L_ERR, "core", text.rstrip("\n"), where=site.loc.where)
    return 1


def log2(ctx, site, level, text):
    log.log(level if level is not None else log.L_ERR, "core", text.rstrip("\n"), where=site.loc.where)
    return 1


def tcp_only(ctx, site):
    """set_reply_no_connect() & co. tune TCP connections; asyncd is UDP-only,
    so they succeed and change nothing (stock kamailio.cfg calls one)."""
    return 1


def true_(ctx, site):
    return 1


def false_(ctx, site):
    return -1


EXPORTS = ModuleExports(
    name="core",
    functions=[
        FuncExport("setflag", (P.INT,), setflag, fixup=_flag_fixup),
        FuncExport("resetflag", (P.INT,), resetflag, fixup=_flag_fixup),
        FuncExport("isflagset", (P.INT,), isflagset, fixup=_flag_fixup),
        FuncExport("setbflag", (P.INT,), setbflag, fixup=_flag_fixup),
        FuncExport("resetbflag", (P.INT,), resetbflag, fixup=_flag_fixup),
        FuncExport("isbflagset", (P.INT,), isbflagset, fixup=_flag_fixup),
        FuncExport("force_rport", (), force_rport),
        FuncExport("add_local_rport", (), true_),
        FuncExport("add_rport", (), force_rport),
        FuncExport("strip", (P.INT,), strip),
        FuncExport("strip_tail", (P.INT,), strip_tail),
        FuncExport("prefix", (P.STR,), prefix),
        FuncExport("rewriteuser", (P.STR,), rewriteuser),
        FuncExport("setuser", (P.STR,), rewriteuser),
        FuncExport("rewritehost", (P.STR,), rewritehost),
        FuncExport("sethost", (P.STR,), rewritehost),
        FuncExport("rewritehostport", (P.STR,), rewritehostport),
        FuncExport("sethostport", (P.STR,), rewritehostport),
        FuncExport("rewriteuri", (P.STR,), rewriteuri),
        FuncExport("seturi", (P.STR,), rewriteuri),
        FuncExport("revert_uri", (), revert_uri),
        FuncExport("set_reply_no_connect", (), tcp_only),
        FuncExport("set_forward_no_connect", (), tcp_only),
        FuncExport("set_reply_close", (), tcp_only),
        FuncExport("set_forward_close", (), tcp_only),
        FuncExport("log", (P.STR,), log1),
        FuncExport("log", (P.INT, P.STR), log2),
        FuncExport("true", (), true_),
        FuncExport("false", (), false_),
    ],
)
