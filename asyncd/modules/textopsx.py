"""The textopsx module: msg_apply_changes, change_reply_status(_code),
remove_body, keep_hf, fnmatch, append_hf_value, remove_hf_value.

Runs in: every process running routes.

Kamailio: src/modules/textopsx/textopsx.c, src/core/msg_translator.c
(sip_msg_apply_changes). asyncd records header changes on the message
(msg.hdr_adds / msg.hdr_removes, docs/contracts.md §3) instead of lumps.
msg_apply_changes() writes them into the message and parses it again, as
Kamailio does. Differences (docs/kamailio-nat-acc.md "textopsx"):
append_hf_value / remove_hf_value / change_reply_status edit the message
at once (Kamailio queues lumps), so $hdr() sees the change before
msg_apply_changes(); the indexed forms `Name[n]` and `.param` are refused at
startup.
"""
import fnmatch as fnm
import re

from asyncd.core import log
from asyncd.core.exports import FuncExport, ModuleExports, P
from asyncd.core.route_types import (ANY_ROUTE, BRANCH_ROUTE, FAILURE_ROUTE, ONREPLY_ROUTE,
                                     REQUEST_ROUTE)
from asyncd.sip import parse_msg
from asyncd.sip.hdrs import canon, split_commas

MOD = "textopsx"
HF_ROUTES = REQUEST_ROUTE | ONREPLY_ROUTE | FAILURE_ROUTE | BRANCH_ROUTE
MAX_HF_VALUE_STACK = 10
_HNAME_RE = re.compile(r"\s*([A-Za-z0-9_-]+)\s*(\[\s*(\*|-?\d*)\s*\])?\s*(\.\s*[A-Za-z0-9_-]*)?\s*\Z")
# keep_hf never removes these (textopsx.c keep_hf_helper)
_KEEP_ALWAYS = frozenset(("from", "to", "call-id", "cseq", "via", "contact", "content-length",
                          "content-type", "route", "record-route", "max-forwards"))
# parse products: everything else the script set on the message survives a re-parse
_FROM_PARSE_KEEP = ("id", "rcv_time", "reply_lumps", "hdr_adds", "hdr_removes")


# ---- re-parsing a changed message ----------------------------------------------------
def update_buffer(msg, buf):
    """Kamailio's sip_msg_update_buffer: parse `buf` and put it in place of
    msg's text, keeping what the script set (flags, $du, new R-URI, lumps).
    1 ok, -1 the new text does not parse (msg unchanged)."""
    try:
        new = parse_msg(buf, msg.src, msg.dst, msg.sock, msg.proto)
    except Exception as e:      # SipParseError; a bad rewrite must not kill the process
        log.err(MOD, f"cannot parse the updated message: {e}")
        return -1
    keep = {k: v for k, v in msg.__dict__.items()
            if not k.startswith("_") and (k not in new.__dict__ or k in _FROM_PARSE_KEEP)}
    msg.__dict__.clear()
    msg.__dict__.update(new.__dict__)
    msg.__dict__.update(keep)
    return 1


def _head_lines(msg, drop=(), replace=None):
    """The header lines as received minus `drop` (canonical names); `replace`
    maps a canonical name to the lines that stand in its first occurrence."""
    raw, out, done = msg._raw, [], set()
    for i, (key, _name, _value) in enumerate(msg._hl):
        if key in drop:
            continue
        if replace is not None and key in replace:
            if key not in done:
                done.add(key)
                out.extend(replace[key])
            continue
        out.append(raw[i + 1])
    return out


def _assemble(first, lines, body):
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogateescape")
    lines = [ln for ln in lines if canon(ln.split(":", 1)[0].strip() or "x") != "content-length"]
    text = "\r\n".join([first] + lines + ["Content-Length: %d" % len(body), "", ""])
    return text.encode("utf-8", "surrogateescape") + body


def _pending_lines(msg):
    return [h[:-2] if h.endswith("\r\n") else h for h in msg.hdr_adds]


# ---- msg_apply_changes ---------------------------------------------------------------
def w_msg_apply_changes(ctx, site):
    """1 applied, -1 refused: a request outside request_route, or after
    record_route() (msg_translator.c sip_msg_apply_changes: the conditional
    second Record-Route would break)."""
    m = ctx.msg
    if m.is_request and ctx.route_type != REQUEST_ROUTE:
        log.err(MOD, "invalid usage - not in request route or a reply")
        return -1
    if m.is_request and m.rr_out is not None:
        log.err(MOD, "cannot apply msg changes after adding record-route header"
                     " - it breaks conditional 2nd header")
        return -1
    drop = {canon(n) for n in m.hdr_removes}
    lines = _head_lines(m, drop) + _pending_lines(m)
    first = m.first_line
    if m.is_request and m.new_uri is not None:
        # the new R-URI goes into the request line, as build_req_buf_from_sip_req writes it
        first = "%s %s %s" % (m.method, m.new_uri, m.version)
    rc = update_buffer(m, _assemble(first, lines, m.body))
    if rc > 0:
        m.hdr_adds = []
        m.hdr_removes = set()
        m.new_uri = None
    return rc


# ---- change_reply_status ---------------------------------------------------------------
def _status_ok(m, code):
    if not 100 <= code <= 699:
        log.err(MOD, f"wrong status code: {code}")
        return False
    if (code < 300 or m.status < 300) and code // 100 != m.status // 100:
        log.err(MOD, "the class of provisional or positive final replies cannot be changed")
        return False
    return True


def w_change_reply_status(ctx, site, code, reason):
    m = ctx.msg
    if m.is_request or code is None:
        return -1
    if not reason:
        log.err(MOD, "invalid reason parameter")
        return -1
    if not _status_ok(m, code):
        return -1
    first = "%s %03d %s" % (m.version, code, reason)
    return update_buffer(m, _assemble(first, _head_lines(m), m.body))


def w_change_reply_status_code(ctx, site, code):
    m = ctx.msg
    if m.is_request or code is None or not _status_ok(m, code):
        return -1
    first = "%s %03d %s" % (m.version, code, m.reason or "")
    return update_buffer(m, _assemble(first, _head_lines(m), m.body))


# ---- remove_body, keep_hf, fnmatch ------------------------------------------------------
def w_remove_body(ctx, site):
    m = ctx.msg
    if not m.body:
        return 1
    m.body = b""
    return 1


def w_keep_hf(ctx, site, rx=None):
    """Every header but the core ones and those whose name matches `rx` is
    removed. Returns -1 even when it worked: textopsx.c keep_hf_helper in
    5.6 ends with `return -1`, kept so that a cfg's `if` behaves the same."""
    m = ctx.msg
    for key, name, _value in m._hl:
        if not key or key in _KEEP_ALWAYS:
            continue
        if rx is None or not rx.search(name.strip()):
            m.hdr_removes.add(key)
    return -1


def _fnmatch(val, pattern, flags=""):
    if flags[:1] in ("i", "I"):
        return 1 if fnm.fnmatchcase(val.lower(), pattern.lower()) else -1
    return 1 if fnm.fnmatchcase(val, pattern) else -1


def w_fnmatch(ctx, site, val, pattern, flags=""):
    return _fnmatch(val, pattern, flags)


# ---- append_hf_value, remove_hf_value -----------------------------------------------------
def _hname_fixup(site, star_ok):
    """`Name`, `Name[n]`, `Name[-n]`, `Name[*]` (textopsx.c fixup_hname_param);
    the `.param` form is not supported here (a startup error)."""
    a = site.args[0]
    if not a.literal:
        site.arg_error(0, f"{site.name}(): the header name must be a literal")
    mt = _HNAME_RE.match(str(a.value))
    if mt is None:
        site.arg_error(0, f"{site.name}(): cannot parse header {a.value!r}")
    name, has_idx, idx, param = mt.groups()
    if param:
        site.arg_error(0, f"{site.name}(): param not supported")
    if idx == "*" and not star_ok:
        site.arg_error(0, f"{site.name}(): asterisk not supported")
    n = 0 if idx in (None, "", "*") else int(idx)
    if n < -MAX_HF_VALUE_STACK:
        site.arg_error(0, f"{site.name}(): index cannot be lower than {-MAX_HF_VALUE_STACK}")
    site.data["hf"] = (name, canon(name), bool(has_idx), idx == "*", n)


def _append_fixup(site):
    _hname_fixup(site, star_ok=False)


def _remove_fixup(site):
    _hname_fixup(site, star_ok=True)


def _values(m, key):
    """[[value, ...] per header line named key], in order."""
    return [split_commas(v) for k, _n, v in m._hl if k == key]


def _pick(vals, n):
    """(line, value) of the n-th value (1-based, negative from the end), or None."""
    flat = [(i, j) for i, line in enumerate(vals) for j in range(len(line))]
    if n > 0 and n <= len(flat):
        return flat[n - 1]
    if n < 0 and -n <= len(flat):
        return flat[n]
    return None


def _rewrite(m, key, vals):
    """Put the header lines named key back with `vals` (an empty line goes)."""
    raw, out, i = m._raw, [], 0
    for r, (k, name, _v) in enumerate(m._hl):
        if k != key:
            out.append(raw[r + 1])
            continue
        if vals[i]:
            out.append("%s: %s" % (name.rstrip(" \t"), ", ".join(v.strip() for v in vals[i])))
        i += 1
    return update_buffer(m, _assemble(m.first_line, out, m.body))


def w_append_hf_value(ctx, site, hname, value):
    """`Name`: a new header line `Name: value` (textopsx.c hnoAppend without
    an index); `Name[n]`: value added after the n-th value (-1 the last),
    a new line when there is none."""
    name, key, has_idx, _star, n = site.data["hf"]
    m = ctx.msg
    vals = _values(m, key)
    at = _pick(vals, n or -1) if has_idx else None
    if at is None:
        m.hdr_adds.append("%s: %s" % (name, value))
        return 1
    vals[at[0]].insert(at[1] + 1, value)
    return _rewrite(m, key, vals)


def w_remove_hf_value(ctx, site, hname):
    """`Name` = `Name[1]`: the first value goes; `Name[-1]` the last;
    `Name[*]` every header of that name. 1 removed, -1 none found."""
    _name, key, _has_idx, star, n = site.data["hf"]
    m = ctx.msg
    vals = _values(m, key)
    if star:
        if not vals:
            return -1
        return _rewrite(m, key, [[] for _ in vals])
    at = _pick(vals, n or 1)
    if at is None:
        return -1
    del vals[at[0]][at[1]]
    return _rewrite(m, key, vals)


EXPORTS = ModuleExports(
    name="textopsx",
    functions=[
        FuncExport("msg_apply_changes", (), w_msg_apply_changes, REQUEST_ROUTE | ONREPLY_ROUTE),
        FuncExport("change_reply_status", (P.INT, P.STR), w_change_reply_status, ONREPLY_ROUTE),
        FuncExport("change_reply_status_code", (P.INT,), w_change_reply_status_code, ONREPLY_ROUTE),
        FuncExport("remove_body", (), w_remove_body, ANY_ROUTE),
        FuncExport("keep_hf", (), w_keep_hf, ANY_ROUTE),
        FuncExport("keep_hf", (P.REGEX,), w_keep_hf, ANY_ROUTE),
        FuncExport("fnmatch", (P.STR, P.STR), w_fnmatch, ANY_ROUTE),
        FuncExport("fnmatch", (P.STR, P.STR, P.STR), w_fnmatch, ANY_ROUTE),
        FuncExport("append_hf_value", (P.STR, P.STR), w_append_hf_value, HF_ROUTES, _append_fixup),
        FuncExport("remove_hf_value", (P.STR,), w_remove_hf_value, HF_ROUTES, _remove_fixup),
    ],
)
