"""The harness's client side of SIP over TCP: the reply framer (bench/tcp.py), the TCP latency
sender (bench/sender_tcp.py) and the TCP readiness probe and query (bench/servers.py), against
a fake server thread on 127.0.0.1."""
import select
import socket
import threading
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from bench import sender_tcp, servers, tcp

REPLY = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 127.0.0.1:5000;branch=z9hG4bKx\r\n"
         b"Call-ID: a-1@bench\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
WITH_BODY = (b"SIP/2.0 200 OK\r\nCall-ID: a-2@bench\r\ncontent-length:  5\r\n\r\nhello")
COMPACT = b"SIP/2.0 486 Busy\r\ni: a-3@bench\r\nl: 3\r\n\r\nabc"
NO_LENGTH = b"SIP/2.0 200 OK\r\nCall-ID: a-4@bench\r\n\r\n"
STREAM = b"\r\n\r\n" + REPLY + WITH_BODY + b"\r\n" + COMPACT + NO_LENGTH


def test_framer_cuts_by_content_length_and_skips_keepalive_pongs():
    assert tcp.Framer().feed(STREAM) == [REPLY, WITH_BODY, COMPACT, NO_LENGTH]


def test_framer_keeps_an_incomplete_message_for_later():
    f = tcp.Framer()
    assert f.feed(WITH_BODY[:-2]) == []
    assert f.feed(WITH_BODY[-2:] + REPLY[:10]) == [WITH_BODY]
    assert f.feed(REPLY[10:]) == [REPLY]
    assert f.buf == bytearray()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_framer_gives_the_same_messages_however_the_stream_is_cut(cuts):
    f = tcp.Framer()
    got = []
    bounds = [0] + sorted(cuts) + [len(STREAM)]
    for a, b in zip(bounds, bounds[1:]):
        got += f.feed(STREAM[a:b])
    assert got == [REPLY, WITH_BODY, COMPACT, NO_LENGTH]


class FakeTcpServer:
    """TCP on 127.0.0.1: answers each OPTIONS with 100 (every 5th) and 200, echoing Via,
    Call-ID, From, To, CSeq; closes a connection after `close_after` requests; answers
    nothing before `ready_after` seconds (a server still forking its readers), and with
    `close_unready` closes the connection instead."""

    def __init__(self, close_after=0, ready_after=0.0, close_unready=False):
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.close_after, self.ready_at = close_after, time.monotonic() + ready_after
        self.close_unready = close_unready
        self.seen = self.accepted = 0
        self.stop = False
        self.t = threading.Thread(target=self.loop, daemon=True)
        self.t.start()

    @staticmethod
    def reply(req, code):
        keep = (b"Via:", b"Call-ID:", b"From:", b"To:", b"CSeq:")
        hdrs = [ln for ln in req.split(b"\r\n") if ln.startswith(keep)]
        return b"SIP/2.0 " + code + b"\r\n" + b"\r\n".join(hdrs) + b"\r\nContent-Length: 0\r\n\r\n"

    def loop(self):
        conns = {}
        while not self.stop:
            r, _, _ = select.select([self.lsock, *conns], [], [], 0.05)
            for s in r:
                if s is self.lsock:
                    c, _ = s.accept()
                    conns[c] = tcp.Framer()
                    self.accepted += 1
                    continue
                try:
                    data = s.recv(65536)
                except ConnectionResetError:    # the probe closed with our reply unread
                    data = b""
                if not data:
                    conns.pop(s)
                    s.close()
                    continue
                for req in conns[s].feed(data):
                    if not self.answer(s, req):
                        conns.pop(s)
                        s.close()
                        break

    def answer(self, s, req) -> bool:
        """False: close the connection now."""
        if time.monotonic() < self.ready_at:
            return not self.close_unready
        i = self.seen
        self.seen += 1
        if i % 5 == 0:
            s.sendall(self.reply(req, b"100 Trying"))
        s.sendall(self.reply(req, b"200 OK"))
        return not (self.close_after and self.seen % self.close_after == 0)

    def close(self):
        self.stop = True
        self.t.join()
        self.lsock.close()


def with_server(fn, **kw):
    srv = FakeTcpServer(**kw)
    try:
        return fn(srv)
    finally:
        srv.close()


def test_fixed_rate_and_latencies_over_one_connection():
    def go(srv):
        t0 = time.monotonic()
        res = sender_tcp.run(srv.port, rate=500, count=250, drain_s=1.0)
        took = time.monotonic() - t0
        assert res.sent == 250 and res.answered == 250 and res.unanswered == 0
        assert res.statuses == {"200": 250} and res.non_2xx == 0 and res.duplicates == 0
        assert srv.accepted == 1                        # one connection, like SIPp -t t1
        assert 0.45 < res.duration_s < 0.6 and took < 2.5
        assert len(res.latencies_us) == 250 and 0 < sorted(res.latencies_us)[125] < 20_000
    with_server(go)


def test_a_connection_the_server_closes_ends_the_run():
    def go(srv):
        res = sender_tcp.run(srv.port, rate=1000, count=200, drain_s=0.5)
        assert res.answered == 30 and res.sent < 200     # nothing was sent after the close
    with_server(go, close_after=30)


def test_tcp_query_skips_provisional_replies():
    def go(srv):
        reply = servers.query(srv.port, "anyone", timeout=1.0, transport="tcp")
        assert reply.startswith(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 127.0.0.1:")
    with_server(go)


def test_nobody_listening_on_tcp():
    port = servers.free_tcp_port()
    assert servers.query(port, "x", timeout=0.3, transport="tcp") is None


class Running:
    """What Server._wait_ready needs of the process: it is still running."""

    def poll(self):
        return None


def probe(port, timeout_s):
    srv = servers.Server("asyncd", "x.cfg", port, 64, None, transport="tcp")
    srv.proc = Running()
    return srv._wait_ready(time.monotonic() + timeout_s)


def test_the_tcp_probe_waits_for_an_answer_not_for_accept():
    def go(srv):
        t0 = time.monotonic()
        assert probe(srv.port, 5.0)
        assert time.monotonic() - t0 >= 0.7 and srv.accepted == 1    # one connection for all probes
    with_server(go, ready_after=0.8)


def test_the_tcp_probe_reconnects_after_a_close_and_gives_up_at_the_deadline():
    def go(srv):
        assert probe(srv.port, 5.0) and srv.accepted >= 2
    with_server(go, ready_after=0.5, close_unready=True)
    assert not probe(servers.free_tcp_port(), 0.5)


def test_the_udp_probe_request_is_unchanged():
    req = servers.ping_request(5071, 4000, 7)
    assert b"\r\nVia: SIP/2.0/UDP 127.0.0.1:4000;branch=z9hG4bK-benchping-" in req
    assert b"SIP/2.0/TCP" in servers.ping_request(5071, 4000, 7, transport="TCP")
