"""SIP over TCP for the harness: a loopback connection and replies cut out of its stream.

Runs in: the bench harness process.

The harness's own client side of TCP (readiness probe, one-off queries, the
TCP latency sender); SIPp has its own. A message ends Content-Length bytes
after its empty line (RFC 3261 18.3; a missing Content-Length counts as 0,
which is what both servers send on an OPTIONS reply), and CRLFs between
messages are keep-alive pongs (RFC 5626 3.5.1), skipped. This is a client
for replies the servers under test build, not a general framer: a reply it
cannot cut shows up as unanswered, which a benchmark must see anyway.
"""
import re
import select
import socket
import time

CONTENT_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\d+)", re.I | re.M)


class Framer:
    """Feed bytes as they arrive; get back every message they complete."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data: bytes) -> list:
        self.buf += data
        out = []
        while True:
            start = 0
            while self.buf[start:start + 2] == b"\r\n":
                start += 2
            if start:
                del self.buf[:start]
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return out
            m = CONTENT_LENGTH.search(self.buf, 0, end + 2)
            total = end + 4 + (int(m.group(1)) if m else 0)
            if len(self.buf) < total:
                return out
            out.append(bytes(self.buf[:total]))
            del self.buf[:total]


def connect(port: int, timeout: float = 1.0) -> socket.socket:
    """A connection to 127.0.0.1:port with Nagle off, as SIPp's (a request is never held
    back waiting for the ACK of the previous one), left in blocking mode."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_messages(sock: socket.socket, framer: Framer, timeout: float) -> list:
    """The messages that complete within `timeout` (at least one, or [] at the timeout).
    Raises ConnectionError when the peer closed the connection."""
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return []
        r, _, _ = select.select((sock,), (), (), left)
        if not r:
            return []
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        msgs = framer.feed(data)
        if msgs:
            return msgs
