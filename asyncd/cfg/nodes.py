"""AST of a kamailio.cfg: every node carries its cfg location.

Runs in: main process (cfg compilation).

As in jinja2's nodes.py, each node class declares its fields; `loc` is an
asyncd.cfg.fixups.Loc (file, line, col) of the token that started it.
"""


class Node:
    fields = ()
    __slots__ = ("loc",)

    def __init__(self, *args, loc=None):
        for name, value in zip(self.fields, args):
            setattr(self, name, value)
        for name in self.fields[len(args):]:
            setattr(self, name, None)
        self.loc = loc

    def __repr__(self):
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.fields)
        return f"{type(self).__name__}({inner})"


def _node(name, fields, base=Node):
    return type(name, (base,), {"fields": tuple(fields), "__slots__": tuple(fields)})


class Stmt(Node):
    __slots__ = ()


class Expr(Node):
    __slots__ = ()


# top level -------------------------------------------------------------------
Route = _node("Route", ("kind", "name", "body"))            # kind: request/route/failure/...
Block = _node("Block", ("stmts",), Stmt)

# statements ------------------------------------------------------------------
If = _node("If", ("cond", "then", "orelse"), Stmt)
Switch = _node("Switch", ("expr", "cases"), Stmt)            # cases: [Case]
Case = _node("Case", ("value", "stmts"))                     # value None = default
While = _node("While", ("cond", "body"), Stmt)
Return = _node("Return", ("expr",), Stmt)
Exit = _node("Exit", (), Stmt)
Drop = _node("Drop", (), Stmt)
Break = _node("Break", (), Stmt)
Assign = _node("Assign", ("target", "op", "expr"), Stmt)     # target: Pv
ExprStmt = _node("ExprStmt", ("expr",), Stmt)                # a Call or RouteCall

# expressions -----------------------------------------------------------------
Const = _node("Const", ("value",), Expr)                     # int, str or None ($null)
Pv = _node("Pv", ("text",), Expr)                            # raw `$...` text
BinOp = _node("BinOp", ("op", "left", "right"), Expr)
UnOp = _node("UnOp", ("op", "operand"), Expr)
Call = _node("Call", ("name", "args"), Expr)                 # module/core function
RouteCall = _node("RouteCall", ("target",), Expr)            # target: str or Expr
Myself = _node("Myself", (), Expr)                           # `myself` in `uri == myself`
