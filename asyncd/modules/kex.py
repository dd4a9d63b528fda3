"""kex: Kamailio's "core extensions" module, the part stock cfgs use.

Runs in: every process running routes.

Kamailio's default kamailio.cfg loads kex.so; in 5.x it exports the
destination-URI helpers (setdsturi/resetdsturi/isdsturiset and their
`duri` spellings), pv_printf and is_myself (src/modules/kex/kex_mod.c).
The flag functions it also exports (setbflag...) are core functions here.
"""
from asyncd.core.exports import FuncExport, ModuleExports, P
from asyncd.core.route_types import ANY_ROUTE


def w_setdsturi(ctx, site, uri):
    """The same as `$du = uri` (an empty value unsets it)."""
    ctx.msg.dst_uri = uri or None
    return 1


def w_resetdsturi(ctx, site):
    ctx.msg.dst_uri = None
    return 1


def w_isdsturiset(ctx, site):
    return 1 if ctx.msg.dst_uri else -1


def w_pv_printf(ctx, site, pv, text):
    """pv_printf("$var(x)", "fmt with $vars"): format, then assign."""
    pv.set(ctx, text)
    return 1


def w_is_myself(ctx, site, uri):
    script = ctx.proc.script
    return 1 if script is not None and script.is_myself(uri, True) else -1


EXPORTS = ModuleExports(
    name="kex",
    functions=[
        FuncExport("setdsturi", (P.STR,), w_setdsturi, ANY_ROUTE),
        FuncExport("setduri", (P.STR,), w_setdsturi, ANY_ROUTE),
        FuncExport("resetdsturi", (), w_resetdsturi, ANY_ROUTE),
        FuncExport("resetduri", (), w_resetdsturi, ANY_ROUTE),
        FuncExport("isdsturiset", (), w_isdsturiset, ANY_ROUTE),
        FuncExport("isduriset", (), w_isdsturiset, ANY_ROUTE),
        FuncExport("pv_printf", (P.PV, P.STR), w_pv_printf, ANY_ROUTE),
        FuncExport("is_myself", (P.STR,), w_is_myself, ANY_ROUTE),
    ],
)
