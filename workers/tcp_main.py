"""The `tcp main process`: owns every TCP connection, accepts, reads, frames,
writes, connects and closes; runs no script.

Runs in: `tcp main process` (rank PROC_TCP_MAIN), one per server; a dead one
is respawned like any child (its connections close with it: the peers see
the reset and reconnect; the listen sockets and the channels are held by main
and survive).

Kamailio splits this between `tcp main` (accept, connection table, timers)
and the tcp readers, which read and frame the connections passed to them
(src/core/tcp_main.c tcp_main_loop, src/core/tcp_read.c tcp_read_req).
asyncd reads and frames here and sends each complete message to the tcp
receiver its Call-ID hashes to (deliver; asyncd.ipc.tcp): one process owns a
connection's bytes both ways, which is what TLS needs, and a receiver busy
in a slow route never holds up reads of other connections.

One epoll loop (Poller), all sockets non-blocking:
- listen sockets: accept; over `tcp_max_connections` or
  `tcp_accept_iplimit` the new connection is closed at once, logged
  (rate-limited) and counted (`local_reject`, `iplimit_reject`); out of
  file descriptors (EMFILE), the listen sockets are left alone until the
  next sweep: the connection stays in the kernel's backlog and the socket
  readable, so retrying at once would spin the loop at 100 % CPU;
- connections: recv → asyncd.sip.stream.StreamFramer → a message to the
  receiver, a CRLF pong to a CRLFCRLF ping (RFC 5626 §3.5.1), or, when
  framing is lost (RFC 3261 §18.3: Content-Length missing or bad, message
  over the limit), a 400/513 when one can be built and then close; at the
  peer's EOF or lost framing a connection that delivered messages is not
  closed before its receiver has run them and their replies are written
  (the drain marker, asyncd.ipc.tcp), at most `tcp_send_timeout` later;
- the channel from every other process: send requests (asyncd.ipc.tcp);
- the channels to the receivers, only while one has a backlog.
A sweep every 0.25 s closes connections whose partial message is older than
`tcp_msg_read_timeout` (slowloris), whose queued writes did not move for
`tcp_send_timeout` (a peer that never reads), whose connect did not finish
in `tcp_connect_timeout`, or that were idle for `tcp_connection_lifetime`.
A connection tcp main stopped reading because its receiver is behind
(RX_BACKLOG) is not read-timed-out or idle meanwhile: the wait is ours.
"""
import errno
import os
import re
import select
import socket
import time
from collections import deque

from asyncd.core import log
from asyncd.core.cfg_groups import updater
from asyncd.core.net import sock_name
from asyncd.ipc.tcp import (OP_ALIAS, OP_CLOSE, S, SND_CLOSE, SND_NO_CONNECT, pack_drain, pack_rx,
                            unpack_tx)
from asyncd.sip import SipParseError, build_reply, parse_msg
from asyncd.sip.http import build_http_reply
from asyncd.sip.stream import BAD, MSG, PING, StreamFramer

MOD = "core"
_CALLID = re.compile(rb"\r\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*)", re.I)
SWEEP = 0.25
RX_BACKLOG = 1 << 20       # bytes queued for one receiver before its connections stop being read
WARN_KEYS = 1024           # rate-limited warnings remembered before the stale ones are dropped
READ, WRITE = 1, 2         # what a connection wants, as selectors names them
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK)
_NO_FD = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Poller:
    """selectors' register/modify/unregister/select over select.epoll, without its
    per-event key objects: select() gives (data, READ|WRITE) pairs. tcp main runs
    two to four events per request; this is its hot loop."""

    def __init__(self):
        self.ep = select.epoll()
        self.data = {}

    @staticmethod
    def _flags(events):
        return (select.EPOLLIN if events & READ else 0) | (select.EPOLLOUT if events & WRITE else 0)

    def register(self, sock, events, data):
        fd = sock.fileno()
        self.ep.register(fd, self._flags(events))
        self.data[fd] = data

    def modify(self, sock, events, data):
        fd = sock.fileno()
        self.ep.modify(fd, self._flags(events))
        self.data[fd] = data

    def unregister(self, sock):
        fd = sock.fileno()
        self.data.pop(fd, None)
        self.ep.unregister(fd)

    def select(self, timeout):
        data = self.data
        out = []
        for fd, ev in self.ep.poll(timeout):
            d = data.get(fd)
            if d is not None:
                # as selectors: an error or hang-up wakes both a reader and a writer
                out.append((d, (WRITE if ev & ~select.EPOLLIN else 0) |
                            (READ if ev & ~select.EPOLLOUT else 0)))
        return out


class Conn:
    __slots__ = ("id", "sock", "index", "peer", "rcv", "framer", "out", "outlen",
                 "last", "msg_start", "stall", "connecting", "deadline", "closing",
                 "draining", "rcvs", "paused", "aliases", "incoming", "events")

    def __init__(self, cid, sock, index, peer, rcv, framer, incoming, now):
        self.id, self.sock, self.index, self.peer = cid, sock, index, peer
        self.rcv, self.framer, self.incoming = rcv, framer, incoming
        self.out = deque()
        self.outlen = 0
        self.last = now
        self.msg_start = 0.0
        self.stall = 0.0
        self.connecting = False
        self.deadline = 0.0
        self.closing = False        # no more reads; closed once drained and written
        self.draining = 0           # OP_CLOSEs awaited, one per receiver in rcvs (deadline: until when)
        self.rcvs = set()           # the receivers its messages went to
        self.paused = False
        self.aliases = []
        self.events = 0


class TcpMain:
    def __init__(self, proc, plan):
        self.proc = proc
        self.plan = plan
        self.conf = plan.conf
        self.sel = Poller()
        self.conns = {}          # conid -> Conn
        self.by_addr = {}        # (ip, port) -> Conn: the peer address, and force_tcp_alias aliases
        self.per_ip = {}         # peer ip -> open incoming connections
        self.rx_back = [deque() for _ in plan.rx]
        self.rx_bytes = [0] * len(plan.rx)
        self.rx_paused = [set() for _ in plan.rx]
        self.rr = 0
        self.nrx = len(plan.rx)
        self.batch = None        # on_tx: connection -> bytes to send when the batch ends
        self.words = plan.words
        self.addrs = {i: s.getsockname()[:2] for i, s in plan.listen.items()}
        self.accepting = False   # the listen sockets are in the selector
        self._warned = {}
        self._warn_prune = WARN_KEYS

    # -- counters and rate-limited warnings ---------------------------------
    def count(self, name, n=1):
        self.words[8 + S[name]] += n

    def warn_limited(self, key, text):
        """One WARNING a second per key at most (a flood must not flood the log). Keys name
        connections and addresses: the ones older than a second are dropped when the dict
        doubles (from WARN_KEYS), or every refused address and full queue ever seen stayed."""
        now = time.monotonic()
        warned = self._warned
        if now - warned.get(key, -1.0e9) < 1.0:
            return
        if len(warned) >= self._warn_prune:
            for k in [k for k, t in warned.items() if now - t >= 1.0]:
                del warned[k]
            self._warn_prune = max(WARN_KEYS, 2 * len(warned))
        warned[key] = now
        log.warn(MOD, text)

    # -- loop ---------------------------------------------------------------
    def loop(self):
        sel = self.sel
        for s in self.plan.listen.values():
            s.setblocking(False)
        self.watch_listen(True)
        self.plan.tx_r.setblocking(False)
        sel.register(self.plan.tx_r, READ, ("tx", None))
        for a, _b in self.plan.rx:
            a.setblocking(False)
        # a respawned tcp main starts with no connection: the gauges of the dead one are void
        self.words[8 + S["current_opened_connections"]] = 0
        self.words[8 + S["current_write_queue_size"]] = 0
        proc = self.proc
        next_sweep = time.monotonic() + SWEEP
        cfg_update = updater(proc.script)     # Kamailio's cfg_update() per loop turn
        while not proc.stopping:
            cfg_update()
            timeout = max(0.0, next_sweep - time.monotonic())
            try:
                events = sel.select(timeout)
            except InterruptedError:
                continue
            for (kind, arg), mask in events:
                try:
                    if kind == "conn":
                        self.on_conn(arg, mask)
                    elif kind == "tx":
                        self.on_tx()
                    elif kind == "listen":
                        self.on_accept(self.plan.listen[arg], arg)
                    else:
                        self.flush_rx(arg)
                except Exception as e:  # noqa: BLE001 - one connection's trouble must not stop the others
                    log.err(MOD, f"tcp: {kind}: {e!r}")
                    if kind == "conn":
                        self.close(arg, "error")
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + SWEEP
                self.sweep(now)
        for c in list(self.conns.values()):
            self.close(c, None)

    # -- accept ----------------------------------------------------------------
    def on_accept(self, lsock, index):
        conf = self.conf
        for _ in range(64):
            try:
                s, peer = lsock.accept()
            except OSError as e:
                if e.errno in _AGAIN:
                    return
                if e.errno in _NO_FD:
                    self.watch_listen(False)
                    self.warn_limited("emfile", f"tcp: cannot accept on tcp:{sock_name(*self.addrs[index])}: "
                                                f"{e.strerror}; accepting again in {SWEEP} s")
                return
            peer = (peer[0], peer[1])
            if len(self.conns) >= conf.max_connections:
                s.close()
                self.count("local_reject")
                self.warn_limited("max", f"tcp: maximum number of connections exceeded "
                                         f"(tcp_max_connections={conf.max_connections}): "
                                         f"refused {peer[0]}:{peer[1]}")
                continue
            if conf.accept_iplimit and self.per_ip.get(peer[0], 0) >= conf.accept_iplimit:
                s.close()
                self.count("iplimit_reject")
                self.warn_limited(("ip", peer[0]), f"tcp: too many connections from {peer[0]} "
                                                   f"(tcp_accept_iplimit={conf.accept_iplimit}): "
                                                   f"refused {peer[0]}:{peer[1]}")
                continue
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c = self.add(s, index, peer, incoming=True)
            self.per_ip[peer[0]] = self.per_ip.get(peer[0], 0) + 1
            self.count("passive_open")
            self.count("established")
            c.events = READ
            self.sel.register(s, READ, ("conn", c))

    def watch_listen(self, on):
        """Accept (or stop accepting, the backlog waits in the kernel) on every listen socket."""
        if on == self.accepting:
            return
        self.accepting = on
        for i, s in self.plan.listen.items():
            if on:
                self.sel.register(s, READ, ("listen", i))
            else:
                self.sel.unregister(s)

    def add(self, s, index, peer, incoming):
        now = time.monotonic()
        c = Conn(self.plan.next_conid(), s, index, peer, self.pick_receiver(),
                 StreamFramer(self.conf.max_msg, self.conf.accept_no_cl), incoming, now)
        self.conns[c.id] = c
        self.by_addr.setdefault(peer, c)
        self.count("current_opened_connections")
        return c

    def pick_receiver(self):
        """Round-robin over the receivers: a connection's fallback receiver (for a
        message with no Call-ID) and the one a local 477 goes to; messages go by
        Call-ID (deliver)."""
        self.rr = (self.rr + 1) % self.nrx
        return self.rr

    # -- reading ------------------------------------------------------------
    def on_conn(self, c, mask):
        if c.connecting:
            self.on_connected(c)
            return
        if mask & WRITE:
            self.write(c)
        if mask & READ and c.id in self.conns:
            self.read(c)

    def read(self, c):
        try:
            data = c.sock.recv(65536)
        except OSError as e:
            if e.errno in _AGAIN:
                return
            self.count("con_reset")
            self.close(c, f"read error: {e.strerror}")
            return
        now = time.monotonic()
        c.last = now
        if not data:
            ev = c.framer.eof()
            if ev:
                self.bad(c, ev[0], eof=True)
            else:
                self.finish(c)
            return
        new = False             # a message ended here: what is left unfinished is the next one
        for ev in c.framer.feed(data):
            kind = ev[0]
            if kind == MSG:
                new = True
                self.deliver(c, ev[1])
            elif kind == PING:
                self.count("crlf_pings")
                if self.conf.crlf_ping:
                    self.queue(c, b"\r\n")
            elif kind == BAD:
                self.bad(c, ev)
                return
        # tcp_msg_read_timeout runs from the first byte of the unfinished message, so a
        # stream whose reads always end inside the next message is not taken for a stall
        if not c.framer.partial:
            c.msg_start = 0.0
        elif new or not c.msg_start:
            c.msg_start = now

    def bad(self, c, ev, eof=False):
        """Framing is lost (RFC 3261 §18.3): answer when the header block makes a
        reply possible, then close once the reply is written."""
        _, code, reason, head = ev
        if code == 513:
            self.count("msg_too_big")
        else:
            self.count("bad_framing")
        log.warn(MOD, f"tcp: {reason} from {c.peer[0]}:{c.peer[1]} (connection {c.id}); closing")
        if head and not eof:
            reply = _reply_to_head(head, code, reason, c, self.addrs)
            if reply:
                self.queue(c, reply)
        self.finish(c)

    def finish(self, c):
        """Read no more; close once the receiver has run what this connection sent and
        the replies are written (a half-closed peer still gets them)."""
        if c.id not in self.conns:
            return
        c.closing = True
        c.msg_start = 0.0
        if c.rcvs:
            c.draining = len(c.rcvs)
            c.deadline = time.monotonic() + self.conf.send_timeout
            marker = pack_drain(c.id, c.index, c.peer[0], c.peer[1])
            for r in c.rcvs:
                self.to_receiver(c, marker, r)
        self.set_events(c)
        if not c.out and not c.draining:
            self.close(c, None)

    def deliver(self, c, data):
        """A message goes to the receiver its Call-ID hashes to: one call's requests and
        replies (INVITE, CANCEL, ACK, BYE) run in one receiver in the order they came,
        as Kamailio's reader runs a connection's; different calls on one connection (a
        trunk) spread over all receivers."""
        self.count("msgs_in")
        r = c.rcv
        if self.nrx > 1:
            end = data.find(b"\r\n\r\n")
            m = _CALLID.search(data, 0, end if end > 0 else len(data))
            if m is not None:
                r = hash(m.group(1).strip()) % self.nrx
        c.rcvs.add(r)
        self.to_receiver(c, pack_rx(c.id, c.index, c.peer[0], c.peer[1], data), r)

    def to_receiver(self, c, frame, r=None):
        if r is None:
            r = c.rcv
        if self.rx_send(r, frame):
            return
        if self.rx_bytes[r] > RX_BACKLOG and not c.paused:
            c.paused = True            # TCP flow control pushes back on the peer
            self.rx_paused[r].add(c)
            self.set_events(c)

    def rx_send(self, r, frame):
        """True when the frame went straight to receiver r, else it waits in r's backlog."""
        if not self.rx_back[r]:
            try:
                self.plan.rx[r][0].send(frame)
                return True
            except BlockingIOError:
                self.sel.register(self.plan.rx[r][0], WRITE, ("rx", r))
        self.rx_back[r].append(frame)
        self.rx_bytes[r] += len(frame)
        return False

    def unsent(self, index, peer, items, why):
        """Requests that could not leave because the connection to `peer` could not
        be opened: each gets a local `477` as if the next hop had sent it, through a
        receiver, so tm ends the branch now (failure_route, or the reply upstream)
        instead of at fr_timer. Kamailio's t_relay() fails at once for a refused
        connect (src/core/tcp_main.c tcpconn_1st_send; E_SEND: 477)."""
        for data in items:
            if not data or _is_reply(data) or data[:4] in (b"ACK ", b"CANC"):
                continue
            try:
                m = parse_msg(bytes(data), self.addrs.get(index, ("", 0)), peer, index, "tcp")
                reply = build_reply(m, 477, "Unfortunately error on sending to next hop occurred"
                                            f" ({why})")
            except Exception:  # noqa: BLE001 - not a request we can answer: its fr timer will
                continue
            self.rx_send(self.pick_receiver(), pack_rx(0, index, peer[0], peer[1], reply))

    def flush_rx(self, r):
        q = self.rx_back[r]
        s = self.plan.rx[r][0]
        while q:
            try:
                s.send(q[0])
            except BlockingIOError:
                return
            self.rx_bytes[r] -= len(q.popleft())
        self.sel.unregister(s)
        now = time.monotonic()
        for c in self.rx_paused[r]:
            c.paused = False
            if c.id in self.conns:
                # the read and idle clocks start again: the peer waited for us
                c.last = now
                if c.msg_start:
                    c.msg_start = now
                self.set_events(c)
        self.rx_paused[r].clear()

    # -- writing --------------------------------------------------------------
    def queue(self, c, data, msgs=1):
        if not data:
            return True
        if c.outlen + len(data) > max(self.conf.conn_wq_max, len(data)) and c.out:
            self.count("sendq_full")
            self.warn_limited(("wq", c.id), f"tcp: write queue of connection {c.id} to "
                                            f"{c.peer[0]}:{c.peer[1]} is full; closing it")
            self.close(c, None)
            return False
        if not c.out and not c.connecting:
            try:
                n = c.sock.send(data)
            except BlockingIOError:
                n = 0
            except OSError as e:
                self.count("con_reset")
                self.close(c, f"write error: {e.strerror}")
                return False
            c.last = time.monotonic()
            if n == len(data):
                self.count("msgs_out", msgs)
                return True
            data = data[n:]
            c.stall = c.last
        elif not c.out:
            c.stall = time.monotonic()
        c.out.append(data)
        c.outlen += len(data)
        self.count("current_write_queue_size", len(data))
        self.count("msgs_out", msgs)
        self.set_events(c)
        return True

    def write(self, c):
        while c.out:
            data = c.out[0]
            try:
                n = c.sock.send(data)
            except BlockingIOError:
                return
            except OSError as e:
                self.count("con_reset")
                self.close(c, f"write error: {e.strerror}")
                return
            c.last = c.stall = time.monotonic()
            c.outlen -= n
            self.words[8 + S["current_write_queue_size"]] -= n
            if n < len(data):
                c.out[0] = data[n:]
                return
            c.out.popleft()
        if c.closing and not c.draining:
            self.close(c, None)
        else:
            self.set_events(c)

    def set_events(self, c):
        ev = 0 if (c.paused or c.closing) else READ
        if c.out or c.connecting:
            ev |= WRITE
        if ev != c.events:
            if c.events == 0:
                self.sel.register(c.sock, ev, ("conn", c))
            elif ev == 0:
                self.sel.unregister(c.sock)
            else:
                self.sel.modify(c.sock, ev, ("conn", c))
            c.events = ev

    # -- requests from the other processes ---------------------------------------
    def on_tx(self):
        """Up to 256 send requests per wake-up; what they write to one connection
        goes out in one send() at the end (under load a trunk's replies come in
        tens per wake-up: one system call instead of one each)."""
        recv = self.plan.tx_r.recv
        self.batch = {}
        try:
            for _ in range(256):
                try:
                    buf = recv(70000)
                except BlockingIOError:
                    return
                try:
                    self.handle_tx(buf)
                except Exception as e:  # noqa: BLE001 - a bad request must not stop the loop
                    log.err(MOD, f"tcp: send request failed: {e!r}")
        finally:
            batch, self.batch = self.batch, None
            for c in list(batch):
                self.flush_batch(c, batch)

    def flush_batch(self, c, batch):
        parts = batch.pop(c, None)
        if parts and c.id in self.conns:
            self.queue(c, parts[0] if len(parts) == 1 else b"".join(parts), len(parts))

    def handle_tx(self, buf):
        op, conid, index, ip, port, data = unpack_tx(buf)
        flags, op = op >> 4, op & 15
        c = self.conns.get(conid) if conid else None
        if op == OP_ALIAS:
            if c is not None and (ip, port) not in self.by_addr:
                self.by_addr[(ip, port)] = c
                c.aliases.append((ip, port))
            return
        if op == OP_CLOSE:
            if c is not None:
                if self.batch:
                    self.flush_batch(c, self.batch)     # what it was sent before goes first
                if c.draining > 1:
                    c.draining -= 1             # another receiver still runs its messages
                    return
                c.draining = 0
                c.closing = True
                self.set_events(c)
                if not c.out:
                    self.close(c, None)
            return
        if c is None:
            c = self.by_addr.get((ip, port))
        if c is None and _is_reply(data):
            # RFC 3261 §18.2.2: the request's connection is gone: the top Via's
            # received address and sent-by port (or 5060)
            alt = _via_target(data, index, self.addrs)
            if alt is not None:
                ip, port = alt
                c = self.by_addr.get(alt)
        if c is None:
            if flags & SND_NO_CONNECT or self.conf.no_connect:
                log.warn(MOD, f"tcp: no connection to {ip}:{port} and connecting is not "
                              f"allowed: message dropped")
                return
            c = self.connect(index, ip, port)
            if c is None:
                self.unsent(index, (ip, port), [data], "connect failed")
                return
        batch = self.batch
        if batch is not None and not flags & SND_CLOSE:
            parts = batch.get(c)
            if parts is None:
                batch[c] = [data]
            else:
                parts.append(data)
            return
        if batch:
            self.flush_batch(c, batch)
        if self.queue(c, data) and flags & SND_CLOSE and c.id in self.conns:
            c.closing = True                    # set_*_close(): once what is queued is written
            if not c.out:
                self.close(c, None)
            else:
                self.set_events(c)

    def connect(self, index, ip, port):
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        try:
            socket.inet_pton(family, ip)
        except OSError:
            # a host name (a crafted Via with no received): resolving it would block the loop
            log.err(MOD, f"tcp: cannot connect to {ip}:{port}: not an IP address")
            return None
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        local = self.addrs.get(index)
        try:
            same_family = local and (":" in local[0]) == (family == socket.AF_INET6)
            if same_family and local[0] not in ("0.0.0.0", "::"):
                s.bind((local[0], 0))
            rc = s.connect_ex((ip, port))
        except OSError as e:
            s.close()
            self.count("connect_failed")
            log.err(MOD, f"tcp: cannot connect to {ip}:{port}: {e.strerror}")
            return None
        if rc not in (0, errno.EINPROGRESS):
            s.close()
            self.count("connect_failed")
            log.err(MOD, f"tcp: cannot connect to {ip}:{port}: {os.strerror(rc)}")
            return None
        c = self.add(s, index, (ip, port), incoming=False)
        c.connecting = True
        c.deadline = time.monotonic() + self.conf.connect_timeout
        c.events = WRITE
        self.sel.register(s, WRITE, ("conn", c))
        return c

    def on_connected(self, c):
        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.count("connect_failed")
            self.unsent(c.index, c.peer, list(c.out), os.strerror(err))
            self.close(c, f"connect failed: {os.strerror(err)}")
            return
        c.connecting = False
        c.last = c.stall = time.monotonic()
        self.count("connect_success")
        self.count("established")
        self.set_events(c)

    # -- timers and closing ---------------------------------------------------
    def sweep(self, now):
        conf = self.conf
        if not self.accepting:
            self.watch_listen(True)
        for c in list(self.conns.values()):
            if c.connecting:
                if now >= c.deadline:
                    self.count("connect_failed")
                    self.unsent(c.index, c.peer, list(c.out), "connect timeout")
                    self.close(c, f"connect timeout ({conf.connect_timeout} s)")
            elif c.out and now - c.stall >= conf.send_timeout:
                self.count("send_timeout")
                self.close(c, f"send timeout: nothing written for {conf.send_timeout} s "
                              f"({c.outlen} bytes queued)")
            elif c.draining and now >= c.deadline:
                self.close(c, f"its receiver did not finish its last messages within "
                              f"tcp_send_timeout={conf.send_timeout} s")
            elif c.paused:
                continue        # we stopped reading it (its receiver is behind): no read/idle time-out
            elif c.msg_start and conf.msg_read_timeout and now - c.msg_start >= conf.msg_read_timeout:
                self.count("read_timeout")
                self.close(c, f"message not complete after tcp_msg_read_timeout="
                              f"{conf.msg_read_timeout} s ({c.framer.buffered} bytes)")
            elif now - c.last >= conf.lifetime and not c.out:
                self.count("con_timeout")
                self.close(c, None)

    def close(self, c, why):
        if self.conns.pop(c.id, None) is None:
            return
        if why:
            log.info(MOD, f"tcp: closing connection {c.id} with {c.peer[0]}:{c.peer[1]}: {why}")
        for a in [c.peer] + c.aliases:
            if self.by_addr.get(a) is c:
                del self.by_addr[a]
        if c.incoming:
            n = self.per_ip.get(c.peer[0], 1) - 1
            if n > 0:
                self.per_ip[c.peer[0]] = n
            else:
                self.per_ip.pop(c.peer[0], None)
        if c.outlen:
            self.words[8 + S["current_write_queue_size"]] -= c.outlen
        self._dec_current()
        if c.events:
            try:
                self.sel.unregister(c.sock)
            except (KeyError, ValueError, OSError):
                pass
        for r in c.rcvs | {c.rcv}:
            self.rx_paused[r].discard(c)
        try:
            c.sock.close()
        except OSError:
            pass

    def _dec_current(self):
        w = 8 + S["current_opened_connections"]
        if self.words[w]:
            self.words[w] -= 1


def _reply_to_head(head, code, reason, c, addrs):
    """`code reason` for the request whose header block is `head`, or None."""
    try:
        m = parse_msg(bytes(head), c.peer, addrs.get(c.index, ("", 0)), c.index, "tcp")
    except SipParseError as e:
        m = e.msg
    except Exception:  # noqa: BLE001 - too broken to answer
        return None
    if m is None or not m.is_request or m.method == "ACK":
        return None
    try:
        if m.http:
            return build_http_reply(m.version, code, reason)
        return build_reply(m, code, reason)
    except Exception:  # noqa: BLE001 - too broken to answer
        return None


def _is_reply(data):
    return data[:8] == b"SIP/2.0 "


def _via_target(data, index, addrs):
    """(received or sent-by host, sent-by port or 5060) of a reply's top Via."""
    try:
        m = parse_msg(data, ("0.0.0.0", 0), addrs.get(index, ("", 0)), index, "tcp")
        v = m.via1
        if v is None:
            return None
        host = v.received or v.host.strip("[]")
        return (host, v.port or 5060)
    except Exception:  # noqa: BLE001 - no usable Via: nowhere to go
        return None


def run(proc, row, instance):
    """The loop of the `tcp main process` row: its handlers are the TcpPlan."""
    TcpMain(proc, row.handlers).loop()
