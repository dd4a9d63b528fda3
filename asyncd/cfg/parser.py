"""Recursive-descent parser for kamailio.cfg (after preprocessing).

Runs in: main process (cfg compilation).

Grammar follows src/core/cfg.y: global `name=value` parameters,
`loadmodule`, `modparam`, route blocks, statements and expressions with
Kamailio's operator precedence (bitwise operators bind looser than
comparisons, as in cfg.y's %left table).
"""
from asyncd.core.errors import CfgError
from asyncd.cfg import nodes as N
from asyncd.cfg.fixups import Loc
from asyncd.cfg.lexer import ID, INT, STR, PV, IPV4, IPV6, OP, EOF

ROUTE_HEADS = {
    "request_route": "request", "route": "route", "failure_route": "failure",
    "onreply_route": "onreply", "reply_route": "reply", "branch_route": "branch",
    "onsend_route": "onsend", "event_route": "event",
}
# binary operator -> precedence (higher binds tighter), from cfg.y
BINARY = {
    "||": 1, "&&": 2, "|": 3, "&": 4, "^": 5, "<<": 6, ">>": 6,
    "==": 7, "!=": 7, "=~": 7, "!~": 7,
    "<": 8, ">": 8, "<=": 8, ">=": 8,
    "+": 9, "-": 9, "*": 10, "/": 10, "%": 10,
}
UNARY_FUNCS = ("strlen", "strempty", "defined")
BOOL_WORDS = {"yes": 1, "true": 1, "on": 1, "enable": 1, "no": 0, "false": 0, "off": 0, "disable": 0}
# core message keywords of cfg.y, as the pseudo-variables they read
CORE_VALUES = {"uri": "$ru", "from_uri": "$fu", "to_uri": "$tu", "src_ip": "$si", "dst_ip": "$Ri",
               "src_port": "$sp", "dst_port": "$Rp", "method": "$rm", "status": "$rs",
               "proto": "$pr", "snd_ip": "$Ri", "snd_port": "$Rp", "rcv_ip": "$Ri", "rcv_port": "$Rp",
               "af": "$af"}
# cfg.y's protocol and address family keywords (`proto==UDP`, `af==INET`), as
# the values $pr and $af read
CORE_CONSTS = {"UDP": "udp", "TCP": "tcp", "TLS": "tls", "SCTP": "sctp", "WS": "ws", "WSS": "wss",
               "INET": "ipv4", "INET6": "ipv6"}
KEYWORDS = ("if", "else", "switch", "case", "default", "while", "return", "exit",
            "drop", "break", "route")


def _describe(tok):
    if tok.kind == EOF:
        return "end of file"
    if tok.kind == STR:
        return f'string "{tok.value}"'
    return f"'{tok.value}'"


class Parser:
    def __init__(self, tokens):
        self.toks = tokens
        self.i = 0

    # -- token helpers -------------------------------------------------------
    @property
    def tok(self):
        return self.toks[self.i]

    def peek(self, k=1):
        j = min(self.i + k, len(self.toks) - 1)
        return self.toks[j]

    def advance(self):
        t = self.toks[self.i]
        if t.kind != EOF:
            self.i += 1
        return t

    def loc(self, tok=None):
        t = tok or self.tok
        return Loc(t.file, t.line, t.col)

    def error(self, msg, tok=None):
        t = tok or self.tok
        raise CfgError(msg, t.file, t.line, t.col)

    def accept_op(self, text):
        if self.tok.kind == OP and self.tok.value == text:
            return self.advance()
        return None

    def expect_op(self, text, what=None):
        t = self.tok
        if t.kind == OP and t.value == text:
            return self.advance()
        if t.kind == OP and t.value == "=" and text == ")":
            self.error("syntax error: '=' assigns; use '==' to compare in a condition")
        self.error(f"syntax error: expected '{text}'{' ' + what if what else ''}, found {_describe(t)}")

    # -- top level -----------------------------------------------------------
    def parse(self):
        """-> list of top-level items, in file order:
        ("param", name, value, loc), ("loadmodule", path, loc),
        ("modparam", module, param, value, loc, value_loc), or N.Route."""
        items = []
        while self.tok.kind != EOF:
            t = self.tok
            if t.kind == OP and t.value == ";":
                self.advance()
                continue
            if t.kind != ID:
                self.error(f"syntax error: unexpected {_describe(t)} at top level")
            name = t.value
            if name in ROUTE_HEADS and (self.peek().is_op("{") or self.peek().is_op("[")):
                items.append(self.route_block())
            elif name in ("loadmodule", "loadmodulex"):
                self.advance()
                p = self.tok
                if p.kind != STR:
                    self.error("loadmodule needs a quoted module name")
                self.advance()
                items.append(("loadmodule", p.value, self.loc(p)))
                self.accept_op(";")
            elif name == "loadpath":
                self.advance()
                p = self.advance()
                if p.kind != STR:
                    self.error("loadpath needs a quoted path", p)
                items.append(("param", "mpath", p.value, self.loc(t)))
                self.accept_op(";")
            elif name == "modparam":
                items.append(self.modparam())
            elif self.peek().is_op("=") or self.peek().is_op(".") or self.peek().is_op(":"):
                items.append(self.global_param())
            else:
                self.error(f"syntax error: unexpected {_describe(t)} at top level")
        return items

    def modparam(self):
        t = self.advance()
        self.expect_op("(", "after modparam")
        vals = []
        locs = []
        for k in range(3):
            locs.append(self.loc())
            vals.append(self.const_value())
            if k < 2:
                self.expect_op(",", "between modparam arguments")
        self.expect_op(")", "to close modparam")
        self.accept_op(";")
        mod, param, value = vals
        if not isinstance(mod, str) or not isinstance(param, str):
            raise CfgError("modparam module and parameter names must be strings",
                           t.file, t.line, t.col)
        return ("modparam", mod, param, value, self.loc(t), locs[2])

    def const_value(self):
        t = self.tok
        if t.kind == STR:
            self.advance()
            return t.value
        if t.kind == INT:
            self.advance()
            return t.value
        if t.is_op("-") and self.peek().kind == INT:
            self.advance()
            return -self.advance().value
        if t.kind == ID and t.value.lower() in BOOL_WORDS:      # cfg.lex: yes/no are numbers
            self.advance()
            return BOOL_WORDS[t.value.lower()]
        self.error(f"syntax error: expected a string or a number, found {_describe(t)}")

    def global_param(self):
        t = self.advance()
        name = t.value
        while self.tok.is_op("."):         # cfg framework names: group.var = value
            self.advance()
            part = self.advance()
            if part.kind != ID:
                self.error("syntax error: bad parameter name", part)
            name += "." + part.value
        self.expect_op("=", f"after '{name}'")
        value = self.param_value()
        if name == "listen":
            extra = []
            while self.tok.kind == ID and self.tok.value in ("advertise", "name", "virtual"):
                kw = self.advance().value
                extra.append((kw, None if kw == "virtual" else self.param_value()))
            value = (value, extra)
        elif isinstance(value, str) and self.tok.kind == ID and self.tok.value == "desc":
            self.advance()
            self.param_value()
        self.accept_op(";")
        return ("param", name, value, self.loc(t))

    def param_value(self):
        """One value: a number, a quoted string, or an unquoted phrase such as
        `udp:127.0.0.1:5060`, `yes`, `LOG_LOCAL0`, `my-host.example.com`."""
        t = self.tok
        if t.kind == STR:
            self.advance()
            return t.value
        if t.is_op("-") and self.peek().kind == INT:
            self.advance()
            return -self.advance().value
        if t.kind == INT and not self._joins(self.peek()):
            self.advance()
            return t.value
        if t.kind not in (ID, INT, IPV4, IPV6) and not t.is_op("*"):
            self.error(f"syntax error: expected a value, found {_describe(t)}")
        parts = [str(self.advance().value)]
        while self._joins(self.tok) and self.peek().kind in (ID, INT, IPV4, IPV6) \
                or self.tok.is_op(":") and self.peek().is_op("*"):
            parts.append(self.advance().value)
            parts.append(str(self.advance().value))
        return "".join(parts)

    @staticmethod
    def _joins(tok):
        return tok.kind == OP and tok.value in (":", ".", "-")

    # -- routes ----------------------------------------------------------------
    def route_block(self):
        head = self.advance()
        kind = ROUTE_HEADS[head.value]
        name = None
        if self.accept_op("["):
            name = self.route_name()
        if kind == "route" and name in (None, "0", "DEFAULT_ROUTE"):
            kind, name = "request", None
        elif kind == "request" and name not in (None, "0"):
            self.error("request_route takes no name", head)
        elif kind == "onreply" and name in (None, "0"):
            kind, name = "reply", None
        elif kind in ("failure", "branch", "event") and name is None:
            self.error(f"{head.value} needs a name: {head.value}[NAME]", head)
        elif kind in ("onsend", "reply") and name is not None:
            self.error(f"{head.value} takes no name", head)
        body = self.block()
        return N.Route(kind, name, body, loc=self.loc(head))

    def route_name(self):
        """Text between [ ]: `NAME`, `"NAME"`, `1`, `core:tkv`, `tm:local-request`."""
        t = self.tok
        if t.kind == STR:
            self.advance()
            self.expect_op("]", "after route name")
            return t.value
        parts = []
        while not self.tok.is_op("]"):
            x = self.tok
            if x.kind in (ID, INT) or (x.kind == OP and x.value in (":", "-", ".")):
                parts.append(str(x.value))
                self.advance()
            elif x.kind == IPV6:        # e.g. [a:b] lexed as an address
                parts.append(x.value[1:-1])
                self.advance()
                return "".join(parts)
            else:
                self.error(f"syntax error: bad route name, found {_describe(x)}")
        if not parts:
            self.error("syntax error: empty route name")
        self.advance()
        return "".join(parts)

    def block(self):
        start = self.expect_op("{", "to open a block")
        stmts = []
        while not self.tok.is_op("}"):
            if self.tok.kind == EOF:
                self.error("syntax error: missing '}' for the block opened at "
                           f"line {start.line}")
            s = self.statement()
            if s is not None:
                stmts.append(s)
        self.advance()
        return N.Block(stmts, loc=self.loc(start))

    # -- statements --------------------------------------------------------------
    def statement(self):
        t = self.tok
        loc = self.loc(t)
        if t.kind == OP:
            if t.value == "{":
                return self.block()
            if t.value == ";":
                self.advance()
                return None
            self.error(f"syntax error: unexpected {_describe(t)}")
        if t.kind == PV:
            return self.assignment()
        if t.kind != ID:
            self.error(f"syntax error: unexpected {_describe(t)}")
        kw = t.value
        if kw == "if":
            self.advance()
            cond = self.expression()
            then = self.statement_or_empty()
            orelse = None
            if self.tok.is_id("else"):
                self.advance()
                orelse = self.statement_or_empty()
            return N.If(cond, then, orelse, loc=loc)
        if kw == "while":
            self.advance()
            cond = self.expression()
            return N.While(cond, self.statement_or_empty(), loc=loc)
        if kw == "switch":
            return self.switch()
        if kw in ("exit", "drop"):
            self.advance()
            if self.accept_op("("):
                if not self.tok.is_op(")"):
                    self.expression()
                self.expect_op(")")
            self.end_stmt()
            return N.Exit(loc=loc) if kw == "exit" else N.Drop(loc=loc)
        if kw == "break":
            self.advance()
            self.end_stmt()
            return N.Break(loc=loc)
        if kw == "return":
            self.advance()
            expr = None
            if not self.tok.is_op(";"):
                expr = self.expression()
            self.end_stmt()
            return N.Return(expr, loc=loc)
        if kw in ("else", "case", "default"):
            self.error(f"syntax error: '{kw}' without a matching "
                       f"{'if' if kw == 'else' else 'switch'}")
        if self.peek().is_op("("):
            expr = self.primary()
            self.end_stmt()
            return N.ExprStmt(expr, loc=loc)
        if self.peek().is_op("="):
            self.error(f"cannot assign to '{kw}': not a pseudo-variable "
                       "(global parameters go outside route blocks)")
        self.error(f"syntax error: unexpected '{kw}' (expected a statement)")

    def statement_or_empty(self):
        s = self.statement()
        return s if s is not None else N.Block([], loc=self.loc())

    def end_stmt(self):
        t = self.tok
        if t.kind == OP and t.value == ";":
            self.advance()
            return
        prev = self.toks[self.i - 1] if self.i else t
        # point right after the statement, where the ';' belongs
        raise CfgError(f"syntax error: missing ';' after {_describe(prev)}, found {_describe(t)}",
                       prev.file, prev.eline, prev.ecol)

    def assignment(self):
        t = self.advance()
        target = N.Pv(t.value, loc=self.loc(t))
        op = self.tok
        if not (op.kind == OP and op.value in ("=", ":=", "+=")):
            self.error(f"syntax error: expected '=' after {t.value}, found {_describe(op)}")
        self.advance()
        expr = self.expression()
        self.end_stmt()
        return N.Assign(target, op.value, expr, loc=self.loc(t))

    def switch(self):
        head = self.advance()
        expr = self.expression()
        self.expect_op("{", "to open the switch body")
        cases = []
        seen_default = False
        while not self.tok.is_op("}"):
            t = self.tok
            if t.is_id("case"):
                self.advance()
                value = self.const_value()
                self.expect_op(":", "after case value")
            elif t.is_id("default"):
                if seen_default:
                    self.error("switch has more than one default", t)
                seen_default = True
                self.advance()
                self.expect_op(":", "after default")
                value = None
            elif t.kind == EOF:
                self.error(f"syntax error: missing '}}' for the switch at line {head.line}")
            else:
                self.error(f"syntax error: expected 'case' or 'default', found {_describe(t)}")
            stmts = []
            while not (self.tok.is_id("case") or self.tok.is_id("default") or self.tok.is_op("}")):
                if self.tok.kind == EOF:
                    self.error(f"syntax error: missing '}}' for the switch at line {head.line}")
                s = self.statement()
                if s is not None:
                    stmts.append(s)
            cases.append(N.Case(value, stmts, loc=self.loc(t)))
        self.advance()
        return N.Switch(expr, cases, loc=self.loc(head))

    # -- expressions -------------------------------------------------------------
    def expression(self, min_prec=1):
        left = self.unary()
        while True:
            t = self.tok
            if t.kind != OP:
                return left
            prec = BINARY.get(t.value)
            if prec is None or prec < min_prec:
                return left
            self.advance()
            right = self.expression(prec + 1)
            left = N.BinOp(t.value, left, right, loc=self.loc(t))

    def unary(self):
        t = self.tok
        if t.kind == OP and t.value in ("!", "-", "~"):
            self.advance()
            return N.UnOp(t.value, self.unary(), loc=self.loc(t))
        if t.kind == ID and t.value in UNARY_FUNCS and \
                (self.peek().is_op("(") or self.peek().kind == PV):
            self.advance()
            return N.UnOp(t.value, self.unary(), loc=self.loc(t))
        return self.primary()

    def primary(self):
        t = self.tok
        loc = self.loc(t)
        if t.kind == INT:
            self.advance()
            return N.Const(t.value, loc=loc)
        if t.kind == STR:
            self.advance()
            return N.Const(t.value, loc=loc)
        if t.kind == PV:
            self.advance()
            if t.value == "$null":
                return N.Const(None, loc=loc)
            return N.Pv(t.value, loc=loc)
        if t.kind == OP and t.value == "(":
            self.advance()
            e = self.expression()
            self.expect_op(")", "to close '('")
            return e
        if t.kind == ID:
            if t.value == "route" and self.peek().is_op("("):
                self.advance()
                self.advance()
                n = self.tok
                if n.kind in (ID, INT) and self.peek().is_op(")"):
                    self.advance()
                    target = str(n.value)
                elif n.kind == OP and n.value == ")":
                    self.error("route() needs a route name")
                else:
                    target = self.expression()
                    if isinstance(target, N.Const):
                        target = "" if target.value is None else str(target.value)
                self.expect_op(")", "to close route(")
                return N.RouteCall(target, loc=loc)
            if t.value in CORE_VALUES and not self.peek().is_op("("):
                self.advance()
                return N.Pv(CORE_VALUES[t.value], loc=loc)
            if t.value in CORE_CONSTS and not self.peek().is_op("("):
                self.advance()
                return N.Const(CORE_CONSTS[t.value], loc=loc)
            if t.value == "myself" and not self.peek().is_op("("):
                self.advance()
                return N.Myself(loc=loc)
            if self.peek().is_op("("):
                if t.value in KEYWORDS:
                    self.error(f"syntax error: '{t.value}' cannot be used here")
                self.advance()
                self.advance()
                args = []
                if t.value == "force_send_socket" and self.tok.kind in (ID, IPV4, IPV6, INT):
                    # Kamailio's grammar takes the socket unquoted: force_send_socket(tcp:IP:PORT)
                    ploc = self.loc(self.tok)
                    args.append(N.Const(self.param_value(), loc=ploc))
                if not self.tok.is_op(")"):
                    while True:
                        args.append(self.expression())
                        if self.accept_op(","):
                            continue
                        break
                self.expect_op(")", f"to close the arguments of {t.value}()")
                return N.Call(t.value, args, loc=loc)
            self.error(f"syntax error: unexpected '{t.value}' in expression "
                       "(unknown name; strings need quotes)")
        if t.kind in (IPV4, IPV6):
            self.advance()
            return N.Const(t.value, loc=loc)
        self.error(f"syntax error: unexpected {_describe(t)} in expression")


def _join_strings(tokens):
    """Adjacent quoted strings are one string, as in cfg.y (`"a" "b"`)."""
    out = []
    for t in tokens:
        if t.kind == STR and out and out[-1].kind == STR:
            prev = out[-1]
            out[-1] = type(t)(STR, prev.value + t.value, prev.file, prev.line, prev.col)
            out[-1].eline, out[-1].ecol = t.eline, t.ecol
        else:
            out.append(t)
    return out


def parse_tokens(tokens):
    return Parser(_join_strings(tokens)).parse()
