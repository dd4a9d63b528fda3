"""UDP receiver: recvfrom, parse, run the request or reply path, repeat.

Runs in: udp receivers (`udp receiver child=<i> sock=<ip>:<port>`).

Several receivers share one bound socket (inherited from main); the kernel
hands each datagram to one of them, as in Kamailio. The loop never lets an
exception out: a datagram that cannot be parsed gets a 400 when a reply can
be built (RFC 3261 8.1.3.5 / 16.3 spirit: tell the sender what was wrong),
otherwise it is dropped and counted; a bug in a route or module is logged
and the loop goes on.

Counting: Kamailio's core: statistics (asyncd.core.core_stats), bumped where
Kamailio counts them: rcv_requests(_<method>) and rcv_replies(_<class>...)
before the script, as kex's pre-script callbacks do (src/modules/kex/
core_stats.c km_cb_req_stats, km_cb_rpl_stats, km_cb_rpl_stats_by_method);
bad_msg_hdr for what does not parse (src/core/parser/msg_parser.c);
fwd_replies / drop_replies in stateless reply forwarding (src/core/forward.c
forward_reply). Each is one `cnt[h] += 1` on this process's shm row.

Replies: modules' `reply_in` hooks first (tm). If none takes the reply, the
core runs `reply_route` and forwards the reply statelessly to the second
Via after removing ours, or drops it if the top Via is not ours (RFC 3261
18.1.2 / 16.7 step 3).
"""
import fcntl
import re
import signal
import struct
import time
import traceback

from asyncd.cfg.pvcore import fmt
from asyncd.core import log
from asyncd.core.cfg_groups import updater
from asyncd.core.net import local_ips, proto_socket
from asyncd.core.route_types import CORE_ONREPLY_ROUTE, EVENT_ROUTE, REQUEST_ROUTE
from asyncd.sip import SipParseError, build_reply, parse_msg, reply_addr
from asyncd.sip.build import strip_top_via, via_dest

MOD = "core"
BUFSIZE = 65536
_SIOCGSTAMP = 0x8906                # linux/sockios.h: receive time of the last datagram read
_TIMEVAL = struct.Struct("@ll")


class _Stop(Exception):
    """Raised by the SIGTERM handler only while we sit idle in recvfrom."""


class Backlog:
    """How late the shared UDP socket's queue is, per datagram: the kernel's
    arrival stamp of the datagram just read (SIOCGSTAMP, enabled by a first
    call at start, ~0.7 µs) against now. While the queue is short it looks
    at every 8th datagram; once one waited more than half of `delay_ms` it
    looks at every 4th (a look costs ~1 µs, and the datagrams queued behind a
    late one are no less late). A datagram that waited more than `delay_ms`
    marks the process overloaded until the next look (proc.overloaded, read
    by tm's request_in: a new request gets 503 before the script runs,
    docs/kamailio-tm.md §7). So the queue settles near `delay_ms` of wait:
    what exceeds the rate the server can serve is answered at a fraction of
    the cost of serving it, and nothing is left to the kernel's drops.
    Kamailio has no such signal: a request it cannot serve waits in the
    queue or is dropped by the kernel, and its client retransmits into the
    same queue."""

    EVERY = 8
    EVERY_HOT = 4

    def __init__(self, proc, sock, delay_ms):
        self.proc = proc
        self.high = delay_ms / 1000.0
        self.low = self.high / 2
        self.n = 0
        self.hot = False            # the last look found the queue over `low`
        self.said = 0.0             # when the last NOTICE about it was logged
        self.fd = sock.fileno() if delay_ms > 0 else -1
        self.on = self.fd >= 0          # a stand-in socket without a descriptor: never late
        if self.on:
            try:
                fcntl.ioctl(self.fd, _SIOCGSTAMP, bytes(16))
            except OSError:
                pass                # ENOENT: nothing read yet; stamping is on from now

    def look(self):
        """After a datagram was read: is it late?"""
        self.n += 1
        if self.n % (self.EVERY_HOT if self.hot else self.EVERY):
            return
        try:
            sec, usec = _TIMEVAL.unpack(fcntl.ioctl(self.fd, _SIOCGSTAMP, bytes(16)))
        except OSError:
            return
        late = time.time() - sec - usec / 1e6
        self.proc.overloaded = late > self.high
        hot = late > self.low
        if hot != self.hot:
            self.hot = hot
            if self.said > time.monotonic() - 1.0:
                return              # one line a second at most, however the queue hovers
            self.said = time.monotonic()
            if hot:
                log.notice(MOD, f"receive queue: a request waited {late * 1000:.0f} ms; requests that "
                                f"waited over {self.high * 1000:.0f} ms get 503 (overload_delay_ms)")
            else:
                log.notice(MOD, f"receive queue: back under {self.low * 1000:.0f} ms")


class Receiver:
    proto = "udp"
    conid = 0

    def __init__(self, proc, sock_index):
        self.build_reply = build_reply
        self.reply_addr = reply_addr
        self.proc = proc
        self.script = proc.script
        self.sock_index = sock_index
        self.sock = proc.sockets[sock_index]
        self.local = self.sock.getsockname()[:2]
        self.parse_msg = parse_msg
        self.parse_error = SipParseError
        mods = self.script.modules
        self.req_in = [m.hooks["request_in"] for m in mods if m.hooks.get("request_in")]
        self.req_done = [m.hooks["request_done"] for m in mods if m.hooks.get("request_done")]
        self.rpl_in = [m.hooks["reply_in"] for m in mods if m.hooks.get("reply_in")]
        self.nonsip_in = [m.hooks["nonsip_in"] for m in mods if m.hooks.get("nonsip_in")]
        self.reply_route = (self.script.run_reply_route
                            if getattr(self.script, "has_reply_route", False) else None)
        self.ours = _our_addresses(self.script, proc.sockets)
        self.sock_addrs = getattr(self.script, "sock_addrs", None) or ()
        self.idle = False
        # this process's statistics row (a respawned receiver takes over its slot's row)
        self.cnt = proc.cnt
        self.log_prefix = self.script.log_prefix       # parsed core param, or None
        self.cs = self.script.core_stats            # registered by init_modules (before the fork)
        self.backlog = Backlog(proc, self.sock, int(self.script.core.get("overload_delay_ms", 0))
                               if self.proto == "udp" else 0)

    # -- loop -------------------------------------------------------------
    def on_term(self, signum, frame):
        self.proc.stopping = True
        if self.idle:
            raise _Stop()

    def read(self):
        """The next (data, src) to handle, or None for nothing: here a datagram."""
        got = self.sock.recvfrom(BUFSIZE)
        if self.backlog.on:
            self.backlog.look()
        return got

    def loop(self):
        signal.signal(signal.SIGTERM, self.on_term)
        signal.signal(signal.SIGQUIT, self.on_term)
        read = self.read
        handle = self.handle
        proc = self.proc
        cfg_update = updater(proc.script)     # Kamailio's cfg_update() per message
        try:
            while not proc.stopping:
                try:
                    self.idle = True
                    if proc.stopping:
                        break
                    got = read()
                    self.idle = False
                except _Stop:
                    break
                except OSError as e:
                    self.idle = False
                    log.err(MOD, f"reading {self.proto} messages for {self.local}: {e}")
                    continue
                if got is None:
                    continue
                cfg_update()
                handle(*got)
        except _Stop:
            pass
        finally:
            self.idle = False

    # -- one datagram -----------------------------------------------------
    def handle(self, data, src):
        try:
            if len(data) < 16:
                # CRLF keepalives (RFC 5626 3.5.1) and runts: nothing to say
                if data.strip():
                    self.cnt[self.cs.bad_msg_hdr] += 1
                return
            try:
                msg = self.parse_msg(data, src, self.local, self.sock_index, self.proto)
            except self.parse_error as e:
                self.malformed(data, src, e)
                return
            if self.conid:
                msg.conid = self.conid
            if self.log_prefix is not None:
                self.prefixed(msg)
            elif msg.is_request:
                self.on_request(msg)
            else:
                self.on_reply(msg)
        except _Stop:
            raise
        except Exception as e:  # noqa: BLE001 - the loop must survive anything a message triggers
            log.err(MOD, f"error processing a message from {src[0]}:{src[1]}: {e!r}")
            if log.enabled(log.L_DBG):
                log.dbg(MOD, traceback.format_exc())

    def prefixed(self, msg):
        """The message with the cfg's log_prefix on every line it logs, as
        Kamailio's receive_msg sets it (log_prefix_set) and clears it after."""
        try:
            log.set_prefix(fmt(self.script.new_ctx(msg, self.proc), self.log_prefix))
        except Exception as e:  # noqa: BLE001 - a prefix that cannot be made is no reason to drop
            log.set_prefix("")
            log.dbg(MOD, f"log_prefix: {e!r}")
        try:
            if msg.is_request:
                self.on_request(msg)
            else:
                self.on_reply(msg)
        finally:
            log.set_prefix("")

    def on_request(self, msg):
        if msg.http:
            self.on_nonsip(msg)
            return
        cnt, cs = self.cnt, self.cs
        cnt[cs.rcv_requests] += 1
        h = cs.req_method.get(msg.method, cs.unsupported_methods)
        if h >= 0:
            cnt[h] += 1
        script = self.script
        ctx = script.new_ctx(msg, self.proc, REQUEST_ROUTE)
        for hook in self.req_in:
            if hook(ctx):
                return
        try:
            script.run_request_route(ctx)
        finally:
            for hook in self.req_done:
                hook(ctx)

    def on_nonsip(self, msg):
        """An HTTP request: the modules' nonsip_in hooks in load order until one
        takes it (Kamailio's nonsip_msg_run_hooks, src/core/receive.c); with no
        taker it is dropped and counted, as Kamailio drops it (no SIP route runs)."""
        ctx = self.script.new_ctx(msg, self.proc, EVENT_ROUTE)
        for hook in self.nonsip_in:
            if hook(ctx):
                return
        self.cnt[self.cs.drop_requests] += 1
        if log.enabled(log.L_DBG):
            log.dbg(MOD, f"non-SIP request {msg.method} {msg.ruri} from {msg.src[0]}:{msg.src[1]}"
                         f" not taken by any module; dropped")

    def on_reply(self, msg):
        cnt, cs = self.cnt, self.cs
        status = msg.status
        cnt[cs.rcv_replies] += 1
        cls = status // 100
        h = cs.rpl_class[cls] if 0 <= cls < 10 else -1
        if h >= 0:
            cnt[h] += 1
            h = cs.rpl_code.get(status, -1)
            if h >= 0:
                cnt[h] += 1
            by_method = cs.rpl_method.get(msg.cseq_method)
            if by_method is not None:
                cnt[by_method[cls - 1]] += 1
        ctx = self.script.new_ctx(msg, self.proc, CORE_ONREPLY_ROUTE)
        # Kamailio's receive_msg runs reply_route for every reply before tm sees it;
        # `drop` there ends the reply's processing, tm's included
        if self.reply_route is not None:
            self.reply_route(ctx)
            if ctx.dropped:
                return
        for hook in self.rpl_in:
            if hook(ctx):
                return
        self.forward_reply(msg)

    # -- stateless reply forwarding (RFC 3261 18.1.2, 16.7) ------------------
    def forward_reply(self, msg):
        v1 = msg.via1
        if v1 is None or (v1.host.strip("[]").lower(), v1.port or 5060) not in self.ours:
            self.cnt[self.cs.drop_replies] += 1
            if log.enabled(log.L_DBG):
                log.dbg(MOD, f"reply {msg.status} not for us (top Via {v1.host if v1 else None}); dropped")
            return
        v2 = msg.via2
        if v2 is None:  # we were the last hop: nobody to relay to
            self.cnt[self.cs.drop_replies] += 1
            return
        dest = via_dest(v2)
        sock = self.via_sock(v2, msg.sock)
        if not self.proc.send(strip_top_via(msg), dest, sock):
            self.cnt[self.cs.drop_replies] += 1
            log.err(MOD, f"cannot forward reply {msg.status} to {dest[0]}:{dest[1]}")
        else:
            self.cnt[self.cs.fwd_replies] += 1

    def via_sock(self, via, sock):
        """A listen socket of the Via's transport (a reply that came over TCP may go
        back over UDP): the one it came on when that matches, else the first."""
        i = proto_socket(self.sock_addrs, (via.transport or "udp").lower(), sock)
        return sock if i is None else i

    # -- malformed input ----------------------------------------------------
    def malformed(self, data, src, e):
        """400 (or 505/416, the parser says which) with the parser's reason, when the request's
        Via/From/To/Call-ID/CSeq allow a reply (RFC 3261 8.2.6); else drop. Counted
        as bad_msg_hdr either way (Kamailio counts a header it cannot parse there)."""
        self.cnt[self.cs.bad_msg_hdr] += 1
        reason = e.reason or "Bad Request"
        if e.can_reply and e.msg is not None and e.msg.is_request and e.msg.method != "ACK":
            try:
                data = self.build_reply(e.msg, e.code, reason)
                if self.proc.send(data, self.reply_addr(e.msg), self.sock_index):
                    return
            except Exception as ex:  # noqa: BLE001 - too broken to answer after all
                reason = f"{reason}; no reply possible: {ex!r}"
        if log.enabled(log.L_DBG):
            log.dbg(MOD, f"dropped malformed datagram ({len(data)} bytes) from {src[0]}:{src[1]}: {reason}")


def run(proc, row, instance):
    """The loop of a receiver row's process: the row's handlers are the
    index of the listen socket it reads."""
    Receiver(proc, row.handlers).loop()


# -- helpers -------------------------------------------------------------------

_ALIAS = re.compile(r"^(?:(?:udp|tcp|tls|sctp|wss?):)?(\[[^\]]+\]|[^:]+)(?::(\d+))?$", re.I)


def _our_addresses(script, sockets):
    """(host, port) pairs a top Via must name for a reply to be ours (Kamailio's check_self)."""
    ours = set()
    for s in sockets:
        ip, port = s.getsockname()[:2]
        ours.add((ip.lower(), port))
        if ip in ("0.0.0.0", "::"):
            ours.update((a.lower(), port) for a in local_ips())
    ports = {p for _, p in ours}
    for a in script.core.get("alias") or ():
        # alias=[proto:]host[:port]; without a port it matches any of ours (Kamailio's port 0)
        m = _ALIAS.match(str(a).strip())
        if m:
            host = m.group(1).strip("[]").lower()
            ours.update((host, p) for p in ([int(m.group(2))] if m.group(2) else ports))
    return ours
