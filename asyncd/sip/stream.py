"""StreamFramer: cut a SIP byte stream (TCP, later TLS) into messages.

Runs in: tcp main process (one framer per connection; pure, no I/O).

A datagram is one message; a stream is not, so Content-Length is mandatory
on it (RFC 3261 18.3, 20.14, compact `l` 7.3.3) and frames the body. The
framer only finds message boundaries: it checks nothing a parser checks, but
whatever it cannot frame loses the connection (BAD: reply if possible, then
close), since the next message's start is unknown.

Choices (where the RFCs leave room):

- Between messages, CR and LF are skipped (RFC 3261 7.5). Each CRLFCRLF seen
  there is one keepalive ping (RFC 5626 3.5.1) and a lone CRLF (a pong) is
  dropped. "\\r\\n\\r\\nINVITE ..." is a ping followed by a message: both are
  reported, in that order, as Kamailio does (`src/core/tcp_read.c`,
  H_SKIP_EMPTY_CRLFCR_FOUND then the next request). The detector's state
  survives across feeds, so two pongs in a row also read as one ping, as in
  Kamailio; answering it costs one CRLF.
- Several Content-Length headers with one value (after dropping leading
  zeros) frame the message: the framing is unambiguous, so the connection
  need not be lost; parse_msg still rejects the duplicate with a 400 it can
  answer. Different values are BAD 400 (RFC 4475 3.3.9; the same rule as
  HTTP's, RFC 7230 3.3.2).
- A head that does not end within max_msg bytes is BAD 513 Message Too Large
  (RFC 3261 21.5.14), head None: there is nothing to build a reply from, the
  code says why the connection was closed. A head plus Content-Length over
  max_msg is BAD 513 with the head (a reply can be built from it).
- Only CRLF line ends frame a head (RFC 3261 7: CRLF is the line end).
- HTTP/1.x requests (xhttp) frame the same way: Content-Length, or with
  accept_no_cl the blank line ends a message without one (a GET). A head
  with Transfer-Encoding and no Content-Length is BAD 501: chunked bodies are
  not read (Kamailio 5.6's default build neither, src/core/tcp_read.c
  READ_HTTP11).

Hot path: a whole message in one feed, nothing buffered, costs one find of
the blank line, one regex pass over the head for Content-Length and one
slice (none when the feed is exactly the message). A message arriving in
pieces is buffered in a bytearray; the blank-line search resumes where it
stopped, so byte-at-a-time feeding stays linear.
"""
import re

__all__ = ["StreamFramer", "MSG", "PING", "BAD", "BUF_SIZE"]

MSG, PING, BAD = "msg", "ping", "bad"
BUF_SIZE = 65535   # Kamailio's BUF_SIZE: largest SIP message over a stream by default

_CRLF2 = b"\r\n\r\n"
# Content-Length or l, any case, optional SP/HT before the colon; the value
# runs to the end of its line plus any folded continuation lines (RFC 3261
# 7.3.1). Only header lines match: each starts after a line end.
_CL_RE = re.compile(rb"\n(?:content-length|l)[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)", re.I)
_LWS = b" \t\r\n"
_TE_RE = re.compile(rb"\ntransfer-encoding[ \t]*:", re.I)


def _content_length(b, start, hend):
    """Content-Length of the head b[start:hend]: int, None if absent, or a reason str."""
    val = None
    for m in _CL_RE.finditer(b, start, hend):
        v = m.group(1).strip(_LWS)
        if not v.isdigit():   # ASCII digits only: "-999" (RFC 4475 3.1.2.3), "", "1 2"
            return "Bad Content-Length"
        v = v.lstrip(b"0") or b"0"
        if val is not None and v != val:
            return "Conflicting Content-Length"
        val = v
    if val is None:
        return None
    # past 18 digits it is over any limit anyway; int() of a huge digit string
    # would cost time (and past 4300 digits raise)
    return int(val) if len(val) <= 18 else 1 << 62


class StreamFramer:
    """Frames one connection's bytes; see feed() for the events."""

    __slots__ = ("max_msg", "accept_no_cl", "_buf", "_scan", "_need", "_hlen", "_crlf", "_dead")

    def __init__(self, max_msg=BUF_SIZE, accept_no_cl=False):
        self.max_msg = max_msg
        self.accept_no_cl = accept_no_cl    # Kamailio's tcp_accept_no_cl: no CL = empty body
        # the unfinished message, from its first byte (never leading CRLFs);
        # empty between messages
        self._buf = bytearray()
        self._scan = 0      # where the blank-line search resumes in _buf
        self._need = -1     # whole length of the buffered message, -1 until its head ends
        self._hlen = 0      # its head length, once known
        self._crlf = 0      # how much of CRLFCRLF was seen between messages (0..3)
        self._dead = False

    @property
    def partial(self):
        """Bytes of an unfinished message are buffered (a read timeout applies)."""
        return bool(self._buf)

    @property
    def buffered(self):
        """Bytes held (a partial ping between messages holds none: only its state)."""
        return len(self._buf)

    def feed(self, data):
        """Events in stream order: (MSG, bytes) one complete message (leading CRLFs stripped,
        head + exactly Content-Length body bytes); (PING,) an RFC 5626 §3.5.1 CRLFCRLF keepalive
        seen between messages (caller answers CRLF at once); (BAD, code, reason, head) framing is
        lost: head is the complete header block bytes (through the blank line) when one was
        found, else None; the caller may parse it to build a `code reason` reply, then must close.
        After BAD the framer is dead: further feed() returns []."""
        if self._dead or not data:
            return []
        events = []
        buf = self._buf
        if buf:                     # resume the unfinished message
            buf += data
            b = buf
            start, scan, need = 0, self._scan, self._need
        else:
            b = data if type(data) is bytes else bytes(data)
            start = scan = need = -1
        n = len(b)
        pos = 0
        max_msg = self.max_msg
        while True:
            if start < 0:           # between messages
                if self._crlf or b[pos] in b"\r\n":
                    pos = self._skip_crlf(b, pos, n, events)
                    if pos == n:
                        break
                start = scan = pos
                need = -1
            if need < 0:
                # the blank line must end within max_msg bytes of the start
                i = b.find(_CRLF2, scan, start + max_msg)
                if i < 0:
                    if n - start >= max_msg:
                        return self._bad(events, 513, "Message Too Large", None)
                    scan = max(start, n - 3)
                    break
                hend = i + 4
                cl = _content_length(b, start, hend)
                if cl is None:
                    if not self.accept_no_cl:
                        return self._bad(events, 400, "Missing Content-Length", bytes(b[start:hend]))
                    if _TE_RE.search(b, start, hend) is not None:
                        # HTTP chunked bodies are not read, as Kamailio 5.6 built without
                        # READ_HTTP11 (src/core/tcp_read.c); RFC 7230 3.3.1: 501
                        return self._bad(events, 501, "Not Implemented", bytes(b[start:hend]))
                    cl = 0
                elif isinstance(cl, str):
                    return self._bad(events, 400, cl, bytes(b[start:hend]))
                need = hend + cl
                if need - start > max_msg:
                    return self._bad(events, 513, "Message Too Large", bytes(b[start:hend]))
                self._hlen = hend - start
            if n < need:
                break
            if start == 0 and need == n and b is not buf:
                events.append((MSG, b))     # the feed is exactly one message: no copy
            else:
                events.append((MSG, bytes(b[start:need])))
            pos = need
            start = -1
            if pos == n:
                break
        self._keep(b, start, scan, need)
        return events

    def eof(self):
        """Peer closed: (BAD, 400, ..., head) if a partial message is buffered, else [].

        A clerr-like message (Content-Length past the bytes sent, RFC 4475
        3.1.2.2) ends here. The framer is dead afterwards."""
        if self._dead:
            return []
        if not self._buf:
            self._dead = True
            return []
        head = bytes(self._buf[:self._hlen]) if self._need >= 0 else None
        return self._bad([], 400, "Incomplete Message", head)

    # -- helpers ---------------------------------------------------------------------
    def _skip_crlf(self, b, pos, n, events):
        """Skip CR/LF from pos; a PING per CRLFCRLF. Returns the first other byte's index (or n)."""
        s = self._crlf
        while pos < n:
            c = b[pos]
            if c == _CRLF2[s]:
                s += 1
                if s == 4:
                    events.append((PING,))
                    s = 0
            elif c == 13:           # CR restarts a ping
                s = 1
            elif c == 10:           # stray LF: skipped, no ping
                s = 0
            else:
                break
            pos += 1
        self._crlf = s if pos == n else 0    # a message resets the detector
        return pos

    def _keep(self, b, start, scan, need):
        """Keep the unfinished message b[start:] (start -1: none) for the next feed."""
        buf = self._buf
        if b is buf:
            if start < 0:
                buf.clear()
            elif start:
                del buf[:start]     # a bytearray drops a prefix cheaply
        elif start >= 0:
            buf += memoryview(b)[start:]
        if start >= 0:
            self._scan = scan - start
            self._need = need - start if need >= 0 else -1
        else:
            self._need = -1

    def _bad(self, events, code, reason, head):
        self._dead = True
        self._buf = bytearray()
        events.append((BAD, code, reason, head))
        return events
