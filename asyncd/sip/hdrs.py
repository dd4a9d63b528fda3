"""Header names and the parsers of individual header values (Via, name-addr, CSeq).

Runs in: udp receivers, async task workers, timers (wherever a SipMsg is read).

Values arrive here already unfolded (RFC 3261 7.3.1: folded LWS is one SP)
and stripped; each parser is called once per header, on first use, by the
lazy properties of SipMsg. Every syntax error is a SipParseError whose reason
is short enough to be a reply reason phrase.
"""
import re

from .memo import remember

__all__ = ["SipParseError", "Via", "NameAddr", "canon", "COMPACT", "SINGLE",
           "parse_via_line", "parse_nameaddr", "parse_nameaddr_list", "parse_cseq",
           "split_commas", "is_token"]


class SipParseError(ValueError):
    """A message (or one of its parts) that cannot be parsed.

    `reason` is fit for a reply reason phrase; `can_reply` says whether a
    reply can be built (then `msg` holds the partly parsed request, so the
    receiver answers `code` `reason`, else it drops and counts); `code` is
    400, or 505 for a SIP version we do not speak, 416 for a URI scheme we
    cannot parse.
    """

    def __init__(self, reason, can_reply=False, code=400, msg=None):
        super().__init__(reason)
        self.reason = reason
        self.can_reply = can_reply
        self.code = code
        self.msg = msg


# RFC 3261 7.3.3 and the later RFCs that assigned single letters (IANA registry).
COMPACT = {
    "i": "call-id", "m": "contact", "e": "content-encoding", "l": "content-length",
    "c": "content-type", "f": "from", "s": "subject", "k": "supported", "t": "to",
    "v": "via", "o": "event", "r": "refer-to", "b": "referred-by", "x": "session-expires",
    "u": "allow-events", "y": "identity", "a": "accept-contact", "j": "reject-contact",
    "d": "request-disposition", "n": "identity-info",
}
# Headers that may appear once only (RFC 3261 7.3.1): a second one is a 400 (RFC 4475 3.3.8).
SINGLE = frozenset(("call-id", "from", "to", "cseq", "max-forwards", "content-length"))
# Known names skip the token check on the hot path.
_KNOWN = frozenset(COMPACT) | frozenset(COMPACT.values()) | frozenset((
    "cseq", "max-forwards", "route", "record-route", "user-agent", "server", "allow",
    "accept", "expires", "authorization", "proxy-authorization", "www-authenticate",
    "proxy-authenticate", "require", "proxy-require", "unsupported", "date", "timestamp",
    "min-expires", "organization", "priority", "warning", "retry-after", "in-reply-to",
    "reply-to", "mime-version", "accept-encoding", "accept-language", "content-disposition",
    "content-language", "alert-info", "call-info", "error-info", "p-asserted-identity",
    "privacy", "path", "rack", "rseq", "subscription-state", "diversion", "replaces"))

_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")


def is_token(s):
    return _TOKEN_RE.match(s) is not None


def canon(name):
    """Lowercase long form of a header name (compact letters mapped)."""
    n = name.lower()
    return COMPACT.get(n, n)


def canon_checked(lname):
    """canon() for the eager pass; unknown names must be RFC 3261 tokens."""
    key = COMPACT.get(lname)
    if key is not None:
        return key
    if lname not in _KNOWN and _TOKEN_RE.match(lname) is None:
        raise SipParseError("Bad header name")
    return lname


def split_commas(s):
    """Split a header value on commas outside quoted strings and <...>."""
    if '"' not in s and "<" not in s:
        return s.split(",")
    out, cur, q, angle, i, n = [], 0, False, False, 0, len(s)
    while i < n:
        c = s[i]
        if q:
            if c == "\\":
                i += 1
            elif c == '"':
                q = False
        elif c == '"':
            q = True
        elif c == "<":
            angle = True
        elif c == ">":
            angle = False
        elif c == "," and not angle:
            out.append(s[cur:i])
            cur = i + 1
        i += 1
    if q:
        raise SipParseError("Unterminated quoted string")
    out.append(s[cur:])
    return out


def _split_semis(s):
    if '"' not in s:
        return s.split(";")
    out, cur, q, i, n = [], 0, False, 0, len(s)
    while i < n:
        c = s[i]
        if q:
            if c == "\\":
                i += 1
            elif c == '"':
                q = False
        elif c == '"':
            q = True
        elif c == ";":
            out.append(s[cur:i])
            cur = i + 1
        i += 1
    if q:
        raise SipParseError("Unterminated quoted string")
    out.append(s[cur:])
    return out


def _params(s, what):
    """`;a=b;c` (leading ';' already removed) -> {lowercase name: value or ''}.

    An empty parameter (`;;`) is an error (RFC 4475 3.1.2.1)."""
    params = {}
    for p in _split_semis(s):
        name, eq, val = p.partition("=")
        name = name.strip()
        if not name or _TOKEN_RE.match(name) is None:
            raise SipParseError("Bad %s parameter" % what)
        if eq:
            val = val.strip()
            if not val or (val[0] != '"' and (" " in val or "\t" in val)):
                raise SipParseError("Bad %s parameter" % what)
        params[name.lower()] = val
    return params


class Via:
    """One via-parm (RFC 3261 20.42). `host` is as written (IPv6 keeps its
    brackets); `port` int or None; `rport` None when absent, '' when present
    without a value, else its value; `received` None or the address."""

    __slots__ = ("raw", "protocol", "transport", "host", "port", "params",
                 "branch", "rport", "received", "maddr")

    def __repr__(self):
        return "Via(%r)" % self.raw

    @property
    def sent_by(self):
        return self.host if self.port is None else "%s:%d" % (self.host, self.port)


_VIA_RE = re.compile(
    r"\s*+([^\s/]++)\s*+/\s*+([^\s/]++)\s*+/\s*+([A-Za-z0-9\-.!%*_+`'~]++)\s++"
    r"(\[[0-9A-Fa-f:.]++\]|[A-Za-z0-9_.\-]++)(?:\s*+:\s*+([0-9]{1,5}+))?\s*+(?:;(.*))?\Z", re.S)


# the common, compact form: SIP/2.0/UDP host[:port];p[=v]... (no LWS, no quotes)
_VIA_PARAMS = r"(?:;[A-Za-z0-9\-.!%*_+`'~]++(?:=[A-Za-z0-9\-.!%*_+`'~:\[\]]++)?)*+"
_VIA_FAST_RE = re.compile(
    r"SIP/2\.0/([A-Za-z]++) (\[[0-9A-Fa-f:.]++\]|[A-Za-z0-9_.\-]++)(?::([0-9]{1,5}+))?"
    r"(%s)\Z" % _VIA_PARAMS)
_VIA_PARAMS_RE = re.compile(_VIA_PARAMS + r"\Z")
# "SIP/2.0/UDP host:port" (what precedes the first ';') of Vias _VIA_FAST_RE
# accepted -> (transport, host, port): a UA's Vias differ in the branch only
_sentby = {}


def _via_fast(s):
    semi = s.find(";")
    hit = _sentby.get(s[:semi]) if semi > 0 else None
    if hit is None:
        return _via_fast_re(s)
    # the part before ';' matched _VIA_FAST_RE before, so the whole matches it
    # exactly when the parameters do
    if _VIA_PARAMS_RE.match(s, semi) is None:
        return None
    v = Via()
    v.raw = s
    v.protocol = "SIP/2.0"
    v.transport, v.host, v.port = hit
    return _via_params(v, s[semi:])


def _via_fast_re(s):
    m = _VIA_FAST_RE.match(s)
    if m is None:
        return None
    transport, host, port, rest = m.groups()
    v = Via()
    v.raw = s
    v.protocol = "SIP/2.0"
    v.transport = transport.upper()
    v.host = host
    if port is not None:
        port = int(port)
        if port > 65535:
            return None
    v.port = port
    if rest and len(s) - len(rest) <= 128:  # bounded in count and size: the wire
        remember(_sentby, s[:len(s) - len(rest)], (v.transport, host, port), 256)
    return _via_params(v, rest)


def _via_params(v, rest):
    """The parameters of a Via _VIA_FAST_RE accepts (rest: '' or ';a=b;c...')."""
    if rest[:8] == ";branch=":  # a UA's usual Via: ;branch=x, ;branch=x;rport (SIPp's), ;rport;branch=x
        semi = rest.find(";", 8)
        if semi < 0:
            v.params = {"branch": rest[8:]}
            v.branch = rest[8:]
            v.rport = v.received = v.maddr = None
            return v
        if rest[semi:] == ";rport":
            b = v.branch = rest[8:semi]
            v.params = {"branch": b, "rport": ""}
            v.rport = ""
            v.received = v.maddr = None
            return v
    elif rest[:14] == ";rport;branch=" and rest.find(";", 14) < 0:  # the other usual order
        b = v.branch = rest[14:]
        v.params = {"rport": "", "branch": b}
        v.rport = ""
        v.received = v.maddr = None
        return v
    params = v.params = {}
    if rest:
        for p in rest[1:].split(";"):
            name, _, val = p.partition("=")
            params[name.lower()] = val
    v.branch = params.get("branch")
    v.rport = params.get("rport")
    v.received = params.get("received")
    v.maddr = params.get("maddr")
    return v


def parse_via(s):
    v = _via_fast(s)
    return v if v is not None else _via_full(s)


def _via_full(s):
    m = _VIA_RE.match(s)
    if m is None:
        raise SipParseError("Bad Via header")
    proto, ver, transport, host, port, rest = m.groups()
    if proto.upper() != "SIP":
        raise SipParseError("Bad Via protocol")
    v = Via()
    v.raw = s.strip()
    v.protocol = "%s/%s" % (proto, ver)
    v.transport = transport.upper()
    v.host = host
    if port is not None:
        port = int(port)
        if port > 65535:
            raise SipParseError("Bad Via port")
    v.port = port
    params = v.params = _params(rest, "Via") if rest is not None else {}
    v.branch = params.get("branch")
    v.rport = params.get("rport")
    v.received = params.get("received")
    v.maddr = params.get("maddr")
    return v


def parse_via_line(value):
    """All via-parms of one Via header line; an empty element is an error."""
    if "," not in value:
        return [parse_via(value)]
    return [parse_via(p.strip(" \t")) for p in split_commas(value)]


class NameAddr:
    """name-addr / addr-spec with header params (From, To, Contact, Route...).
    `display` is as written (quotes kept), `uri` a str (any scheme: RFC 4475
    3.3.4), `params` lowercase names -> value ('' for flags)."""

    __slots__ = ("raw", "display", "uri", "params", "tag")

    def __repr__(self):
        return "NameAddr(%r)" % self.raw


def _quoted_end(s, i):
    """Index of the closing quote of the quoted string opening at s[i]."""
    n = len(s)
    i += 1
    while i < n:
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i
        i += 1
    raise SipParseError("Unterminated quoted string")


_DISPLAY_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+(?:[ \t]+[A-Za-z0-9\-.!%*_+`'~]+)*\Z")


_T = r"[A-Za-z0-9\-.!%*_+`'~]"
# the common shape: [display] <uri> [;param[=value]]... (no quoted param values)
_NA_FAST_RE = re.compile(
    r'(?:("(?:[^"\\]|\\.)*+")|(%s++(?:[ \t]++%s++)*+))?[ \t]*+<([^\s<>]++)>'
    r'((?:[ \t]*+;[ \t]*+%s++(?:[ \t]*+=[ \t]*+[^;"\s]++)?)*+)[ \t]*+\Z' % (_T, _T, _T), re.S)


# name-addr values without header parameters the fast shape accepted ->
# (display, uri): a To without tag, a Route, a Contact come back unchanged
_na_plain = {}


def parse_nameaddr(s, what="header"):
    hit = _na_plain.get(s)
    if hit is not None:  # a fresh object each time: callers may change theirs
        na = NameAddr()
        na.raw = s
        na.display, na.uri = hit
        na.params = {}
        na.tag = None
        return na
    m = _NA_FAST_RE.match(s)
    if m is None or ":" not in m.group(3):
        return _parse_nameaddr(s, what)
    quoted, tokens, uri, tail = m.groups()
    na = NameAddr()
    na.raw = s
    na.display = quoted or tokens or ""
    na.uri = uri
    if not tail and len(s) <= 256:  # bounded in count and size: the wire
        remember(_na_plain, s, (na.display, uri), 512)
    # the usual From/To tail (the regex lets LWS follow '=', that takes the loop)
    if tail[:5] == ";tag=" and tail.find(";", 5) < 0 and tail[5] not in " \t":
        na.params = {"tag": tail[5:]}
        na.tag = tail[5:]
        return na
    params = na.params = {}
    if tail:
        for p in tail.split(";")[1:]:
            name, _, val = p.partition("=")
            params[name.strip(" \t").lower()] = val.strip(" \t")
    na.tag = params.get("tag")
    return na


def _parse_nameaddr(s, what):
    s = s.strip()
    na = NameAddr()
    na.raw = s
    na.display = ""
    if not s:
        raise SipParseError("Empty %s" % what)
    if s[0] == '"':
        q = _quoted_end(s, 0)
        na.display = s[:q + 1]
        rest = s[q + 1:].lstrip()
        if not rest.startswith("<"):
            raise SipParseError("Bad %s display name" % what)
    else:
        lt = s.find("<")
        if lt > 0:
            disp = s[:lt].strip()
            # RFC 3261 25.1: an unquoted display name is tokens and LWS only
            # (RFC 4475 3.1.2.15); no LWS before '<' is tolerated (3.1.1.6).
            if disp and _DISPLAY_RE.match(disp) is None:
                raise SipParseError("Bad %s display name" % what)
            na.display = disp
        rest = s[lt:] if lt >= 0 else s
    if rest[0] == "<":
        gt = rest.find(">")
        if gt < 0:
            raise SipParseError("Bad %s: missing '>'" % what)
        # RFC 4475 3.1.2.14: spaces inside <> are invalid; ignoring them is allowed.
        uri = rest[1:gt].strip()
        tail = rest[gt + 1:].strip()
    elif s == "*":
        uri, tail = "*", ""
    else:
        # addr-spec without <>: any ';' starts header params (RFC 3261 20.10)
        uri, _, tail = rest.partition(";")
        uri = uri.strip()
        tail = (";" + tail) if _ else ""
    if not uri or " " in uri or "\t" in uri or ":" not in uri and uri != "*":
        raise SipParseError("Bad %s URI" % what)
    na.uri = uri
    if tail:
        if tail[0] != ";":
            raise SipParseError("Bad %s" % what)
        na.params = _params(tail[1:], what)
    else:
        na.params = {}
    na.tag = na.params.get("tag")
    return na


def parse_nameaddr_list(value, what="header"):
    return [parse_nameaddr(p, what) for p in split_commas(value)]


_CSEQ_FAST_RE = re.compile(r"([0-9]{1,10}+)[ \t]++([A-Za-z0-9\-.!%*_+`'~]++)\Z")


_cseq_cache = {}  # CSeq value -> (number, method): "1 OPTIONS", "1 INVITE" come back all the time


def parse_cseq(value):
    """-> (number, method); number is 32-bit (RFC 3261 8.1.1.5, RFC 4475 3.1.2.4)."""
    r = _cseq_cache.get(value)
    if r is not None:
        return r
    m = _CSEQ_FAST_RE.match(value)
    if m is not None:  # the common shape; anything else gets the checks below
        num = int(m.group(1))
        if num <= 0xFFFFFFFF:
            r = (num, m.group(2))
            if len(value) <= 64:  # bounded in count and size: the wire must not grow it forever
                remember(_cseq_cache, value, r, 512)
            return r
    parts = value.split()
    if len(parts) != 2:
        raise SipParseError("Bad CSeq header")
    num, method = parts
    if not (num.isascii() and num.isdigit()) or len(num) > 10 or int(num) > 0xFFFFFFFF:
        raise SipParseError("Bad CSeq number")
    if _TOKEN_RE.match(method) is None:
        raise SipParseError("Bad CSeq method")
    return int(num), method
