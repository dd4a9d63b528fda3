"""The built-in sender over TCP: fixed-rate OPTIONS on one connection, latency in microseconds.

Runs in: the bench harness process.

bench/sender.py for the cases whose cfg listens on TCP: the same schedule
(request i at t0 + i/rate on the monotonic clock; a late send is recorded
as lag, never skipped), the same requests but for `Via: SIP/2.0/TCP`, the
same SenderResult. One connection for the whole run, as SIPp's `-t t1`,
with Nagle off as SIPp has it (observed with strace: TCP_NODELAY on every
SIPp TCP socket). Replies are cut out of the stream by Content-Length
(bench/tcp.py) and each is stamped when the read that completed it returns.

What the kernel does not take at once waits in the sender's own buffer and
leaves as the socket drains, so a server that stops reading shows up as
schedule lag and unanswered requests, not as a harness blocked in send().
A connection the server closes ends the run: what was not sent is not
counted as sent. Every run opens its own connection, so its first request
also pays the server's accept (one sample: it moves the max, not the p99).
"""
import os
import select
import time
from typing import Optional

from bench import tcp
from bench.sender import SenderResult, _Template


class _Tally:
    """The replies seen so far, by request index (first final reply only)."""

    def __init__(self, tpl: _Template, count: int):
        self.tpl = tpl
        self.count = count
        self.recv_ns = [0] * count
        self.statuses = {}
        self.answered = self.non_2xx = self.dups = 0

    def record(self, msg: bytes, now: int) -> None:
        if msg[8:9] == b"1" or not msg.startswith(b"SIP/2.0 "):
            return
        i = self.tpl.index_of(msg)
        if i is None or not 0 <= i < self.count:
            return
        if self.recv_ns[i]:
            self.dups += 1
            return
        self.recv_ns[i] = now
        self.answered += 1
        code = msg[8:11].decode(errors="replace")
        self.statuses[code] = self.statuses.get(code, 0) + 1
        if code[0] != "2":
            self.non_2xx += 1


class _Conn:
    """The connection, its unsent bytes and its framer."""

    def __init__(self, port: int):
        self.sock = tcp.connect(port, timeout=2.0)
        self.sock.setblocking(False)
        self.framer = tcp.Framer()
        self.out = bytearray()
        self.closed = False

    def flush(self) -> None:
        try:
            n = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.closed = True
            self.out.clear()
            return
        del self.out[:n]

    def read(self, tally: _Tally) -> None:
        try:
            data = self.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return
        now = time.monotonic_ns()
        for msg in self.framer.feed(data):
            tally.record(msg, now)

    def wait(self, timeout: float, tally: _Tally) -> None:
        """Read and write whatever the socket allows within `timeout`."""
        r, w, _ = select.select((self.sock,), (self.sock,) if self.out else (), (), max(0.0, timeout))
        if r:
            self.read(tally)
        if w:
            self.flush()


def run(port: int, rate: float, count: int, user: str = "bench", drain_s: float = 2.0,
        deadline_s: Optional[float] = None) -> SenderResult:
    """Send count OPTIONS at rate/s over one TCP connection to 127.0.0.1:port; wait up to
    drain_s after the last."""
    conn = _Conn(port)
    tpl = _Template(port, conn.sock.getsockname()[1], user,
                    f"b{os.getpid()}x{time.monotonic_ns() % 10**9}", transport="TCP")
    tally = _Tally(tpl, count)
    send_ns = [0] * count
    period = 1e9 / rate
    max_lag = 0
    hard_end = time.monotonic() + (deadline_s if deadline_s else count / rate + drain_s + 60)
    t0 = time.monotonic_ns() + 2_000_000
    i = 0
    while i < count and not conn.closed:
        due = t0 + int(i * period)
        now = time.monotonic_ns()
        if now >= due:
            conn.out += tpl.build(i)
            stamp = time.monotonic_ns()
            conn.flush()
            send_ns[i] = stamp
            max_lag = max(max_lag, stamp - due)
            i += 1
            continue
        conn.wait((due - now) / 1e9, tally)
        if time.monotonic() > hard_end:
            break
    sent = i
    end = min(time.monotonic() + drain_s, hard_end)
    while tally.answered < sent and not conn.closed and time.monotonic() < end:
        conn.wait(min(0.05, end - time.monotonic()), tally)
    conn.sock.close()
    lat = [(tally.recv_ns[k] - send_ns[k]) // 1000 for k in range(sent) if tally.recv_ns[k]]
    last_send = send_ns[sent - 1] if sent else t0
    return SenderResult(rate=rate, sent=sent, answered=tally.answered, non_2xx=tally.non_2xx,
                        duplicates=tally.dups,
                        duration_s=(last_send - send_ns[0]) / 1e9 if sent else 0.0,
                        latencies_us=lat, max_send_lag_us=max_lag // 1000, statuses=tally.statuses)
