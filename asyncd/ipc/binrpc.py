"""BINRPC, the binary RPC encoding of Kamailio's ctl module and kamcmd: a
pure codec (no sockets).

Runs in: the `ctl handler` process (requests in, replies out), main
(nothing but imports), and the `asyncd-ctl` client (requests out, replies in).

The wire format is Kamailio's (src/modules/ctl/binrpc.h, binrpc_run.c;
the client side utils/kamcmd/kamcmd.c):

Packet header (2 fixed bytes, then the body length and the cookie, each
1-4 bytes, big endian, as few bytes as the value needs):

    byte 0   0xA1: magic 0xA << 4 | version 1
    byte 1   type << 4 | (len_size - 1) << 2 | (cookie_size - 1)
             type: 0 request, 1 reply, 3 fault
    ...      body length (len_size bytes), cookie (cookie_size bytes)

Body: a sequence of records. A record starts with one byte
`size << 4 | type`; for every type but double, a size with bit 3 set means
"the real length follows in (size & 7) bytes" (and on a struct or array tag
that bit is the end mark instead):

    0 int      size bytes (0-4), big endian, read as a signed 32-bit int
    1 str      size bytes, NUL-terminated (the NUL is counted)
    2 double   size bytes (0-8), a signed 64-bit fixed point: value * 1000
    3 struct   start tag 0x03 ... end tag 0x83; members are avp records
    4 array    start tag 0x04 ... end tag 0x84
    5 avp      a struct member's name (NUL-terminated), then its value record
    6 bytes    size bytes, no NUL

A request body is the method name (str) then the parameters. A reply body
is the values the method added; a fault body is an int code and a str.
Kamailio's ctl encodes an RPC "array" (rpc->add "[") as a struct whose
members have no names (binrpc_run.c rpc_array_add), and so does this codec:
a Python list is a struct of plain records; a dict or an
asyncd.core.rpc.Struct is a struct of avps.
"""
import re

from asyncd.core.rpc import Struct

MAGIC_BYTE = 0xA1                 # BINRPC_MAGIC << 4 | BINRPC_VERS
REQ, REPL, FAULT = 0, 1, 3
T_INT, T_STR, T_DOUBLE, T_STRUCT, T_ARRAY, T_AVP, T_BYTES = range(7)
MIN_PKT = 4                       # BINRPC_MIN_PKT_SIZE: 2 fixed bytes, 1 length, 1 cookie
MAX_HDR = 10
MAX_DEPTH = 64                    # nesting a request may use (Kamailio: none; recursion here)

# Kamailio's error codes and their texts (binrpc.h E_BINRPC_*, binrpc.c binrpc_error)
E_INVAL, E_OVERFLOW, E_BADPKT, E_MORE_DATA, E_EOP, E_NOTINIT, E_TYPE, E_RECORD, E_BUG = range(-1, -10, -1)
ERROR_TEXT = {
    E_INVAL: "invalid function arguments",
    E_OVERFLOW: "buffer too small (overflow)",
    E_BADPKT: "corrupted packet",
    E_MORE_DATA: "more data needed",
    E_EOP: "end of packet encountered",
    E_NOTINIT: "binrpc parse context not initialized",
    E_TYPE: "record doesn't match type",
    E_RECORD: "bad record",
    E_BUG: "bug -- internal error",
}
# rpc_type_name() of binrpc_run.c: the type words of a scan fault
TYPE_NAME = {T_INT: "integer", T_STR: "string", T_DOUBLE: "float", T_STRUCT: "structure",
             T_ARRAY: "array", T_AVP: "structure member", T_BYTES: "bytes array"}

# Kamailio's limits (binrpc_run.c, io_listener.c); the modparams are in KB
DEFAULT_MAX_BODY_KB = 32          # binrpc_max_body_size: a reply's own records
DEFAULT_STRUCT_MAX_BODY_KB = 8    # binrpc_struct_max_body_size: one struct's own records
STREAM_BUF_SIZE = 65535           # a request, header included, must fit (STREAM_BUF_SIZE)
NULL_STRING = "<null string>"     # what rpc->add("s", NULL) sends


class BinrpcError(Exception):
    """A malformed packet or a value that cannot be encoded; `code` is the
    E_BINRPC_* value, str() Kamailio's binrpc_error() text."""

    def __init__(self, code, detail=""):
        self.code = code
        self.detail = detail
        self.method = None      # decode_request: the method, when only a parameter was bad
        super().__init__(ERROR_TEXT.get(code, "unknown/invalid error code"))


class Packet:
    """One decoded packet: its type (REQ/REPL/FAULT), cookie and body bytes."""
    __slots__ = ("type", "cookie", "body")

    def __init__(self, ptype, cookie, body):
        self.type = ptype
        self.cookie = cookie
        self.body = body

    def values(self):
        """The body's records as Python values (decode_body)."""
        return decode_body(self.body)

    def request(self):
        """A request's (method, params); BinrpcError when the first record is
        not a string (binrpc_run.c process_rpc_req: "bad request method")."""
        return decode_request(self.body)

    def fault(self):
        """A fault's (code, text)."""
        vals = decode_body(self.body)
        code = vals[0] if vals and isinstance(vals[0], int) else 0
        text = vals[1] if len(vals) > 1 and isinstance(vals[1], str) else ""
        return code, text


# -- header ----------------------------------------------------------------------------
def _int_len(v):
    """Bytes a non-negative value needs (binrpc_get_int_len), at least 1 here."""
    n = 4
    while n > 1 and not (v >> ((n - 1) * 8)) & 0xFF:
        n -= 1
    return n


def build_header(ptype, body_len, cookie):
    """binrpc_build_hdr: the 2 fixed bytes, the body length and the cookie."""
    body_len &= 0xFFFFFFFF
    cookie &= 0xFFFFFFFF
    ll, cl = _int_len(body_len), _int_len(cookie)
    return (bytes((MAGIC_BYTE, (ptype << 4) | ((ll - 1) << 2) | (cl - 1)))
            + body_len.to_bytes(ll, "big") + cookie.to_bytes(cl, "big"))


def parse_header(buf):
    """-> (type, cookie, header length, body length), or None when more bytes
    are needed to know; BinrpcError(E_BADPKT) on a wrong magic or type
    (binrpc_parse_init)."""
    if len(buf) < MIN_PKT:
        if buf and buf[0] != MAGIC_BYTE:
            raise BinrpcError(E_BADPKT, "bad magic")
        return None
    if buf[0] != MAGIC_BYTE:
        raise BinrpcError(E_BADPKT, "bad magic")
    ptype = buf[1] >> 4
    if ptype not in (REQ, REPL, FAULT):
        raise BinrpcError(E_BADPKT, f"bad packet type {ptype}")
    ll, cl = ((buf[1] >> 2) & 3) + 1, (buf[1] & 3) + 1
    hlen = 2 + ll + cl
    if len(buf) < hlen:
        return None
    blen = int.from_bytes(buf[2:2 + ll], "big")
    cookie = int.from_bytes(buf[2 + ll:hlen], "big")
    return ptype, cookie, hlen, blen


def encode_packet(ptype, body, cookie):
    return build_header(ptype, len(body), cookie) + body


# -- records: decoding -----------------------------------------------------------------
def _signed(u, bits):
    return u - (1 << bits) if u >> (bits - 1) else u


class _Reader:
    """Walks a body's records; every read checks the bounds (E_MORE_DATA for
    a record cut short: in a complete body that is a corrupted packet)."""
    __slots__ = ("b", "i", "end")

    def __init__(self, body):
        self.b = body
        self.i = 0
        self.end = len(body)

    def more(self):
        return self.i < self.end

    def head(self):
        """-> (type, length, end_mark) of the next record; its payload is next."""
        if self.i >= self.end:
            raise BinrpcError(E_EOP)
        c = self.b[self.i]
        self.i += 1
        rtype, size = c & 0xF, c >> 4
        end_mark = False
        if rtype != T_DOUBLE and size & 8:
            end_mark = True
            n = size & 7
            size = int.from_bytes(self.take(n), "big") if n else 0
        return rtype, size, end_mark

    def take(self, n):
        if self.i + n > self.end:
            raise BinrpcError(E_MORE_DATA, "record cut short")
        out = self.b[self.i:self.i + n]
        self.i += n
        return out

    def value(self, depth=0):
        """The next record as a value; ("end", type) for an end tag."""
        rtype, size, end_mark = self.head()
        if rtype == T_INT:
            if size > 4:
                raise BinrpcError(E_BADPKT, "int longer than 4 bytes")
            return _signed(int.from_bytes(self.take(size), "big"), 32) if size else 0
        if rtype == T_STR:
            raw = bytes(self.take(size))
            return (raw[:-1] if raw.endswith(b"\0") else raw).decode("utf-8", "replace")
        if rtype == T_BYTES:
            return bytes(self.take(size))
        if rtype == T_DOUBLE:
            if size > 8:
                raise BinrpcError(E_BADPKT, "double longer than 8 bytes")
            return _signed(int.from_bytes(self.take(size), "big"), 64) / 1000 if size else 0.0
        if rtype in (T_STRUCT, T_ARRAY):
            self.take(size if not end_mark else 0)
            if end_mark:
                return _End(rtype)
            return self.compound(rtype, depth + 1)
        if rtype == T_AVP:
            raise BinrpcError(E_RECORD, "structure member outside a structure")
        raise BinrpcError(E_TYPE, f"unknown record type {rtype}")

    def compound(self, rtype, depth):
        """A struct or array's members up to its end tag: named members make
        a dict (a Struct when a name repeats), unnamed ones a list."""
        if depth > MAX_DEPTH:
            raise BinrpcError(E_RECORD, "nested too deep")
        named, plain = [], []
        while True:
            if self.i >= self.end:
                raise BinrpcError(E_MORE_DATA, "unterminated structure")
            if self.b[self.i] & 0xF == T_AVP:
                _t, size, _e = self.head()
                raw = bytes(self.take(size))
                name = (raw[:-1] if raw.endswith(b"\0") else raw).decode("utf-8", "replace")
                v = self.value(depth)
                if isinstance(v, _End):
                    raise BinrpcError(E_RECORD, "structure member without a value")
                named.append((name, v))
                continue
            v = self.value(depth)
            if isinstance(v, _End):     # either end tag closes: ctl sends arrays as structs
                return _members(named, plain)
            plain.append(v)


class _End:
    __slots__ = ("rtype",)

    def __init__(self, rtype):
        self.rtype = rtype


def _members(named, plain):
    if named and not plain:
        names = [n for n, _v in named]
        return dict(named) if len(set(names)) == len(names) else Struct(named)
    if not named:
        return plain
    return plain + [Struct([nv]) for nv in named]


def decode_body(body):
    """Every top-level record of a body -> list of values (int, float, str,
    bytes, dict, Struct, list). BinrpcError on a malformed body."""
    r = _Reader(memoryview(body))
    out = []
    while r.more():
        v = r.value()
        if isinstance(v, _End):
            raise BinrpcError(E_RECORD, "end tag without a start")
        out.append(v)
    return out


def decode_request(body):
    """-> (method, params). The method must be a str record."""
    r = _Reader(memoryview(body))
    if not r.more() or body[0] & 0xF != T_STR:
        raise BinrpcError(E_TYPE if r.more() else E_EOP, "no method name")
    method = r.value()
    params = []
    try:
        while r.more():
            v = r.value()
            if isinstance(v, _End):
                raise BinrpcError(E_RECORD, "end tag without a start")
            params.append(v)
    except BinrpcError as e:
        e.method = method       # the method was readable: the caller may still name it
        raise
    return method, params


# -- records: encoding -----------------------------------------------------------------
def _len_bytes(n):
    return n.to_bytes(_int_len(n), "big")


def _rec_int(i):
    """binrpc_add_int_type: as few bytes as the unsigned 32-bit value needs (0 for 0)."""
    u = i & 0xFFFFFFFF
    n = 4
    while n and not (u >> ((n - 1) * 8)) & 0xFF:
        n -= 1
    return bytes(((n << 4) | T_INT,)) + (u.to_bytes(n, "big") if n else b"")


def _rec_double(f):
    """binrpc_add_double_type: value * 1000 as a 64-bit fixed point."""
    u = int(f * 1000) & 0xFFFFFFFFFFFFFFFF
    n = 8
    while n and not (u >> ((n - 1) * 8)) & 0xFF:
        n -= 1
    return bytes(((n << 4) | T_DOUBLE,)) + (u.to_bytes(n, "big") if n else b"")


def _rec_str(data, rtype=T_STR):
    """binrpc_add_str_type: str and avp names get a NUL; a length of 8 or more
    goes in its own bytes."""
    if rtype in (T_STR, T_AVP):
        data += b"\0"
    n = len(data)
    if n < 8:
        return bytes(((n << 4) | rtype,)) + data
    lb = _len_bytes(n)
    return bytes((((len(lb) | 8) << 4) | rtype,)) + lb + data


def _is_int32(v):
    return -(1 << 31) <= v < (1 << 31)


def encode_scalar(v):
    """One record for a scalar: bool/int (ints outside 32 bits as a double, as
    Kamailio's 'l'/'L' formats do), float, str, bytes, None (Kamailio's
    "<null string>")."""
    if v is None:
        return _rec_str(NULL_STRING.encode())
    if isinstance(v, bool):
        return _rec_int(int(v))
    if isinstance(v, int):
        return _rec_int(v) if _is_int32(v) else _rec_double(float(v))
    if isinstance(v, float):
        if v != v or abs(v) > 9.2e15:
            raise BinrpcError(E_INVAL, f"float {v!r} cannot be sent")
        return _rec_double(v)
    if isinstance(v, str):
        return _rec_str(v.encode("utf-8", "surrogateescape"))
    if isinstance(v, (bytes, bytearray, memoryview)):
        return _rec_str(bytes(v), T_BYTES)
    raise BinrpcError(E_INVAL, f"cannot encode a {type(v).__name__}")


START_STRUCT = bytes((T_STRUCT,))
END_STRUCT = bytes((0x80 | T_STRUCT,))
_FMT_CHAR = ((bool, "d"), (int, "d"), (float, "f"), (str, "s"), (bytes, "s"), (dict, "{"),
             (list, "["), (tuple, "["))


def _fmt_char(v):
    """The rpc->add format character a value stands for (fault texts)."""
    for t, ch in _FMT_CHAR:
        if isinstance(v, t):
            return ch
    return "s"


def _members_of(v):
    """-> [(name or None, value)] of a struct (dict, Struct) or array (list)."""
    if isinstance(v, Struct):
        return [(str(n), x) for n, x in v]
    if isinstance(v, dict):
        return [(str(n), x) for n, x in v.items()]
    return [(None, x) for x in v]


def _is_compound(v):
    return isinstance(v, (dict, list, tuple))


class ReplyEncoder:
    """Encodes `call.values` as Kamailio's ctl lays a reply out
    (binrpc_run.c rpc_add, rpc_struct_add, rpc_array_add): the reply's own
    records may take `max_body` bytes (a value that does not fit makes the
    whole reply a 500 fault, as rpc_add's overflow does) and each struct's
    own records `struct_max` bytes (a member that does not fit is left out,
    as a failing rpc->struct_add leaves it; `dropped` counts them)."""

    def __init__(self, max_body=DEFAULT_MAX_BODY_KB * 1024, struct_max=DEFAULT_STRUCT_MAX_BODY_KB * 1024):
        self.max_body = max_body
        self.struct_max = struct_max
        self.dropped = 0

    def body(self, values):
        """-> the reply body; BinrpcError(E_OVERFLOW) carries the format
        character in `detail` when the top level overflows."""
        own = 0
        parts = []
        for v in values:
            rec, tail = self._record(v, None)
            if own + len(rec) > self.max_body:
                raise BinrpcError(E_OVERFLOW, _fmt_char(v))
            own += len(rec)
            parts.append(rec[:-1] + tail + rec[-1:] if tail is not None else rec)
        return b"".join(parts)

    def _record(self, v, name):
        """-> (own bytes, content or None): a compound's own bytes are its
        name, start and end tags; its content goes between the two tags."""
        head = _rec_str(name.encode("utf-8", "surrogateescape"), T_AVP) if name is not None else b""
        if _is_compound(v):
            return head + START_STRUCT + END_STRUCT, self._content(v)
        return head + encode_scalar(v), None

    def _content(self, v):
        own = 0
        parts = []
        for name, x in _members_of(v):
            try:
                rec, tail = self._record(x, name)
            except BinrpcError:
                self.dropped += 1
                continue
            if own + len(rec) > self.struct_max:
                self.dropped += 1
                continue
            own += len(rec)
            parts.append(rec[:-1] + tail + rec[-1:] if tail is not None else rec)
        return b"".join(parts)


def encode_reply(values, cookie, max_body=DEFAULT_MAX_BODY_KB * 1024,
                 struct_max=DEFAULT_STRUCT_MAX_BODY_KB * 1024):
    """A reply packet for `values`, or Kamailio's 500 fault when they do not
    fit. -> (packet bytes, members dropped from full structs)."""
    enc = ReplyEncoder(max_body, struct_max)
    try:
        body = enc.body(values)
    except BinrpcError as e:
        if e.code != E_OVERFLOW:
            return encode_fault(500, f"Internal server error: {e.detail or e}", cookie), 0
        return encode_fault(500, f"Internal server error processing '{e.detail}': {e} ({e.code})",
                            cookie), 0
    return encode_packet(REPL, body, cookie), enc.dropped


MAX_FAULT_LEN = 255     # binrpc_run.c rpc_fault formats into MAX_FAULT_LEN (256) bytes


def encode_fault(code, text, cookie):
    """A fault packet (binrpc_addfault): an int code and a str."""
    raw = str(text).encode("utf-8", "replace")[:MAX_FAULT_LEN]
    return encode_packet(FAULT, _rec_int(int(code)) + _rec_str(raw), cookie)


def encode_request(method, params, cookie):
    """A request packet (kamcmd send_binrpc_cmd): the method, then each
    parameter as a scalar record."""
    body = _rec_str(str(method).encode("utf-8", "surrogateescape"))
    body += b"".join(encode_scalar(p) for p in params)
    return encode_packet(REQ, body, cookie)


_KAMCMD_INT = re.compile(r"\s*[+-]?\d+")
_KAMCMD_FLOAT = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def kamcmd_arg(text):
    """kamcmd's parse_arg: an int when the whole text is one (strtol, base
    10), else a float when it is one (strtod, decimal forms), else a
    string; a leading `s:` forces a string."""
    if _KAMCMD_INT.fullmatch(text):
        return int(text)
    if _KAMCMD_FLOAT.fullmatch(text):
        return float(text)
    return text[2:] if text.startswith("s:") else text


# -- streams ---------------------------------------------------------------------------
class StreamParser:
    """Packets out of a byte stream: feed() what was read, get the packets it
    completed (several per read, or one split over many reads). A packet
    longer than `limit` bytes, header included, cannot fit Kamailio's
    stream buffer (io_listener.c STREAM_BUF_SIZE): BinrpcError(E_OVERFLOW)
    as soon as its header says so. A bad magic or type: E_BADPKT."""

    def __init__(self, limit=STREAM_BUF_SIZE):
        self.buf = bytearray()
        self.limit = limit

    def pending(self):
        """Bytes of a packet not complete yet."""
        return len(self.buf)

    def feed(self, data):
        self.buf += data
        out = []
        while True:
            hdr = parse_header(self.buf)
            if hdr is None:
                return out
            ptype, cookie, hlen, blen = hdr
            if hlen + blen > self.limit:
                raise BinrpcError(E_OVERFLOW, f"packet of {hlen + blen} bytes")
            if len(self.buf) < hlen + blen:
                return out
            out.append(Packet(ptype, cookie, bytes(self.buf[hlen:hlen + blen])))
            del self.buf[:hlen + blen]


def parse_datagram(data):
    """One datagram, one packet: -> Packet; BinrpcError when it is malformed
    or cut short (E_MORE_DATA)."""
    hdr = parse_header(data)
    if hdr is None:
        raise BinrpcError(E_MORE_DATA, "datagram shorter than a header")
    ptype, cookie, hlen, blen = hdr
    if len(data) < hlen + blen:
        raise BinrpcError(E_MORE_DATA, "datagram shorter than its length")
    return Packet(ptype, cookie, bytes(data[hlen:hlen + blen]))
