"""The RPC interface: methods declared in module export tables, called by the
transports (ctl's BINRPC, jsonrpcs' JSON-RPC) with one calling convention.

Runs in: the processes that serve RPC transports (`ctl handler`, `JSONRPCS
FIFO`, `JSONRPCS DATAGRAM`, a tcp receiver running `jsonrpc_dispatch()`),
and main (the registry is built once, before the fork).

Kamailio's shape (src/core/rpc.h, src/core/rpc_lookup.c): a method is a name,
a handler, a doc string and flags; the handler gets an `rpc_t` of transport
callbacks and a transport context, reads its parameters with `scan`, and
builds its reply with `add` (scalars, `{` structs, `[` arrays), `struct_add`
and `rpl_printf`, or ends with `fault(code, text)`. Here the handler gets
one `RpcCall`: `call.scan(fmt)` returns the parameters, `call.add(value)`
appends one reply value (int, float, str, bool, dict for a struct, list for
an array, nested freely), `raise RpcFault(code, text)` is `rpc->fault`. A
transport turns `call.values` into its own encoding: BINRPC sends every
value as a record, JSON-RPC sends one value as `result` and several (or any
number, for a method flagged RET_ARRAY) as an array.

A struct whose member names repeat (Kamailio's htable.dump adds `slot` once
per entry, rpc->struct_add with the same name twice) is a `Struct`: a list
of (name, value) pairs that keeps order and repeats.
"""
from dataclasses import dataclass
from typing import Callable

# Kamailio's rpc_export_t flags (src/core/rpc.h)
RET_ARRAY = 1 << 0
RET_VALUE = 1 << 1


class RpcFault(Exception):
    """rpc->fault(code, text): the call ends with this fault and no other reply."""

    def __init__(self, code, text):
        super().__init__(f"{code} {text}")
        self.code = int(code)
        self.text = str(text)


class Struct(list):
    """A struct whose member names may repeat: [(name, value), ...]."""

    def items(self):
        return iter(self)


@dataclass(frozen=True)
class RpcExport:
    """One method of a module's export table (Kamailio's rpc_export_t).

    handler(call) -> None: reads `call.scan(...)`, answers with `call.add(...)`
    or raises RpcFault. doc: the text `system.methodHelp` returns.
    """
    name: str
    handler: Callable
    doc: str = ""
    flags: int = 0


_SCAN_TYPES = {"s": "string", "S": "string", "d": "int", "u": "int", "l": "int", "j": "int",
               "f": "float", "b": "bool", "t": "int", "{": "struct"}


class RpcCall:
    """One call in flight: the method, its parameters as the transport decoded
    them (int, float, str, dict, list), the reply values added so far.

    `scan_fault(index, expected, got)` -> RpcFault is the transport's own
    wording for a parameter scan failure (a missing one has got=None); the
    default is the JSON-RPC module's."""

    __slots__ = ("script", "proc", "method", "params", "values", "export", "scan_fault", "transport")

    def __init__(self, script, proc, method, params, transport="", scan_fault=None):
        self.script = script
        self.proc = proc
        self.method = method
        self.params = list(params or ())
        self.values = []
        self.export = None
        self.transport = transport        # "binrpc", "jsonrpc": for methods that differ by transport
        self.scan_fault = scan_fault or _default_scan_fault

    def add(self, value):
        self.values.append(value)

    def scan(self, fmt, fault=None):
        """Kamailio's rpc->scan: one character per parameter; `*` makes the
        rest optional; `.` converts a string to the wanted number (and back)
        as BINRPC's auto-conversion does. -> list of converted values.
        `fault` = (code, text): the method's own fault for a missing or
        unconvertible parameter (Kamailio's handlers check scan's count and
        call rpc->fault themselves); without it, the transport's wording."""
        if fault is not None:
            try:
                return self.scan(fmt)
            except RpcFault:
                raise RpcFault(*fault) from None
        out = []
        optional = False
        i = 0
        for ch in fmt:
            if ch == "*":
                optional = True
                continue
            if ch == ".":
                continue
            if i >= len(self.params):
                if optional:
                    break
                raise self.scan_fault(i, _SCAN_TYPES.get(ch, ch), None)
            v = _convert(self.params[i], ch)
            if v is _BAD:
                raise self.scan_fault(i, _SCAN_TYPES.get(ch, ch), self.params[i])
            out.append(v)
            i += 1
        return out


_BAD = object()


def _convert(v, ch):
    if ch in "sS":
        if isinstance(v, (dict, list)):
            return _BAD
        return v if isinstance(v, str) else str(v)
    if ch in "duljtb":
        if isinstance(v, bool):
            return int(v)
        if isinstance(v, int):
            return v
        if isinstance(v, float):
            return int(v)
        if isinstance(v, str):
            try:
                return int(v.strip(), 0)
            except ValueError:
                return _BAD
        return _BAD
    if ch == "f":
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        if isinstance(v, str):
            try:
                return float(v)
            except ValueError:
                return _BAD
        return _BAD
    if ch == "{":
        return v if isinstance(v, dict) else _BAD
    return v


def _default_scan_fault(index, expected, got):
    return RpcFault(500, "Invalid Parameters")


class Registry:
    """Every method of the core and of the loaded modules, by name; built in
    main before the fork (Kamailio's rpc_lookup.c hash), read by every
    transport. A name declared twice is a startup error, as in Kamailio
    (rpc_register: "duplicate rpc")."""

    def __init__(self):
        self.methods = {}

    def register(self, export, owner=""):
        if export.name in self.methods:
            raise ValueError(f"duplicate RPC method {export.name} ({owner})")
        self.methods[export.name] = export

    def lookup(self, name):
        return self.methods.get(name)

    def names(self):
        return sorted(self.methods)

    def call(self, script, proc, name, params, transport="", scan_fault=None):
        """Run method `name`. -> the RpcCall with its values; raises KeyError
        for an unknown method (each transport words that itself) and RpcFault
        from the handler. Any other exception becomes a 500 fault: a broken
        handler never takes the serving process down."""
        export = self.methods.get(name)
        if export is None:
            raise KeyError(name)
        call = RpcCall(script, proc, name, params, transport, scan_fault)
        call.export = export
        try:
            export.handler(call)
        except RpcFault:
            raise
        except Exception as e:  # noqa: BLE001 - a handler bug is the caller's fault reply
            raise RpcFault(500, f"internal server error: {type(e).__name__}: {e}") from e
        return call
