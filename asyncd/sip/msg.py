"""SipMsg and parse_msg: one eager pass over a datagram, lazy header parsing.

Runs in: udp receivers (every datagram), async task workers and timers
(messages rebuilt from shared memory), tm.

What parse_msg checks eagerly (cheap, and needed by every message anyway):
framing (end of headers, Content-Length: RFC 3261 18.3), the first line
(strict single SPs, RFC 4475 3.1.2.8-10; version, 505 for another one),
header-name syntax, duplicated single-value headers (RFC 4475 3.3.8/3.3.9),
presence of Via/From/To/Call-ID/CSeq (RFC 3261 8.1.1), the CSeq value and
its method against the request method (RFC 4475 3.1.2.17), and the first Via
header line (every message needs its top Via). Everything else (From/To,
Contact, Route, Max-Forwards, R-URI, the other Vias) is parsed on first use
and raises SipParseError then; `validate()` forces all of it (what a
sanity check does).

The head is decoded once (UTF-8, surrogateescape: lossless, so forwarded
headers are byte-exact); framing is computed on the bytes, for datagrams (a
stream transport would need Content-Length and a different framer).

Hot path (docs/benchmarks.md "SIP hot path"): the common datagram (CRLF
framing, no folding, header names this process has seen) takes one
partition() and one dict lookup per header line and keeps each line whole;
a value is cut out of its line only when something reads it. Anything else
starts over on the slow path, which finds and names what is wrong. What a
UA repeats request after request is remembered per process, in small bounded
dicts (memo.py) keyed by the exact text and filled only with what passed every check:
the Request-Line, the CSeq value, the top Via's sent-by part (hdrs.py), a
name-addr without parameters (a To without tag); a miss costs one dict lookup.
"""
import itertools
import re
from time import time as _time

from .hdrs import (SINGLE, SipParseError, _via_fast, canon, canon_checked, parse_cseq,
                   parse_nameaddr, parse_nameaddr_list, parse_via_line)
from .memo import remember
from .uri import parse_uri

__all__ = ["SipMsg", "parse_msg", "faked_request"]

_ids = itertools.count(1)
_FOLD_RE = re.compile(r"[ \t]*\r\n[ \t]+")
_FOLDED_RE = re.compile(r"\n[ \t]")
_METHOD_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_RURI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\s<>\"]+\Z")
_VERSION_RE = re.compile(r"SIP/[0-9]+\.[0-9]+\Z", re.I)
_HTTP_VERSIONS = ("HTTP/1.0", "HTTP/1.1")
# the whole well-formed Request-Line in one match (the common case)
_REQLINE_RE = re.compile(r"([A-Za-z0-9\-.!%*_+`'~]+) ([A-Za-z][A-Za-z0-9+.\-]*:[^\s<>\"]+) SIP/2\.0\Z")
_REQUIRED = (("via", "Via"), ("from", "From"), ("to", "To"), ("call-id", "Call-ID"), ("cseq", "CSeq"))


class SipMsg:
    """A received (or rebuilt) SIP request or reply; see docs/contracts.md §3."""

    # lazily filled caches (class defaults keep construction cheap)
    _from = _to = _contacts = _vias = _routes = _rroutes = _puri = _mf = None
    status = None
    reason = None
    method = None
    ruri = None
    version = "SIP/2.0"
    new_uri = None
    dst_uri = None
    force_rport = False
    is_request = True
    faked = False           # the core faked request (faked_request): no transaction, no suspend
    http = False            # an HTTP/1.x request line (a non-SIP request: the nonsip_in hooks)
    flags = 0
    conid = 0               # $conid: the TCP connection it came on (0: UDP)
    fwd_flags = rpl_flags = 0   # TCP send flags: set_forward_no_connect() & co. (core_funcs)
    force_sock = None       # force_send_socket(): index of the socket requests leave from
    rr_out = None           # rr: builds the outbound Record-Route of a double RR (rr.record_route)
    dset = None             # registrar lookup(): the destination set (extra branches t_relay forks to)
    path_route = None       # registrar lookup(): the Route line added for the R-URI contact's Path
    body = b""
    _vias1 = _cseq = _cl = _callid = None
    _via_v = _cseq_v = None  # the top Via and CSeq values, cut out by the eager pass
    # header index (see _index_headers): unfolded lines ([0] = first line), raw
    # lines (folding kept; the same list when nothing was folded), key -> its
    # first (unfolded) line, and key -> all its lines (only when some header
    # occurs more than once, else None)
    _lines = _rawl = ()
    _first = {}
    _multi = None
    _hl_cache = _idx_cache = None

    def __init__(self, buf, src, dst, sock, proto):
        self.buf = buf
        self.src = src
        self.dst = dst
        self.sock = sock
        self.proto = proto
        self.id = next(_ids)
        self.rcv_time = _time()
        self.hdr_adds = []
        self.hdr_removes = set()
        self.reply_lumps = []

    def __repr__(self):
        return "<SipMsg %s>" % (self._rawl[0] if self._rawl else "?")

    # -- the header index ----------------------------------------------------------
    # Values are cut out of their line on demand: most headers of a message are
    # never read, so the eager pass allocates one name string per line, no more.
    def _v1(self, key):
        """First value of header `key` (canonical), unfolded and stripped, or None."""
        line = self._first.get(key)
        if line is None:
            return None
        return line.partition(":")[2].strip(" \t")

    def _vall(self, key):
        """All values of header `key` (one per header line), in order."""
        multi = self._multi
        if multi is not None:
            lst = multi.get(key)
            if lst is not None:
                return [_value(line) for line in lst]
        line = self._first.get(key)
        if line is None:
            return []
        return [line.partition(":")[2].strip(" \t")]

    def _count(self, key):
        multi = self._multi
        if multi is not None and key in multi:
            return len(multi[key])
        return 1 if key in self._first else 0

    @property
    def _raw(self):
        """Raw header lines, folding kept; [0] is the first line."""
        return self._rawl

    @property
    def _hl(self):
        """(canonical key or '' for a bad line, name as written, value) per header line."""
        hl = self._hl_cache
        if hl is None:
            hl = []
            names = _names
            for line in itertools.islice(self._lines, 1, None):
                name, colon, value = line.partition(":")
                key = names.get(name) if colon else None
                if key is None:
                    try:
                        if not colon:
                            raise SipParseError("Bad header line")
                        key = _name_key(name)
                    except SipParseError:
                        hl.append(("", line, ""))
                        continue
                hl.append((key, name, value.strip(" \t")))
            self._hl_cache = hl
        return hl

    @property
    def _idx(self):
        """canonical key -> [values] (kept for callers that want the whole index)."""
        idx = self._idx_cache
        if idx is None:
            idx = self._idx_cache = {k: self._vall(k) for k in self._first}
        return idx

    # -- generic header access -------------------------------------------------
    def hdr(self, name):
        return self._v1(canon(name))

    def hdrs(self, name):
        return self._vall(canon(name))

    def hdr_count(self, name):
        return self._count(canon(name))

    @property
    def headers(self):
        """(name, value) in order, names as written, values unfolded."""
        return [(n.rstrip(" \t"), v) for _, n, v in self._hl]

    @property
    def first_line(self):
        return self._rawl[0] if self._rawl else ""

    @property
    def raw_headers(self):
        """(canonical name, raw text as received, folding kept) in order."""
        raw = self._rawl
        return [(hl[0], raw[i + 1]) for i, hl in enumerate(self._hl)]

    # -- Via ----------------------------------------------------------------------
    @property
    def via1(self):
        return self._vias1[0] if self._vias1 else None

    @property
    def vias(self):
        v = self._vias
        if v is None:
            v = list(self._vias1 or ())
            for line in self._vall("via")[1:]:
                v.extend(parse_via_line(line))
            self._vias = v
        return v

    @property
    def via2(self):
        if self._vias1 and len(self._vias1) > 1:
            return self._vias1[1]
        v = self.vias
        return v[1] if len(v) > 1 else None

    # -- the dialog / transaction identifiers --------------------------------------
    @property
    def callid(self):
        v = self._callid
        if v is None:
            line = self._first.get("call-id")  # self._v1("call-id"), inlined: every reply reads it
            if line is not None:
                v = self._callid = line.partition(":")[2].strip(" \t")
        return v

    @property
    def cseq_num(self):
        return self._cseq[0] if self._cseq else None

    @property
    def cseq_method(self):
        return self._cseq[1] if self._cseq else None

    @property
    def from_(self):
        v = self._from
        if v is None:
            s = self._v1("from")
            if s is None:
                return None
            v = self._from = parse_nameaddr(s, "From")
        return v

    @property
    def to(self):
        v = self._to
        if v is None:
            s = self._v1("to")
            if s is None:
                return None
            v = self._to = parse_nameaddr(s, "To")
        return v

    @property
    def from_tag(self):
        f = self.from_
        return f.tag if f is not None else None

    @property
    def to_tag(self):
        t = self.to
        return t.tag if t is not None else None

    # -- other core headers ----------------------------------------------------------
    @property
    def max_forwards(self):
        v = self._mf
        if v is None:
            s = self._v1("max-forwards")
            if s is None:
                return None
            if not (s.isascii() and s.isdigit()) or len(s) > 10:
                raise SipParseError("Bad Max-Forwards header")
            v = self._mf = int(s)
        return v

    @property
    def contacts(self):
        v = self._contacts
        if v is None:
            v = []
            for line in self._vall("contact"):
                v.extend(parse_nameaddr_list(line, "Contact"))
            self._contacts = v
        return v

    @property
    def contact(self):
        c = self.contacts
        return c[0] if c else None

    @property
    def routes(self):
        v = self._routes
        if v is None:
            v = self._routes = self._nalist("route", "Route")
        return v

    @property
    def record_routes(self):
        v = self._rroutes
        if v is None:
            v = self._rroutes = self._nalist("record-route", "Record-Route")
        return v

    def _nalist(self, key, what):
        out = []
        for line in self._vall(key):
            out.extend(parse_nameaddr_list(line, what))
        return out

    @property
    def content_length(self):
        return self._cl

    @property
    def parsed_ruri(self):
        v = self._puri
        if v is None and self.ruri is not None:
            v = self._puri = parse_uri(self.ruri)
        return v

    @property
    def cur_uri(self):
        return self.new_uri if self.new_uri is not None else self.ruri

    def validate(self):
        """Parse every core header now (sanity-check style); raises SipParseError."""
        self.vias
        self.from_
        self.to
        self.contacts
        self.routes
        self.record_routes
        self.max_forwards
        if self.is_request:
            self.parsed_ruri
        return True


# -- the eager pass ---------------------------------------------------------------------
def _split_head(m, buf):
    """Find the header section; return (lines, body_start, error or None)."""
    err = None
    end = buf.find(b"\r\n\r\n")
    if end >= 0:
        head = buf[:end].decode("utf-8", "surrogateescape")
        start = end + 4
    else:
        end = buf.find(b"\n\n")
        if end >= 0:  # bare LF line ends (tolerated, as Kamailio does)
            head = buf[:end].decode("utf-8", "surrogateescape")
            head = head.replace("\r\n", "\n").replace("\n", "\r\n")
            start = end + 2
        elif buf.endswith(b"\r\n"):
            # A datagram is one message: its end also ends the header section
            # (RFC 4475 3.1.2.15's file has no empty line).
            head = buf[:-2].decode("utf-8", "surrogateescape")
            start = len(buf)
        else:
            head = buf.decode("utf-8", "surrogateescape")
            head = head[:head.rfind("\r\n")] if "\r\n" in head else head
            start = len(buf)
            err = "No end of headers"
    if _FOLDED_RE.search(head) is not None:  # rare: the regex scan is the cheap test
        groups = []  # a header line and its continuation lines
        for line in head.split("\r\n"):
            if len(groups) > 1 and line[:1] in (" ", "\t"):
                groups[-1].append(line)
            else:
                groups.append([line])
        raw = ["\r\n".join(g) if len(g) > 1 else g[0] for g in groups]
        lines = [_FOLD_RE.sub(" ", r) if "\r\n" in r else r for r in raw]
        m._rawl = raw
    else:
        lines = m._rawl = head.split("\r\n")
    m._lines = lines
    return lines, start, err


_names = {}  # header name as written -> canonical key (validated once per process)


def _name_key(name):
    key = _names.get(name)
    if key is None:
        n = name.rstrip(" \t")
        if not n:
            raise SipParseError("Bad header line")
        key = canon_checked(n.lower())
        if len(_names) < 4096 and len(name) <= 64:  # the wire must not grow it forever
            _names[name] = key
    return key


def _value(line):
    return line.partition(":")[2].strip(" \t")


def _index_headers(m, lines):
    """Index the header lines: key -> first line index (and all indexes of repeated
    headers), no value is cut out yet. Anything unusual (a line without ':', a
    name not seen before, a folded line, a repeated single-value header) returns
    False: the caller starts over on the slow path, which reports exactly what
    is wrong (measured: partition beats find+slice, and a plain loop beats map)."""
    first = {}
    setdef = first.setdefault
    multi = None
    get = _names.get
    it = iter(lines)
    next(it)
    for line in it:
        name, colon, _ = line.partition(":")
        key = get(name) if colon else None
        if key is None:
            return False
        j = setdef(key, line)
        if j is not line:  # split() gives every line of 2+ chars its own object
            if key in SINGLE:
                return False
            if multi is None:
                multi = {}
            lst = multi.get(key)
            if lst is None:
                multi[key] = [j, line]
            else:
                lst.append(line)
    m._first = first
    m._multi = multi
    return True


def _index_slow(m, lines):
    first = {}
    multi = {}
    err = None
    names = _names
    for i in range(1, len(lines)):
        line = lines[i]
        name, colon, value = line.partition(":")
        key = names.get(name) if colon else None
        if key is None:
            try:
                if not colon:
                    raise SipParseError("Bad header line")
                key = _name_key(name)
            except SipParseError as e:
                err = err or e.reason
                continue
        j = first.get(key)
        if j is None:
            first[key] = line
        else:
            if key in SINGLE:
                err = err or "Multiple %s headers" % name.rstrip(" \t")
            lst = multi.get(key)
            if lst is None:
                multi[key] = [j, line]
            else:
                lst.append(line)
    m._first = first
    m._multi = multi or None
    return err


_reqlines = {}  # well-formed SIP/2.0 Request-Line -> (method, R-URI); bounded below


def _first_line(m, line):
    hit = _reqlines.get(line)
    if hit is not None:  # the same Request-Line as an earlier request: checked then
        m.method, m.ruri = hit
        return
    if line[:4].upper() == "SIP/":
        m.is_request = False
        parts = line.split(" ", 2)
        if len(parts) < 2 or parts[0].upper() != "SIP/2.0":
            raise SipParseError("Bad Status-Line")
        code = parts[1]
        if len(code) != 3 or not (code.isascii() and code.isdigit()) or code[0] not in "123456":
            raise SipParseError("Bad status code")
        m.status = int(code)
        m.reason = parts[2] if len(parts) > 2 else ""
        return
    rl = _REQLINE_RE.match(line)
    if rl is not None:
        m.method, ruri = rl.groups()
    else:
        ruri = _bad_request_line(m, line)
    # RFC 3261 19.1.1: headers are not allowed in a Request-URI (RFC 4475 3.1.2.11)
    if "?" in ruri and ruri[:4].lower() in ("sip:", "sips") \
            and ruri.find("?", ruri.rfind("@") + 1) >= 0:
        raise SipParseError("Bad Request-URI: headers not allowed")
    m.ruri = ruri
    if rl is not None and len(line) <= 256:  # bounded in count and size: the wire
        remember(_reqlines, line, (m.method, ruri), 1024)


def _bad_request_line(m, line):
    """Slow path: say what is wrong with the Request-Line (or accept sip/2.0 in lowercase)."""
    parts = line.split(" ")
    if len(parts) > 0 and _METHOD_RE.match(parts[0]):
        m.method = parts[0]
    if len(parts) != 3 or m.method is None:
        raise SipParseError("Bad Request-Line")
    ruri, ver = parts[1], parts[2]
    if ver.upper() in _HTTP_VERSIONS:
        # Kamailio's parse_first_line flags an HTTP/1.x request line as not SIP
        # (src/core/parser/parse_fline.c, FLINE_FLAG_PROTO_HTTP); receive_msg hands
        # it to the non-SIP hooks (xhttp). The target is any non-empty token.
        m.http = True
        m.version = ver
        if not ruri:
            raise SipParseError("Bad Request-Line")
        return ruri
    if ver.upper() != "SIP/2.0":
        if _VERSION_RE.match(ver):
            raise SipParseError("Version Not Supported", code=505)
        raise SipParseError("Bad Request-Line")
    if _RURI_RE.match(ruri) is None:
        raise SipParseError("Bad Request-URI")
    return ruri


def _checks(m, buf, start):
    first = m._first
    via = first.get("via")
    cseq = first.get("cseq")
    if via is None or cseq is None or "from" not in first or "to" not in first \
            or "call-id" not in first:
        if m.http:      # HTTP needs none of them (the non-SIP branch only)
            _http_body(m, buf, start)
            return
        for key, name in _REQUIRED:
            if key not in first:
                raise SipParseError("Missing %s header" % name)
    via = m._via_v = via.partition(":")[2].strip(" \t")
    v = _via_fast(via) if "," not in via else None  # parse_via_line's first step, called direct
    m._vias1 = [v] if v is not None else parse_via_line(via)
    cseq = m._cseq_v = cseq.partition(":")[2].strip(" \t")
    cseq = m._cseq = parse_cseq(cseq)
    if cseq[1] != m.method and m.is_request:
        raise SipParseError("CSeq method does not match request method")
    v = first.get("content-length")
    if v is None:
        m.body = buf[start:]  # UDP without Content-Length: the rest (RFC 3261 18.3)
        return
    if v == "Content-Length: 0":  # a request without body, written the usual way
        m._cl = 0             # (what the general code below gives for it, body b"")
        return
    v = v.partition(":")[2].strip(" \t")
    blen = len(buf) - start
    if not (v.isascii() and v.isdigit()) or len(v) > 10:
        raise SipParseError("Bad Content-Length")
    n = m._cl = int(v)
    if n > blen:
        raise SipParseError("Content-Length mis-match")
    # octets past Content-Length are discarded (RFC 3261 18.3, RFC 4475 3.1.1.8)
    m.body = buf[start:start + n] if n != blen else buf[start:]


def _http_body(m, buf, start):
    """The body of an HTTP request: Content-Length bytes, or the rest of what the
    stream framer cut (no Content-Length: tcp_accept_no_cl, the head ends it)."""
    v = m._v1("content-length")
    if v is None:
        m.body = buf[start:]
        return
    if not (v.isascii() and v.isdigit()) or len(v) > 10 or int(v) > len(buf) - start:
        raise SipParseError("Bad Content-Length")
    m._cl = int(v)
    m.body = buf[start:start + m._cl]


def _can_reply(m):
    """A 400 can be built: a request (never an ACK) whose top Via parses."""
    if not m.is_request or m.method is None or m.method == "ACK":
        return False
    if m._cseq is None:
        try:
            v = m._v1("cseq")
            m._cseq = parse_cseq(v) if v is not None else None
        except SipParseError:
            pass
    if m._cseq is not None and m._cseq[1] == "ACK":
        return False
    if not m._vias1:
        try:
            v = m._v1("via")
            if v is None:
                return False
            m._vias1 = parse_via_line(v)
        except SipParseError:
            return False
    return True


def parse_msg(buf, src=("0.0.0.0", 0), dst=("0.0.0.0", 0), sock=0, proto="udp"):
    """Parse one datagram. Raises SipParseError (nothing else) on bad input."""
    if type(buf) is not bytes:  # bytearray / memoryview from a recv_into loop
        buf = bytes(buf)
    m = SipMsg(buf, src, dst, sock, proto)
    try:
        end = buf.find(b"\r\n\r\n")
        if end > 0 and buf[0] != 13:
            # the common case: CRLF framing, no folding, names seen before (a
            # folded line's name starts with LWS, so it is never in the cache)
            lines = m._lines = m._rawl = buf[:end].decode("utf-8", "surrogateescape").split("\r\n")
            if _index_headers(m, lines):
                _first_line(m, lines[0])
                _checks(m, buf, end + 4)
                return m
        return _parse_slow(m, buf)
    except SipParseError as e:
        e.can_reply = _can_reply(m)
        e.msg = m if e.can_reply else None
        raise
    except Exception as e:  # a parser bug must not kill a receiver
        raise SipParseError("Bad message (%s)" % type(e).__name__) from e


def _parse_slow(m, buf):
    if buf[:2] == b"\r\n":  # leading CRLFs are ignored (RFC 3261 7.5)
        buf = buf.lstrip(b"\r\n")
        if not buf:
            raise SipParseError("Empty message")
    lines, start, err = _split_head(m, buf)
    herr = _index_slow(m, lines)
    _first_line(m, lines[0])
    if err or herr:
        raise SipParseError(err or herr)
    _checks(m, buf, start)
    return m


_FAKED = (b"OPTIONS sip:you@kamailio.org SIP/2.0\r\n"
          b"Via: SIP/2.0/UDP 127.0.0.1\r\n"
          b"From: <sip:you@kamailio.org>;tag=123\r\n"
          b"To: <sip:you@kamailio.org>\r\n"
          b"Call-ID: 123\r\n"
          b"CSeq: 1 OPTIONS\r\n"
          b"Content-Length: 0\r\n\r\n")


def faked_request():
    """The request async data / tkv tasks and event routes run on (Kamailio's
    fmsg.c faked_msg_next). A fresh one each call: Kamailio reuses one static
    message, so e.g. a $ru change leaks into the next task of that worker."""
    m = parse_msg(_FAKED, src=("127.0.0.1", 5060), dst=("127.0.0.1", 5060))
    m.faked = True
    return m
