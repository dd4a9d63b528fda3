"""The built-in sender: fixed-rate OPTIONS with microsecond latency per request.

Runs in: the bench harness process.

SIPp's response times are quantised to its scheduler tick (~4 ms), far too
coarse for a stateless reply (~100 us) or for timer accuracy. This sender:
- sends request i at exactly t0 + i/rate on the monotonic clock (a late
  send is recorded as schedule lag, never skipped, so the count is exact);
- never retransmits: a lost request or reply shows up as "unanswered",
  which is what a benchmark should see;
- stamps each reply when it is read, waiting in select() between sends so a
  reply is read as soon as it arrives;
- uses one UDP socket with a large receive buffer (SO_RCVBUFFORCE as root,
  else SO_RCVBUF), so replies released in a burst (a 1-second timer
  resuming hundreds of transactions at once) are not dropped here.

The latency of request i is (first final reply - send), provisional replies
ignored; for a timer case the delay error is latency - the nominal delay.
"""
import os
import select
import socket
import time
from dataclasses import dataclass, field
from typing import Optional

from bench.servers import query

RCVBUF = 16 * 1024 * 1024
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)


@dataclass
class SenderResult:
    rate: float
    sent: int
    answered: int
    non_2xx: int
    duplicates: int
    duration_s: float                 # first send to last send
    latencies_us: list = field(repr=False, default_factory=list)
    max_send_lag_us: int = 0
    statuses: dict = field(default_factory=dict)

    @property
    def unanswered(self) -> int:
        return self.sent - self.answered

    @property
    def achieved_rate(self) -> float:
        return (self.sent - 1) / self.duration_s if self.duration_s > 0 and self.sent > 1 else 0.0


def open_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            s.setsockopt(socket.SOL_SOCKET, force, RCVBUF)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, plain, RCVBUF)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


class _Template:
    """Request i as bytes with the least work per send: two joins."""

    def __init__(self, port: int, lport: int, user: str, tag: str, transport: str = "UDP"):
        self.cid_mark = f"Call-ID: {tag}-".encode()
        self.head = (f"OPTIONS sip:{user}@127.0.0.1:{port} SIP/2.0\r\n"
                     f"Via: SIP/2.0/{transport} 127.0.0.1:{lport};rport;branch=z9hG4bK{tag}-").encode()
        self.mid = (f"\r\nMax-Forwards: 70\r\n"
                    f"From: <sip:bench@127.0.0.1>;tag={tag}\r\n"
                    f"To: <sip:{user}@127.0.0.1>\r\n"
                    f"Call-ID: {tag}-").encode()
        self.tail = (f"@bench\r\nCSeq: 1 OPTIONS\r\n"
                     f"Contact: <sip:bench@127.0.0.1:{lport}>\r\n"
                     "Content-Length: 0\r\n\r\n").encode()

    def build(self, i: int) -> bytes:
        n = str(i).encode()
        return b"".join((self.head, n, self.mid, n, self.tail))

    def index_of(self, reply: bytes) -> Optional[int]:
        j = reply.find(self.cid_mark)
        if j < 0:
            return None
        j += len(self.cid_mark)
        k = reply.find(b"@", j)
        try:
            return int(reply[j:k])
        except ValueError:
            return None


def run(port: int, rate: float, count: int, user: str = "bench", drain_s: float = 2.0,
        deadline_s: Optional[float] = None) -> SenderResult:
    """Send count OPTIONS at rate/s to 127.0.0.1:port; wait up to drain_s after the last."""
    sock = open_socket()
    lport = sock.getsockname()[1]
    tpl = _Template(port, lport, user, f"b{os.getpid()}x{time.monotonic_ns() % 10**9}")
    send_ns = [0] * count
    recv_ns = [0] * count
    statuses = {}
    non_2xx = dups = 0
    period = 1e9 / rate
    max_lag = 0
    dest = ("127.0.0.1", port)
    answered = 0

    def drain():
        nonlocal non_2xx, dups, answered
        while True:
            try:
                data = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:      # ICMP port unreachable: server gone
                continue
            now = time.monotonic_ns()
            if data[8:9] == b"1" or not data.startswith(b"SIP/2.0 "):
                continue
            i = tpl.index_of(data)
            if i is None or not 0 <= i < count:
                continue
            if recv_ns[i]:
                dups += 1
                continue
            recv_ns[i] = now
            answered += 1
            code = data[8:11].decode(errors="replace")
            statuses[code] = statuses.get(code, 0) + 1
            if code[0] != "2":
                non_2xx += 1

    hard_end = time.monotonic() + (deadline_s if deadline_s else count / rate + drain_s + 60)
    t0 = time.monotonic_ns() + 2_000_000
    i = 0
    while i < count:
        due = t0 + int(i * period)
        now = time.monotonic_ns()
        if now >= due:
            buf = tpl.build(i)
            stamp = time.monotonic_ns()
            try:
                sock.sendto(buf, dest)
            except (BlockingIOError, ConnectionRefusedError):
                pass        # counted as unanswered: no retransmission, by design
            send_ns[i] = stamp
            if stamp - due > max_lag:
                max_lag = stamp - due
            i += 1
            continue
        r, _, _ = select.select((sock,), (), (), (due - now) / 1e9)
        if r:
            drain()
        if time.monotonic() > hard_end:
            break
    sent = i
    last_send = send_ns[sent - 1] if sent else t0
    end = min(time.monotonic() + drain_s, hard_end)
    while answered < sent and time.monotonic() < end:
        r, _, _ = select.select((sock,), (), (), min(0.05, max(0.0, end - time.monotonic())))
        if r:
            drain()
    sock.close()
    lat = [(recv_ns[k] - send_ns[k]) // 1000 for k in range(sent) if recv_ns[k]]
    return SenderResult(rate=rate, sent=sent, answered=answered, non_2xx=non_2xx, duplicates=dups,
                        duration_s=(last_send - send_ns[0]) / 1e9 if sent else 0.0,
                        latencies_us=lat, max_send_lag_us=max_lag // 1000, statuses=statuses)


def read_counter(port: int, user: str = "count", tries: int = 3) -> Optional[int]:
    """The value a bench cfg reports for R-URI user "count" ("200 count=N")."""
    for _ in range(tries):
        reply = query(port, user, timeout=0.5)
        if reply is None:
            continue
        line = reply.split(b"\r\n", 1)[0].decode(errors="replace")
        _, _, val = line.partition("count=")
        try:
            return int(val.strip())
        except ValueError:
            return 0            # unset $sht reads as <null>: nothing counted yet
    return None


@dataclass
class Delivery:
    delivered: int
    expected: int
    seconds: float          # first send until the counter reached `expected` (or gave up)

    @property
    def complete(self) -> bool:
        return self.delivered >= self.expected

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds if self.seconds > 0 else 0.0


def wait_delivery(port: int, baseline: int, expected: int, t_start: float,
                  timeout_s: float = 10.0, poll_s: float = 0.02) -> Delivery:
    """Poll the counter until `expected` more deliveries than `baseline` are counted."""
    end = time.monotonic() + timeout_s
    got = 0
    while True:
        val = read_counter(port)
        now = time.monotonic()
        if val is not None:
            got = val - baseline
        if got >= expected or now > end:
            return Delivery(delivered=got, expected=expected, seconds=round(now - t_start, 4))
        time.sleep(poll_s)
