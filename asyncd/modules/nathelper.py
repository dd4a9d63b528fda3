"""The nathelper module: nat_uac_test(), fix_nated_contact(),
fix_nated_register(), add_contact_alias(), set_contact_alias(),
handle_ruri_alias(), add_rcv_param(), is_rfc1918().

Runs in: every process running routes (the pinger's processes:
asyncd/modules/nathelper_ping.py).

Kamailio: src/modules/nathelper/nathelper.c (nat_uac_test and its tests,
fix_nated_contact, add_contact_alias_0, set_contact_alias,
ki_handle_ruri_alias_mode, ki_add_rcv_param, fix_nated_register),
src/core/dset.c uri_add_rcv_alias, src/core/parser/msg_parser.c
get_src_uri. Kamailio changes the Contact with lumps; asyncd writes the
changed Contact into the message at once (textopsx.update_buffer), so $ct
reads the new value right away; calling one of these twice on a message
fails as in Kamailio. The NAT pinger (natping_interval, the "TIMER NH"
processes) is asyncd/modules/nathelper_ping.py. Not here
(docs/kamailio-nat-acc.md "nathelper"): fix_nated_sdp, the 3-parameter
add_contact_alias and the rtpproxy/rtpengine side.
"""
import ipaddress
import re

from asyncd.cfg.pvcore import parse_format
from asyncd.core import log
from asyncd.core.errors import CfgError
from asyncd.core.exports import FuncExport, ModuleExports, P, ParamExport
from asyncd.core.route_types import (ANY_ROUTE, BRANCH_ROUTE, FAILURE_ROUTE, LOCAL_ROUTE,
                                     ONREPLY_ROUTE, REQUEST_ROUTE)
from asyncd.modules import nathelper_ping
from asyncd.modules.textopsx import update_buffer
from asyncd.sip.hdrs import split_commas

MOD = "nathelper"
# route types of nathelper.c's cmds table
CONTACT_ROUTES = REQUEST_ROUTE | ONREPLY_ROUTE | BRANCH_ROUTE | LOCAL_ROUTE
TEST_ROUTES = CONTACT_ROUTES | FAILURE_ROUTE
ALIAS_ROUTES = REQUEST_ROUTE | BRANCH_ROUTE | LOCAL_ROUTE
# nat_uac_test bits (nathelper.c NAT_UAC_TEST_*)
T_C_1918, T_RCVD, T_V_1918, T_S_1918, T_RPORT, T_O_1918, T_WS, T_C_PORT = \
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
# Kamailio's PROTO_* numbers, as the alias parameter writes them
PROTOS = {"udp": 1, "tcp": 2, "tls": 3, "sctp": 4, "ws": 5, "wss": 6}
PROTO_NAMES = {v: k for k, v in PROTOS.items()}
# nathelper.c nh_nets_1918 (+ nh_nets_extra with nat_addr_mode 1)
NETS_1918 = tuple(ipaddress.IPv4Network(n) for n in
                  ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "192.0.0.0/29"))
NETS_EXTRA = (ipaddress.IPv4Network("192.0.0.0/24"),)
# a SIP URI cut around its host and port: scheme, userinfo@, host, :port, rest
_URI_RE = re.compile(r"(?P<pre>sips?:(?:[^@]*@)?)(?P<host>\[[^\]]*\]|[^:;?>]*)(?::(?P<port>\d*))?"
                     r"(?P<rest>.*)\Z", re.I | re.S)


class NhState:
    __slots__ = ("received_avp", "addr_mode")

    def __init__(self):
        self.received_avp = None
        self.addr_mode = 1


S = NhState()


# ---- addresses -------------------------------------------------------------------------
def is1918(text):
    """nathelper.c is1918addr: an IPv4 address in the private/CGN ranges."""
    try:
        ip = ipaddress.IPv4Address(text.strip())
    except ValueError:
        return False
    if any(ip in n for n in NETS_1918):
        return True
    return S.addr_mode == 1 and any(ip in n for n in NETS_EXTRA)


def _same_ip(a, b):
    try:
        return ipaddress.ip_address(a.strip("[]")) == ipaddress.ip_address(b.strip("[]"))
    except ValueError:
        return False


def _src_host(msg):
    ip = msg.src[0]
    return "[%s]" % ip if ":" in ip else ip


def _proto_num(msg):
    return PROTOS.get((msg.proto or "udp").lower(), 1)


def src_uri(msg):
    """msg_parser.c get_src_uri: sip:ip:port, ;transport= when not UDP."""
    uri = "sip:%s:%d" % (_src_host(msg), msg.src[1])
    proto = (msg.proto or "udp").lower()
    return uri if proto == "udp" else uri + ";transport=" + proto


# ---- the Contact -----------------------------------------------------------------------
def _contact(msg):
    """(the first Contact's URI, its match) or (None, None): no Contact, `*`,
    or not a SIP URI (nathelper.c get_contact_uri fails)."""
    try:
        c = msg.contact
    except Exception:
        return None, None
    if c is None or c.uri == "*":
        return None, None
    m = _URI_RE.match(c.uri)
    return (c.uri, m) if m else (None, None)


def _uri_port(m):
    return int(m.group("port")) if m.group("port") else 5060


def _uri_proto(m):
    tm = re.search(r";transport=([^;?>]*)", m.group("rest"), re.I)
    return PROTOS.get(tm.group(1).lower(), 0) if tm else 0


def _replace_contact_uri(msg, old, new, bracket=False):
    """Write `new` in place of the first Contact's URI `old` and re-parse."""
    raw, out, done = msg._raw, [], False
    for i, (key, name, value) in enumerate(msg._hl):
        line = raw[i + 1]
        if key == "contact" and not done:
            repl = "<%s>" % new if bracket else new
            line = "%s: %s" % (name.rstrip(" \t"), value.replace(old, repl, 1))
            done = True
        out.append(line)
    body = msg.body if isinstance(msg.body, bytes) else msg.body.encode("utf-8", "surrogateescape")
    lines = [ln for ln in out if not ln.lower().startswith(("content-length:", "l:"))]
    text = "\r\n".join([msg.first_line] + lines + ["Content-Length: %d" % len(body), "", ""])
    return update_buffer(msg, text.encode("utf-8", "surrogateescape") + body)


def _once(msg, what):
    if getattr(msg, "nh_contact_changed", False):
        log.err(MOD, f"you can't call {what} twice, check your config!")
        return False
    return True


def _changed(msg, rc):
    if rc > 0:
        msg.nh_contact_changed = True
    return rc


# ---- nat_uac_test ------------------------------------------------------------------------
def _sdp_1918(msg):
    """A private IPv4 address in the SDP's c= lines (nathelper.c sdp_1918:
    a stream's own c= else the session's)."""
    body = msg.body
    if not body:
        return False
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    session_c, media_c, in_media = None, [], False
    for line in text.splitlines():
        if line.startswith("m="):
            in_media = True
            media_c.append(None)
        elif line.startswith("c="):
            parts = line[2:].split()
            addr = (parts[1], parts[2].split("/")[0]) if len(parts) >= 3 else (None, None)
            if in_media:
                media_c[-1] = addr
            else:
                session_c = addr
    for c in media_c:
        af, ip = c or session_c or (None, None)
        if af != "IP4" or ip in (None, "0.0.0.0"):
            break
        if is1918(ip):
            return True
    return False


def _via_differs(msg):
    """msg_translator.c received_via_test: the source address is not the
    top Via's host (a host name differs: no DNS, received_dns off)."""
    return not _same_ip(msg.via1.host, msg.src[0])


def nat_uac_test(msg, tests):
    """nathelper.c nat_uac_test: 1 when any of the tests in `tests` holds."""
    v, m = msg.via1, None
    if tests & T_RPORT and msg.src[1] != (int(v.port) if v.port else 5060):
        return 1
    if tests & T_RCVD and _via_differs(msg):
        return 1
    if tests & (T_C_1918 | T_C_PORT):
        _uri, m = _contact(msg)
        if tests & T_C_1918 and m is not None and is1918(m.group("host")):
            return 1
    if tests & T_S_1918 and _sdp_1918(msg):
        return 1
    if tests & T_V_1918 and is1918(v.host):
        return 1
    if tests & T_O_1918 and is1918(msg.src[0]):
        return 1
    if tests & T_WS and (msg.proto or "").lower() in ("ws", "wss"):
        return 1
    if tests & T_C_PORT and m is not None and msg.src[1] != _uri_port(m):
        return 1
    return -1


def w_nat_uac_test(ctx, site, tests):
    if tests is None:
        log.err(MOD, "failed to get the value for flags parameter")
        return -1
    return nat_uac_test(ctx.msg, tests)


def w_is_rfc1918(ctx, site, addr):
    return 1 if is1918(addr) else -1


# ---- Contact rewriting ---------------------------------------------------------------------
def w_fix_nated_contact(ctx, site):
    """The Contact URI's host:port becomes the source address (an maddr
    parameter goes: it makes no sense any more)."""
    msg = ctx.msg
    uri, m = _contact(msg)
    if m is None or not _once(msg, "fix_nated_contact"):
        return -1
    rest = re.sub(r";maddr=[^;?>]*", "", m.group("rest"), flags=re.I)
    new = "%s%s:%d%s" % (m.group("pre"), _src_host(msg), msg.src[1], rest)
    return _changed(msg, _replace_contact_uri(msg, uri, new))


def _alias(msg):
    return ";alias=%s~%d~%d" % (_src_host(msg), msg.src[1], _proto_num(msg))


def w_add_contact_alias(ctx, site):
    """;alias=ip~port~proto after the Contact URI's host:port; 2 when the
    Contact already names the source (address, port and transport) or there
    is no Contact (nathelper.c add_contact_alias_0)."""
    msg = ctx.msg
    if msg.hdr_count("contact") == 0:
        return 2
    uri, m = _contact(msg)
    if m is None:
        log.err(MOD, "failed to get contact uri")
        return -1
    if _same_ip(m.group("host"), msg.src[0]) and msg.src[1] == _uri_port(m) \
            and _uri_proto(m) == _proto_num(msg):
        return 2
    if not _once(msg, "add_contact_alias"):
        return -1
    hostport = m.group("host") + (":" + m.group("port") if m.group("port") is not None else "")
    new = m.group("pre") + hostport + _alias(msg) + m.group("rest")
    bracket = "<" not in (msg.hdr("contact") or "")
    return _changed(msg, _replace_contact_uri(msg, uri, new, bracket))


def _trim_alias(uri):
    return re.sub(r";alias=[^;?>]*", "", uri, count=1, flags=re.I)


def w_set_contact_alias(ctx, site, trim=0):
    """The Contact URI gets ;alias=ip~port~proto at its end (dset.c
    uri_add_rcv_alias); trim > 0 drops an alias it had first."""
    msg = ctx.msg
    uri, m = _contact(msg)
    if m is None or not _once(msg, "set_contact_alias"):
        return -1
    base = _trim_alias(uri) if trim and trim > 0 else uri
    bracket = "<" not in (msg.hdr("contact") or "")
    return _changed(msg, _replace_contact_uri(msg, uri, base + _alias(msg), bracket))


def w_add_rcv_param(ctx, site, upos=0):
    """;received="sip:ip:port" on every Contact (a header parameter), or
    with upos 1 `;received=sip:ip:port` inside the URI (UDP only)."""
    msg = ctx.msg
    if upos and (msg.proto or "udp").lower() != "udp":
        log.err(MOD, "adding received parameter to Contact URI works only for UDP")
        return -1
    if msg.hdr_count("contact") == 0:
        return -1
    rcv = src_uri(msg)
    lines = []
    for key, name, value in msg._hl:
        if key != "contact":
            continue
        parts = []
        for c in split_commas(value):
            c = c.strip()
            if c == "*":
                parts.append(c)
            elif upos:
                parts.append(_rcv_in_uri(c, rcv))
            else:
                parts.append(c + ';received="%s"' % rcv)
        lines.append("%s: %s" % (name.rstrip(" \t"), ", ".join(parts)))
    return _rewrite_contacts(msg, lines)


def _rcv_in_uri(c, rcv):
    end = c.find(">")
    if end < 0:
        return "<%s;received=%s>" % (c, rcv) if ";" not in c else c.replace(";", ";received=%s;" % rcv, 1)
    return c[:end] + ";received=" + rcv + c[end:]


def _rewrite_contacts(msg, lines):
    raw, out, it = msg._raw, [], iter(lines)
    for i, (key, _n, _v) in enumerate(msg._hl):
        out.append(next(it) if key == "contact" else raw[i + 1])
    body = msg.body if isinstance(msg.body, bytes) else msg.body.encode("utf-8", "surrogateescape")
    out = [ln for ln in out if not ln.lower().startswith(("content-length:", "l:"))]
    text = "\r\n".join([msg.first_line] + out + ["Content-Length: %d" % len(body), "", ""])
    return update_buffer(msg, text.encode("utf-8", "surrogateescape") + body)


# ---- the R-URI's alias and REGISTER ---------------------------------------------------------
def w_handle_ruri_alias(ctx, site, mode=0):
    """An ;alias=ip~port~proto in the R-URI becomes $du (sip:ip:port, with
    ;transport= unless UDP) and leaves the R-URI; mode 0 takes the first
    alias, else the last. 2 when there is none (nathelper.c
    ki_handle_ruri_alias_mode)."""
    msg = ctx.msg
    cur = msg.new_uri if msg.new_uri is not None else msg.ruri
    found = list(re.finditer(r";alias=([^;?>]*)", cur or "", re.I))
    if not found:
        return 2
    a = found[0] if not mode else found[-1]
    parts = a.group(1).split("~")
    if len(parts) != 3 or not parts[2].isdigit() or len(parts[2]) != 1:
        log.err(MOD, f"invalid alias param value: {a.group(1)}")
        return -1
    proto = int(parts[2])
    if proto not in PROTO_NAMES:
        log.err(MOD, "unknown proto in alias param")
        return -1
    du = "sip:%s:%s" % (parts[0], parts[1])
    msg.dst_uri = du if proto == 1 else du + ";transport=" + PROTO_NAMES[proto]
    msg.new_uri = cur[:a.start()] + cur[a.end():]
    return 1


def w_fix_nated_register(ctx, site):
    """received_avp = sip:ip:port of the source, for the registrar's save();
    1 and nothing set when received_avp is not configured."""
    if S.received_avp is None:
        return 1
    S.received_avp.set(ctx, src_uri(ctx.msg))
    return 1


def mod_init(script):
    mp = script.modparams[MOD]
    S.addr_mode = int(mp["nat_addr_mode"])
    avp = str(mp["received_avp"] or "")
    S.received_avp = None
    if avp:
        pieces = parse_format(avp, None)
        if len(pieces) != 1 or isinstance(pieces[0], str) or pieces[0] is None:
            raise CfgError(f"nathelper: received_avp {avp!r} is not a pseudo-variable")
        S.received_avp = pieces[0]
    nathelper_ping.S.configure(script, mp)


EXPORTS = ModuleExports(
    name="nathelper",
    functions=[
        FuncExport("nat_uac_test", (P.INT,), w_nat_uac_test, TEST_ROUTES),
        FuncExport("is_rfc1918", (P.STR,), w_is_rfc1918, ANY_ROUTE),
        FuncExport("fix_nated_contact", (), w_fix_nated_contact, CONTACT_ROUTES),
        FuncExport("fix_nated_register", (), w_fix_nated_register, REQUEST_ROUTE),
        FuncExport("add_contact_alias", (), w_add_contact_alias, CONTACT_ROUTES),
        FuncExport("set_contact_alias", (), w_set_contact_alias, CONTACT_ROUTES),
        FuncExport("set_contact_alias", (P.INT,), w_set_contact_alias, CONTACT_ROUTES),
        FuncExport("handle_ruri_alias", (), w_handle_ruri_alias, ALIAS_ROUTES),
        FuncExport("handle_ruri_alias", (P.INT,), w_handle_ruri_alias, ALIAS_ROUTES),
        FuncExport("add_rcv_param", (), w_add_rcv_param, REQUEST_ROUTE),
        FuncExport("add_rcv_param", (P.INT,), w_add_rcv_param, REQUEST_ROUTE),
    ],
    params=[ParamExport("natping_interval", int, 0), ParamExport("ping_nated_only", int, 0),
            ParamExport("natping_processes", int, 1), ParamExport("natping_socket", str, ""),
            ParamExport("received_avp", str, ""), ParamExport("force_socket", str, ""),
            ParamExport("sipping_from", str, ""), ParamExport("sipping_method", str, "OPTIONS"),
            ParamExport("sipping_bflag", int, -1), ParamExport("natping_disable_bflag", int, -1),
            ParamExport("nortpproxy_str", str, "a=nortpproxy:yes"),
            ParamExport("keepalive_timeout", int, 0), ParamExport("udpping_from_path", int, 0),
            ParamExport("append_sdp_oldmediaip", int, 1), ParamExport("filter_server_id", int, 0),
            ParamExport("nat_addr_mode", int, 1)],
    mod_init=mod_init,
    procs=nathelper_ping.procs,
    hooks={"reply_in": nathelper_ping.reply_in},
)
