"""sanity: sanity_check() and sanity_reply() (Kamailio's sanity module).

Runs in: main process (mod_init), every process running request or reply
routes (udp/tcp receivers, async task workers, timers).

Kamailio: src/modules/sanity/sanity_mod.c (w_sanity_check, sanity_check,
modparams) and sanity.c (one function per check, same names here so the
log lines name the same function). The checks run in Kamailio's order and
stop at the first failure; a failed check sends its stateless reply (code
and reason text exactly as sanity.c's) unless the check marks the message
"no reply" (FL_MSG_NOREPLY: the transaction quadruple is missing) or the
`noreply` modparam defers the reply to `sanity_reply()`.

Return value (w_sanity_check): 1 passed; a failure returns 0 (the script
ends, Kamailio's autodrop=1 default) or -1 with `autodrop` 0.

Where asyncd differs on purpose (docs/kamailio-sanity.md):
- asyncd's receivers already refuse much of what sanity checks before any
  route runs (framing, the first line, a missing or duplicated core header,
  CSeq method and value: asyncd/sip/msg.py), so those checks pass here
  unless a message was built another way.
- On a reply, the request-only checks (R-URI version and scheme, CSeq
  method) pass: Kamailio reads request fields of the first line's union
  there, which on a reply are the version/status/reason strings.
- The R-URI scheme check answers 400 "Bad Request URI" for a scheme the URI
  parser does not know, as Kamailio 5.6 does (its parse_uri fails before the
  416 branch is reached); urn: URIs pass as in Kamailio.
"""
from asyncd.core import log
from asyncd.core.exports import FuncExport, ModuleExports, P, ParamExport
from asyncd.core.route_types import ONREPLY_ROUTE, REQUEST_ROUTE
from asyncd.modules import sl
from asyncd.sip.hdrs import SipParseError, parse_nameaddr, split_commas
from asyncd.sip.uri import parse_uri_cached

MOD = "sanity"

# check bits (src/modules/sanity/sanity_mod.h)
RURI_SIP_VERSION = 1 << 0
RURI_SCHEME = 1 << 1
REQUIRED_HEADERS = 1 << 2
VIA_SIP_VERSION = 1 << 3
VIA_PROTOCOL = 1 << 4
CSEQ_METHOD = 1 << 5
CSEQ_VALUE = 1 << 6
CL = 1 << 7
EXPIRES_VALUE = 1 << 8
PROXY_REQUIRE = 1 << 9
PARSE_URIS = 1 << 10
CHECK_DIGEST = 1 << 11
CHECK_DUPTAGS = 1 << 12
CHECK_AUTHORIZATION = 1 << 13
VIA1_HEADER = 1 << 14
MAX_CHECKS = 1 << 15
DEFAULT_CHECKS = (RURI_SIP_VERSION | RURI_SCHEME | REQUIRED_HEADERS | CSEQ_METHOD | CSEQ_VALUE
                  | CL | EXPIRES_VALUE | PROXY_REQUIRE | CHECK_DIGEST)

URI_RURI, URI_FROM, URI_TO, URI_CONTACT = 1, 2, 4, 8
URI_MAX_CHECKS = 1 << 4
DEFAULT_URI_CHECKS = URI_RURI | URI_FROM | URI_TO

PASSED, FAILED, NOT_APPLICABLE = 1, 0, -2


class SanityState:
    """The modparams: set in main by mod_init, inherited by every child."""
    __slots__ = ("default_checks", "uri_checks", "proxy_require", "autodrop", "noreply")

    def __init__(self):
        self.default_checks = DEFAULT_CHECKS
        self.uri_checks = DEFAULT_URI_CHECKS
        self.proxy_require = []
        self.autodrop = 1
        self.noreply = 0

    def configure(self, mp):
        self.default_checks = int(mp["default_checks"])
        self.uri_checks = int(mp["uri_checks"])
        self.proxy_require = parse_str_list(mp["proxy_require"] or "")
        self.autodrop = int(mp["autodrop"])
        self.noreply = int(mp["noreply"])


S = SanityState()


def parse_str_list(s):
    """sanity.c parse_str_list(): comma separated, each item trimmed (no quoting)."""
    s = s.strip(" \t\r\n")
    if not s:
        return []
    return [p.strip(" \t\r\n") for p in s.split(",")]


def str2valid_uint(s):
    """sanity.c str2valid_uint(): digits only, at most 10, not above 4294967296
    (Kamailio's digit-by-digit compare lets 4294967296 itself through)."""
    if len(s) > 10 or not s or not (s.isascii() and s.isdigit()):
        return False
    return len(s) < 10 or s <= "4294967296"


# -- replies (sanity.c sanity_reply / ki_sanity_reply) ---------------------------------------

def sanity_reply(ctx, code, reason):
    """Send (or with `noreply`, remember) the reply of a failed check."""
    msg = ctx.msg
    if not msg.is_request or msg.method == "ACK":
        return 1
    if S.noreply:
        msg._sanity_info = (code, reason[:127])
        return 0
    if not getattr(msg, "_sanity_noreply", False):
        if sl.sl_send_reply(ctx, code, reason) < 0:
            return -1
    return 0


def _reply(ctx, code, reason):
    if sanity_reply(ctx, code, reason) < 0:
        log.warn(MOD, f"failed to send {code} via sl reply")
    return FAILED


def _noreply(msg):
    msg._sanity_noreply = True
    return FAILED


def w_sanity_reply(ctx, site):
    """sanity_reply(): send the reply a check deferred (modparam noreply=1)."""
    msg = ctx.msg
    if not msg.is_request or msg.method == "ACK" or not S.noreply:
        return 1
    if getattr(msg, "_sanity_noreply", False):
        return 1
    info = getattr(msg, "_sanity_info", None)
    if not info or not info[0] or not info[1]:
        log.info(MOD, "no sanity reply info set - sending 500")
        info = (500, "Server Sanity Failure")
    return 1 if sl.sl_send_reply(ctx, info[0], info[1]) >= 0 else -1


# -- the checks (sanity.c, same names and order) ----------------------------------------------

def _uri_ok(text):
    """Kamailio's parse_uri accepts sip/sips/tel/tels/urn (src/core/parser/parse_uri.c)."""
    if text is None:
        return False
    if text[:4].lower() == "urn:":
        return len(text) > 4
    return parse_uri_cached(text) is not None


def check_ruri_sip_version(ctx, msg):
    version = msg.first_line.rsplit(" ", 1)[-1]
    if version:
        sep = version.find("/")
        if sep < 0:
            log.warn(MOD, "failed to find / in ruri version")
            return FAILED
        if version[sep + 1:] != "2.0":
            return _reply(ctx, 505, "Version Not Supported (R-URI)")
    return PASSED


def check_ruri_scheme(ctx, msg):
    ruri = msg.cur_uri
    if not _uri_ok(ruri):
        log.warn(MOD, f"failed to parse request uri [{ruri}]")
        return _reply(ctx, 400, "Bad Request URI")
    return PASSED


def check_required_headers(ctx, msg):
    """A header line that does not parse never gets here: the receiver's parser
    refuses the message (asyncd/sip/msg.py), so sanity's 400 "Bad Headers" is not sent."""
    for key in ("from", "to", "call-id", "cseq"):
        if msg._count(key) == 0:
            return _noreply(msg)
    for key in ("from", "to", "call-id", "cseq"):
        if msg._count(key) > 1:
            return FAILED
    return PASSED


def check_via1_header(ctx, msg):
    v1 = msg.via1
    if v1 is None:
        log.warn(MOD, "failed to parse the Via1 header")
        return _noreply(msg)
    if not v1.host:
        log.warn(MOD, "failed to parse the Via1 host")
        return _noreply(msg)
    return PASSED


def check_via_sip_version(ctx, msg):
    """Kamailio 5.6 passes it always (sanity.c: the Via parser already refuses another version)."""
    return PASSED


def check_via_protocol(ctx, msg):
    """Kamailio 5.6 passes it always (sanity.c: the Via parser already refuses an unknown transport)."""
    return PASSED


def _cseq(msg):
    """(number text, method) of the first CSeq, None when missing; raises SipParseError."""
    v = msg._cseq_v if msg._cseq_v is not None else msg._v1("cseq")
    if v is None:
        return None
    parts = v.split()
    if len(parts) > 2:
        raise SipParseError("Bad CSeq header")
    return (parts[0] if parts else ""), (parts[1] if len(parts) > 1 else "")


def check_cseq_method(ctx, msg):
    try:
        cs = _cseq(msg)
    except SipParseError:
        log.warn(MOD, "failed to parse the CSeq header")
        return _noreply(msg)
    if cs is None:
        log.warn(MOD, "missing CSeq header")
        return FAILED
    if not cs[1]:
        return _reply(ctx, 400, "Missing method in CSeq header")
    if msg.is_request and cs[1] != msg.method:
        return _reply(ctx, 400, "CSeq method does not match request method")
    return PASSED


def check_cseq_value(ctx, msg):
    try:
        cs = _cseq(msg)
    except SipParseError:
        log.warn(MOD, "failed to parse the CSeq header")
        return _noreply(msg)
    if cs is None:
        log.warn(MOD, "missing CSeq header")
        return _noreply(msg)
    if not cs[0]:
        return _reply(ctx, 400, "Missing number in CSeq header")
    if not str2valid_uint(cs[0]):
        return _reply(ctx, 400, "CSeq number is illegal")
    return PASSED


def _body_start(buf):
    """Where the body starts (Kamailio's get_body: after the empty line), or None."""
    end = buf.find(b"\r\n\r\n")
    if end >= 0:
        return end + 4
    end = buf.find(b"\n\n")
    return end + 2 if end >= 0 else None


def check_cl(ctx, msg):
    v = msg._v1("content-length")
    if v is None:
        log.warn(MOD, "content length header missing in request")
        return PASSED
    if not (v.isascii() and v.isdigit()) or len(v) > 10:
        log.warn(MOD, "failed to parse content-length header")
        return _reply(ctx, 400, "Content-Length Failure")
    start = _body_start(msg.buf)
    if start is None:
        return _reply(ctx, 400, "Content-Length Body Failure")
    if len(msg.buf) - start != int(v):
        return _reply(ctx, 400, "Content-Length mis-match")
    return PASSED


def _expires_text(value):
    """parse_expires.c expires_parser(): the number's text (cut at LWS after digits)."""
    if len(value) > 10:
        return value
    for i, c in enumerate(value):
        if c in " \t\r\n":
            return value[:i]
        if not "0" <= c <= "9":
            return value
    return value


def check_expires_value(ctx, msg):
    v = msg._v1("expires")
    if v is None:
        return PASSED
    v = v.strip(" \t\r\n")
    if not v:
        log.warn(MOD, "parse_expires failed")
        return _reply(ctx, 400, "Bad Expires Header")
    text = _expires_text(v)
    if not text:
        return _reply(ctx, 400, "Missing number in Expires header")
    if not str2valid_uint(text):
        return _reply(ctx, 400, "Expires value is illegal")
    return PASSED


def check_proxy_require(ctx, msg):
    v = msg._v1("proxy-require")
    if v is None:
        return PASSED
    tags = parse_str_list(v)
    if not tags:
        log.warn(MOD, "parse proxy require failed")
        return _reply(ctx, 400, "Bad Proxy Require Header")
    for tag in tags:
        if tag not in S.proxy_require:
            msg.reply_lumps.append(f"Unsupported: {tag}\r\n")
            return _reply(ctx, 420, "Bad Proxy Require Extension")
    return PASSED


def _nameaddr(msg, key, what):
    """The header's parsed name-addr (cached on the message), 'missing' (no header
    or an empty body: Kamailio's "no reply" case) or None when it does not parse."""
    if not msg._v1(key):
        return "missing"
    try:
        return msg.from_ if key == "from" else msg.to
    except SipParseError:
        return None


def _hdr_uri_state(msg, key, what):
    """'ok', 'missing' (no header or empty body) or 'bad' (header or URI does not parse)."""
    na = _nameaddr(msg, key, what)
    if na == "missing":
        return na
    return "ok" if na is not None and _uri_ok(na.uri) else "bad"


def _contact_state(msg):
    """'ok', 'bad header' or 'bad uri' (the first Contact's URI; '*' passes)."""
    try:
        contacts = msg.contacts
    except SipParseError:
        return "bad header"
    if contacts and contacts[0].uri != "*" and not _uri_ok(contacts[0].uri):
        return "bad uri"
    return "ok"


def check_parse_uris(ctx, msg, checks):
    if checks & URI_RURI and msg.is_request and not _uri_ok(msg.cur_uri):
        log.warn(MOD, "failed to parse request uri")
        return _reply(ctx, 400, "Bad Request URI")
    # "Ivalid" as Kamailio 5.6 writes it
    for bit, key, what, reason in ((URI_FROM, "from", "From", "Invalid From Header"),
                                   (URI_TO, "to", "To", "Ivalid To Header")):
        state = _hdr_uri_state(msg, key, what) if checks & bit else "ok"
        if state != "ok":
            log.warn(MOD, f"invalid {what} header or uri")
            return _noreply(msg) if state == "missing" else _reply(ctx, 400, reason)
    state = _contact_state(msg) if checks & URI_CONTACT else "ok"
    if state == "bad header":
        log.warn(MOD, "failed to parse Contact headers")
        return _reply(ctx, 400, "Bad Contact Header")
    if state == "bad uri":
        log.warn(MOD, "failed to parse Contact uri")
        return _reply(ctx, 400, "Bad Contact URI")
    return PASSED


_DIGEST_NEEDS = ("username", "realm", "nonce", "uri", "response")


def parse_credentials(value):
    """-> {param: value} of Digest credentials, 1 for another scheme; raises SipParseError
    (Kamailio: src/core/parser/digest/digest.c parse_credentials)."""
    value = value.strip(" \t")
    scheme, _, rest = value.replace("\t", " ").partition(" ")
    if scheme.lower() != "digest":
        return 1
    params = {}
    for item in split_commas(rest):
        name, eq, val = item.partition("=")
        name = name.strip(" \t").lower()
        val = val.strip(" \t")
        if not name or not eq:
            raise SipParseError("Bad credentials")
        if val[:1] == '"':
            if len(val) < 2 or val[-1] != '"':
                raise SipParseError("Bad credentials")
            val = val[1:-1]
        params[name] = val
    return params


def _auth_values(msg):
    return [v for key in ("authorization", "proxy-authorization") for v in msg._vall(key)]


def _check_one_cred(ctx, value):
    try:
        cred = parse_credentials(value)
    except SipParseError:
        return _reply(ctx, 400, "Bad Auth Header")
    if cred == 1:
        return NOT_APPLICABLE
    missing = [k for k in _DIGEST_NEEDS if k not in cred]
    if cred.get("qop", "").lower() in ("auth", "auth-int"):
        missing += [k for k in ("cnonce", "nc") if k not in cred]
    if missing:
        return _reply(ctx, 400, "Bad Auth Credentials")
    for key, reason in (("username", "Auth Empty User"), ("nonce", "Auth Empty Nonce"),
                        ("response", "Auth Empty Response")):
        if not cred[key]:
            return _reply(ctx, 400, reason)
    return PASSED


def check_digest_only(ctx, msg):
    for value in _auth_values(msg):
        rc = _check_one_cred(ctx, value)
        if rc != PASSED:
            return rc
    return PASSED


def check_digest(ctx, msg, checks):
    return PASSED if check_digest_only(ctx, msg) == PASSED else FAILED


def check_authorization(ctx, msg, checks):
    return PASSED if check_digest_only(ctx, msg) in (PASSED, NOT_APPLICABLE) else FAILED


def _tag_count(na):
    """How many tag parameters the header carries (parse_nameaddr keeps only the last)."""
    raw = na.raw
    tail = raw[raw.rfind(">") + 1:] if "<" in raw else raw.partition(";")[1] + raw.partition(";")[2]
    return sum(1 for p in tail.split(";")[1:] if p.partition("=")[0].strip(" \t").lower() == "tag")


def check_duptags(ctx, msg):
    f = _nameaddr(msg, "from", "From")
    t = _nameaddr(msg, "to", "To")
    if f in ("missing", None) or t in ("missing", None):
        return _noreply(msg)
    if _tag_count(f) > 1:
        return _reply(ctx, 400, "Many From Tag Params")
    if _tag_count(t) > 1:
        return _reply(ctx, 400, "Many To Tag Params")
    return PASSED


def _request_only(check):
    """On a reply the R-URI and CSeq-method checks pass (module docstring)."""
    return lambda ctx, msg, uri_checks: check(ctx, msg) if msg.is_request else PASSED


def _msg_only(check):
    return lambda ctx, msg, uri_checks: check(ctx, msg)


# (bit, check) in the order sanity_mod.c sanity_check() runs them
_CHECKS = (
    (RURI_SIP_VERSION, _request_only(check_ruri_sip_version)),
    (RURI_SCHEME, _request_only(check_ruri_scheme)),
    (REQUIRED_HEADERS, _msg_only(check_required_headers)),
    (VIA1_HEADER, _msg_only(check_via1_header)),
    (VIA_SIP_VERSION, _msg_only(check_via_sip_version)),
    (VIA_PROTOCOL, _msg_only(check_via_protocol)),
    (CSEQ_METHOD, _request_only(check_cseq_method)),
    (CSEQ_VALUE, _msg_only(check_cseq_value)),
    (CL, _msg_only(check_cl)),
    (EXPIRES_VALUE, _msg_only(check_expires_value)),
    (PROXY_REQUIRE, _msg_only(check_proxy_require)),
    (PARSE_URIS, check_parse_uris),
    (CHECK_DIGEST, check_digest),
    (CHECK_AUTHORIZATION, check_authorization),
    (CHECK_DUPTAGS, _msg_only(check_duptags)),
)


def sanity_check(ctx, msg_checks, uri_checks):
    """sanity_mod.c sanity_check(): 1 passed, 0 failed (the first failing check replied)."""
    msg = ctx.msg
    if S.noreply:
        msg._sanity_info = None
    try:
        for bit, check in _CHECKS:
            if msg_checks & bit:
                rc = check(ctx, msg, uri_checks)
                if rc != PASSED:
                    return rc
    except SipParseError as e:      # a header too broken for the check itself
        log.warn(MOD, f"check failed to parse the message: {e.reason}")
        return _noreply(msg)
    return PASSED


def w_sanity_check(ctx, msg_checks, uri_checks):
    """sanity_mod.c w_sanity_check(): masks out of range are an error at run time (-1)."""
    if msg_checks is None or not 1 <= msg_checks < MAX_CHECKS:
        log.err(MOD, f"input parameter ({msg_checks}) outside of valid range <1-{MAX_CHECKS})")
        return -1
    if uri_checks is None or not 1 <= uri_checks < URI_MAX_CHECKS:
        log.err(MOD, f"second input parameter ({uri_checks}) outside of valid range <1-{URI_MAX_CHECKS}")
        return -1
    rc = sanity_check(ctx, msg_checks, uri_checks)
    if log.enabled(log.L_DBG):
        log.dbg(MOD, f"sanity checks result: {rc}")
    if S.autodrop:
        return rc
    return -1 if rc == FAILED else rc


def w_sanity_check0(ctx, site):
    return w_sanity_check(ctx, S.default_checks, S.uri_checks)


def w_sanity_check1(ctx, site, msg_checks):
    return w_sanity_check(ctx, msg_checks, S.uri_checks)


def w_sanity_check2(ctx, site, msg_checks, uri_checks):
    return w_sanity_check(ctx, msg_checks, uri_checks)


def mod_init(script):
    S.configure(script.modparams[MOD])


_ROUTES = REQUEST_ROUTE | ONREPLY_ROUTE

EXPORTS = ModuleExports(
    name=MOD,
    functions=[
        FuncExport("sanity_check", (), w_sanity_check0, _ROUTES),
        FuncExport("sanity_check", (P.INT,), w_sanity_check1, _ROUTES),
        FuncExport("sanity_check", (P.INT, P.INT), w_sanity_check2, _ROUTES),
        FuncExport("sanity_reply", (), w_sanity_reply, _ROUTES),
    ],
    params=[
        ParamExport("default_checks", int, DEFAULT_CHECKS),
        ParamExport("uri_checks", int, DEFAULT_URI_CHECKS),
        ParamExport("proxy_require", str, ""),
        ParamExport("autodrop", int, 1),
        ParamExport("noreply", int, 0),
    ],
    mod_init=mod_init,
)

S.configure(EXPORTS.param_defaults())     # until mod_init: the export table's defaults
