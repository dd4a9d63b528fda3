"""JSON-RPC 2.0 as Kamailio 5.6's jsonrpcs module speaks it: the request
parser, the reply builder and printer, and the FIFO stream splitter.

Runs in: the `JSONRPCS FIFO` and `JSONRPCS DATAGRAM` processes, and any
process whose route calls `jsonrpc_exec()` (asyncd/modules/jsonrpcs.py).

Pure functions over bytes and the RPC registry (asyncd/core/rpc.py); no
sockets. What Kamailio does, checked against 5.6.3 itself
(src/modules/jsonrpcs/jsonrpcs_mod.c `jsonrpc_exec_ex`, `jsonrpc_send`,
`jsonrpc_fault`; src/core/utils/srjson.c for the text):

- a request is one JSON object; its members are looked up by name without
  regard to case, the first of repeated names wins (srjson_GetObjectItem);
  text after the document is ignored (srjson_Parse). Text that does not
  parse gets no reply at all (there is no "Parse Error" reply in 5.6), and
  neither does a batch: an array is not an object, so it is answered like an
  object without members.
- `"jsonrpc": "2.0"` and a string `method` are required; without them the
  reply is an empty `result` (`{}`), as Kamailio's. Kamailio's FIFO and
  datagram processes crash on a `jsonrpc` or `method` that is not a string
  (strlen of NULL); asyncd answers those as missing, like Kamailio's HTTP
  path (`ki_jsonrpcs_dispatch`) does.
- `params` is an array, or an object whose member values are the positional
  parameters in order; anything else runs no method and gets the empty
  result of the method's shape.
- an unknown method is the fault 500 "Method Not Found". A fault's
  `message` is the text of Kamailio's table for the codes -32700..-32000,
  the handler's text otherwise; code 0 becomes -32000.
- `result`: a method flagged RET_ARRAY gets an array of every value it
  added. Otherwise one value is the result itself and none is `{}`; several
  values are an array, per asyncd's calling convention (asyncd/core/rpc.py).
  Kamailio keeps only the last one there (jsonrpc_add replaces rpl_node).
- `id` is copied: a string as a string, anything else as srjson's number
  (`true` is 1; `null`, `false`, arrays and objects are 0); no `id`, no
  `id` in the reply (5.6 answers notifications too).
- the text is srjson's: pretty (the default) puts each object member on its
  own line indented with tabs, `"name":<TAB>value`, arrays on one line
  with ", "; numbers print as C's %d, %.0f, %e or %f by srjson's rules
  (`print_number`), strings escape only `"`, `\\` and control characters.
"""
import json
import math
from dataclasses import dataclass, field
from typing import Optional

from asyncd.core.rpc import RET_ARRAY, RpcFault, Struct

# Kamailio's jsonrpcs_mod.c _jsonrpc_error_table
ERROR_TEXT = {
    -32700: "Parse Error",
    -32600: "Invalid Request",
    -32601: "Method Not Found",
    -32602: "Invalid Parameters",
    -32603: "Internal Error",
    -32000: "Execution Error",
}
FIFO_BUF_IN = 8192          # jsonrpcs_fifo.c JSONRPC_BUF_IN_SIZE: the longest FIFO request
DGRAM_BUF = 65456           # jsonrpcs_sock.c JSONRPC_DGRAM_BUF_SIZE: the longest datagram
_INT_MIN, _INT_MAX = -2 ** 31, 2 ** 31 - 1
_DBL_EPSILON = 2.220446049250313e-16


class ParseError(ValueError):
    """The request is not JSON: Kamailio logs it and sends nothing."""


class Pairs(list):
    """A JSON object as its members in order, repeats kept: [(name, value)].
    Replies print one with repeated names as it is (a Struct prints the same)."""

    def find(self, name):
        """srjson_GetObjectItem: the first member named `name`, any case."""
        name = name.lower()
        for k, v in self:
            if k.lower() == name:
                return True, v
        return False, None


def _no_constant(text):
    raise ValueError(f"not JSON: {text}")       # srjson has no NaN / Infinity


_DECODER = json.JSONDecoder(object_pairs_hook=Pairs, parse_constant=_no_constant)


def decode(data):
    """bytes or str -> the JSON value (objects as Pairs); ParseError when it
    is not JSON. Leading bytes up to space are skipped, trailing text ignored."""
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data).decode("utf-8", "surrogateescape")
    i = 0
    while i < len(data) and data[i] <= " ":
        i += 1
    try:
        value, _end = _DECODER.raw_decode(data, i)
    except (ValueError, RecursionError) as e:
        raise ParseError(str(e)) from None
    return value


def plain(v):
    """A decoded value as the handlers see it: objects become dicts (the
    first of repeated names wins, as srjson's lookup)."""
    if isinstance(v, Pairs):
        out = {}
        for k, x in v:
            if k not in out:
                out[k] = plain(x)
        return out
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v


# -- printing (srjson_Print / srjson_PrintUnformatted) --------------------------------
_ESC = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _string(s):
    """print_string_ptr: only `"`, `\\` and bytes below 32 are escaped."""
    out = ['"']
    for ch in s:
        if ch in _ESC:
            out.append(_ESC[ch])
        elif ch < " ":
            out.append("\\u%04x" % ord(ch))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def number(d):
    """print_number: a whole number in C int range as %d; other whole
    numbers as %.0f; tiny or huge ones as %e; the rest as %f. Every number
    is a C double there, so big ints lose what a double loses. An infinite
    one (a request's 1e999) is null here."""
    if isinstance(d, int) and _INT_MIN <= d <= _INT_MAX:
        return str(d)
    try:
        d = float(d)
    except OverflowError:
        d = math.inf if d > 0 else -math.inf
    if not math.isfinite(d):
        return "null"       # srjson prints C's "inf", which no JSON client reads
    if abs(int(d) - d) <= _DBL_EPSILON and _INT_MIN <= d <= _INT_MAX:
        return "%d" % int(d)
    if abs(math.floor(d) - d) <= _DBL_EPSILON:
        return "%.0f" % d
    if abs(d) < 1.0e-6 or abs(d) > 1.0e9:
        return "%e" % d
    return "%f" % d


def dumps(value, pretty=True):
    """One value as srjson prints it: pretty (srjson_Print) or unformatted."""
    return _print(value, 0, pretty)


def _print(v, depth, fmt):
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (int, float)):
        return number(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, (bytes, bytearray)):
        return _string(bytes(v).decode("utf-8", "surrogateescape"))
    if isinstance(v, (Pairs, Struct)):
        return _print_object(list(v), depth, fmt)
    if isinstance(v, dict):
        return _print_object(list(v.items()), depth, fmt)
    if isinstance(v, (list, tuple)):
        sep = ", " if fmt else ","
        return "[" + sep.join(_print(x, depth + 1, fmt) for x in v) + "]"
    return _string(str(v))


def _print_object(members, depth, fmt):
    """print_object: `{`, each member on its own line `depth+1` tabs in,
    `"name":<TAB>value`, `}` back at `depth` tabs."""
    depth += 1
    out = ["{\n" if fmt else "{"]
    for i, (k, x) in enumerate(members):
        if fmt:
            out.append("\t" * depth)
        out.append(_string(str(k)) + (":\t" if fmt else ":") + _print(x, depth, fmt))
        if i != len(members) - 1:
            out.append(",")
        if fmt:
            out.append("\n")
    if fmt:
        out.append("\t" * (depth - 1))
    out.append("}")
    return "".join(out)


def to_bytes(text):
    """Reply text -> UTF-8 bytes; bytes that came in undecodable go out as they came."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


# -- one request -----------------------------------------------------------------------
@dataclass
class Reply:
    """What jsonrpc_send leaves for the transport (Kamailio's plain reply):
    the HTTP-style code and text (200 "OK", or the fault's), the JSON body,
    and the FIFO's `reply_name` when the request had a usable one."""
    code: int = 200
    text: str = "OK"
    body: bytes = b""
    reply_name: Optional[str] = None
    members: list = field(default_factory=list)     # the reply object, before printing


def _result(values, flags):
    """The `result` member (see the module docstring)."""
    if flags & RET_ARRAY:
        return list(values)
    if not values:
        return Pairs()
    if len(values) == 1:
        return values[0]
    return list(values)


def _id_value(v):
    """jsonrpc_send: a string id as a string, anything else as its number."""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return 1 if v else 0
    if isinstance(v, (int, float)):
        return v
    return 0


def execute(script, proc, data, transport, want_reply_name=False, pretty=True):
    """Run one request (Kamailio's jsonrpc_exec_ex). -> Reply, or None when
    the text is not JSON (nothing is sent then). With `want_reply_name`
    (the FIFO) the request must carry `reply_name` after a valid version, or
    the Reply has none and the FIFO sends nothing, as Kamailio's."""
    root = decode(data)
    req = root if isinstance(root, Pairs) else Pairs()
    rpl = Reply()
    result, flags, error = None, 0, None
    has_v, version = req.find("jsonrpc")
    if has_v and version == "2.0":
        if want_reply_name:
            has_rn, rn = req.find("reply_name")
            rpl.reply_name = rn if has_rn and isinstance(rn, str) else None
        if not want_reply_name or rpl.reply_name is not None:
            result, flags, error = _run(script, proc, req, transport)
    _finish(rpl, req, result, flags, error, pretty)
    return rpl


def _run(script, proc, req, transport):
    """-> (values or None, flags, RpcFault or None)."""
    has_m, method = req.find("method")
    if not has_m or not isinstance(method, str):
        return None, 0, None
    export = script.rpc.lookup(method) if script is not None and script.rpc is not None else None
    if export is None:
        return None, 0, RpcFault(500, "Method Not Found")
    has_p, params = req.find("params")
    if has_p and not isinstance(params, list):     # Pairs is a list too: its values, in order
        return None, export.flags, None
    if isinstance(params, Pairs):
        params = [x for _k, x in params]
    try:
        call = script.rpc.call(script, proc, method, [plain(p) for p in params or ()], transport=transport)
    except KeyError:
        return None, 0, RpcFault(500, "Method Not Found")
    except RpcFault as f:
        return None, export.flags, f
    return call.values, export.flags, None


def _finish(rpl, req, values, flags, fault, pretty):
    """jsonrpc_send: the reply object, its text and the code/text pair."""
    members = [("jsonrpc", "2.0")]
    if fault is not None:
        code = fault.code if fault.code != 0 else -32000
        message = ERROR_TEXT.get(code) or fault.text or "Unexpected Error"
        members.append(("error", Pairs([("code", code), ("message", message)])))
        rpl.code = 500 if fault.code <= 100 else fault.code
        rpl.text = fault.text
    else:
        members.append(("result", _result(values or [], flags)))
    has_id, rid = req.find("id")
    if has_id:
        members.append(("id", _id_value(rid)))
    rpl.members = members
    rpl.body = to_bytes(dumps(Pairs(members), pretty))


# -- the FIFO stream -------------------------------------------------------------------
class FifoSplitter:
    """Cuts the FIFO's byte stream into requests as Kamailio's
    jsonrpc_read_stream does: a request ends where its braces balance,
    counting only braces outside "..." and '...' strings (a quote escaped by
    the byte before it does not count). A request longer than FIFO_BUF_IN
    is dropped (Kamailio: "input data too large") and the rest of it, up to
    its balancing brace, skipped (junk with no brace yet is just dropped). `stale` drops a half request that saw no
    byte for that long: its writer is gone (Kamailio would glue it to the
    next request and lose both)."""

    def __init__(self, limit=FIFO_BUF_IN):
        self.limit = limit
        self.buf = bytearray()
        self.skipping = False
        self._reset()

    def _reset(self):
        self.quote = 0          # the open quote byte, or 0
        self.depth = 0
        self.found = False
        self.prev = 0

    def clear(self):
        self.buf = bytearray()
        self.skipping = False
        self._reset()

    def pending(self):
        return bool(self.buf) or self.skipping

    def feed(self, data):
        """-> (list of complete requests as bytes, number dropped as too large)."""
        docs, dropped = [], 0
        for b in data:
            if not self.skipping:
                self.buf.append(b)
            self._scan(b)
            if self.found and self.depth == 0:
                if self.skipping:
                    self.skipping = False
                else:
                    docs.append(bytes(self.buf).strip())
                self.buf = bytearray()
                self._reset()
            elif not self.skipping and len(self.buf) >= self.limit - 1:
                dropped += 1
                self.buf = bytearray()
                if self.found:
                    self.skipping = True    # skip to its balancing brace
                else:
                    self._reset()           # junk before any brace: nothing to skip
        return docs, dropped

    def _scan(self, b):
        if b in (0x22, 0x27) and (self.quote == 0 or self.quote == b):
            if self.prev != 0x5C:
                self.quote = 0 if self.quote else b
        elif self.quote == 0:
            if b == 0x7B:
                self.found = True
                self.depth += 1
            elif b == 0x7D:
                self.depth -= 1
        self.prev = b
