"""The textops module: is_method, append_hf, remove_hf, is_present_hf,
search, append_to_reply, has_body.

Runs in: every process running routes.

Kamailio: src/modules/textops/textops.c. Header changes are recorded on the
message (hdr_adds / hdr_removes / reply_lumps, contracts §3) and applied when
tm or sl builds the outgoing message, as Kamailio's lumps are.
"""
from asyncd.core.exports import FuncExport, ModuleExports, P
from asyncd.core.route_types import ANY_ROUTE, FAILURE_ROUTE, REQUEST_ROUTE, BRANCH_ROUTE

REQ_ROUTES = REQUEST_ROUTE | FAILURE_ROUTE | BRANCH_ROUTE


def _methods(s):
    return frozenset(m.strip().upper() for m in s.split("|") if m.strip())


def _method_fixup(site):
    a = site.args[0]
    if a.literal:
        ms = _methods(str(a.value))
        if not ms:
            site.arg_error(0, "is_method(): empty method list")
        site.data["methods"] = ms


def w_is_method(ctx, site, s):
    ms = site.data.get("methods")
    if ms is None:
        ms = _methods(s)
    m = ctx.msg
    meth = m.method if m.is_request else m.cseq_method
    if meth is None:
        return -1
    return 1 if (meth in ms or meth.upper() in ms) else -1


def w_append_hf(ctx, site, text, after=None):
    """append_hf(text[, after]): added headers go last; `after` is accepted
    and not used (Kamailio inserts after that header)."""
    ctx.msg.hdr_adds.append(text)
    return 1


def w_remove_hf(ctx, site, name):
    m = ctx.msg
    n = m.hdr_count(name)
    m.hdr_removes.add(name.strip().lower())
    return n if n > 0 else -1


def w_is_present_hf(ctx, site, name):
    m = ctx.msg
    if name.strip().lower() in m.hdr_removes:
        return -1
    return 1 if m.hdr_count(name) > 0 else -1


def w_search(ctx, site, rx):
    text = ctx.msg.buf.decode("utf-8", "replace")
    return 1 if rx.search(text) else -1


def w_search_body(ctx, site, rx):
    return 1 if rx.search(ctx.msg.body.decode("utf-8", "replace")) else -1


def w_append_to_reply(ctx, site, text):
    ctx.msg.reply_lumps.append(text)
    return 1


# has_body() and has_body(mime) stay two functions: a $null mime is an
# error (logged, -1), not "any type"
def w_has_body_0(ctx, site):
    return 1 if ctx.msg.body else -1


def w_has_body_1(ctx, site, mime):
    m = ctx.msg
    if not m.body:
        return -1
    ct = (m.hdr("Content-Type") or "").split(";")[0].strip().lower()
    return 1 if ct == mime.strip().lower() else -1


def w_starts_with(ctx, site, text, prefix):
    """textops.c ki_starts_with(): 1 when `text` begins with `prefix` (case-sensitive)."""
    return 1 if len(text) >= len(prefix) and text.startswith(prefix) else -1


EXPORTS = ModuleExports(
    name="textops",
    functions=[
        FuncExport("is_method", (P.STR,), w_is_method, ANY_ROUTE, _method_fixup),
        FuncExport("append_hf", (P.STR,), w_append_hf, ANY_ROUTE),
        FuncExport("append_hf", (P.STR, P.STR), w_append_hf, ANY_ROUTE),
        FuncExport("remove_hf", (P.STR,), w_remove_hf, ANY_ROUTE),
        FuncExport("is_present_hf", (P.STR,), w_is_present_hf, ANY_ROUTE),
        FuncExport("search", (P.REGEX,), w_search, ANY_ROUTE),
        FuncExport("search_body", (P.REGEX,), w_search_body, ANY_ROUTE),
        FuncExport("append_to_reply", (P.STR,), w_append_to_reply, REQ_ROUTES),
        FuncExport("has_body", (), w_has_body_0, ANY_ROUTE),
        FuncExport("has_body", (P.STR,), w_has_body_1, ANY_ROUTE),
        FuncExport("starts_with", (P.STR, P.STR), w_starts_with, ANY_ROUTE),
    ],
)
