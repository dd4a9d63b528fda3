"""Pseudo-variable transformations: `$(ru{uri.user})`, `$(avp(x){s.int})`.

Runs in: main process (parsing), every process running routes (evaluation).

Kamailio: src/modules/pv/pv_trans.c. Each transformation is parsed once
into a callable f(ctx, value) -> value; a null input gives null (Kamailio's
tr_eval_* refuse PV_VAL_NULL and the value becomes null).
"""
import base64
import hashlib

from asyncd.core.errors import CfgError
from asyncd.sip.uri import parse_uri_cached


def _to_str(v):
    return v if isinstance(v, str) else str(v)


def _s_int(v):
    if isinstance(v, int):
        return v
    s = v.strip()
    # str2sint: leading sign and digits, stops at the first non-digit
    i = 1 if s[:1] in "+-" else 0
    j = i
    while j < len(s) and s[j].isdigit():
        j += 1
    if j == i:
        return 0
    return int(s[:j])


def _substr(v, off, ln):
    s = _to_str(v)
    if off < 0:
        off = max(len(s) + off, 0)
    if off > len(s):
        return ""
    return s[off:] if ln == 0 else (s[off:off + ln] if ln > 0 else s[off:len(s) + ln])


def _uri_part(attr):
    def f(v):
        u = parse_uri_cached(_to_str(v))
        if u is None:
            return None
        x = getattr(u, attr, None)
        if attr == "port":
            return "" if x is None else str(x)
        if attr == "params" and isinstance(x, dict):
            return ";".join(k if val is None else f"{k}={val}" for k, val in x.items())
        return "" if x is None else x
    return f


def _uri_param(name):
    def f(v):
        s = _to_str(v)
        semi = s.find(";")
        if semi < 0:
            return ""
        q = s.find("?", semi)
        return _param_value(s[semi + 1:q if q >= 0 else len(s)], name, ";")
    return f


def _param_value(s, name, sep):
    for part in s.split(sep):
        k, eq, val = part.partition("=")
        if k.strip() == name:
            return val.strip() if eq else ""
    return ""


def _param_count(s, sep):
    s = s.strip()
    return 0 if not s else len([p for p in s.split(sep) if p.strip()])


def _nameaddr(part):
    def f(v):
        s = _to_str(v).strip()
        lt = s.find("<")
        if lt >= 0:
            gt = s.find(">", lt)
            uri = s[lt + 1:gt if gt > 0 else len(s)]
            name = s[:lt].strip().strip('"')
        else:
            uri, name = s.split(";", 1)[0], ""
        return uri if part == "uri" else name
    return f


# name -> (min args, max args, builder(args) -> f(value))
_TABLE = {
    "s.int": (0, 0, lambda a: _s_int),
    "s.len": (0, 0, lambda a: lambda v: len(_to_str(v))),
    "s.tolower": (0, 0, lambda a: lambda v: _to_str(v).lower()),
    "s.toupper": (0, 0, lambda a: lambda v: _to_str(v).upper()),
    "s.trim": (0, 0, lambda a: lambda v: _to_str(v).strip(" \t\r\n")),
    "s.rtrim": (0, 0, lambda a: lambda v: _to_str(v).rstrip(" \t\r\n")),
    "s.ltrim": (0, 0, lambda a: lambda v: _to_str(v).lstrip(" \t\r\n")),
    "s.substr": (2, 2, lambda a: lambda v: _substr(v, _int_arg(a[0]), _int_arg(a[1]))),
    "s.strip": (1, 1, lambda a: lambda v: _to_str(v)[_int_arg(a[0]):]),
    "s.striptail": (1, 1, lambda a: lambda v: _to_str(v)[:max(len(_to_str(v)) - _int_arg(a[0]), 0)]),
    "s.select": (2, 2, lambda a: lambda v: _select(_to_str(v), _int_arg(a[0]), a[1])),
    "s.md5": (0, 0, lambda a: _md5),
    "s.numeric": (0, 0, lambda a: lambda v: "".join(c for c in _to_str(v) if c.isdigit())),
    "s.before": (1, 1, lambda a: lambda v: _to_str(v).split(a[0], 1)[0]),
    "s.after": (1, 1, lambda a: lambda v: _to_str(v).partition(a[0])[2]),
    "s.rbefore": (1, 1, lambda a: lambda v: _to_str(v).rsplit(a[0], 1)[0]),
    "s.rafter": (1, 1, lambda a: lambda v: _to_str(v).rpartition(a[0])[2]),
    "s.replace": (2, 2, lambda a: lambda v: _to_str(v).replace(a[0], a[1])),
    "s.unquote": (0, 0, lambda a: _unquote),
    "s.count": (1, 1, lambda a: lambda v: _to_str(v).count(a[0][:1]) if a[0] else 0),
    "s.rm": (1, 1, lambda a: lambda v: _to_str(v).replace(a[0], "")),
    "s.escape.common": (0, 0, lambda a: _escape_common),
    "s.unescape.common": (0, 0, lambda a: _unescape_common),

    "s.encode.base64": (0, 0, lambda a: lambda v: _b64(v, True)),
    "s.decode.base64": (0, 0, lambda a: lambda v: _b64(v, False)),
    "s.encode.hexa": (0, 0, lambda a: lambda v: _to_str(v).encode().hex()),
    "s.decode.hexa": (0, 0, lambda a: lambda v: bytes.fromhex(_to_str(v)).decode("utf-8", "replace")),
    "s.sha256": (0, 0, lambda a: lambda v: __import__("hashlib").sha256(_to_str(v).encode()).hexdigest()),
    "uri.user": (0, 0, lambda a: _uri_part("user")),
    "uri.host": (0, 0, lambda a: _uri_part("host")),
    "uri.domain": (0, 0, lambda a: _uri_part("host")),
    "uri.port": (0, 0, lambda a: _uri_part("port")),
    "uri.passwd": (0, 0, lambda a: _uri_part("password")),
    "uri.params": (0, 0, lambda a: _uri_part("params")),
    "uri.scheme": (0, 0, lambda a: _uri_part("scheme")),
    "uri.param": (1, 1, lambda a: _uri_param(a[0])),
    "uri.transport": (0, 0, lambda a: _uri_param("transport")),
    "param.value": (1, 2, lambda a: lambda v: _param_value(_to_str(v), a[0], a[1] if len(a) > 1 else ";")),
    "param.valueat": (1, 2, lambda a: lambda v: _param_at(_to_str(v), _int_arg(a[0]),
                                                           a[1] if len(a) > 1 else ";")),
    "param.count": (0, 1, lambda a: lambda v: _param_count(_to_str(v), a[0] if a else ";")),
    "nameaddr.uri": (0, 0, lambda a: _nameaddr("uri")),
    "nameaddr.name": (0, 0, lambda a: _nameaddr("name")),
    # xhttp's (src/modules/xhttp/xhttp_trans.c): the URL before / after the first '?'
    "url.path": (0, 0, lambda a: lambda v: _to_str(v).partition("?")[0]),
    "url.querystring": (0, 0, lambda a: lambda v: _to_str(v).partition("?")[2]),
}


def _escape_common(v):
    # Kamailio escape_common(): backslash before ' " \ and NUL
    out = []
    for c in _to_str(v):
        if c in "'\"\\":
            out.append("\\" + c)
        elif c == "\0":
            out.append("\\0")
        else:
            out.append(c)
    return "".join(out)


def _unescape_common(v):
    s, out, i = _to_str(v), [], 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s):
            out.append("\0" if s[i + 1] == "0" else s[i + 1])
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def _unquote(v):
    s = _to_str(v)
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
        return s[1:-1]
    return s


def _b64(v, enc):
    if enc:
        return base64.b64encode(_to_str(v).encode()).decode()
    return base64.b64decode(_to_str(v).encode()).decode("utf-8", "replace")


def _select(s, i, sep):
    parts = s.split(sep)
    try:
        return parts[i]
    except IndexError:
        return None


def _param_at(s, i, sep):
    parts = [p for p in s.split(sep) if p.strip()]
    try:
        return parts[i].partition("=")[2].strip()
    except IndexError:
        return None


def _md5(v):
    return hashlib.md5(_to_str(v).encode()).hexdigest()


def _int_arg(a):
    return a


# which arguments are integers
_INT_ARGS = {"s.substr": (0, 1), "s.strip": (0,), "s.striptail": (0,), "s.select": (0,),
             "param.valueat": (0,)}


def parse_transformation(text, loc, parse_pv=None):
    """`s.substr,1,2` (without braces) -> f(value, ctx) (null in, null out).
    Arguments may be pseudo-variables (`{s.substr,0,$var(n)}`), read at run
    time: `parse_pv(text) -> PvSpec` parses them (pvcore passes its own, which
    calls back here, so this file needs no import of pvcore); without it a
    `$...` argument is literal text."""
    parts = _split_args(text)
    name = parts[0].strip()
    args = [p.strip() for p in parts[1:]]
    if len(args) >= 2 and args[-2:] == ["", ""]:
        # a comma as the separator argument, written bare: {s.select,1,,}, {s.count,,}
        args[-2:] = [","]
    entry = _TABLE.get(name)
    if entry is None:
        raise CfgError(f"unknown transformation {{{name}}}", loc.file, loc.line, loc.col)
    lo, hi, build = entry
    if not lo <= len(args) <= hi:
        want = str(lo) if lo == hi else f"{lo}..{hi}"
        raise CfgError(f"transformation {{{name}}} takes {want} argument(s), got {len(args)}",
                       loc.file, loc.line, loc.col)
    conv = []
    dynamic = False
    int_args = _INT_ARGS.get(name, ())
    for k, a in enumerate(args):
        if len(a) >= 2 and a[0] == a[-1] and a[0] in "\"'":
            a = a[1:-1]
        elif a.startswith("$") and len(a) > 1 and parse_pv is not None:
            a = _DynArg(parse_pv(a), k in int_args)
            dynamic = True
        elif k in int_args:
            try:
                a = int(a, 0)
            except ValueError:
                raise CfgError(f"transformation {{{name}}}: '{a}' is not an integer",
                               loc.file, loc.line, loc.col)
        conv.append(a)
    if dynamic:
        def tr(v, ctx):
            if v is None:
                return None
            try:
                return build([x.value(ctx) if type(x) is _DynArg else x for x in conv])(v)
            except (ValueError, TypeError, AttributeError, IndexError):
                return None
    else:
        fn = build(conv)

        def tr(v, ctx):
            if v is None:
                return None
            try:
                return fn(v)
            except (ValueError, TypeError, AttributeError, IndexError):
                return None
    tr.__name__ = "tr_" + name.replace(".", "_")
    return tr


class _DynArg:
    __slots__ = ("spec", "as_int")

    def __init__(self, spec, as_int):
        self.spec = spec
        self.as_int = as_int

    def value(self, ctx):
        v = self.spec.get(ctx)
        if self.as_int:
            return int(v) if v is not None else 0
        return "" if v is None else str(v)


def _split_args(text):
    out, cur, quote = [], [], None
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
            cur.append(ch)
        elif ch == ",":
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def chain(trs):
    """One callable applying a list of transformations in order."""
    if len(trs) == 1:
        return trs[0]

    def run(v, ctx):
        for t in trs:
            v = t(v, ctx)
        return v
    return run
