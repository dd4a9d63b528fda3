"""A tiny SIP UDP client for tests: send a request, collect replies with monotonic timings.

Runs in: the pytest process.

Independent of asyncd.sip on purpose: tests of the parser must not depend
on the parser. Each request gets a fresh branch (RFC 3261 magic cookie),
Call-ID and From-tag unless the test pins them (to send retransmissions).
"""
import itertools
import os
import socket
import time

_counter = itertools.count(1)
_COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length",
            "c": "content-type", "k": "supported", "s": "subject", "e": "content-encoding",
            "o": "event", "x": "session-expires", "r": "refer-to", "b": "referred-by", "u": "allow-events"}


def _uniq():
    return f"{os.getpid():x}{next(_counter):x}{time.monotonic_ns() & 0xffffff:x}"


def build_request(method, ruri, local, branch=None, callid=None, from_tag=None, cseq=1,
                  to_tag=None, headers=(), body=b"", rport=True, max_forwards=70):
    """Bytes of a request sent from `local` (ip, port); returns (bytes, branch, callid)."""
    branch = branch or "z9hG4bK" + _uniq()
    callid = callid or _uniq() + "@test"
    from_tag = from_tag or "ft" + _uniq()
    if isinstance(body, str):
        body = body.encode()
    lines = [f"{method} {ruri} SIP/2.0",
             f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch={branch}{';rport' if rport else ''}",
             f"Max-Forwards: {max_forwards}",
             f"From: <sip:tester@{local[0]}>;tag={from_tag}",
             f"To: <{ruri}>" + (f";tag={to_tag}" if to_tag else ""),
             f"Call-ID: {callid}",
             f"CSeq: {cseq} {method}",  # RFC 3261 17.1.1.3: an ACK's CSeq method is ACK
             f"Contact: <sip:tester@{local[0]}:{local[1]}>"]
    lines += list(headers)
    if body and not any(h.lower().startswith("content-type:") for h in headers):
        lines.append("Content-Type: text/plain" if method == "MESSAGE" else "Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body, branch, callid


class Reply:
    """A received SIP message (normally a reply): status, reason, headers, body, `elapsed` seconds."""

    def __init__(self, raw, src, t_recv, t_sent=None):
        self.raw = raw
        self.src = src
        self.t_recv = t_recv
        self.elapsed = (t_recv - t_sent) if t_sent is not None else None
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("utf-8", "replace").split("\r\n")
        self.first_line = lines[0]
        parts = self.first_line.split(" ", 2)
        self.is_reply = parts[0].startswith("SIP/")
        self.status = int(parts[1]) if self.is_reply and len(parts) > 1 and parts[1].isdigit() else None
        self.reason = parts[2] if self.is_reply and len(parts) > 2 else ""
        self.method = None if self.is_reply else parts[0]
        self.headers = []
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and self.headers:
                n, v = self.headers[-1]
                self.headers[-1] = (n, v + " " + line.strip())
                continue
            name, _, value = line.partition(":")
            name = name.strip().lower()
            self.headers.append((_COMPACT.get(name, name), value.strip()))

    def hdr(self, name):
        name = _COMPACT.get(name.lower(), name.lower())
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def hdrs(self, name):
        name = _COMPACT.get(name.lower(), name.lower())
        return [v for n, v in self.headers if n == name]

    @property
    def to_tag(self):
        to = self.hdr("to") or ""
        for p in to.split(";")[1:]:
            k, _, v = p.strip().partition("=")
            if k.lower() == "tag":
                return v
        return None

    def __repr__(self):
        return f"<Reply {self.first_line!r} elapsed={self.elapsed}>"


class SipClient:
    """UDP SIP client bound to 127.0.0.1:<free port>, talking to `server` (ip, port)."""

    def __init__(self, server, host="127.0.0.1", port=0, rcvbuf=4 << 20):
        self.server = tuple(server)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind((host, port))
        self.local = self.sock.getsockname()
        self.last_sent = None

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send_raw(self, data, addr=None):
        if isinstance(data, str):
            data = data.encode()
        self.last_sent = time.monotonic()
        self.sock.sendto(data, addr or self.server)
        return self.last_sent

    def send(self, method="OPTIONS", ruri=None, **kw):
        """Send a request; returns (bytes, branch, callid). kw as build_request()."""
        ruri = ruri or f"sip:test@{self.server[0]}:{self.server[1]}"
        data, branch, callid = build_request(method, ruri, self.local, **kw)
        self.send_raw(data)
        return data, branch, callid

    def recv(self, timeout=2.0):
        """One datagram as a Reply (elapsed measured from the last send), or None on timeout."""
        self.sock.settimeout(max(timeout, 0.0001))
        try:
            data, src = self.sock.recvfrom(65535)
        except (socket.timeout, BlockingIOError):
            return None
        return Reply(data, src, time.monotonic(), self.last_sent)

    def collect(self, timeout=1.0, until=None):
        """Replies arriving within `timeout`; stops early when until(replies) is true."""
        out = []
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return out
            r = self.recv(left)
            if r is None:
                return out
            out.append(r)
            if until and until(out):
                return out

    def request(self, method="OPTIONS", ruri=None, timeout=2.0, **kw):
        """Send a request and collect replies up to and including the first final one."""
        self.send(method, ruri, **kw)
        return self.collect(timeout, until=lambda rs: rs[-1].status is not None and rs[-1].status >= 200)

    def final(self, method="OPTIONS", ruri=None, timeout=2.0, **kw):
        """The final reply to a fresh request, or None."""
        rs = self.request(method, ruri, timeout, **kw)
        return rs[-1] if rs and rs[-1].status and rs[-1].status >= 200 else None
