"""UDP receiver: recvfrom, parse, run the request or reply path, repeat.

Runs in: udp receivers (`udp receiver child=<i> sock=<ip>:<port>`).

Several receivers share one bound socket (inherited from main); the kernel
hands each datagram to one of them, as in Kamailio. The loop never lets an
exception out: a datagram that cannot be parsed gets a 400 when a reply can
be built (RFC 3261 8.1.3.5 / 16.3 spirit: tell the sender what was wrong),
otherwise it is dropped and counted; a bug in a route or module is logged
and the loop goes on.

Replies: modules' `reply_in` hooks first (tm). If none takes the reply, the
core runs `reply_route` and forwards the reply statelessly to the second
Via after removing ours, or drops it if the top Via is not ours (RFC 3261
18.1.2 / 16.7 step 3).
"""
import re
import signal
import socket
import zlib

from asyncd.core import log
from asyncd.core import runtime as rt
from asyncd.core.route_types import CORE_ONREPLY_ROUTE, REQUEST_ROUTE

MOD = "core"
BUFSIZE = 65536
FLUSH_EVERY = 256     # counters go to the shm process table every N datagrams (and at exit)


class _Stop(Exception):
    """Raised by the SIGTERM handler only while we sit idle in recvfrom."""


class Receiver:
    def __init__(self, proc, sock_index):
        from asyncd.sip import SipParseError, parse_msg
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
        self.ours = _our_addresses(self.script, proc.sockets)
        self.idle = False
        self.n_req = self.n_rpl = self.n_drop = self.n_bad = 0
        self.table = getattr(self.script, "proctable", None)
        self.slot = getattr(proc, "index", None)

    # -- loop -------------------------------------------------------------
    def on_term(self, signum, frame):
        self.proc.stopping = True
        if self.idle:
            raise _Stop()

    def loop(self):
        signal.signal(signal.SIGTERM, self.on_term)
        signal.signal(signal.SIGQUIT, self.on_term)
        recvfrom = self.sock.recvfrom
        handle = self.handle
        proc = self.proc
        n = 0
        try:
            while not proc.stopping:
                try:
                    self.idle = True
                    if proc.stopping:
                        break
                    data, src = recvfrom(BUFSIZE)
                    self.idle = False
                except _Stop:
                    break
                except OSError as e:
                    self.idle = False
                    rt.err(MOD, f"recvfrom on {self.local}: {e}")
                    continue
                handle(data, src)
                n += 1
                if n >= FLUSH_EVERY:
                    n = 0
                    self.flush_counters()
        except _Stop:
            pass
        finally:
            self.idle = False
            self.flush_counters()

    def flush_counters(self):
        if self.table is not None and self.slot is not None:
            try:
                self.table.write_counters(self.slot, self.n_req, self.n_rpl, self.n_drop, self.n_bad)
            except (TypeError, ValueError, IndexError):
                pass

    # -- one datagram -----------------------------------------------------
    def handle(self, data, src):
        try:
            if len(data) < 16:
                # CRLF keepalives (RFC 5626 3.5.1) and runts: nothing to say
                if data.strip():
                    self.n_drop += 1
                return
            try:
                msg = self.parse_msg(data, src, self.local, self.sock_index, "udp")
            except self.parse_error as e:
                self.malformed(data, src, e)
                return
            if msg.is_request:
                self.n_req += 1
                self.on_request(msg)
            else:
                self.n_rpl += 1
                self.on_reply(msg)
        except _Stop:
            raise
        except Exception as e:  # noqa: BLE001 - the loop must survive anything a message triggers
            self.n_drop += 1
            rt.err(MOD, f"error processing a message from {src[0]}:{src[1]}: {e!r}")
            if log.enabled(log.L_DBG):
                import traceback
                rt.dbg(MOD, traceback.format_exc())

    def on_request(self, msg):
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

    def on_reply(self, msg):
        ctx = self.script.new_ctx(msg, self.proc, CORE_ONREPLY_ROUTE)
        for hook in self.rpl_in:
            if hook(ctx):
                return
        run_reply_route = getattr(self.script, "run_reply_route", None)
        if run_reply_route is not None:
            run_reply_route(ctx)
            if ctx.dropped:
                return
        self.forward_reply(msg)

    # -- stateless reply forwarding (RFC 3261 18.1.2, 16.7) ------------------
    def forward_reply(self, msg):
        v1 = msg.via1
        if v1 is None or (v1.host.lower(), v1.port or 5060) not in self.ours:
            self.n_drop += 1
            if log.enabled(log.L_DBG):
                rt.dbg(MOD, f"reply {msg.status} not for us (top Via {v1.host if v1 else None}); dropped")
            return
        v2 = msg.via2
        data = strip_top_via(msg.buf) if v2 is not None else None
        if data is None:
            self.n_drop += 1
            return
        if not self.proc.send(data, via_dest(v2), msg.sock):
            rt.err(MOD, f"cannot forward reply {msg.status} to {via_dest(v2)}")

    # -- malformed input ----------------------------------------------------
    def malformed(self, data, src, e):
        reason = getattr(e, "reason", None) or str(e)
        if getattr(e, "can_reply", False):
            reply, dest = bad_request_reply(data, src, reason)
            if reply is not None and self.proc.send(reply, dest, self.sock_index):
                self.n_bad += 1
                return
        self.n_drop += 1
        if log.enabled(log.L_DBG):
            rt.dbg(MOD, f"dropped malformed datagram ({len(data)} bytes) from {src[0]}:{src[1]}: {reason}")


def run(proc, sock_index=0):
    """ProcSpec.run for a receiver (the supervisor binds sock_index with functools.partial)."""
    Receiver(proc, sock_index).loop()


# -- helpers (also used by tests) ----------------------------------------------

def _our_addresses(script, sockets):
    ours = set()
    for s in sockets:
        ip, port = s.getsockname()[:2]
        ours.add((ip.lower(), port))
        if ip in ("0.0.0.0", "::"):
            for a in _all_local_ips():
                ours.add((a, port))
    aliases = script.core.get("alias") or []
    if isinstance(aliases, str):
        aliases = [aliases]
    ports = {p for _, p in ours}
    for a in aliases:
        host, _, port = str(a).rpartition(":") if ":" in str(a) else (str(a), "", "")
        host = host.split(":", 1)[-1] if host.count(":") == 1 else host  # "udp:host:port"
        if port.isdigit():
            ours.add((host.lower(), int(port)))
        else:
            for p in ports:
                ours.add((str(a).lower(), p))
    return ours


def _all_local_ips():
    try:
        import psutil
        return {a.address.lower() for addrs in psutil.net_if_addrs().values() for a in addrs
                if a.family in (socket.AF_INET, socket.AF_INET6)}
    except Exception:  # noqa: BLE001
        return {"127.0.0.1"}


def via_dest(via):
    """Where a response goes for this Via over UDP: received / rport (RFC 3261 18.2.2, RFC 3581 4)."""
    host = via.received or via.host
    port = via.rport if isinstance(via.rport, int) and via.rport else (via.port or 5060)
    if host.startswith("["):
        host = host[1:-1]
    return host, port


def _header_lines(head):
    """(start, end, name_lower, value) for each header line of `head` (folded lines joined)."""
    out = []
    pos = head.find(b"\r\n")
    if pos < 0:
        return out
    pos += 2
    n = len(head)
    while pos < n:
        eol = head.find(b"\r\n", pos)
        if eol < 0:
            eol = n
        while eol < n and head[eol + 2:eol + 3] in (b" ", b"\t"):
            nxt = head.find(b"\r\n", eol + 2)
            eol = n if nxt < 0 else nxt
        name, colon, value = head[pos:eol].partition(b":")
        if colon:
            out.append((pos, eol, name.strip().lower(), value))
        pos = eol + 2
    return out


def _first_comma(value):
    """Index of the first comma separating header values (not inside quotes or <>), or -1."""
    quoted = angle = False
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if c == 0x5C and quoted:      # backslash escape inside quotes
            i += 2
            continue
        if c == 0x22:
            quoted = not quoted
        elif not quoted and c == 0x3C:
            angle = True
        elif not quoted and c == 0x3E:
            angle = False
        elif c == 0x2C and not quoted and not angle:
            return i
        i += 1
    return -1


def strip_top_via(buf):
    """The message without its first Via value (RFC 3261 16.7 step 3), or None if it has none."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    for start, eol, name, value in _header_lines(buf[:end + 2]):
        if name in (b"via", b"v"):
            i = _first_comma(value)
            if i < 0:
                return buf[:start] + buf[eol + 2:]
            rest = value[i + 1:].lstrip(b" \t\r\n")
            return buf[:start] + buf[start:eol].partition(b":")[0] + b": " + rest + buf[eol:]
    return None


_COPY = {b"via": b"Via", b"v": b"Via", b"from": b"From", b"f": b"From", b"to": b"To", b"t": b"To",
         b"call-id": b"Call-ID", b"i": b"Call-ID", b"cseq": b"CSeq"}
_VIA_ADDR = re.compile(rb"^\s*SIP\s*/\s*2\.0\s*/\s*UDP\s+([^\s;:,]+|\[[^\]]+\])(?:\s*:\s*(\d+))?(.*)", re.I | re.S)
_PHRASE_BAD = re.compile(r"[^\x20-\x7e]")


def bad_request_reply(data, src, reason):
    """A 400 for a request we could not parse, built from its raw header lines, and where to send it.

    Only the headers RFC 3261 8.2.6.2 copies are taken, as written. Returns (None, None) when
    the datagram is not a request we may answer (a reply, an ACK, no usable Via).
    """
    end = data.find(b"\r\n\r\n")
    head = data[:end + 2] if end >= 0 else data
    first = head.split(b"\r\n", 1)[0]
    if first.startswith(b"SIP/") or first.split(b" ", 1)[0].upper() == b"ACK" or b" " not in first:
        return None, None
    lines = []
    top_via = None
    to_line = None
    for _, _, name, value in _header_lines(head):
        canon = _COPY.get(name)
        if canon is None:
            continue
        value = value.strip().replace(b"\r\n", b" ")
        if canon == b"Via" and top_via is None:
            top_via = value.split(b",", 1)[0]
        if canon == b"To":
            to_line = len(lines)
        lines.append(canon + b": " + value)
    if top_via is None:
        return None, None
    m = _VIA_ADDR.match(top_via)
    if m is None:
        return None, None
    params = m.group(3).lower()
    port = int(m.group(2)) if m.group(2) else 5060
    if b";rport" in params.replace(b" ", b""):
        port = src[1]  # RFC 3581: reply to the source port; RFC 3261 18.2.2: to the source address
    if to_line is not None and b";tag=" not in lines[to_line].replace(b" ", b"").lower():
        lines[to_line] += b";tag=" + (b"%08x" % zlib.crc32(data[:end] if end > 0 else data))
    phrase = _PHRASE_BAD.sub("?", f"Bad Request ({reason})")[:120]
    from asyncd.modules.sl import SERVER
    out = [f"SIP/2.0 400 {phrase}".encode()] + lines + [f"Server: {SERVER}".encode(),
                                                         b"Content-Length: 0", b"", b""]
    return b"\r\n".join(out), (src[0], port)


__all__ = ["run", "Receiver", "strip_top_via", "bad_request_reply", "via_dest"]
