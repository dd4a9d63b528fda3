"""Building SIP messages: local replies, forwarded requests and replies, CANCEL/ACK.

Runs in: udp receivers, async task workers, tm timer (retransmissions use
the bytes built here, never rebuild).

Header values are copied as received (unfolded); unknown headers of a
forwarded message are copied byte-for-byte, folding included (RFC 4475
3.1.1.1). Everything returns bytes ready for sendto().
"""
import platform
import re
import sys
from hashlib import md5 as _md5

from asyncd import __version__

from .hdrs import SipParseError, canon, split_commas
from .msg import _value

__all__ = ["build_reply", "reply_addr", "stable_to_tag", "local_to_tag", "build_request_fwd", "via_line",
           "top_via_received", "strip_top_via", "via_dest", "build_cancel", "build_ack"]

_RPORT_RE = re.compile(r";[ \t]*rport(?:[ \t]*=[ \t]*[^;,\s]*)?(?=[ \t]*(?:;|\Z))", re.I)
_RECEIVED_RE = re.compile(r";[ \t]*received[ \t]*=[ \t]*[^;,\s]*", re.I)
_TAG_RE = re.compile(r";[ \t]*tag[ \t]*=", re.I)


def _enc(parts):
    return "".join(parts).encode("utf-8", "surrogateescape")


def _line(text, name=None):
    """A full header line from 'Name: value' text or, with name, a bare value."""
    if name is not None and not text.lower().startswith(name.lower() + ":"):
        text = "%s: %s" % (name, text)
    return text if text.endswith("\r\n") else text + "\r\n"


def _unbracket(host):
    return host[1:-1] if host[:1] == "[" else host


def top_via_received(msg):
    """The first Via header line's value, its top via-parm marked as the server
    transport must on receipt: `received=<source address>` when sent-by is not
    the source address (RFC 3261 18.2.1), `rport=<source port>` (and received)
    when rport was asked for (RFC 3581 §4) or force_rport() was called. A
    received/rport value the request brought is overwritten, never trusted (a
    forged one would steer the replies we relay)."""
    line = msg._via_v or msg._v1("via")
    v = msg.via1
    ip, port = msg.src[0], msg.src[1]
    rport = v.rport is not None or msg.force_rport
    if not rport and v.received is None and _unbracket(v.host) == ip:
        return line
    text = v.raw
    if v.rport == "" and v.received is None and len(v.params) == 2 and text.count(";") == 2:
        # ';x=y;rport' (SIPp's Via) or ';rport;x=y' (most UAs'): one bare rport and
        # one other parameter, so the substitution in _mark_via would give this
        if text.endswith(";rport"):
            text = "%s=%d;received=%s" % (text, port, ip)
        else:
            i = text.find(";rport;") + 6
            text = _mark_via(v, text, rport, ip, port) if i < 6 else \
                "%s=%d%s;received=%s" % (text[:i], port, text[i:], ip)
    else:
        text = _mark_via(v, text, rport, ip, port)
        if text == v.raw:
            return line
    if "," not in line:  # one via-parm: the marked text is the whole value
        return text
    parts = split_commas(line)
    parts[0] = text
    return ",".join(parts)


def _mark_via(v, text, rport, ip, port):
    """The via-parm text with rport filled in / added and received set (RFC 3581 §4)."""
    if v.rport is not None:
        text = _RPORT_RE.sub(";rport=%d" % port, text, count=1)
    elif rport:
        text += ";rport=%d" % port
    if v.received is not None:
        return _RECEIVED_RE.sub(";received=" + ip, text, count=1)
    return text + ";received=" + ip


def reply_addr(msg):
    """Where a reply to msg goes (RFC 3261 18.2.2 unreliable transport, RFC 3581 §4):
    the source address (what `received` says), and the source port when the top
    Via has rport (any value) or force_rport() was called, else the sent-by
    port or 5060. maddr is not honoured: as in Kamailio (update_sock_struct_from_ip),
    replies never go to an address the request merely names (reflection)."""
    if msg.proto != "udp":
        # a stream: back over the connection the request came on, which tcp main
        # finds by this peer address (RFC 3261 18.2.2; it falls back to the Via);
        # set_reply_no_connect()/set_reply_close() ride along as a third item
        return (msg.src[0], msg.src[1], msg.rpl_flags) if msg.rpl_flags else msg.src
    v = msg.via1
    if v.rport is not None or msg.force_rport:
        return (msg.src[0], msg.src[1])
    return (msg.src[0], v.port or 5060)


def via_dest(via):
    """(host, port) a reply is sent to for this Via (received/rport first), e.g.
    the second Via when relaying a reply statelessly (RFC 3261 18.2.2)."""
    host = via.received or _unbracket(via.host)
    if via.rport:
        try:
            return (host, int(via.rport))
        except ValueError:
            pass
    return (host, via.port or 5060)


def stable_to_tag(msg):
    """To-tag that retransmissions of one request get again (RFC 3261 8.2.6.2:
    same tag for the same request; Kamailio's sl derives it the same way).
    The From header is hashed as it came (a retransmission repeats it byte
    for byte), which spares parsing it for its tag: ~1.6 µs per reply."""
    v = msg.via1
    tx = (v.branch or v.raw) if v is not None else ""
    # the whole From line as it came (msg.hdr("from") without the name lookup or the
    # value cut: a retransmission repeats the line byte for byte) and msg.cseq_num
    cseq = msg._cseq
    key = "%s|%s|%s|%s|%s" % (msg.callid, msg._first.get("from"), cseq[0] if cseq else None,
                              tx, msg.src[0])
    return _md5(key.encode("utf-8", "surrogateescape")).hexdigest()


def _tagless(text):
    """No tag parameter can be in this To text: no need to parse it for one."""
    return "tag" not in text and "tag" not in text.lower()


def local_to_tag(msg):
    """The To tag of a local reply to msg: the request's own (in a dialog), else
    stable_to_tag. A To line without the letters "tag" is not parsed for it."""
    line = msg._first.get("to")
    if line is not None and _tagless(line):
        return stable_to_tag(msg)
    return msg.to_tag or stable_to_tag(msg)


def _has_tag(msg, value):
    if _tagless(value):
        return False
    try:
        return msg.to.tag is not None
    except SipParseError:
        return _TAG_RE.search(value.rpartition(">")[2] if ">" in value else value) is not None


_REPLY = "SIP/2.0 %d %s\r\nVia: %s\r\nFrom: %s\r\nTo: %s\r\nCall-ID: %s\r\nCSeq: %s\r\n%s"
_tails = {}  # (server line, body length) -> the encoded "Server: ...\r\nContent-Length: n\r\n\r\n"
_tails_s = {}  # the same as text


# Kamailio's "Server: kamailio (5.6.3 (x86_64/linux))" shape; core parameters
# server_header (the whole line) and server_signature=no (none) change it.
DEFAULT_SERVER_LINE = f"Server: asyncd ({__version__} ({platform.machine()}/{sys.platform}))"
_server_line = [DEFAULT_SERVER_LINE]


def set_server_header(line):
    """The Server header line of every locally built reply ("" for none).
    Main process, before fork (core params server_header / server_signature)."""
    _server_line[0] = (line or "").strip()


def server_line():
    """The configured Server header line ("" for none), for replies built elsewhere (HTTP)."""
    return _server_line[0]


def _tail(server, blen):
    line = _server_line[0] if server is None else ("Server: %s" % server if server else "")
    t = _tails.get((line, blen))
    if t is None:
        t = (line + "\r\n" if line else "") + "Content-Length: %d\r\n\r\n" % blen
        t = t.encode("utf-8", "surrogateescape")
        if len(_tails) < 256:
            _tails[(line, blen)] = t
    return t


def _tail_str(server, blen):
    """_tail as text, for the common reply's single format (kept apart: _tails holds bytes)."""
    line = _server_line[0] if server is None else ("Server: %s" % server if server else "")
    t = _tails_s.get((line, blen))
    if t is None:
        t = (line + "\r\n" if line else "") + "Content-Length: %d\r\n\r\n" % blen
        if len(_tails_s) < 256:
            _tails_s[(line, blen)] = t
    return t


_xtails_s = {}  # (extra headers, server, server line, body length) -> their lines and the tail, as text


def _xtail_str(extra, server, blen):
    """The extra header lines and _tail_str, for the common reply: the same few
    extra headers come again and again (tm's Retry-After on every 503 it sheds),
    so the joined text is kept (bounded, like _tails)."""
    key = (extra, server, _server_line[0], blen) if type(extra) is tuple else None
    t = _xtails_s.get(key) if key is not None else None
    if t is None:
        t = "".join([_line(h) for h in extra]) + _tail_str(server, blen)
        if key is not None and len(_xtails_s) < 256:
            _xtails_s[key] = t
    return t


def build_reply(msg, code, reason, to_tag=None, extra_headers=(), body=b"", server=None):
    """A reply to request msg (RFC 3261 8.2.6): Vias, From, To (+tag), Call-ID,
    CSeq copied; Record-Route copied into 1xx/2xx (RFC 3261 12.1.1);
    msg.reply_lumps and extra_headers appended; Server, Content-Length.
    server=None: the configured Server line (set_server_header); a string:
    "Server: <string>" ("" for none)."""
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogateescape")
    first = msg._first
    multi = msg._multi
    if multi is None and msg._vias1 and not msg.reply_lumps \
            and (code < 101 or code > 299 or "record-route" not in first):
        # the common case (one Via line, no lumps; extra headers, e.g. tm's
        # Retry-After on a 503, go before the tail): one format, one encode
        try:
            f, t, c, q = first["from"], first["to"], first["call-id"], first["cseq"]
        except KeyError:
            pass
        else:
            t = t.partition(":")[2].strip(" \t")
            if code > 100 and not _has_tag(msg, t):
                t = "%s;tag=%s" % (t, to_tag or stable_to_tag(msg))
            cid = msg._callid  # cut already when stable_to_tag or the cfg read it
            tail = _tail_str(server, len(body)) if not extra_headers else \
                _xtail_str(extra_headers, server, len(body))
            s = _REPLY % (code, reason, top_via_received(msg), f.partition(":")[2].strip(" \t"), t,
                          c.partition(":")[2].strip(" \t") if cid is None else cid,
                          msg._cseq_v or _value(q), tail)
            s = s.encode("utf-8", "surrogateescape")
            return s + body if body else s
    out = ["SIP/2.0 %d %s\r\n" % (code, reason)]
    app = out.append
    line = first.get("via")
    if line is not None:
        app("Via: %s\r\n" % (top_via_received(msg) if msg._vias1 else _value(line)))
        if multi is not None and "via" in multi:
            for line in multi["via"][1:]:
                app("Via: %s\r\n" % _value(line))
    line = first.get("from")
    if line is not None:
        app("From: %s\r\n" % _value(line))
    line = first.get("to")
    if line is not None:
        t = _value(line)
        if code > 100 and not _has_tag(msg, t):
            t = "%s;tag=%s" % (t, to_tag or stable_to_tag(msg))
        app("To: %s\r\n" % t)
    v = msg.callid
    if v is not None:
        app("Call-ID: %s\r\n" % v)
    line = first.get("cseq")
    if line is not None:
        app("CSeq: %s\r\n" % _value(line))
    if 100 < code < 300 and "record-route" in first:
        for rr in msg._vall("record-route"):
            app("Record-Route: %s\r\n" % rr)
    for h in msg.reply_lumps:
        app(_line(h))
    for h in extra_headers:
        app(_line(h))
    return "".join(out).encode("utf-8", "surrogateescape") + _tail(server, len(body)) + body


def via_line(host, port, branch, transport="UDP", rport=False, params=()):
    """'Via: SIP/2.0/UDP host:port;branch=...' line for a request we send."""
    hp = host if port is None else "%s:%d" % (host, port)
    s = "Via: SIP/2.0/%s %s;branch=%s" % (transport.upper(), hp, branch)
    if rport:
        s += ";rport"
    for p in params:
        s += ";" + p
    return s + "\r\n"


def _drop_set(msg, drop_hdrs):
    drop = {canon(n) for n in drop_hdrs}
    for n in msg.hdr_removes:
        drop.add(canon(n))
    return drop


def build_request_fwd(msg, ruri, via_line, drop_hdrs=(), add_hdrs=()):
    """The request as forwarded: new Request-URI, our Via on top, the received
    headers byte-exact in order (minus msg.hdr_removes and drop_hdrs; the old
    top Via gets received/rport, RFC 3261 18.2.1), msg.hdr_adds and add_hdrs
    appended, Content-Length recomputed from msg.body. Max-Forwards untouched."""
    drop = _drop_set(msg, drop_hdrs)
    drop.add("content-length")
    out = ["%s %s SIP/2.0\r\n" % (msg.method, ruri), _line(via_line, "Via")]
    raw = msg._raw
    first_via = True
    for i, (key, name, value) in enumerate(msg._hl):
        if key in drop:
            continue
        if key == "via" and first_via:
            first_via = False
            out.append("%s: %s\r\n" % (name, top_via_received(msg)))
            continue
        out.append(raw[i + 1] + "\r\n")
    for h in msg.hdr_adds:
        out.append(_line(h))
    for h in add_hdrs:
        out.append(_line(h))
    body = msg.body
    if isinstance(body, str):  # a module may have set a str body
        body = body.encode("utf-8", "surrogateescape")
    out.append("Content-Length: %d\r\n\r\n" % len(body))
    return _enc(out) + body


_VIA_NAME = re.compile(rb"\r\n(?:via|v)[ \t]*:[ \t]*", re.I)


def strip_top_via(msg, drop_hdrs=()):
    """A received reply as relayed upstream: the top via-parm (ours) removed
    (RFC 3261 16.7 step 3), everything else byte-exact. When the script
    changed the reply (append_hf / remove_hf) or the caller drops headers,
    the header lines are written out again with those changes."""
    if not drop_hdrs and not msg.hdr_adds and not msg.hdr_removes:
        buf = msg.buf
        # octets past Content-Length are not part of the message (RFC 3261 18.3)
        end = buf.find(b"\r\n\r\n") + 4 + len(msg.body)
        return _cut_top_via(buf if end >= len(buf) else buf[:end])
    drop = _drop_set(msg, drop_hdrs)
    raw = msg._raw
    out = [raw[0] + "\r\n"]
    first_via = True
    for i, (key, name, value) in enumerate(msg._hl):
        if key in drop:
            continue
        if key == "via" and first_via:
            first_via = False
            parts = split_commas(value)
            if len(parts) > 1:
                out.append("%s: %s\r\n" % (name, ",".join(parts[1:]).strip()))
            continue
        out.append(raw[i + 1] + "\r\n")
    for h in msg.hdr_adds:
        out.append(_line(h))
    out.append("\r\n")
    return _enc(out) + msg.body


def _cut_top_via(buf):
    """The bytes without the first value of the first Via header line (the
    whole line when it holds one value); folded lines are followed."""
    m = _VIA_NAME.search(buf)
    if m is None:
        return bytes(buf)
    vstart = m.end()
    eol = buf.find(b"\r\n", vstart)
    while eol >= 0 and buf[eol + 2:eol + 3] in (b" ", b"\t"):
        eol = buf.find(b"\r\n", eol + 2)
    if eol < 0:
        return bytes(buf)
    comma = buf.find(b",", vstart, eol)
    if comma < 0:
        return bytes(buf[:m.start()]) + bytes(buf[eol:])
    rest = comma + 1
    while buf[rest:rest + 1] in (b" ", b"\t", b"\r", b"\n"):
        rest += 1
    return bytes(buf[:vstart]) + bytes(buf[rest:])


def _must(msg, key):
    """A header every parsed message has (parse_msg checked); KeyError as before if not."""
    v = msg._v1(key)
    if v is None:
        raise KeyError(key)
    return v


def _in_tx_request(req, method, to_value, extra_headers):
    out = ["%s %s SIP/2.0\r\n" % (method, req.ruri),
           "Via: %s\r\n" % req.via1.raw,
           "From: %s\r\n" % _must(req, "from"),
           "To: %s\r\n" % to_value,
           "Call-ID: %s\r\n" % _must(req, "call-id"),
           "CSeq: %d %s\r\n" % (req.cseq_num, method)]
    for r in req._vall("route"):
        out.append("Route: %s\r\n" % r)
    out.append("Max-Forwards: 70\r\n")
    for h in extra_headers:
        out.append(_line(h))
    out.append("Content-Length: 0\r\n\r\n")
    return _enc(out)


def build_cancel(req, extra_headers=()):
    """CANCEL for a request as it was sent on a branch (pass parse_msg of the
    branch's bytes): same Request-URI, Call-ID, From, To, CSeq number, the
    branch's Via only, its Route set (RFC 3261 9.1)."""
    return _in_tx_request(req, "CANCEL", _must(req, "to"), extra_headers)


def build_ack(req, reply, extra_headers=()):
    """ACK for a non-2xx final reply to an INVITE sent on a branch: as the
    INVITE, but To from the reply (with its tag) (RFC 3261 17.1.1.3). `reply`
    is the reply SipMsg or its To value (str); None keeps the request's To."""
    if reply is None:
        to_value = _must(req, "to")
    else:
        to_value = reply if isinstance(reply, str) else _must(reply, "to")
    return _in_tx_request(req, "ACK", to_value, extra_headers)
