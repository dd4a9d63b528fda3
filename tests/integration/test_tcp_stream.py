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
import itertools
import os
import random
import re
import select
import socket
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import run_server
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
    sl_send_reply("200", "OK");
}
"""


def cfg(core="", tcp_children=2):
    return CFG % {"core": core, "tcp_children": tcp_children, "pad": PAD}


_seq = itertools.count(1)


def request(cseq=1, headers=(), body=b"", method="OPTIONS"):
    """A request as a TCP client sends it. Its Via names port 9 where nobody listens:
    a reply that missed its connection cannot reach the test another way."""
    n = next(_seq)
    lines = [f"{method} sip:test@127.0.0.1 SIP/2.0",
             f"Via: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bK{os.getpid():x}x{n}",
             "Max-Forwards: 70",
             "From: <sip:tester@127.0.0.1>;tag=ft%d" % n,
             "To: <sip:test@127.0.0.1>",
             f"Call-ID: c{n}x{os.getpid()}@test",
             f"CSeq: {cseq} {method}"] + list(headers) + [f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


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
        if not select.select([self.sock], [], [], left)[0]:
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
        for s in select.select(list(live), [], [], left)[0]:
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
        for s in select.select(list(socks), [], [], max(0.0, until - time.monotonic()))[0]:
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
            assert [r.hdr("cseq").split()[1] for r in rs] == ["REGISTER", "INVITE"]
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


def test_half_closed_peer_gets_its_replies(srv):
    """A client that sends its requests and then its FIN (shutdown SHUT_WR) still gets every
    reply before the close, as from Kamailio, whose reader answers a message before it reads
    the EOF behind it (src/core/tcp_read.c tcp_read_req)."""
    for n in (1, 3):
        p = Peer(srv.addr)
        p.send(b"".join(request(i) for i in range(1, n + 1)))
        p.sock.shutdown(socket.SHUT_WR)
        rs = p.replies(n, 3.0)
        assert cseqs(rs) == list(range(1, n + 1)), rs
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
