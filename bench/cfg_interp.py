"""Baseline for bench/micro_cfg.py: a straightforward tree-walking
interpreter of the same cfg AST, with the same semantics and the same
module functions as the compiled script.

Runs in: a developer's shell (benchmark only; never used by the server).

It does the obvious thing: walk the nodes at every run, dispatching on the
node type, with pseudo-variable specs and string formats parsed once and
cached on the side (a fair baseline would not re-parse them per message).
The compiled script must never be slower than this.
"""
from asyncd.core.errors import ScriptExit
from asyncd.core.exports import P
from asyncd.cfg import nodes as N, pvcore
from asyncd.cfg.codegen import CodeGen


class _Return(Exception):
    def __init__(self, value):
        self.value = value


class _Break(Exception):
    pass


class Interpreter:
    def __init__(self, script, routes, gen: CodeGen):
        self.script = script
        self.routes = {(r.kind, r.name): r for r in routes}
        self.gen = gen          # reuse its function table / pv table / site building
        self.pv_cache = {}
        self.fmt_cache = {}
        self.site_cache = {}

    def run_request_route(self, ctx):
        try:
            return self.run_block(self.routes[("request", None)].body.stmts, ctx)
        except ScriptExit:
            return 0
        except _Return as r:
            return r.value

    def run_named(self, name, ctx):
        try:
            self.run_block(self.routes[("route", name)].body.stmts, ctx)
            return 1
        except _Return as r:
            return r.value

    # -- statements --------------------------------------------------------------
    def run_block(self, stmts, ctx):
        for st in stmts:
            self.exec(st, ctx)
        return 1

    def exec(self, st, ctx):
        t = type(st)
        if t is N.ExprStmt:
            self.eval(st.expr, ctx)
        elif t is N.Assign:
            spec = self.pv(st.target)
            spec.set(ctx, self.eval(st.expr, ctx))
        elif t is N.If:
            if self.truth(st.cond, ctx):
                self.exec(st.then, ctx)
            elif st.orelse is not None:
                self.exec(st.orelse, ctx)
        elif t is N.Block:
            self.run_block(st.stmts, ctx)
        elif t is N.Return:
            raise _Return(1 if st.expr is None else pvcore.to_int(self.eval(st.expr, ctx)))
        elif t is N.Exit:
            raise ScriptExit()
        elif t is N.Drop:
            ctx.dropped = True
            raise ScriptExit(True)
        elif t is N.Break:
            raise _Break()
        elif t is N.While:
            n = 0
            try:
                while self.truth(st.cond, ctx) and n < 100:
                    n += 1
                    self.exec(st.body, ctx)
            except _Break:
                pass
        elif t is N.Switch:
            v = self.eval(st.expr, ctx)
            start = None
            for k, c in enumerate(st.cases):
                if c.value is not None and pvcore.eq(v, c.value):
                    start = k
                    break
            if start is None:
                start = next((k for k, c in enumerate(st.cases) if c.value is None), None)
            if start is not None:
                try:
                    for c in st.cases[start:]:
                        self.run_block(c.stmts, ctx)
                except _Break:
                    pass

    # -- expressions -------------------------------------------------------------
    def pv(self, node):
        spec = self.pv_cache.get(id(node))
        if spec is None:
            spec = self.pv_cache[id(node)] = self.gen.pv(node)
        return spec

    def truth(self, e, ctx):
        t = type(e)
        if t is N.Call or t is N.RouteCall:
            return self.eval(e, ctx) > 0
        if t is N.BinOp and e.op in ("&&", "||"):
            if e.op == "&&":
                return self.truth(e.left, ctx) and self.truth(e.right, ctx)
            return self.truth(e.left, ctx) or self.truth(e.right, ctx)
        if t is N.UnOp and e.op == "!":
            return not self.truth(e.operand, ctx)
        return pvcore.truth(self.eval(e, ctx))

    def eval(self, e, ctx):
        t = type(e)
        if t is N.Const:
            return e.value
        if t is N.Pv:
            return self.pv(e).get(ctx)
        if t is N.BinOp:
            op = e.op
            if op in ("&&", "||"):
                return 1 if self.truth(e, ctx) else 0
            a = self.eval(e.left, ctx)
            b = self.eval(e.right, ctx)
            if op == "+":
                return pvcore.add(a, b)
            if op == "==":
                return 1 if pvcore.eq(a, b) else 0
            if op == "!=":
                return 0 if pvcore.eq(a, b) else 1
            if op == "=~":
                return 1 if pvcore.match(a, b) else 0
            if op == "!~":
                return 0 if pvcore.match(a, b) else 1
            if op in ("<", ">", "<=", ">="):
                return 1 if pvcore.cmp(op, a, b) else 0
            return pvcore.arith(op, a, b)
        if t is N.UnOp:
            if e.op == "!":
                return 0 if self.truth(e.operand, ctx) else 1
            v = self.eval(e.operand, ctx)
            if e.op == "-":
                return -(pvcore.to_int(v) or 0)
            if e.op == "~":
                return ~(pvcore.to_int(v) or 0)
            if e.op == "strlen":
                return len(pvcore.to_str(v))
            if e.op == "defined":
                return 1 if v is not None else 0
            return 1 if not v else 0
        if t is N.Call:
            return self.call(e, ctx)
        if t is N.RouteCall:
            r = self.run_named(e.target, ctx)
            if r == 0:
                raise ScriptExit()
            ctx.retcode = r
            return r
        raise TypeError(t)

    def fmt(self, node, ctx):
        pieces = self.fmt_cache.get(id(node))
        if pieces is None:
            pieces = self.fmt_cache[id(node)] = pvcore.parse_format(node.value, node.loc,
                                                                    self.gen.pvtable)
        return pvcore.fmt(ctx, pieces)

    def call(self, e, ctx):
        entry = self.site_cache.get(id(e))
        if entry is None:
            fe = self.script.find_func(e.name, len(e.args))
            site = [s for s in self.gen.sites if s.loc == e.loc][0]
            entry = self.site_cache[id(e)] = (fe, site)
        fe, site = entry
        args = []
        for kind, a in zip(fe.params, e.args):
            if type(a) is N.Const and type(a.value) is str:
                v = self.fmt(a, ctx)
            else:
                v = self.eval(a, ctx)
            if kind == P.INT:
                v = pvcore.to_int(v)
            elif kind == P.REGEX:
                v = pvcore.regex(v)
            args.append(v)
        try:
            r = fe.impl(ctx, site, *args)
        except ScriptExit:
            raise
        except Exception:
            r = -1
        if r == 0:
            raise ScriptExit()
        ctx.retcode = r
        return r
