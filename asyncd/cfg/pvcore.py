"""Pseudo-variable references: parsing `$name(inner)[index]{tr}` against the
export tables, string formats with embedded variables, and the value rules
of Kamailio's expressions.

Runs in: main process (parsing), every process running routes (PvSpec.get/set,
value helpers called from generated code).

Kamailio: src/core/pvapi.c (pv_parse_spec, pv_parse_format),
src/core/rvalue.c (types of `+`, comparisons: the left operand decides).
"""
import re

from asyncd.core.errors import CfgError
from asyncd.core.registry import all_known_modules, load_module
from asyncd.cfg.fixups import Loc
from asyncd.cfg.lexer import Lexer
from asyncd.cfg.transformations import parse_transformation, chain

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Kamailio compiles `=~` patterns with REG_EXTENDED|REG_NOSUB|REG_ICASE (rvalue.c)
# and regex function parameters with REG_EXTENDED|REG_ICASE|REG_NEWLINE (mod_fix.c)
MATCH_RE_FLAGS = re.I
FUNC_RE_FLAGS = re.I | re.M


class PvSpec:
    """A parsed pseudo-variable. Also what a P.PV function parameter receives
    (`.get(ctx)`, `.set(ctx, value)`; value None = $null)."""
    __slots__ = ("text", "name", "export", "spec", "index", "index_pv", "trans", "loc", "getter")

    def __init__(self, text, name, export, spec, index, index_pv, trans, loc):
        self.text = text
        self.name = name
        self.export = export
        self.spec = spec
        self.index = index
        self.index_pv = index_pv
        self.trans = trans
        self.loc = loc
        self.getter = export.get

    @property
    def writable(self):
        return self.export.set is not None and self.trans is None

    def _idx(self, ctx):
        if self.index_pv is None:
            return self.index
        v = self.index_pv.get(ctx)
        try:
            return int(v)
        except (TypeError, ValueError):
            return None

    def get(self, ctx):
        v = self.getter(ctx, self.spec, self._idx(ctx))
        return v if self.trans is None else self.trans(v, ctx)

    def set(self, ctx, value):
        if self.export.set is None:
            raise RuntimeError(f"{self.text} is read-only")
        self.export.set(ctx, self.spec, self._idx(ctx), value)

    def __repr__(self):
        return f"PvSpec({self.text})"


class PvTable:
    """Every pseudo-variable class the cfg may use. All pvs of all known
    modules are usable whether or not the module is loaded (contracts §1);
    modules are imported lazily, the first time an unknown name shows up.
    The pv module's classes come first: its $var is the one codegen inlines."""

    def __init__(self, modules=()):
        self.by_name = {}
        self._scanned = False
        self.add_module(load_module("pv"))
        for m in modules:
            self.add_module(m)

    def add_module(self, exports):
        for p in exports.pvs:
            self.by_name.setdefault(p.name, p)

    def lookup(self, name):
        p = self.by_name.get(name)
        if p is None and not self._scanned:
            self._scanned = True
            for mod in all_known_modules():
                try:
                    self.add_module(load_module(mod))
                except Exception:       # a broken module must not break other cfgs
                    continue
            p = self.by_name.get(name)
        return p


def _err(loc, msg):
    return CfgError(msg, loc.file, loc.line, loc.col)


def parse_pv(text, loc, table):
    """Raw `$...` text -> PvSpec (CfgError when malformed or unknown)."""
    if loc is None:
        loc = Loc("<pv>", 0, 0)
    if not text.startswith("$") or len(text) < 2:
        raise _err(loc, f"malformed pseudo-variable '{text}'")
    trans = []
    if text[1] == "(":
        if not text.endswith(")"):
            raise _err(loc, f"malformed pseudo-variable '{text}'")
        body = text[2:-1]
        core, trs = _split_trans(body, text, loc)
        for t in trs:
            trans.append(parse_transformation(t, loc, lambda a: parse_pv(a, loc, table)))
    else:
        core = text[1:]
    m = _NAME_RE.match(core)
    if not m:
        raise _err(loc, f"malformed pseudo-variable '{text}'")
    name = m.group()
    rest = core[m.end():]
    inner = None
    if rest.startswith("("):
        close = _match(rest, 0)
        if close < 0:
            raise _err(loc, f"malformed pseudo-variable '{text}': unbalanced '('")
        inner = rest[1:close]
        rest = rest[close + 1:]
    index, index_pv = None, None
    if rest.startswith("["):
        close = _match(rest, 0)
        if close < 0:
            raise _err(loc, f"malformed pseudo-variable '{text}': unbalanced '['")
        itext = rest[1:close].strip()
        rest = rest[close + 1:]
        if itext == "*":
            index = "*"
        elif itext.startswith("$"):
            index_pv = parse_pv(itext, loc, table)
        else:
            try:
                index = int(itext)
            except ValueError:
                raise _err(loc, f"malformed pseudo-variable '{text}': bad index '{itext}'")
    if rest.strip():
        raise _err(loc, f"malformed pseudo-variable '{text}': unexpected '{rest}'")
    exp = table.lookup(name)
    if exp is None:
        raise _err(loc, f"unknown pseudo-variable ${name} in '{text}'")
    if exp.inner is True and inner is None:
        raise _err(loc, f"malformed pseudo-variable '{text}': ${name} needs a name in parentheses")
    if exp.inner is False and inner is not None:
        raise _err(loc, f"malformed pseudo-variable '{text}': ${name} takes no parentheses")
    spec = inner
    if exp.parse is not None:
        try:
            spec = exp.parse(inner)
        except CfgError as e:       # a nested format inside the name ($sht(t=>$foo))
            raise _err(loc, f"malformed pseudo-variable '{text}': {e.message}")
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise _err(loc, f"malformed pseudo-variable '{text}': {e}")
    return PvSpec(text, name, exp, spec, index, index_pv,
                  chain(trans) if trans else None, loc)


def _match(s, i):
    pairs = {"(": ")", "[": "]", "{": "}"}
    stack = []
    for j in range(i, len(s)):
        c = s[j]
        if c in pairs:
            stack.append(pairs[c])
        elif stack and c == stack[-1]:
            stack.pop()
            if not stack:
                return j
    return -1


def _split_trans(body, text, loc):
    """`avp(x)[1]{s.int}{s.len}` -> ("avp(x)[1]", ["s.int", "s.len"])."""
    depth = 0
    for i, c in enumerate(body):
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == "{" and depth == 0:
            core, rest = body[:i], body[i:]
            trs = []
            while rest:
                if not rest.startswith("{"):
                    raise _err(loc, f"malformed pseudo-variable '{text}': bad transformation")
                close = _match(rest, 0)
                if close < 0:
                    raise _err(loc, f"malformed pseudo-variable '{text}': unbalanced '{{'")
                trs.append(rest[1:close])
                rest = rest[close + 1:].strip()
            return core, trs
    return body, []


def parse_format(text, loc, table=None):
    """A string with embedded variables -> list of str / PvSpec pieces.
    `$` not followed by a name or '(' stays literal."""
    if loc is None:
        loc = Loc("<format>", 0, 0)
    if table is None:
        table = PvTable()
    pieces = []
    buf = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "$" and i + 1 < n and (text[i + 1] == "(" or text[i + 1].isalpha() or text[i + 1] == "_"):
            ploc = Loc(loc.file, loc.line, loc.col + 1 + i)
            lx = Lexer(text, loc.file, ploc.line, 1)
            lx.pos = i
            lx.line_start = i - ploc.col + 1
            raw = lx._pv()
            if buf:
                pieces.append("".join(buf))
                buf = []
            if raw == "$null":
                pieces.append(None)
            else:
                pieces.append(parse_pv(raw, ploc, table))
            i = lx.pos
            continue
        buf.append(c)
        i += 1
    if buf:
        pieces.append("".join(buf))
    return pieces


# -- value rules used by generated code ----------------------------------------

def to_str(v):
    """Kamailio prints $null as <null> in formats (xlog)."""
    if v is None:
        return "<null>"
    return v if type(v) is str else str(v)


def to_int(v):
    """str2sint-like: int, numeric string -> int; else None."""
    if type(v) is int:
        return v
    if v is None:
        return None
    try:
        return int(str(v).strip(), 0)
    except ValueError:
        try:
            return int(str(v).strip())
        except ValueError:
            return None


def truth(v):
    if v is None:
        return False
    if type(v) is int:
        return v != 0
    if v == "":
        return False
    n = to_int(v)
    return True if n is None else n != 0


def add(a, b):
    """`+`: string concatenation when the left side is a string (rvalue.c)."""
    if type(a) is int:
        if type(b) is int:
            return a + b
        n = to_int(b)
        return a + (n or 0)
    if a is None:
        return b
    return a + ("" if b is None else (b if type(b) is str else str(b)))


_I64 = 1 << 63
_U64 = (1 << 64) - 1


def wrap64(v):
    """Keep a cfg integer inside a signed 64-bit word, as C arithmetic does: Python
    ints are unbounded, and `$var(a) = $var(a) * $var(a)` in a loop would otherwise
    grow without end (minutes of CPU, then memory) instead of wrapping."""
    if -_I64 <= v < _I64:
        return v
    return ((v + _I64) & _U64) - _I64


def arith(op, a, b):
    x = to_int(a) or 0
    y = to_int(b) or 0
    if op == "-":
        return x - y
    if op == "*":
        return wrap64(x * y)
    if op == "/" or op == "%":
        if y == 0:
            what = "division" if op == "/" else "modulo"
            raise ZeroDivisionError(f"{what} by zero in cfg expression")
        q = abs(x) // abs(y)            # C truncates toward zero; exact for any size
        if (x < 0) != (y < 0):
            q = -q
        return wrap64(q) if op == "/" else wrap64(x - y * q)
    if op == "|":
        return x | y
    if op == "&":
        return x & y
    if op == "^":
        return x ^ y
    if op == "<<":
        return wrap64(x << (y & 63))    # x86 masks the shift count
    if op == ">>":
        return x >> (y & 63)
    raise ValueError(op)


def eq(a, b):
    if a is None or b is None:
        return a is b
    if type(a) is int:
        return a == to_int(b)
    return a == (b if type(b) is str else str(b))


def cmp(op, a, b):
    if a is None or b is None:
        return False
    if type(a) is int or type(b) is int:
        x, y = to_int(a), to_int(b)
        if x is None or y is None:
            x, y = str(a), str(b)
    else:
        x, y = a, b
    if op == "<":
        return x < y
    if op == ">":
        return x > y
    if op == "<=":
        return x <= y
    return x >= y


_re_cache = {}


def match(a, b):
    """`=~`: POSIX extended regex search (the right side is the pattern)."""
    if a is None or b is None:
        return False
    rx = b if isinstance(b, re.Pattern) else _re_cache.get(b)
    if rx is None:
        try:
            rx = re.compile(str(b), MATCH_RE_FLAGS)
        except re.error:
            return False
        if len(_re_cache) < 1024:
            _re_cache[b] = rx
    return rx.search(a if type(a) is str else str(a)) is not None


def regex(v):
    """A runtime P.REGEX argument built from variables."""
    rx = _re_cache.get(v)
    if rx is None:
        rx = re.compile(to_str(v), FUNC_RE_FLAGS)
        if len(_re_cache) < 1024:
            _re_cache[v] = rx
    return rx


def fmt(ctx, pieces):
    """Format a parsed string at run time (kept for modules; generated code inlines it)."""
    out = []
    for p in pieces:
        if type(p) is str:
            out.append(p)
        elif p is None:
            out.append("<null>")
        else:
            out.append(to_str(p.get(ctx)))
    return "".join(out)
