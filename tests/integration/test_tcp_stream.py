"""SIP over TCP against the real server, from raw sockets: the RFC 4475 corpus
over TCP as over UDP, framing across reads, keepalives, limits, time-outs,
and respawn of the tcp processes.

Runs in: the pytest process; asyncd runs as a subprocess (run_server) on a
free loopback port, listening on UDP and TCP (`listen=IP:PORT`).

What is expected is docs/kamailio-tcp.md (Kamailio's behaviour) plus the
stream rules of asyncd/sip/stream.py: a message whose framing is lost on a
stream (RFC 3261 §18.3: no, bad or conflicting Content-Length) is answered
400 when its header block allows a reply, and the connection is closed; a
message that never completes is closed after tcp_msg_read_timeout (Kamailio
5.7.3's name); over tcp_rd_buf_size - 1 bytes is 513 (RFC 3261 §21.5.14).
"""
import contextlib
import itertools
import os
import random
import re
import resource
import selectors
import signal
import socket
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import SipClient, run_server
from tests.helpers.sipclient import Reply

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "rfc4475"
TAGS = sorted(p.stem for p in CORPUS.glob("*.dat"))
PAD = "a" * 60000       # X-Big: a 60 kB reply header (a reply stays under 65535 bytes)

CFG = """#!ifndef LPORT
#!define LPORT 5071
#!endif
debug=2
log_stderror=yes
children=2
tcp_children=%(tcp_children)d
listen=127.0.0.1:LPORT
tcp_msg_read_timeout=1
%(core)s
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "textops.so"
loadmodule "cfgutils.so"
request_route {
    if (is_present_hf("X-Sleep")) {
        xlog("L_INFO", "SLEEP pid=$pp\\n");
        sleep(2);
    }
    if (is_present_hf("X-Big")) {
        append_to_reply("X-Pad: %(pad)s\\r\\n");
    }
    if (is_present_hf("X-Huge")) {
        append_to_reply("X-Pad: %(pad)s%(pad)s\\r\\n");
    }
    append_to_reply("X-Pid: $pp\r\n");
    sl_send_reply("200", "OK");
}
"""


def cfg(core="", tcp_children=2):
    return CFG % {"core": core, "tcp_children": tcp_children, "pad": PAD}


_seq = itertools.count(1)


def request(cseq=1, headers=(), body=b"", method="OPTIONS", callid=None):
    """A request as a TCP client sends it. Its Via names port 9 where nobody listens:
    a reply that missed its connection cannot reach the test another way."""
    n = next(_seq)
    lines = [f"{method} sip:test@127.0.0.1 SIP/2.0",
             f"Via: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bK{os.getpid():x}x{n}",
             "Max-Forwards: 70",
             "From: <sip:tester@127.0.0.1>;tag=ft%d" % n,
             "To: <sip:test@127.0.0.1>",
             f"Call-ID: {callid or f'c{n}x{os.getpid()}@test'}",
             f"CSeq: {cseq} {method}"] + list(headers) + [f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def readable(socks, timeout):
    """The sockets of `socks` with something to read within timeout. epoll, not
    select(): the 1,000-connection test's descriptors may pass FD_SETSIZE (1024)."""
    with selectors.DefaultSelector() as sel:
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        return [key.fileobj for key, _ in sel.select(timeout)]


_CL = re.compile(rb"\r\n(?:content-length|l)[ \t]*:[ \t]*(\d+)", re.I)


class Peer:
    """A raw TCP client: sends bytes, cuts what comes back into SIP messages by
    Content-Length, and notes when the server closed (EOF or reset)."""

    def __init__(self, addr, src_ip="127.0.0.1", rcvbuf=None):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.bind((src_ip, 0))
        s.connect(addr)
        self.sock = s
        self.buf = b""
        self.eof_at = None      # monotonic time the close was seen

    def send(self, data):
        self.sock.sendall(data)
        return time.monotonic()

    def fill(self, deadline):
        """One read, waiting until deadline; False when nothing more can come."""
        if self.eof_at is not None:
            return False
        left = max(0.0, deadline - time.monotonic())
        if not readable([self.sock], left):
            return False
        try:
            data = self.sock.recv(1 << 20)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.eof_at = time.monotonic()
            return False
        self.buf += data
        return True

    def take(self):
        """The first complete message in the buffer as a Reply, or None."""
        i = self.buf.find(b"\r\n\r\n")
        if i < 0:
            return None
        m = _CL.search(self.buf, 0, i + 2)
        end = i + 4 + (int(m.group(1)) if m else 0)
        if len(self.buf) < end:
            return None
        raw, self.buf = self.buf[:end], self.buf[end:]
        return Reply(raw, None, time.monotonic())

    def replies(self, n, timeout=3.0):
        """Up to n messages read within timeout."""
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            r = self.take()
            if r is not None:
                out.append(r)
            elif not self.fill(deadline):
                break
        return out

    def reply(self, timeout=3.0):
        rs = self.replies(1, timeout)
        return rs[0] if rs else None

    def raw(self, n, timeout=1.0):
        deadline = time.monotonic() + timeout
        while len(self.buf) < n and self.fill(deadline):
            pass
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def closed(self, timeout=3.0):
        """Wait for the server's close; its time, or None. Data read meanwhile stays in buf."""
        deadline = time.monotonic() + timeout
        while self.fill(deadline):
            pass
        return self.eof_at

    def close(self):
        self.sock.close()


def statuses(rs):
    return [(r.status, r.reason) for r in rs]


def watch(peers, timeout, closed=None):
    """Read every peer at once until timeout (or until `closed` of them were closed by the
    server), so each close is seen when it happens; the peers the server closed."""
    deadline = time.monotonic() + timeout
    live = {p.sock: p for p in peers if p.eof_at is None}
    while live and (closed is None or len(peers) - len(live) < closed):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        for s in readable(list(live), left):
            p = live[s]
            p.fill(0)
            if p.eof_at is not None:
                del live[s]
    return [p for p in peers if p.eof_at is not None]


def drain(p):
    """The complete messages already read."""
    out = []
    r = p.take()
    while r is not None:
        out.append(r)
        r = p.take()
    return out


def cseqs(rs):
    return [int(r.hdr("cseq").split()[0]) for r in rs]


def summary(srv):
    """The counters of main's exit line `tcp: ...` (after the server stopped)."""
    m = re.search(r"tcp: (\d+) connections accepted, (\d+) opened \((\d+) failed\); refused (\d+) over "
                  r"tcp_max_connections and (\d+) over tcp_accept_iplimit; closed (\d+) on read "
                  r"timeout, (\d+) on send timeout, (\d+) on bad framing", srv.log())
    assert m, srv.log()[-3000:]
    keys = ("accepted", "opened", "failed", "max_reject", "ip_reject", "read_timeout",
            "send_timeout", "bad_framing")
    return dict(zip(keys, map(int, m.groups())))


def pids(srv, title):
    return {p.pid for p in srv.find("asyncd: " + title)}


def _wait_dead(pid, timeout=2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.001)
    raise AssertionError(f"pid {pid} still alive after kill -9")


@pytest.fixture(scope="module")
def srv():
    with run_server(cfg()) as s:
        yield s


# -- 1. the RFC 4475 corpus: over TCP as over UDP ------------------------------------------------

# asyncd/sip/stream.py: what a stream makes of the messages whose Content-Length does not frame
# the datagram (tests/unit/sip/test_stream.py test_corpus_misframed)
LOST = {"ncl": (400, "Bad Content-Length"), "mcl01": (400, "Conflicting Content-Length"),
        "inv2543": (400, "Missing Content-Length")}
WAITS = {"clerr", "baddn"}      # the message never completes: closed by tcp_msg_read_timeout


def _udp_replies(socks, until):
    """First lines of the datagrams reaching the sockets before `until`, by tag."""
    out = {}
    while time.monotonic() < until:
        for s in readable(list(socks), max(0.0, until - time.monotonic())):
            out.setdefault(socks[s], []).append(s.recv(70000).split(b"\r\n")[0])
    return out


def test_rfc4475_corpus_over_tcp_as_over_udp(srv):
    """Every corpus file sent whole over UDP and over TCP to one server: the same replies (or
    the same silence) both ways and the connection stays open, except where stream framing
    is lost (closed, with a 400 when a reply can be built) or the message never ends
    (closed after tcp_msg_read_timeout=1 s, no reply). dblreq's REGISTER and the INVITE its
    "junk" frames on a stream are answered before its trailing bytes close the connection."""
    # UDP replies go to the source IP and the Via port (5060 unless it says 5050/5070: Kamailio's
    # update_sock_struct_from_ip): one loopback address per file, bound on those ports
    net = "127.%d.%d." % (random.randint(1, 254), random.randint(0, 254))
    udp, tcp = {}, {}
    try:
        for i, tag in enumerate(TAGS):
            for port in (5060, 5050, 5070):
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                u.bind((net + str(i + 1), port))
                udp[u] = tag
                if port == 5060:
                    u.sendto((CORPUS / (tag + ".dat")).read_bytes(), srv.addr)
        for tag in TAGS:
            p = Peer(srv.addr)
            tcp[p] = tag
            p.t_sent = p.send((CORPUS / (tag + ".dat")).read_bytes())
        watch(list(tcp), 2.6)               # every close seen when it comes
        got_udp = _udp_replies(udp, time.monotonic() + 0.2)
    finally:
        for s in list(udp) + [p.sock for p in tcp]:
            s.close()
    assert len([t for t in TAGS if got_udp.get(t)]) >= 35, got_udp    # the harness sees UDP replies
    for p, tag in tcp.items():
        rs = drain(p)
        lines = [b"SIP/2.0 %d %s" % (r.status, r.reason.encode()) for r in rs]
        if tag in LOST:
            assert statuses(rs) == [LOST[tag]], tag
            assert p.eof_at is not None, f"{tag}: connection not closed"
        elif tag in WAITS:
            assert lines == [], tag
            assert p.eof_at is not None and 1.0 <= p.eof_at - p.t_sent <= 2.5, (tag, p.eof_at)
        elif tag == "dblreq":
            assert statuses(rs) == [(200, "OK"), (200, "OK")], rs
            # two calls: each runs in the receiver its Call-ID hashes to, in either order
            assert sorted(r.hdr("cseq").split()[1] for r in rs) == ["INVITE", "REGISTER"]
            assert p.eof_at is not None, "dblreq: its trailing bytes must close the connection"
        else:
            assert lines == got_udp.get(tag, []), tag
            assert p.eof_at is None, f"{tag}: connection closed"


@pytest.mark.parametrize("tag", sorted(WAITS))
def test_unfinished_corpus_message_closed_at_our_half_close(srv, tag):
    """clerr / baddn with the sender's FIN after them: closed at once, nothing answered."""
    p = Peer(srv.addr)
    t0 = p.send((CORPUS / (tag + ".dat")).read_bytes())
    p.sock.shutdown(socket.SHUT_WR)
    t = p.closed(2.0)
    assert t is not None and t - t0 < 0.5
    assert p.buf == b""
    p.close()


# -- 2. framing across reads, keepalives, limits, read timeout ----------------------------------

def test_message_split_at_every_offset_is_answered(srv):
    """Two sends with a pause between them, cut at each byte of a request with a body: every
    cut is answered once, in order."""
    p = Peer(srv.addr)
    template = request(1, body=b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n")
    for i in range(1, len(template)):
        m = request(i, body=b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n")
        p.send(m[:i])
        time.sleep(0.002)
        p.send(m[i:])
        r = p.reply(3.0)
        assert r is not None and r.status == 200, f"split at {i}"
        assert cseqs([r]) == [i]
    assert p.buf == b"" and p.eof_at is None
    p.close()


def test_two_messages_in_one_send_get_two_replies(srv):
    p = Peer(srv.addr)
    p.send(request(1) + request(2, body=b"hello"))
    rs = p.replies(2)
    assert statuses(rs) == [(200, "OK")] * 2 and sorted(cseqs(rs)) == [1, 2]   # two calls
    # and a message with the head of the next, then the rest
    a, b = request(3), request(4)
    p.send(a + b[:40])
    assert cseqs(p.replies(1)) == [3]
    p.send(b[40:])
    assert cseqs(p.replies(1)) == [4]
    p.close()


def test_crlf_ping_is_answered_and_a_pong_ignored(srv):
    """RFC 5626 §3.5.1: CRLFCRLF is answered CRLF at once; a lone CRLF (a pong) is dropped."""
    p = Peer(srv.addr)
    t0 = p.send(b"\r\n\r\n")
    assert p.raw(2, 1.0) == b"\r\n"
    assert time.monotonic() - t0 < 0.5
    p.send(b"\r\n")
    assert p.raw(1, 0.3) == b""             # nothing comes back
    p.send(request(1))
    r = p.reply()
    assert r is not None and r.status == 200 and r.raw.startswith(b"SIP/2.0 200 ")
    p.send(b"\r\n\r\n" + request(2))      # a ping then a message: the pong first
    assert p.raw(2) == b"\r\n"
    assert cseqs(p.replies(1)) == [2]
    assert p.eof_at is None
    p.close()


def test_message_size_limit_is_tcp_rd_buf_size_minus_one(srv):
    """tcp_rd_buf_size 16384 (the default): a 16383-byte message is answered, a 16384-byte one
    gets 513 and a close (Kamailio closes without a reply), a header block that does not end
    within the limit is closed unanswered."""
    base = len(request(1, body=b""))
    for size, want in ((16383, [(200, "OK")]), (16384, [(513, "Message Too Large")])):
        body = b"x" * (size - base - (len(str(size - base)) - 1))
        m = request(1, body=body)
        assert len(m) == size
        p = Peer(srv.addr)
        p.send(m)
        assert statuses(p.replies(1)) == want, size
        assert (p.closed(0.5) is not None) == (size == 16384), size
        p.close()
    p = Peer(srv.addr)
    head = request(1)[:-2]     # no blank line: the head goes on and on
    p.send(head + b"X-Filler: " + b"y" * 20000 + b"\r\n")
    assert p.closed(2.0) is not None
    assert p.buf == b""
    p.close()
    srv.wait_log(r"tcp: Message Too Large from 127\.0\.0\.1:\d+ \(connection \d+\); closing")


def test_message_over_65535_bytes_is_not_sent_cut_short(srv):
    """A reply of 120 kB (over Kamailio's BUF_SIZE, 65535) fails to send, as a datagram that
    size does over UDP, and sl logs it; the connection goes on cleanly. It used to reach tcp
    main cut at its channel's datagram size and go out truncated: the peer framed the next
    reply into it."""
    p = Peer(srv.addr)
    p.send(request(1, headers=["X-Huge: 1"]) + request(2))
    assert cseqs(p.replies(1)) == [2]
    assert p.raw(1, 0.3) == b"" and p.eof_at is None
    srv.wait_log(r"ERROR: <sl> .*sl_send_reply\(\): send to \('127\.0\.0\.1', %d\) failed"
                 % p.sock.getsockname()[1])
    p.close()


def test_stalled_partial_message_closed_after_read_timeout(srv):
    """tcp_msg_read_timeout=1: half a message, then nothing: closed 1-2.5 s later; a message
    trickled byte by byte is closed as well (the clock runs from its first byte)."""
    m = request(1, body=b"0123456789")
    p = Peer(srv.addr)
    t0 = p.send(m[:-5])
    t = p.closed(4.0)
    assert t is not None and 1.0 <= t - t0 <= 2.5, t and t - t0
    assert p.buf == b""
    p.close()
    p = Peer(srv.addr)
    t0 = time.monotonic()
    for i in range(len(m)):
        if p.closed(0.15) is not None:
            break
        with contextlib.suppress(OSError):
            p.send(m[i:i + 1])
    assert p.eof_at is not None and 1.0 <= p.eof_at - t0 <= 2.5, p.eof_at and p.eof_at - t0
    p.close()
    srv.wait_log(r"message not complete after tcp_msg_read_timeout=1 s")


def test_steady_stream_cut_mid_message_is_not_a_stalled_message(srv):
    """Messages back to back for 1.6 s, every send ending inside the next message (a busy
    trunk's segments rarely end where a message does): each message completes well within
    tcp_msg_read_timeout=1 s, so nothing is closed and every one is answered. The clock
    starts again at each new message, not at the first one left unfinished."""
    p = Peer(srv.addr)
    msgs = [request(i) for i in range(1, 34)]
    cut = len(msgs[0]) // 2
    p.send(msgs[0][:cut])
    t0 = time.monotonic()
    for i in range(32):
        time.sleep(0.05)
        p.send(msgs[i][cut:] + msgs[i + 1][:cut])
    assert time.monotonic() - t0 >= 1.6
    p.send(msgs[32][cut:])
    assert sorted(cseqs(p.replies(33, 3.0))) == list(range(1, 34))       # 33 calls
    assert p.eof_at is None
    p.close()


def test_connection_held_back_for_a_busy_receiver_is_not_timed_out():
    """The only receiver sleeps 2 s while another connection sends 2,000 requests of 12 kB
    (24 MB, over the 16 MB its channel takes and tcp main's 1 MB backlog): the channel
    fills, tcp main stops reading that connection (TCP flow control pushes back on the
    client) and must not close it for tcp_msg_read_timeout=1 s meanwhile, since the wait is
    the server's; once the receiver is back every request is answered, in order."""
    with run_server(cfg(tcp_children=1)) as srv:
        a, b = Peer(srv.addr), Peer(srv.addr)
        a.send(request(1, headers=["X-Sleep: 1"]))
        srv.wait_log(r"SLEEP pid=\d+", 3.0)
        n = 2000
        data = b"".join(request(i, body=b"x" * 12000) for i in range(1, n + 1))
        sender = threading.Thread(target=b.send, args=(data,))
        sender.start()
        try:
            rs = b.replies(n, 20.0)
        finally:
            sender.join(20.0)
        assert cseqs(rs) == list(range(1, n + 1)) and b.eof_at is None, (len(rs), b.eof_at)
        assert cseqs(a.replies(1)) == [1]
        a.close()
        b.close()
    assert summary(srv)["read_timeout"] == 0


def test_one_connection_calls_spread_over_receivers_and_a_call_stays_in_order(srv):
    """A trunk: many calls on one connection. Each message goes to the receiver its
    Call-ID hashes to (workers/tcp_main.py deliver): one call's messages run in one
    receiver in the order they came, as Kamailio's reader runs a connection's, and
    different calls use every receiver instead of one."""
    p = Peer(srv.addr)
    p.send(b"".join(request(i) for i in range(1, 41)))
    rs = p.replies(40, 5.0)
    assert sorted(cseqs(rs)) == list(range(1, 41))
    pids_used = {r.hdr("x-pid") for r in rs}
    assert pids_used == {str(pid) for pid in pids(srv, "tcp receiver (generic)")}, pids_used
    # twenty requests of one call: one receiver, in order
    p.send(b"".join(request(i, callid=f"one-call-{os.getpid()}@test") for i in range(1, 21)))
    rs = p.replies(20, 5.0)
    assert cseqs(rs) == list(range(1, 21)) and len({r.hdr("x-pid") for r in rs}) == 1
    p.close()


def test_half_closed_peer_gets_its_replies(srv):
    """A client that sends its requests and then its FIN (shutdown SHUT_WR) still gets every
    reply before the close, as from Kamailio, whose reader answers a message before it reads
    the EOF behind it (src/core/tcp_read.c tcp_read_req)."""
    for n in (1, 3):
        p = Peer(srv.addr)
        p.send(b"".join(request(i) for i in range(1, n + 1)))
        p.sock.shutdown(socket.SHUT_WR)
        rs = p.replies(n, 3.0)
        assert sorted(cseqs(rs)) == list(range(1, n + 1)), rs
        assert p.closed(2.0) is not None
        p.close()
    # the receiver takes 2 s over it: the reply is waited for (tcp_send_timeout is 10 s)
    p = Peer(srv.addr)
    t0 = p.send(request(1, headers=["X-Sleep: 1"]))
    p.sock.shutdown(socket.SHUT_WR)
    r = p.reply(4.0)
    assert r is not None and r.status == 200 and 1.9 <= time.monotonic() - t0 <= 3.5
    assert p.closed(1.0) is not None
    p.close()


def test_half_closed_peer_waits_for_its_receiver_at_most_send_timeout():
    """... but not for longer than tcp_send_timeout (1 s here; the route takes 2 s)."""
    with run_server(cfg("tcp_send_timeout=1", tcp_children=1)) as srv:
        p = Peer(srv.addr)
        t0 = p.send(request(1, headers=["X-Sleep: 1"]))
        p.sock.shutdown(socket.SHUT_WR)
        t = p.closed(3.0)
        assert t is not None and 1.0 <= t - t0 <= 2.0, t and t - t0
        assert p.buf == b""
        srv.wait_log(r"tcp: closing connection \d+ with 127\.0\.0\.1:\d+: its receiver did not "
                     r"finish its last messages within tcp_send_timeout=1 s")
        p.close()


# -- 3. many connections, limits -------------------------------------------------------------------

def _raise_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        if hard != resource.RLIM_INFINITY and hard < n:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {n}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))


def _cpu(p, secs):
    c0 = p.cpu_times()
    t0 = time.monotonic()
    time.sleep(secs)
    c1 = p.cpu_times()
    return (c1.user + c1.system - c0.user - c0.system) / (time.monotonic() - t0)


def test_thousand_idle_connections_while_udp_is_answered():
    """1,000 connections held open (tcp_max_connections 2048 and tcp_accept_iplimit 1024 by
    default); UDP OPTIONS answered all along; then every connection still answers; tcp main
    idles (its 0.25 s sweep only) meanwhile."""
    _raise_nofile(4096)
    with run_server(cfg()) as srv, SipClient(srv.addr) as udp:
        peers = []
        try:
            for _ in range(10):
                peers += [Peer(srv.addr) for _ in range(100)]
                r = udp.final(timeout=2.0)
                assert r is not None and r.status == 200
            tcp_main = srv.find("asyncd: tcp main process")[0]
            deadline = time.monotonic() + 5
            while tcp_main.num_fds() < 1000 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert tcp_main.num_fds() >= 1000
            cpu = _cpu(tcp_main, 2.0)      # measured: 0.2 % over 5 s, 20 epoll_wait calls
            assert cpu < 0.05, f"tcp main uses {cpu:.0%} of a CPU with 1,000 idle connections"
            for i, p in enumerate(peers):
                p.send(request(i + 1))
            for i, p in enumerate(peers):
                rs = p.replies(1, 5.0)
                assert cseqs(rs) == [i + 1], (i, rs)
            assert udp.final(timeout=2.0).status == 200
        finally:
            for p in peers:
                p.close()
    assert summary(srv)["accepted"] == 1000


def test_out_of_file_descriptors_tcp_main_waits_instead_of_spinning():
    """tcp main's RLIMIT_NOFILE lowered to what it holds + 10 and 40 clients connect: the
    first are accepted, the others wait in the kernel's backlog while accept fails with
    EMFILE, and tcp main must not retry at once (the listen socket stays readable: that
    spun at 100 % CPU). Given its descriptors back, it accepts and answers the others."""
    with run_server(cfg()) as srv:
        tcp_main = srv.find("asyncd: tcp main process")[0]
        soft, hard = tcp_main.rlimit(psutil.RLIMIT_NOFILE)
        tcp_main.rlimit(psutil.RLIMIT_NOFILE, (tcp_main.num_fds() + 10, hard))
        peers = [Peer(srv.addr) for _ in range(40)]
        try:
            srv.wait_log(r"WARNING: .*tcp: cannot accept on tcp:127\.0\.0\.1:%d: Too many open files"
                         % srv.port)
            cpu = _cpu(tcp_main, 1.0)
            assert cpu < 0.2, f"tcp main uses {cpu:.0%} of a CPU while out of descriptors"
            tcp_main.rlimit(psutil.RLIMIT_NOFILE, (soft, hard))
            for i, p in enumerate(peers):
                p.send(request(i + 1))
            for i, p in enumerate(peers):
                assert cseqs(p.replies(1)) == [i + 1], i
        finally:
            for p in peers:
                p.close()
    assert summary(srv)["accepted"] == 40


def test_connection_flood_over_tcp_max_connections_is_refused():
    """tcp_max_connections=50: the 30 extra connections are closed at once (Kamailio's
    handle_new_connect), one rate-limited WARNING, counted in the exit line; the 50 work and a
    place freed is taken again."""
    with run_server(cfg("tcp_max_connections=50")) as srv:
        # from many loopback addresses, so tcp_accept_iplimit (1024) is not what refuses them
        peers = [Peer(srv.addr, src_ip=f"127.0.{9 + i // 200}.{1 + i % 200}") for i in range(80)]
        try:
            watch(peers, 3.0, closed=30)
            watch(peers, 0.3)               # and no more
            assert [p.eof_at is not None for p in peers] == [False] * 50 + [True] * 30
            for i, p in enumerate(peers[:50]):
                p.send(request(i + 1))
            for i, p in enumerate(peers[:50]):
                assert cseqs(p.replies(1)) == [i + 1]
            peers[0].close()
            time.sleep(0.2)
            p = Peer(srv.addr)
            peers.append(p)
            p.send(request(7))
            assert cseqs(p.replies(1)) == [7] and p.eof_at is None
            srv.wait_log(r"WARNING: .*tcp: maximum number of connections exceeded "
                         r"\(tcp_max_connections=50\): refused 127\.0\.\d+\.\d+:\d+")
        finally:
            for p in peers:
                p.close()
    assert summary(srv)["max_reject"] == 30
    assert len(re.findall(r"maximum number of connections exceeded", srv.log())) <= 2


def test_accept_iplimit_refuses_extra_connections_from_one_address():
    with run_server(cfg("tcp_accept_iplimit=5")) as srv:
        peers = [Peer(srv.addr) for _ in range(7)]
        try:
            watch(peers, 3.0, closed=2)
            watch(peers, 0.3)
            assert [p.eof_at is not None for p in peers] == [False] * 5 + [True] * 2
            other = Peer(srv.addr, src_ip="127.0.0.2")      # another address: its own count
            peers.append(other)
            for i, p in enumerate(peers[:5] + [other]):
                p.send(request(i + 1))
                assert cseqs(p.replies(1)) == [i + 1]
            peers[0].close()
            time.sleep(0.2)
            again = Peer(srv.addr)
            peers.append(again)
            again.send(request(9))
            assert cseqs(again.replies(1)) == [9]
            srv.wait_log(r"WARNING: .*tcp: too many connections from 127\.0\.0\.1 "
                         r"\(tcp_accept_iplimit=5\): refused 127\.0\.0\.1:\d+")
        finally:
            for p in peers:
                p.close()
    assert summary(srv)["ip_reject"] == 2


# -- 4. a peer that never reads ---------------------------------------------------------------------

def test_peer_that_never_reads_is_closed_after_send_timeout():
    """A client with a tiny receive buffer asks for 150 replies of 60 kB (9 MB: more than the
    kernel buffers, which grow to net.ipv4.tcp_wmem's 4 MB) and reads none: the others are
    served meanwhile, and tcp main closes the stuck connection once its queue has not moved
    for tcp_send_timeout=1 s (the write queue limit is raised so it is the time-out, not
    sendq_full, that closes it)."""
    with run_server(cfg("tcp_send_timeout=1\ntcp_conn_wq_max=16777216")) as srv, \
            SipClient(srv.addr) as udp:
        stuck = Peer(srv.addr, rcvbuf=4096)
        other = Peer(srv.addr)
        try:
            t0 = stuck.send(b"".join(request(i, headers=["X-Big: 1"]) for i in range(1, 151)))
            m = None
            while m is None:
                other.send(request(1))
                assert cseqs(other.replies(1, 1.0)) == [1]
                assert udp.final(timeout=1.0).status == 200
                m = re.search(r"tcp: closing connection \d+ with 127\.0\.0\.1:%d: send timeout: "
                              r"nothing written for 1 s \((\d+) bytes queued\)"
                              % stuck.sock.getsockname()[1], srv.log())
                assert time.monotonic() - t0 < 3.0, "not closed within 3 s"
                time.sleep(0.05)
            took = time.monotonic() - t0
            assert 1.0 <= took <= 3.0, took
            assert int(m.group(1)) > 0
            # what the client can still read ends well short of 150 replies
            stuck.closed(5.0)
            assert stuck.eof_at is not None
            assert len(stuck.buf) < 150 * len(PAD)
            other.send(request(2))
            assert cseqs(other.replies(1)) == [2]
        finally:
            stuck.close()
            other.close()
    assert summary(srv)["send_timeout"] == 1


# -- 5. respawn --------------------------------------------------------------------------------------

def test_killed_tcp_main_is_respawned_and_listen_socket_survives():
    """kill -9 of the `tcp main process`: its connections die with it, a new one is forked at
    once (docs/architecture.md, "Respawn"), a connection made while it was gone is accepted by
    its replacement (main holds the listen socket), UDP never stopped."""
    with run_server(cfg()) as srv, SipClient(srv.addr) as udp:
        old = Peer(srv.addr)
        old.send(request(1))
        assert cseqs(old.replies(1)) == [1]
        (victim,) = pids(srv, "tcp main process")
        os.kill(victim, signal.SIGKILL)
        _wait_dead(victim)
        during = Peer(srv.addr)         # the kernel completes it on main's listen socket
        during.send(request(2))
        assert old.closed(2.0) is not None
        m = srv.wait_log(rf"child process {victim} \(tcp main process, rank -4\) terminated by "
                         r"signal 9 \(SIGKILL, perhaps out of memory\); respawning it", 2.0)
        assert m
        new = int(srv.wait_log(r"respawned tcp main process \(rank -4\) as pid (\d+)", 2.0).group(1))
        assert new != victim
        deadline = time.monotonic() + 2.0           # its title is set once it runs
        while pids(srv, "tcp main process") != {new} and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pids(srv, "tcp main process") == {new}
        assert cseqs(during.replies(1, 3.0)) == [2]
        after = Peer(srv.addr)
        after.send(request(3))
        assert cseqs(after.replies(1)) == [3]
        assert udp.final(timeout=2.0).status == 200
        for p in (old, during, after):
            p.close()


def test_killed_tcp_receiver_is_respawned_and_its_queued_messages_served():
    """kill -9 of the only tcp receiver while it runs a message: the replacement reads the
    messages queued on its channel (main holds it open) and answers them on the same
    connection; only the message being run is lost, as a UDP datagram would be."""
    with run_server(cfg(tcp_children=1)) as srv:
        p = Peer(srv.addr)
        p.send(request(1, headers=["X-Sleep: 1"]) + b"".join(request(i) for i in range(2, 7)))
        victim = int(srv.wait_log(r"SLEEP pid=(\d+)", 3.0).group(1))
        assert victim in pids(srv, "tcp receiver (generic) child=0")
        t_kill = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        rs = p.replies(5, 3.0)
        assert cseqs(rs) == [2, 3, 4, 5, 6], rs
        assert time.monotonic() - t_kill < 1.5
        srv.wait_log(rf"child process {victim} \(tcp receiver \(generic\) child=0, rank \d+\) "
                     r"terminated by signal 9")
        srv.wait_log(r"respawned tcp receiver \(generic\) child=0 \(rank \d+\) as pid \d+")
        assert p.eof_at is None
        p.send(request(7))
        assert cseqs(p.replies(1)) == [7]
        p.close()
