"""SIP / SIPS / TEL URI parsing (RFC 3261 19.1, 25.1; RFC 3966 for tel).

Runs in: udp receivers, async task workers, timers.

Fields keep the characters as written (escapes included), as Kamailio's
$rU/$rd do; `unescape()` gives one level of %-decoding, which is what URI
comparison uses (RFC 3261 19.1.4, RFC 4475 3.1.1.3: %2541 decodes to %41).
"""
import re

from .hdrs import SipParseError
from .memo import remember

__all__ = ["SipUri", "parse_uri", "parse_uri_cached", "parse_cur_uri", "unescape"]

_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*\Z")
# unreserved / escaped / user-unreserved; password adds ':' minus ';?/'
_USER_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|%[0-9A-Fa-f]{2})+\Z")
_PASS_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,]|%[0-9A-Fa-f]{2})*\Z")
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_\-]*[A-Za-z0-9_])?"
_HOST_RE = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|%s(?:\.%s)*\.?)\Z" % (_LABEL, _LABEL))
# paramchar / hnv chars incl. escapes
_PCHAR_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()\[\]/:&+$]|%[0-9A-Fa-f]{2})*\Z")
_HCHAR_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()\[\]/?:+$]|%[0-9A-Fa-f]{2})*\Z")
_ESC_RE = re.compile(r"%([0-9A-Fa-f]{2})")


def unescape(s):
    """One level of %-decoding, to a str (latin-1 per octet, so %00 stays a
    NUL character and no two distinct escapes collapse: RFC 4475 3.1.1.4)."""
    if "%" not in s:
        return s
    return _ESC_RE.sub(lambda m: chr(int(m.group(1), 16)), s)


class SipUri:
    """A parsed URI. `host` as written (IPv6 with brackets), `port` int or
    None, `params` {lowercase name: value or ''}, `headers` {name: value}."""

    __slots__ = ("raw", "scheme", "user", "password", "host", "port", "params", "headers")

    def __init__(self, scheme="sip", user=None, password=None, host=None, port=None,
                 params=None, headers=None, raw=None):
        self.scheme = scheme
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.params = {} if params is None else params
        self.headers = {} if headers is None else headers
        self.raw = raw

    def __repr__(self):
        return "SipUri(%r)" % str(self)

    def __str__(self):
        return self.raw if self.raw is not None else self.build()

    @property
    def transport(self):
        return self.params.get("transport", "").lower() or None

    @property
    def hostport(self):
        return self.host if self.port is None else "%s:%d" % (self.host, self.port)

    def build(self):
        """Text from the fields (for scripts that change a part of $ru)."""
        out = [self.scheme, ":"]
        if self.scheme in ("tel", "tels"):
            out.append(self.user or "")
        else:
            if self.user is not None:
                out.append(self.user)
                if self.password is not None:
                    out += (":", self.password)
                out.append("@")
            out.append(self.host or "")
            if self.port is not None:
                out.append(":%d" % self.port)
        for k, v in self.params.items():
            out.append(";%s=%s" % (k, v) if v else ";" + k)
        if self.headers:
            out.append("?" + "&".join("%s=%s" % kv for kv in self.headers.items()))
        return "".join(out)


def _uri_params(s):
    params = {}
    for p in s.split(";"):
        name, _, val = p.partition("=")
        if not name or _PCHAR_RE.match(name) is None or _PCHAR_RE.match(val) is None:
            raise SipParseError("Bad URI parameter")
        params[name.lower()] = val
    return params


def _uri_headers(s):
    hdrs = {}
    for h in s.split("&"):
        name, eq, val = h.partition("=")
        if not name or not eq or _HCHAR_RE.match(name) is None or _HCHAR_RE.match(val) is None:
            raise SipParseError("Bad URI header")
        hdrs[name] = val
    return hdrs


def _parse_sip(u, rest):
    at = rest.rfind("@")
    if at >= 0:
        userinfo, hostpart = rest[:at], rest[at + 1:]
        user, colon, pw = userinfo.partition(":")
        if _USER_RE.match(user) is None or (colon and _PASS_RE.match(pw) is None):
            raise SipParseError("Bad URI user part")
        u.user = user
        u.password = pw if colon else None
    else:
        hostpart = rest
    hostpart, q, hdrs = hostpart.partition("?")
    hostport, semi, params = hostpart.partition(";")
    if hostport.startswith("["):
        end = hostport.find("]")
        host, portpart = hostport[:end + 1], hostport[end + 1:]
        if end < 0 or (portpart and portpart[0] != ":"):
            raise SipParseError("Bad URI host")
        port = portpart[1:] if portpart else None
    else:
        host, colon, port = hostport.partition(":")
        port = port if colon else None
    if _HOST_RE.match(host) is None:
        raise SipParseError("Bad URI host")
    u.host = host
    if port is not None:
        if not (port.isascii() and port.isdigit()) or len(port) > 5 or int(port) > 65535:
            raise SipParseError("Bad URI port")
        u.port = int(port)
    if semi:
        u.params = _uri_params(params)
    if q:
        u.headers = _uri_headers(hdrs)


def parse_uri(s):
    """Parse a URI string. sip/sips/tel only: another scheme raises a
    SipParseError with code 416 (RFC 3261 8.2.2.1), a syntax error code 400."""
    if not isinstance(s, str):
        s = s.decode("utf-8", "surrogateescape")
    scheme, colon, rest = s.partition(":")
    if not colon or _SCHEME_RE.match(scheme) is None:
        raise SipParseError("Bad URI")
    u = SipUri(scheme=scheme.lower(), raw=s)
    if u.scheme in ("sip", "sips"):
        _parse_sip(u, rest)
    elif u.scheme in ("tel", "tels"):
        number, semi, params = rest.partition(";")
        if not number or _PCHAR_RE.match(number) is None:
            raise SipParseError("Bad tel URI")
        u.user = number
        if semi:
            u.params = _uri_params(params)
    else:
        raise SipParseError("Unsupported URI Scheme", code=416)
    return u


_uri_cache = {}
_URI_CACHE_MAX = 2048


def parse_uri_cached(s):
    """Parsed URI or None (unparsable). Cached by text: the same From/To/R-URI
    strings come back message after message, and parsed URIs are never
    mutated (setters build a new one). What the pseudo-variables, the
    {uri.*} transformations and the URI checks of the cfg read."""
    u = _uri_cache.get(s)
    if u is not None:
        return u
    try:
        u = parse_uri(s)
    except Exception:
        return None
    remember(_uri_cache, s, u, _URI_CACHE_MAX)
    return u


def parse_cur_uri(msg):
    """The request's current R-URI parsed, or None: the one a script set
    (msg.new_uri) if any, else the request line's (Kamailio's
    parse_sip_msg_uri, src/core/parser/parse_uri.c)."""
    u = msg.new_uri
    return parse_uri_cached(msg.ruri if u is None else u)
