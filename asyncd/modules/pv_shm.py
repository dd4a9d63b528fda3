"""Shared and transaction-carried pseudo-variables of the pv module:
$shv, $avp, $xavp, $xavu, $xavi, and the "shvset" / "varset" modparams.

Runs in: main process (parsing, mod_init applies shvset before fork), every
process running routes (get/set).

asyncd/modules/pv.py merges FUNCTIONS, PARAMS, PVS, mod_init and child_init
from here into the "pv" module's exports.

- $shv(name): shared by all processes (shm/shv.py), as Kamailio's
  src/modules/pv/pv_shv.c; an unset one reads 0; `$null` resets it to 0.
  The names the cfg uses and "shvset" gives exist for the RPC methods
  pv.shvGet / pv.shvSet (pv_shv.c rpc_shv_get / rpc_shv_set): others are
  "Variable not found", as in Kamailio, where only those names exist.
- modparam("pv", "varset", "name=i:1" | "name=s:text"): initial $var values,
  applied to each process's private vars in child_init (pv_svar.c).
- $avp(name), $(avp(name)[n]), $(avp(name)[*]): per-message stack
  (shm/avp.py AvpList on ctx.avps, created on first write); tm carries it
  with the transaction (docs/kamailio-tm.md §1; docs/kamailio-async.md §7).  Names `s:x` = `x`, `i:5` is an
  int name, `$avp($var(n))` takes its name at run time.
- $xavp(root[n]=>field[m]), $xavu(root=>field), $xavi(...): ctx.xavps
  (XavpList), same lifetime as AVPs; semantics in shm/avp.py.
"""
import re

from asyncd.core import log
from asyncd.core.errors import CfgError
from asyncd.core.exports import ParamExport, PvExport
from asyncd.core.rpc import RpcExport, RpcFault, Struct
from asyncd.cfg.fixups import Loc
from asyncd.cfg.pvcore import PvTable, fmt, parse_format
from shm.avp import AvpList, XavpList, avp_name
from shm.shv import parse_shvset

MOD = "pv"


class PvShmState:
    """The pv module's state, in one object, filled in main by mod_init and
    inherited by every child: the $shv store (in shm), the parsed "varset"
    values that child_init gives each process, and the pv classes that
    dynamic names ($avp($var(n)), [$var(i)]) are parsed with (startup)."""
    __slots__ = ("shv", "varset", "pv_table", "declared")

    def __init__(self):
        self.shv = None                 # shm.shv store
        self.varset = []                # (name, value) for each process's $var
        self.pv_table = None            # made on the first dynamic name
        self.declared = {}              # $shv names the cfg uses or shvset sets (ordered set)

    def configure(self, script, mp):
        """mod_init: parse "varset"; with shm, attach $shv and apply "shvset"."""
        varset = []
        for spec in mp["varset"]:
            try:
                varset.append(parse_shvset(spec))
            except ValueError as e:
                raise CfgError(f"pv: {e}".replace("shvset", "varset")) from None
        self.varset = varset
        arena = getattr(script, "shm", None)
        if arena is None:
            return
        self.shv = arena.shv
        # Kamailio makes the shvset names while it reads the modparams, before
        # the routes that name others: keep that order for pv.shvGet
        used, self.declared = self.declared, {}
        for spec in mp["shvset"]:
            try:
                name, value = parse_shvset(spec)
            except ValueError as e:
                raise CfgError(f"pv: {e}") from None
            self.declared[name] = None
            if not self.shv.set(name, value):
                raise RuntimeError("pv: no shared memory for shvset values")
        self.declared.update(used)


S = PvShmState()


def _pieces(text):
    if S.pv_table is None:
        S.pv_table = PvTable()
    return parse_format(text, Loc("<pv name>", 0, 0), S.pv_table)


def _eval(ctx, pieces):
    return fmt(ctx, pieces)


# -- $shv -----------------------------------------------------------------------------------
def _shv_parse(inner):
    name = (inner or "").strip()
    if not name:
        raise ValueError("empty $shv name")
    S.declared[name] = None
    return name


def _shv_get(ctx, name, idx):
    st = S.shv or _attach(ctx)
    return st.get(name) if st is not None else 0


def _shv_set(ctx, name, idx, value):
    st = S.shv or _attach(ctx)
    if st is None:
        log.err("pv", f"$shv({name}): shared memory is not initialised")
        return False
    return st.set(name, value)


def _attach(ctx):
    """$shv where pv's mod_init did not run: a cfg may use $shv without
    loading pv.so (every module's pvs are usable, docs/contracts.md §1)."""
    try:
        S.shv = ctx.proc.script.shm.shv
    except AttributeError:
        return None
    return S.shv


# -- $avp ------------------------------------------------------------------------------------
def _avp_parse(inner):
    name = (inner or "").strip()
    if not name:
        raise ValueError("empty $avp name")
    if name.startswith("$"):
        return ("d", _pieces(name))
    return ("s", avp_name(name))


def _avp_name(ctx, spec):
    if spec[0] == "s":
        return spec[1]
    return avp_name(_eval(ctx, spec[1]))


def _avp_get(ctx, spec, idx):
    avps = ctx.avps
    if avps is None:
        return None
    return avps.get(spec[1] if spec[0] == "s" else _avp_name(ctx, spec), idx)


def _avp_set(ctx, spec, idx, value):
    avps = ctx.avps
    if avps is None:
        if value is None:
            return True
        avps = ctx.avps = AvpList()
    name = spec[1] if spec[0] == "s" else _avp_name(ctx, spec)
    if not avps.set(name, idx, value):
        log.err("pv", f"$avp({name})[{idx}]: no such value to replace")
        return False
    return True


# -- $xavp / $xavu / $xavi ----------------------------------------------------------------
_XNAME = r"[^\[\]=>\s]+"
_XIDX = r"\[\s*([^\]]+?)\s*\]"
_XRE = re.compile(rf"^\s*({_XNAME})\s*(?:{_XIDX})?\s*(?:=>\s*({_XNAME})\s*(?:{_XIDX})?)?\s*$")


def _xidx(text):
    if text is None:
        return None
    if text == "*":
        return "*"
    if text.startswith("$"):
        return ("d", _pieces(text))
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"bad index [{text}]") from None


def _xparse(kind):
    def parse(inner):
        m = _XRE.match(inner or "")
        if not m:
            raise ValueError(f"expected root[index]=>field[index], got {inner!r}")
        root, ri, field, fi = m.groups()
        if kind == "xavu" and (ri is not None or fi is not None):
            raise ValueError("$xavu takes no indexes")
        return (kind, root, _xidx(ri), field, _xidx(fi))
    return parse


def _ridx(ctx, i):
    if type(i) is tuple:
        v = _eval(ctx, i[1])
        try:
            return int(v)
        except ValueError:
            return None
    return i


def _xget(ctx, spec, idx):
    x = ctx.xavps
    if x is None:
        return None
    kind, root, ri, field, fi = spec
    return x.get(kind, root, _ridx(ctx, ri), field, _ridx(ctx, fi))


def _xset(ctx, spec, idx, value):
    x = ctx.xavps
    if x is None:
        if value is None:
            return True
        x = ctx.xavps = XavpList()
    kind, root, ri, field, fi = spec
    if not x.set(kind, root, _ridx(ctx, ri), field, _ridx(ctx, fi), value):
        log.err("pv", f"${kind}({root}[{ri}]=>{field}): no such item to set")
        return False
    return True


# -- lifecycle -----------------------------------------------------------------------------------
def mod_init(script):
    """Apply modparam("pv", "shvset", "name=i:1" | "name=s:text") before fork and
    parse "varset" (same syntax) for child_init."""
    S.configure(script, script.modparams[MOD])


def child_init(proc, rank):
    for name, value in S.varset:
        proc.vars[name] = value
    return 0


# -- RPC: pv.shvGet / pv.shvSet (pv_shv.c rpc_shv_get, rpc_shv_set) ---------------------------
def _shv_item(name):
    value = S.shv.get(name) if S.shv is not None else 0
    if type(value) is int:
        return {"name": name, "type": "int", "value": value}
    return {"name": name, "type": "string", "value": value}


def rpc_shv_get(call):
    """pv.shvGet [NAME]: one variable, or {items: {shv: {...}, shv: ...}}
    (the member name repeats: a Struct) for all, newest name first."""
    if call.params:
        name, = call.scan("S")
        if name not in S.declared:
            raise RpcFault(404, "Variable not found")
        call.add(_shv_item(name))
        return
    items = Struct(("shv", _shv_item(n)) for n in reversed(list(S.declared)))
    call.add({"items": items})


def _shv_scan(call, fmt, text):
    return call.scan(fmt, fault=(500, text + " (Parameters: varname type value)"))


def rpc_shv_set(call):
    """pv.shvSet NAME int|str VALUE."""
    _shv_scan(call, "S", "Missing parameter varname")
    name, kind = _shv_scan(call, "SS", "Missing parameter type")
    if kind.lower() == "int":
        value = _shv_scan(call, "SSd", "Missing integer parameter value")[2]
    elif kind.lower() == "str":
        value = _shv_scan(call, "SSS", "Missing parameter value")[2]
    else:
        raise RpcFault(500, "Unknown parameter type (Types: int or str)")
    if name not in S.declared:
        raise RpcFault(404, "Variable not found")
    if S.shv is None or not S.shv.set(name, value):
        raise RpcFault(500, "Cannot set shared variable value")
    call.add("Ok. Variable set to new value.")


RPC = [
    RpcExport("pv.shvGet", rpc_shv_get, "Reads one shared variable ($shv), or all of them."),
    RpcExport("pv.shvSet", rpc_shv_set, "Sets a shared variable ($shv): NAME int|str VALUE."),
]
FUNCTIONS = []
PARAMS = [ParamExport("shvset", str, None, multi=True),
          ParamExport("varset", str, None, multi=True)]
PVS = [
    PvExport("shv", _shv_get, _shv_set, _shv_parse, True),
    PvExport("avp", _avp_get, _avp_set, _avp_parse, True),
    PvExport("xavp", _xget, _xset, _xparse("xavp"), True),
    PvExport("xavu", _xget, _xset, _xparse("xavu"), True),
    PvExport("xavi", _xget, _xset, _xparse("xavi"), True),
]
