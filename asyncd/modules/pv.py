"""The pv module: message pseudo-variables ($ru, $fU, $hdr(...), $var(...) ...).

Runs in: main process (parsing), every process running routes (get/set).

Kamailio: src/modules/pv/pv_core.c, pv_svar.c. Private values only here;
the shared ones ($avp, $xavp, $xavu, $xavi, $shv and the `shvset` modparam)
live in asyncd/modules/pv_shm.py and are merged into this module's exports.
Replies and missing headers read as $null, as in Kamailio.
"""
import os
import time

from asyncd.core import log
from asyncd.core.exports import ModuleExports, PvExport
from asyncd.sip.uri import parse_cur_uri, parse_uri_cached
from asyncd.cfg.pvcore import fmt, parse_format
from asyncd.modules import pv_shm
from shm.avp import avp_name


# -- $var: per-process script variables (pv_svar.c) ------------------------------
def _var_get(ctx, name, idx):
    # an unset $var reads as 0 (Kamailio initialises script vars to int 0)
    return ctx.proc.vars.get(name, 0)


def _var_set(ctx, name, idx, value):
    if value is None:
        ctx.proc.vars[name] = 0
    else:
        ctx.proc.vars[name] = value


def _vn_get(ctx, name, idx):
    return ctx.proc.extra.get("vn", {}).get(name)


def _vn_set(ctx, name, idx, value):
    # $vn(x) may hold $null (pv_svar.c: script var with null init)
    ctx.proc.extra.setdefault("vn", {})[name] = value


def _var_parse(inner):
    if not inner or not inner.strip():
        raise ValueError("empty variable name")
    return inner.strip()


# -- request URI -----------------------------------------------------------------
def _ru(ctx, s, i):
    m = ctx.msg
    return m.cur_uri if m.is_request else None


def _ru_set(ctx, s, i, v):
    ctx.msg.new_uri = None if v is None else str(v)


def _uri_attr(attr, empty=None):
    def get(ctx, s, i):
        m = ctx.msg
        if not m.is_request:
            return None
        u = parse_cur_uri(m)
        if u is None:
            return None
        v = getattr(u, attr)
        if attr == "port":
            return v if v is not None else 5060
        return v if v is not None else empty
    return get


def _uri_attr_set(attr):
    def set_(ctx, s, i, v):
        m = ctx.msg
        u = parse_cur_uri(m)
        if u is None:
            raise ValueError("R-URI cannot be parsed")
        cls = type(u)
        nu = cls(u.scheme, u.user, u.password, u.host, u.port, dict(u.params), dict(u.headers))
        if attr == "port":
            v = None if v in (None, "", 0) else int(v)
        elif attr == "user":
            v = None if v in (None, "") else str(v)
        else:
            v = str(v)
        setattr(nu, attr, v)
        m.new_uri = nu.build()
    return set_


# -- From / To --------------------------------------------------------------------
def _na(which, attr):
    def get(ctx, s, i):
        try:
            na = getattr(ctx.msg, which)
        except Exception:       # unparsable From/To reads as $null, as Kamailio's pv_get_*
            return None
        if na is None:
            return None
        if attr == "uri":
            return na.uri
        if attr == "display":
            return na.display or ""
        if attr == "tag":
            return na.tag
        u = parse_uri_cached(na.uri)
        if u is None:
            return None
        return getattr(u, attr)
    return get


# -- simple message facts ---------------------------------------------------------
def _rm(ctx, s, i):
    m = ctx.msg
    return m.method if m.is_request else m.cseq_method


def _rs(ctx, s, i):
    m = ctx.msg
    return None if m.is_request else m.status


def _rr(ctx, s, i):
    m = ctx.msg
    return None if m.is_request else m.reason


def _hdr_first(name):
    def get(ctx, s, i):
        return ctx.msg.hdr(name)
    return get


def _du(ctx, s, i):
    return ctx.msg.dst_uri


def _du_set(ctx, s, i, v):
    ctx.msg.dst_uri = None if v in (None, "") else str(v)


def _mb(ctx, s, i):
    return ctx.msg.buf.decode("utf-8", "replace")


def _rb(ctx, s, i):
    return ctx.msg.body.decode("utf-8", "replace")


def _rc(ctx, s, i):
    return ctx.retcode


def _tv(ctx, s, i):
    now = time.time()
    if s == "s":
        return int(now)
    if s == "u":
        return int((now % 1) * 1000000)
    if s == "sn":
        return int(time.time())
    if s == "un":
        return int((time.time() % 1) * 1000000)
    return "%d.%06d" % (int(now), int((now % 1) * 1000000))


def _tv_parse(inner):
    if inner not in ("s", "u", "sn", "un", "Sn", "Sm"):
        raise ValueError(f"unknown $TV key '{inner}'")
    return inner


# -- $hdr(name), $hdrc(name) ------------------------------------------------------
class _DynName:
    """A header name given by variables: `$hdr($var(h))`."""
    __slots__ = ("pieces",)

    def __init__(self, text):
        self.pieces = parse_format(text, None)

    def __call__(self, ctx):
        return fmt(ctx, self.pieces).strip()


def _hdr_parse(inner):
    if inner and "$" in inner:
        return _DynName(inner.strip())
    if not inner or not inner.strip() or any(c in inner for c in " :\t"):
        raise ValueError(f"bad header name '{inner}'")
    return inner.strip()


def _hdr(ctx, name, idx):
    if type(name) is _DynName:
        name = name(ctx)
    m = ctx.msg
    if idx is None or idx == 0:
        return m.hdr(name)
    vals = m.hdrs(name)
    if idx == "*":
        return ",".join(vals) if vals else None
    try:
        return vals[idx]
    except (IndexError, TypeError):
        return None


def _hdrc(ctx, name, idx):
    if type(name) is _DynName:
        name = name(ctx)
    return ctx.msg.hdr_count(name)


def _flag_get(ctx, s, i):
    return ctx.flags


def _flag_set(ctx, s, i, v):
    ctx.flags = int(v or 0)
    ctx.msg.flags = ctx.flags


def _src(n):
    return lambda ctx, s, i: ctx.msg.src[n]


def _dst(n):
    return lambda ctx, s, i: ctx.msg.dst[n]


def _const(f):
    return lambda ctx, s, i: f(ctx)


def _orig_uri_attr(attr):
    def get(ctx, s, i):
        m = ctx.msg
        if not m.is_request:
            return None
        u = parse_uri_cached(m.ruri)
        if u is None:
            return None
        v = getattr(u, attr)
        return (v if v is not None else 5060) if attr == "port" else v
    return get


def _af(ctx, s, i):
    return "ipv6" if ":" in (ctx.msg.src[0] or "") else "ipv4"


def _stat_get(ctx, name, idx):
    """$stat(name): a statistic by its bare name (kex's get_stat), as the
    unsigned int Kamailio's pv_get_stat returns; $null, with a warning, when
    there is none (src/modules/pv/pv_stats.c)."""
    stats = ctx.proc.script.stats
    h = stats.find(name, qualified=False)
    if h is None:
        log.warn("pv", f"No stat variable ``{name}''")
        return None
    return stats.get(h) & 0xFFFFFFFF


def _cnt_parse(inner):
    """$cnt($avp(name)) / $cnt($xavp(root[i]=>field[j])): the pv to count."""
    text = (inner or "").strip()
    for kind in ("avp", "xavp"):
        if text.startswith(f"${kind}(") and text.endswith(")"):
            body = text[len(kind) + 2:-1]
            if kind == "avp":
                return ("avp", avp_name(body.strip()))
            return pv_shm._xparse("xavp")(body)
    raise ValueError("$cnt() counts an $avp(...) or an $xavp(...)")


def _cnt_get(ctx, spec, idx):
    """$cnt: how many values (src/modules/pv/pv_core.c pv_get_cnt). For an
    XAVP, no index or [*] means all (not index 0): $cnt($xavp(k)) counts the
    roots k, $cnt($xavp(k=>s)) the fields s of all of them, an index n counts
    1 when that entry exists."""
    if spec[0] == "avp":
        return ctx.avps.count(spec[1]) if ctx.avps is not None else 0
    _kind, root, ri, field, fi = spec
    items = (ctx.xavps.xavp.get(root) if ctx.xavps is not None else None) or []
    roots = _pick(items, pv_shm._ridx(ctx, ri))
    if field is None:
        return len(roots)
    fi = pv_shm._ridx(ctx, fi)
    return sum(len(_pick(r.get(field) or [], fi)) for r in roots if type(r) is dict)


def _pick(items, i):
    if i is None or i == "*":
        return list(items)
    try:
        return [items[i]]
    except (IndexError, TypeError):
        return []


def _stat_parse(inner):
    if not inner:
        raise ValueError("empty $stat name")
    return inner


PVS = [
    PvExport("var", _var_get, _var_set, _var_parse, True),
    PvExport("vz", _var_get, _var_set, _var_parse, True),
    PvExport("vn", _vn_get, _vn_set, _var_parse, True),
    PvExport("ru", _ru, _ru_set, None, False),
    PvExport("rU", _uri_attr("user"), _uri_attr_set("user"), None, False),
    PvExport("rd", _uri_attr("host"), _uri_attr_set("host"), None, False),
    PvExport("rp", _uri_attr("port"), _uri_attr_set("port"), None, False),
    PvExport("rz", _uri_attr("scheme"), None, None, False),
    PvExport("rm", _rm, None, None, False),
    PvExport("rs", _rs, None, None, False),
    PvExport("rr", _rr, None, None, False),
    PvExport("fu", _na("from_", "uri"), None, None, False),
    PvExport("fU", _na("from_", "user"), None, None, False),
    PvExport("fd", _na("from_", "host"), None, None, False),
    PvExport("fn", _na("from_", "display"), None, None, False),
    PvExport("ft", _na("from_", "tag"), None, None, False),
    PvExport("tu", _na("to", "uri"), None, None, False),
    PvExport("tU", _na("to", "user"), None, None, False),
    PvExport("td", _na("to", "host"), None, None, False),
    PvExport("tn", _na("to", "display"), None, None, False),
    PvExport("tt", _na("to", "tag"), None, None, False),
    PvExport("ci", _const(lambda c: c.msg.callid), None, None, False),
    PvExport("cs", _const(lambda c: c.msg.cseq_num), None, None, False),
    PvExport("si", _src(0), None, None, False),
    PvExport("sp", _src(1), None, None, False),
    PvExport("Ri", _dst(0), None, None, False),
    PvExport("Rp", _dst(1), None, None, False),
    PvExport("pr", _const(lambda c: c.msg.proto), None, None, False),
    PvExport("proto", _const(lambda c: c.msg.proto), None, None, False),
    PvExport("conid", _const(lambda c: c.msg.conid or None), None, None, False),
    PvExport("ua", _hdr_first("User-Agent"), None, None, False),
    PvExport("du", _du, _du_set, None, False),
    PvExport("mb", _mb, None, None, False),
    PvExport("ml", _const(lambda c: len(c.msg.buf)), None, None, False),
    PvExport("rb", _rb, None, None, False),
    PvExport("bs", _const(lambda c: len(c.msg.body)), None, None, False),
    PvExport("cl", _const(lambda c: c.msg.content_length), None, None, False),
    PvExport("ct", _hdr_first("Contact"), None, None, False),
    PvExport("cT", _hdr_first("Content-Type"), None, None, False),
    PvExport("mi", _const(lambda c: c.msg.id), None, None, False),
    PvExport("pp", _const(lambda c: os.getpid()), None, None, False),
    PvExport("Ts", _const(lambda c: int(time.time())), None, None, False),
    PvExport("Tf", _const(lambda c: time.strftime("%a %b %d %H:%M:%S %Y")), None, None, False),
    PvExport("TV", _tv, None, _tv_parse, True),
    PvExport("rc", _rc, None, None, False),
    PvExport("retcode", _rc, None, None, False),
    PvExport("hdr", _hdr, None, _hdr_parse, True),
    PvExport("hdrc", _hdrc, None, _hdr_parse, True),
    PvExport("mf", _flag_get, _flag_set, None, False),
    PvExport("mt", _const(lambda c: 1 if c.msg.is_request else 2), None, None, False),
    PvExport("ou", _const(lambda c: c.msg.ruri if c.msg.is_request else None), None, None, False),
    PvExport("oU", _orig_uri_attr("user"), None, None, False),
    PvExport("od", _orig_uri_attr("host"), None, None, False),
    PvExport("op", _orig_uri_attr("port"), None, None, False),
    PvExport("rv", _const(lambda c: c.msg.version), None, None, False),
    PvExport("af", _af, None, None, False),
    PvExport("mF", _const(lambda c: "%x" % c.flags), None, None, False),
    PvExport("stat", _stat_get, None, _stat_parse, True),
    PvExport("cnt", _cnt_get, None, _cnt_parse, True),
]
FUNCTIONS = []
PARAMS = []

# the shared pvs ($avp, $xavp, $shv ...) and their modparams come from the shm part
PVS.extend(pv_shm.PVS)
FUNCTIONS.extend(pv_shm.FUNCTIONS)
PARAMS.extend(pv_shm.PARAMS)

EXPORTS = ModuleExports(
    name="pv",
    functions=FUNCTIONS,
    params=PARAMS,
    pvs=PVS,
    mod_init=pv_shm.mod_init,
    child_init=pv_shm.child_init,
    rpc=pv_shm.RPC,
)
