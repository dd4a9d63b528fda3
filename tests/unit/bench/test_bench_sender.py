"""The built-in fixed-rate sender and the delivery counter (bench/sender.py)."""
import socket
import threading
import time

import pytest

from bench import sender


class FakeServer:
    """UDP on 127.0.0.1 answering each OPTIONS after `delay` s (100 first for every 5th),
    dropping requests whose index is a multiple of `drop_every`, and answering user "count"."""

    def __init__(self, delay=0.0, drop_every=0, count=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.delay, self.drop_every, self.count = delay, drop_every, count
        self.seen = 0
        self.stop = False
        self.pending = []
        self.t = threading.Thread(target=self.loop, daemon=True)
        self.t.start()

    def reply(self, req, code):
        keep = (b"Via:", b"Call-ID:", b"From:", b"To:", b"CSeq:")
        via = [ln for ln in req.split(b"\r\n") if ln.startswith(keep)]
        return b"SIP/2.0 " + code + b"\r\n" + b"\r\n".join(via) + b"\r\nContent-Length: 0\r\n\r\n"

    def loop(self):
        while not self.stop:
            now = time.monotonic()
            while self.pending and self.pending[0][0] <= now:
                _, data, addr = self.pending.pop(0)
                self.sock.sendto(data, addr)
            try:
                req, addr = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            if b"sip:count@" in req:
                self.sock.sendto(self.reply(req, f"200 count={self.count()}".encode()), addr)
                continue
            i = self.seen
            self.seen += 1
            if self.drop_every and i % self.drop_every == 0:
                continue
            if i % 5 == 0:
                self.sock.sendto(self.reply(req, b"100 Trying"), addr)
            if self.delay:
                self.pending.append((time.monotonic() + self.delay, self.reply(req, b"200 OK"), addr))
            else:
                self.sock.sendto(self.reply(req, b"200 OK"), addr)

    def close(self):
        self.stop = True
        self.t.join()
        self.sock.close()


@pytest.fixture
def fake():
    servers = []

    def make(**kw):
        s = FakeServer(**kw)
        servers.append(s)
        return s
    yield make
    for s in servers:
        s.close()


def test_fixed_rate_and_latencies(fake):
    srv = fake()
    t0 = time.monotonic()
    res = sender.run(srv.port, rate=500, count=250, drain_s=1.0)
    took = time.monotonic() - t0
    assert res.sent == 250 and res.answered == 250 and res.unanswered == 0
    assert res.statuses == {"200": 250} and res.non_2xx == 0 and res.duplicates == 0
    assert len(res.latencies_us) == 250
    assert 0 < min(res.latencies_us) and max(res.latencies_us) < 1_000_000
    assert res.duration_s == pytest.approx(249 / 500, abs=0.1)      # on schedule (a loaded box lags)
    assert res.achieved_rate == pytest.approx(500, rel=0.05)
    assert took < 2.0                                               # stops once all are answered


def test_delay_is_measured_to_the_millisecond(fake):
    srv = fake(delay=0.100)
    res = sender.run(srv.port, rate=200, count=60, drain_s=1.0)
    assert res.answered == 60
    lat_ms = sorted(v / 1000 for v in res.latencies_us)
    assert lat_ms[0] >= 99.9            # never earlier than the server held it
    assert lat_ms[len(lat_ms) // 2] < 150


def test_losses_are_counted_not_retransmitted(fake):
    srv = fake(drop_every=10)
    res = sender.run(srv.port, rate=1000, count=100, drain_s=0.5)
    assert srv.seen == 100               # no retransmissions: the server saw each request once
    assert res.sent == 100 and res.answered == 90 and res.unanswered == 10


def test_nobody_listening():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = sender.run(port, rate=200, count=20, drain_s=0.3)
    assert res.sent == 20 and res.answered == 0 and res.latencies_us == []


def test_counter_and_delivery(fake):
    box = {"n": 0}
    srv = fake(count=lambda: box["n"] if box["n"] else "<null>")
    assert sender.read_counter(srv.port) == 0           # unset $sht reads as <null>
    box["n"] = 41
    assert sender.read_counter(srv.port) == 41

    def deliver():
        for _ in range(9):
            time.sleep(0.05)
            box["n"] += 1
    threading.Thread(target=deliver).start()
    t0 = time.monotonic()
    d = sender.wait_delivery(srv.port, baseline=41, expected=9, t_start=t0, timeout_s=5)
    assert d.complete and d.delivered == 9 and 0.4 < d.seconds < 2.0 and d.rate > 4
    d = sender.wait_delivery(srv.port, baseline=41, expected=20, t_start=t0, timeout_s=0.3)
    assert not d.complete and d.delivered == 9


def test_template_index_roundtrip():
    tpl = sender._Template(5071, 4000, "bench", "btag")
    req = tpl.build(12345)
    assert req.startswith(b"OPTIONS sip:bench@127.0.0.1:5071 SIP/2.0\r\n")
    assert b"\r\nCall-ID: btag-12345@bench\r\n" in req and req.endswith(b"\r\n\r\n")
    assert tpl.index_of(b"SIP/2.0 200 OK\r\nCall-ID: btag-12345@bench\r\n\r\n") == 12345
    assert tpl.index_of(b"SIP/2.0 200 OK\r\nCall-ID: other-1@x\r\n\r\n") is None
