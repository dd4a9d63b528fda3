"""Code generator: cfg AST -> Python source, one function per route block and
per `async_sleep` continuation.

Runs in: main process (cfg compilation). The generated code runs in every
process that runs routes.

As jinja2's compiler: nodes carry their cfg location, every generated line
records the cfg file:line it came from (tracebacks and runtime errors name
the cfg line), constants reach the source only through repr(), and
everything else (call sites, pv specs, compiled regexes, module functions)
is bound in the module namespace under generated names: no cfg text is ever
spliced in as code.

Semantics mirrored from src/core/action.c / rvalue.c: a module function
returning 0 ends the script; in a condition it is true when > 0; `return 0`
from a sub-route ends the script too; `break` leaves the innermost
switch/while; while loops stop after max_while_loops iterations.
"""
import difflib
import re

from asyncd.core import log
from asyncd.core.errors import CfgError, ScriptExit
from asyncd.core.exports import P
from asyncd.core.route_types import BLOCK_KINDS
from asyncd.cfg import nodes as N
from asyncd.cfg import pvcore
from asyncd.cfg.fixups import ArgInfo, CallSite
from asyncd.cfg.hints import close_function_names, module_exporting
from asyncd.cfg.pvcore import PvSpec, parse_format, parse_pv

# pv classes whose value is always a str or None: `==` with a string literal
# can then be a plain Python comparison (same result as rvalue.c's rules)
STR_PVS = {"ru", "rU", "rd", "rm", "rr", "fu", "fU", "fd", "fn", "ft", "tu", "tU", "td", "tn",
           "tt", "ci", "si", "Ri", "pr", "proto", "ua", "du", "hdr", "mb", "rb", "rz", "ct", "cT"}
INT_PVS = {"rs", "cs", "sp", "Rp", "ml", "bs", "pp", "Ts", "hdrc", "rc", "retcode", "mf"}
BLOCK_TITLES = {"request": "request_route", "route": "route[{}]", "failure": "failure_route[{}]",
                "onreply": "onreply_route[{}]", "reply": "reply_route", "branch": "branch_route[{}]",
                "onsend": "onsend_route", "event": "event_route[{}]"}


def block_title(kind, name):
    return BLOCK_TITLES[kind].format(name)


def _q(loc):
    """A location as a safe comment (repr() quotes and escapes the file name)."""
    return f"# {loc.file!r}:{loc.line}" if loc else ""


class _Fn:
    """State of one generated Python function."""

    def __init__(self, kind, name):
        self.kind = kind
        self.name = name
        self.loops = 0
        self.tmp = 0


class CodeGen:
    def __init__(self, script, funcs, pvtable, max_while_loops=100):
        self.script = script
        self.funcs = funcs              # name -> [(FuncExport, module name)]
        self.pvtable = pvtable
        # $var / $vz (the pv module's getter and setter) are inlined as plain
        # reads and writes of ctx.proc.vars
        var = pvtable.lookup("var")     # PvTable always holds the pv module's classes
        self.var_get, self.var_set = var.get, var.set
        self.max_while = max_while_loops
        self.lines = []
        self.locs = []
        self.ns = {}
        self.counter = 0
        self.route_fns = {}             # (kind, name) -> python function name
        self.conts = {}                 # continuation id -> python function name
        self.pending = []               # continuation bodies still to generate
        self.sites = []
        self.indent = 0
        self.cur_loc = None
        self.fn_file = None
        self.hoisted = {}               # id(Call node) -> temp holding its result
        self.cont_by_node = {}          # id(first statement of a rest-of-block) -> continuation id

    # -- emit helpers ----------------------------------------------------------
    def w(self, text, loc=None):
        loc = loc or self.cur_loc
        if loc is None:
            note = ""
        elif loc.file == self.fn_file and not text.startswith("def "):
            note = f"  # line {loc.line}"
        else:
            note = "  " + _q(loc)
        self.lines.append("    " * self.indent + text + note)
        self.locs.append(loc)

    def name(self, prefix):
        self.counter += 1
        return f"{prefix}{self.counter}"

    def bind(self, obj, prefix="K"):
        n = self.name(prefix)
        self.ns[n] = obj
        return n

    def tmp(self, fn):
        fn.tmp += 1
        return f"t{fn.tmp}"

    # -- routes ----------------------------------------------------------------
    def route_fn_name(self, kind, name):
        key = (kind, name)
        if key not in self.route_fns:
            self.route_fns[key] = self.name("R")
        return self.route_fns[key]

    def gen_routes(self, routes):
        for r in routes:
            self.route_fn_name(r.kind, r.name)
        for r in routes:
            self.gen_function(self.route_fns[(r.kind, r.name)], r.kind, r.name, r.body.stmts, r.loc)
        while self.pending:
            cid, kind, name, stmts, loc = self.pending.pop(0)
            self.gen_function(self.conts[cid], kind, name, stmts, loc)

    def gen_function(self, pyname, kind, name, stmts, loc):
        fn = _Fn(kind, name)
        self.cur_loc = loc
        self.fn_file = loc.file if loc else None
        title = block_title(kind, name) if pyname.startswith("R") else \
            f"continuation in {block_title(kind, name)}"
        self.lines.append(f"# {title!r}")
        self.locs.append(loc)
        self.w(f"def {pyname}(ctx):", loc)
        self.indent += 1
        self.gen_stmts(stmts, fn)
        self.cur_loc = loc
        self.w("return 1")
        self.indent -= 1
        self.lines.append("")
        self.locs.append(None)

    # -- statements -------------------------------------------------------------
    def gen_stmts(self, stmts, fn):
        if not stmts:
            self.w("pass")
            return
        for i, st in enumerate(stmts):
            cid = None
            if isinstance(st, N.ExprStmt) and isinstance(st.expr, N.Call):
                fe = self._peek_func(st.expr)
                if fe is not None and fe.continuation:
                    rest = stmts[i + 1:]
                    if rest:
                        # the rest of a block is identified by its first statement:
                        # the same call compiled inline and inside an enclosing
                        # continuation shares one id (no 2^n blow-up with n sleeps)
                        cid = self.cont_by_node.get(id(rest[0]))
                        if cid is None:
                            cid = len(self.conts) + 1
                            self.cont_by_node[id(rest[0])] = cid
                            self.conts[cid] = f"C{cid}"
                            self.pending.append((cid, fn.kind, fn.name, rest, rest[0].loc))
            self.gen_stmt(st, fn, cid)

    def gen_stmt(self, st, fn, cid=None):
        self.cur_loc = st.loc
        t = type(st)
        if t is N.ExprStmt:
            e = st.expr
            if isinstance(e, N.Call):
                self.gen_call_stmt(e, fn, cid)
            else:
                self.gen_route_call_stmt(e, fn)
        elif t is N.Assign:
            self.gen_assign(st, fn)
        elif t is N.If:
            self.hoist_leftmost_call(st.cond, fn)
            self.w(f"if {self.cond(st.cond, fn)}:", st.loc)
            self.indent += 1
            self.gen_body(st.then, fn)
            self.indent -= 1
            o = st.orelse
            # `else if` chains become elif: long chains must not nest (Python
            # allows 100 indentation levels); their conditions are not hoisted
            while type(o) is N.If:
                self.cur_loc = o.loc
                self.w(f"elif {self.cond(o.cond, fn)}:", o.loc)
                self.indent += 1
                self.gen_body(o.then, fn)
                self.indent -= 1
                o = o.orelse
            if o is not None:
                self.w("else:", st.loc)
                self.indent += 1
                self.gen_body(o, fn)
                self.indent -= 1
        elif t is N.Block:
            self.gen_stmts(st.stmts, fn)
        elif t is N.Return:
            if st.expr is None:
                self.w("return 1")
            else:
                v, ty = self.val(st.expr, fn)
                self.w(f"return {v}" if ty == "int" else f"return _retint({v})")
        elif t is N.Exit:
            self.w("raise _SE()")
        elif t is N.Drop:
            self.w("ctx.dropped = True")
            self.w("raise _SE(True)")
        elif t is N.Break:
            self.w("break" if fn.loops else "return 1")
        elif t is N.While:
            self.gen_while(st, fn)
        elif t is N.Switch:
            self.gen_switch(st, fn)
        else:   # pragma: no cover - parser produces nothing else
            raise st.loc.error(f"internal: unknown statement {t.__name__}")

    def gen_body(self, st, fn):
        if isinstance(st, N.Block):
            self.gen_stmts(st.stmts, fn)
        else:
            self.gen_stmts([st], fn)

    def hoist_leftmost_call(self, e, fn):
        """The operand a condition always evaluates first, when it is a module
        function call, becomes a plain statement before the `if` (inline
        try/except instead of the _call helper); short-circuiting is
        unaffected since nothing is evaluated before it."""
        while True:
            t = type(e)
            if t is N.UnOp and e.op == "!":
                e = e.operand
            elif t is N.BinOp:
                e = e.left
            else:
                break
        if type(e) is N.Call:
            fe = self._peek_func(e)
            if fe is not None and not fe.continuation:
                self.hoisted[id(e)] = self.gen_call_stmt(e, fn, None)

    def gen_while(self, st, fn):
        n = self.tmp(fn)
        lim = self.bind(st.loc, "L")
        self.w(f"{n} = 0")
        self.w(f"while {self.cond(st.cond, fn)}:", st.loc)
        self.indent += 1
        self.w(f"{n} += 1")
        self.w(f"if {n} > {self.max_while!r}:")
        self.w(f"    _runaway({lim})")
        self.w("    break")
        fn.loops += 1
        self.gen_body(st.body, fn)
        fn.loops -= 1
        self.indent -= 1

    def gen_switch(self, st, fn):
        v, ty = self.val(st.expr, fn)
        sv, m = self.tmp(fn), self.tmp(fn)
        self.w(f"{sv} = {v}", st.loc)
        default = None
        first = True
        for k, case in enumerate(st.cases):
            if case.value is None:
                default = k
                continue
            self.cur_loc = case.loc
            if (ty in ("str", "str?") and isinstance(case.value, str)) or \
                    (ty == "int" and isinstance(case.value, int)):
                test = f"{sv} == {case.value!r}"
            else:
                test = f"_eq({sv}, {case.value!r})"
            self.w(f"{'if' if first else 'elif'} {test}:", case.loc)
            self.w(f"    {m} = {k}")
            first = False
        if first:
            self.w(f"{m} = {default if default is not None else -1}")
        else:
            self.w("else:")
            self.w(f"    {m} = {default if default is not None else -1}")
        self.w("for _ in _ONCE:", st.loc)
        self.indent += 1
        fn.loops += 1
        for k, case in enumerate(st.cases):
            self.cur_loc = case.loc
            self.w(f"if 0 <= {m} <= {k}:", case.loc)
            self.indent += 1
            self.gen_stmts(case.stmts, fn)
            self.indent -= 1
        self.w("pass")
        fn.loops -= 1
        self.indent -= 1

    def gen_assign(self, st, fn):
        spec = self.pv(st.target)
        if not spec.writable:
            raise st.target.loc.error(f"cannot assign to {spec.text}: read-only pseudo-variable")
        if st.op == "+=":
            expr = N.BinOp("+", st.target, st.expr, loc=st.loc)
        else:
            expr = st.expr
        v, ty = self.val(expr, fn)
        if "_arith('/'" in v or "_arith('%'" in v:
            # Kamailio (lval_assign): a division by zero fails the assignment,
            # logs, and the script goes on with the next statement
            self.w("try:", st.loc)
            self.indent += 1
            self._gen_store(st, spec, v, ty, fn)
            self.indent -= 1
            self.w("except ZeroDivisionError as _zde:", st.loc)
            self.w(f"    _zdiv(_zde, {self.bind(st.loc, 'L')})", st.loc)
        else:
            self._gen_store(st, spec, v, ty, fn)

    def _gen_store(self, st, spec, v, ty, fn):
        if spec.export.set is self.var_set and spec.index is None and spec.index_pv is None:
            if ty in ("int", "str"):
                self.w(f"ctx.proc.vars[{spec.spec!r}] = {v}", st.loc)
            else:
                t = self.tmp(fn)
                self.w(f"{t} = {v}", st.loc)
                self.w(f"ctx.proc.vars[{spec.spec!r}] = 0 if {t} is None else {t}")
            return
        setter = self.bind(spec.export.set, "SET")
        if spec.index_pv is None:
            k = self.bind(spec.spec)
            # `:=` replaces every value of a multi-value pv ($avp): index [*]
            idx = "*" if st.op == ":=" and spec.index is None else spec.index
            self.w(f"{setter}(ctx, {k}, {idx!r}, {v})", st.loc)
        else:
            p = self.bind(spec, "P")
            self.w(f"{p}.set(ctx, {v})", st.loc)

    # -- calls --------------------------------------------------------------------
    def _peek_func(self, call):
        cands = self.funcs.get(call.name)
        if not cands:
            return None
        for fe, _mod in cands:
            if len(fe.params) == len(call.args):
                return fe
        return None

    def make_site(self, call, fn, cid):
        cands = self.funcs.get(call.name)
        if not cands:
            raise call.loc.error(self.unknown_func_msg(call.name, len(call.args)))
        fe = mod = None
        for f, m in cands:
            if len(f.params) == len(call.args):
                fe, mod = f, m
                break
        if fe is None:
            raise call.loc.error(self.arity_msg(call.name, cands, len(call.args)))
        rt = BLOCK_KINDS[fn.kind]
        if not (fe.flags & rt):
            raise call.loc.error(f"{call.name}() cannot be used in {block_title(fn.kind, fn.name)}")
        args = [self.arg_info(a) for a in call.args]
        site = CallSite(func=fe, loc=call.loc, args=args, script=self.script,
                        block_kind=fn.kind, block_name=fn.name, continuation=cid, module=mod)
        if fe.fixup is not None:
            try:
                fe.fixup(site)
            except CfgError:
                raise
            except Exception as e:
                raise call.loc.error(f"{call.name}(): fixup failed: {e}")
        else:
            self.check_route_args(site)
        self.sites.append(site)
        argv = [self.arg_code(kind, a, info, site, i, fn)
                for i, (kind, a, info) in enumerate(zip(fe.params, call.args, args))]
        return site, fe, argv

    def check_route_args(self, site):
        """P.ROUTE literals of functions without their own fixup must name a
        route block of some kind (exports.P: checked at startup)."""
        sc = self.script
        known = sc.route_names | sc.failure_route_names | sc.onreply_route_names | \
            sc.branch_route_names | sc.event_routes
        for i, (kind, a) in enumerate(zip(site.func.params, site.args)):
            if kind == P.ROUTE and a.literal and a.value not in (None, "") \
                    and str(a.value) not in known:
                site.arg_error(i, f"{site.func.name}(): no route block named [{a.value}]")

    def gen_call_stmt(self, call, fn, cid):
        site, fe, argv = self.make_site(call, fn, cid)
        s = self.bind(site, "S")
        f = self.bind(fe.impl, "F")
        r = self.tmp(fn)
        loc = call.loc
        level = site.data.get("log_level")
        if isinstance(level, int):
            # a log call whose level is off costs one comparison, no formatting
            # (xlog checks the level before evaluating its format, too)
            self.w(f"if _LOG.level < {level!r}:", loc)
            self.w(f"    {r} = 1")
            self.w("else:")
            self.indent += 1
            self._call_block(r, s, f, argv, loc)
            self.indent -= 1
        else:
            self._call_block(r, s, f, argv, loc)
        self.w(f"if {r} == 0:")
        self.w("    raise _SE()")
        self.w(f"ctx.retcode = {r}")
        return r

    def _call_block(self, r, s, f, argv, loc):
        self.w("try:", loc)
        self.w(f"    ctx.site = {s}")
        self.w(f"    {r} = {f}(ctx, {s}{''.join(', ' + a for a in argv)})")
        self.w("except _SE:")
        self.w("    raise")
        self.w("except Exception as e:")
        self.w(f"    {r} = _ferr(ctx, {s}, e)")

    def call_expr(self, call, fn):
        site, fe, argv = self.make_site(call, fn, None)
        s = self.bind(site, "S")
        f = self.bind(fe.impl, "F")
        return f"_call(ctx, {s}, {f}{''.join(', ' + a for a in argv)})"

    def gen_route_call_stmt(self, rc, fn):
        r = self.tmp(fn)
        self.w(f"{r} = {self.route_call_expr(rc, fn, inline=True)}", rc.loc)
        self.w(f"if {r} == 0:")
        self.w("    raise _SE()")
        self.w(f"ctx.retcode = {r}")

    def route_call_expr(self, rc, fn, inline=False):
        if isinstance(rc.target, str):
            name = rc.target
            if name in ("0",):
                key = ("request", None)
            else:
                key = ("route", name)
            if key not in self.route_fns:
                names = sorted(n for k, n in self.route_fns if k == "route" and n)
                close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
                hint = f" (did you mean route({close[0]})?)" if close else ""
                raise rc.loc.error(f"route(\"{name}\"): no route[{name}] block is defined{hint}")
            target = self.route_fns[key]
            return f"{target}(ctx)" if inline else f"_rcall(ctx, {target})"
        v, _ = self.val(rc.target, fn)
        loc = self.bind(rc.loc, "L")
        return f"_rdyn(ctx, {v}, {loc})"

    def unknown_func_msg(self, name, arity=None):
        mod = module_exporting(name)
        if mod:
            return f"unknown function '{name}': it is exported by module '{mod}', " \
                   f"which is not loaded (loadmodule \"{mod}.so\")"
        close = close_function_names(name, arity)
        if close:
            return f"unknown function '{name}' (did you mean {' or '.join(repr(c) for c in close)}?)"
        return f"unknown function '{name}'"

    def arity_msg(self, name, cands, n):
        want = sorted({len(f.params) for f, _ in cands})
        msg = f"{name}() takes {' or '.join(map(str, want))} argument(s), got {n}"
        sugg = self.suggest(name, n)
        if sugg:
            msg += f"; did you mean {sugg}()?"
        return msg

    def suggest(self, name, n):
        """A function with the same name words plus one more that takes n args
        (async_task_route + 2 args -> async_task_group_route)."""
        words = name.split("_")
        best = None
        for other, cands in self.funcs.items():
            if other == name or not any(len(f.params) == n for f, _ in cands):
                continue
            ow = other.split("_")
            if len(ow) == len(words) + 1:
                for i in range(len(ow)):
                    if ow[:i] + ow[i + 1:] == words:
                        best = other
                        break
            if best:
                break
        return best

    # -- arguments ----------------------------------------------------------------
    def arg_info(self, a):
        if isinstance(a, N.Const):
            if isinstance(a.value, str):
                pieces = parse_format(a.value, a.loc, self.pvtable)
                if all(type(p) is str for p in pieces):
                    return ArgInfo(True, a.value, a.loc, a.value)
                is_pv = len(pieces) == 1 and isinstance(pieces[0], PvSpec)
                return ArgInfo(False, None, a.loc, a.value, is_pv)
            return ArgInfo(True, a.value, a.loc, None if a.value is None else str(a.value))
        if isinstance(a, N.Pv):
            return ArgInfo(False, None, a.loc, a.text, True)
        return ArgInfo(False, None, a.loc)

    def fmt_code(self, text, loc, fn):
        pieces = parse_format(text, loc, self.pvtable)
        parts = []
        for p in pieces:
            if type(p) is str:
                parts.append(repr(p))
            elif p is None:
                parts.append(repr("<null>"))
            else:
                parts.append(f"_tostr({self.pv_get(p)})")
        if not parts:
            return "''"
        if len(parts) == 1:
            return parts[0]
        return "(" + " + ".join(parts) + ")"

    def arg_code(self, kind, a, info, site, i, fn):
        name = site.func.name
        if kind in (P.STR, P.ROUTE):
            if isinstance(a, N.Const):
                if a.value is None:
                    return "None"
                if isinstance(a.value, int):
                    return repr(str(a.value))
                return self.fmt_code(a.value, a.loc, fn)
            v, ty = self.val(a, fn)
            return v if ty == "str" else f"_tostr({v})"
        if kind == P.INT:
            if info.literal:
                iv = info.int_value
                if iv is None and info.value is not None:
                    site.arg_error(i, f"{name}(): argument {i + 1} must be an integer, "
                                      f"got {info.value!r}")
                return repr(iv)
            if isinstance(a, N.Const):
                pieces = parse_format(a.value, a.loc, self.pvtable)
                if not info.is_pv:
                    site.arg_error(i, f"{name}(): argument {i + 1} must be an integer or "
                                      f"a single variable, got {a.value!r}")
                return f"_toint({self.pv_get(pieces[0])})"
            v, ty = self.val(a, fn)
            return v if ty == "int" else f"_toint({v})"
        if kind == P.REGEX:
            if info.literal:
                try:
                    rx = re.compile(str(info.value), pvcore.FUNC_RE_FLAGS)
                except re.error as e:
                    site.arg_error(i, f"{name}(): bad regular expression {info.value!r}: {e}")
                return self.bind(rx, "RX")
            return f"_regex({self.arg_code(P.STR, a, info, site, i, fn)})"
        if kind == P.PV:
            if isinstance(a, N.Pv):
                return self.bind(self.pv(a), "P")
            if isinstance(a, N.Const) and info.is_pv:
                return self.bind(parse_format(a.value, a.loc, self.pvtable)[0], "P")
            site.arg_error(i, f"{name}(): argument {i + 1} must be a pseudo-variable")
        # P.ANY and unknown kinds: the expression value
        if isinstance(a, N.Const) and isinstance(a.value, str) and not info.literal:
            return self.fmt_code(a.value, a.loc, fn)
        return self.val(a, fn)[0]

    # -- pseudo-variables ---------------------------------------------------------
    def pv(self, node):
        return parse_pv(node.text, node.loc, self.pvtable)

    def pv_get(self, spec):
        if spec.index_pv is not None:
            return f"{self.bind(spec, 'P')}.get(ctx)"
        if spec.export.get is self.var_get and spec.trans is None and spec.index is None:
            return f"ctx.proc.vars.get({spec.spec!r}, 0)"
        g = self.bind(spec.export.get, "G")
        k = self.bind(spec.spec)
        code = f"{g}(ctx, {k}, {spec.index!r})"
        if spec.trans is not None:
            code = f"{self.bind(spec.trans, 'T')}({code}, ctx)"
        return code

    def pv_type(self, spec):
        if spec.trans is not None:
            return None
        if spec.name in STR_PVS:
            return "str?"
        if spec.name in INT_PVS:
            return None
        return None

    # -- expressions --------------------------------------------------------------
    def val(self, e, fn):
        """-> (python expression, static type: 'int' | 'str' | 'str?' | None)."""
        t = type(e)
        if t is N.Const:
            v = e.value
            return repr(v), ("int" if isinstance(v, int) else "str" if isinstance(v, str) else None)
        if t is N.Myself:
            raise e.loc.error("'myself' can only be compared with == or !=")
        if t is N.Pv:
            spec = self.pv(e)
            return self.pv_get(spec), self.pv_type(spec)
        if t is N.Call:
            h = self.hoisted.pop(id(e), None)
            if h is not None:
                return h, "int"
            return self.call_expr(e, fn), "int"
        if t is N.RouteCall:
            return self.route_call_expr(e, fn), "int"
        if t is N.UnOp:
            op = e.op
            if op == "-":
                v, ty = self.val(e.operand, fn)
                return (f"(-{v})" if ty == "int" else f"(-(_toint({v}) or 0))"), "int"
            if op == "~":
                v, ty = self.val(e.operand, fn)
                return (f"(~{v})" if ty == "int" else f"(~(_toint({v}) or 0))"), "int"
            if op == "strlen":
                v, ty = self.val(e.operand, fn)
                return f"_strlen({v})", "int"
            return f"(1 if {self.cond(e, fn)} else 0)", "int"
        if t is N.BinOp:
            op = e.op
            if op in ("&&", "||", "==", "!=", "<", ">", "<=", ">=", "=~", "!~"):
                return f"(1 if {self.cond(e, fn)} else 0)", "int"
            a, ta = self.val(e.left, fn)
            b, tb = self.val(e.right, fn)
            if op == "+":
                if ta == "int" and tb == "int":
                    return f"({a} + {b})", "int"
                if ta == "str" and tb == "str":
                    return f"({a} + {b})", "str"
                return f"_add({a}, {b})", (ta if ta in ("int", "str") else None)
            # + and - grow linearly and stay plain; * would square a value per loop
            # turn, so it wraps to 64 bits as C does (pvcore.wrap64); << goes via _arith
            if ta == "int" and tb == "int" and op in ("-", "|", "&", "^"):
                return f"({a} {op} {b})", "int"
            if ta == "int" and tb == "int" and op == "*":
                return f"_w64({a} * {b})", "int"
            return f"_arith({op!r}, {a}, {b})", "int"
        raise e.loc.error(f"internal: cannot compile {t.__name__}")  # pragma: no cover

    def cond(self, e, fn):
        """-> python boolean expression."""
        t = type(e)
        if t is N.BinOp:
            op = e.op
            if op == "&&":
                return f"({self.cond(e.left, fn)} and {self.cond(e.right, fn)})"
            if op == "||":
                return f"({self.cond(e.left, fn)} or {self.cond(e.right, fn)})"
            if op in ("==", "!=") and (type(e.left) is N.Myself or type(e.right) is N.Myself):
                other = e.right if type(e.left) is N.Myself else e.left
                if type(other) is N.Myself:
                    raise e.loc.error("myself compared with myself")
                v, _ = self.val(other, fn)
                is_uri = type(other) is N.Pv and other.text in ("$ru", "$fu", "$tu", "$du")
                return f"({'not ' if op == '!=' else ''}_myself({v}, {is_uri!r}))"
            if op in ("==", "!="):
                a, ta = self.val(e.left, fn)
                b, tb = self.val(e.right, fn)
                neg = op == "!="
                if (ta in ("str", "str?") and tb == "str") or (ta == "int" and tb == "int"):
                    return f"({a} {op} {b})"
                if isinstance(e.right, N.Const) and e.right.value is None:
                    if isinstance(e.left, N.Const):   # `"abc" == $null`: fold, no `'abc' is None`
                        return "True" if (e.left.value is None) != neg else "False"
                    if ta == "int":     # `(-3) is None` would be a SyntaxWarning; a call keeps side effects
                        return f"({'not ' if neg else ''}_isnull({a}))"
                    return f"({a} is {'not ' if neg else ''}None)"
                return f"({'not ' if neg else ''}_eq({a}, {b}))"
            if op in ("=~", "!~"):
                a, _ = self.val(e.left, fn)
                if isinstance(e.right, N.Const) and isinstance(e.right.value, str):
                    try:
                        rx = re.compile(e.right.value, pvcore.MATCH_RE_FLAGS)
                    except re.error as ex:
                        raise e.right.loc.error(f"bad regular expression {e.right.value!r}: {ex}")
                    b = self.bind(rx, "RX")
                else:
                    b, _ = self.val(e.right, fn)
                return f"({'not ' if op == '!~' else ''}_match({a}, {b}))"
            if op in ("<", ">", "<=", ">="):
                a, ta = self.val(e.left, fn)
                b, tb = self.val(e.right, fn)
                if ta == "int" and tb == "int":
                    return f"({a} {op} {b})"
                return f"_cmp({op!r}, {a}, {b})"
            v, _ = self.val(e, fn)
            return f"({v} != 0)"
        if t is N.UnOp:
            if e.op == "!":
                return f"(not {self.cond(e.operand, fn)})"
            if e.op == "defined":
                if type(e.operand) is N.Const:   # `defined 1`: no `1 is not None` (SyntaxWarning)
                    return "True" if e.operand.value is not None else "False"
                v, ty = self.val(e.operand, fn)
                if ty == "int":                  # `(-3) is not None`: the same warning
                    return f"(not _isnull({v}))"
                return f"({v} is not None)"
            if e.op == "strempty":
                v, _ = self.val(e.operand, fn)
                return f"_strempty({v})"
            v, _ = self.val(e, fn)
            return f"({v} != 0)"
        if t is N.Call or t is N.RouteCall:
            v, _ = self.val(e, fn)
            return f"({v} > 0)"
        if t is N.Const:
            return "True" if pvcore.truth(e.value) else "False"
        v, ty = self.val(e, fn)
        return f"({v} != 0)" if ty == "int" else f"_truth({v})"

    def source(self):
        return "\n".join(self.lines) + "\n"


def runtime_namespace():
    """Helpers every generated module sees (bound once, looked up as globals)."""
    return {
        "_SE": ScriptExit, "_ONCE": (1,), "_LOG": log.state,
        "_tostr": pvcore.to_str, "_toint": pvcore.to_int, "_truth": pvcore.truth,
        "_add": pvcore.add, "_arith": pvcore.arith, "_w64": pvcore.wrap64, "_eq": pvcore.eq, "_cmp": pvcore.cmp,
        "_match": pvcore.match, "_regex": pvcore.regex,
        "_strlen": lambda v: 0 if v is None else len(v if type(v) is str else str(v)),
        "_strempty": lambda v: v is None or v == "",
        "_isnull": lambda v: v is None,
        "_retint": lambda v: (pvcore.to_int(v) if pvcore.to_int(v) is not None else 0),
        "_zdiv": _zdiv,
    }


def _zdiv(e, loc):
    log.err("core", f"{e}: assignment not done", where=loc.where)
