"""HTTP/1.x replies and connection rules for the requests the SIP parser marks
`http` (an `HTTP/1.0` or `HTTP/1.1` request line on a stream).

Runs in: tcp receivers (xhttp replies), tcp main process (a reply to a head
whose framing is lost).

Kamailio answers an HTTP request with its SIP stateless reply builder
(src/modules/xhttp/xhttp_mod.c xhttp_send_reply -> sl's sreply ->
src/core/msg_translator.c build_res_buf_from_sip_req): the status line carries
the request's version, then the reply lumps in the order they were added
(append_to_reply, then xhttp_reply's Content-Type), the Server header and
Content-Length. It also copies the Via it faked for the request, renamed
`Sia:`; asyncd leaves that artefact out (docs/operations.md "xhttp").
"""
from .build import server_line

__all__ = ["build_http_reply", "wants_close"]


def build_http_reply(version, code, reason, ctype="", body=b"", lumps=()):
    """`<version> <code> <reason>` with the lumps, Content-Type (when ctype is
    not empty), Server and Content-Length. body: bytes or str."""
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogateescape")
    out = ["%s %d %s\r\n" % (version or "HTTP/1.1", code, reason)]
    for h in lumps:
        h = str(h)
        out.append(h if h.endswith("\r\n") else h.rstrip("\r\n") + "\r\n")
    if ctype:
        out.append("Content-Type: %s\r\n" % ctype)
    line = server_line()
    if line:
        out.append(line + "\r\n")
    out.append("Content-Length: %d\r\n\r\n" % len(body))
    return "".join(out).encode("utf-8", "surrogateescape") + body


def wants_close(msg):
    """The client will not send another request on this connection (RFC 7230
    6.3): `Connection: close`, or HTTP/1.0 without `Connection: keep-alive`.
    Kamailio 5.6 keeps the connection open either way; asyncd closes it once the
    reply is written (docs/operations.md "xhttp")."""
    tokens = {t.strip().lower() for v in msg.hdrs("connection") for t in v.split(",")}
    if "close" in tokens:
        return True
    return (msg.version or "").upper() == "HTTP/1.0" and "keep-alive" not in tokens
