"""dispatcher's probing: OPTIONS (ds_ping_method) to the destinations every
ds_ping_interval seconds, their replies and time-outs turned into states.

Runs in: main process (`configure` from dispatcher's mod_init, the process
row), the "secondary timer" timer process (`tick`: the rounds, the
retransmissions, the time-outs) and every udp receiver (`reply_in`: a
reply to a ping is taken there, as Kamailio's ds_options_callback runs in
the process that receives it, event routes included).

Kamailio: src/modules/dispatcher/dispatch.c ds_check_timer / ds_ping_set
(which destinations are probed: ds_ping_result_helper; disabled ones never),
ds_options_callback (a 2xx or a ds_ping_reply_codes code makes the
destination active, anything else -- a 408 on time-out included -- counts
toward ds_probing_threshold); the request is tm's t_request (src/modules/tm/
uac.c): CSeq 10, Max-Forwards 70, From with a tag, To without, a User-Agent
header; retransmitted every T1 doubling up to T2 (retr_timer1/retr_timer2)
and given up after tm's fr_timer, which is a 408.
Differences, on purpose (docs/kamailio-dispatcher.md "Probing"):
- asyncd has no tm UAC: this process builds, sends and retransmits the
  pings itself, from the listen socket Kamailio would use, so the wire is
  the same; Via branch, Call-ID and From tag have asyncd's own shape. The
  local 477 asyncd's tcp main gives a request whose connection is refused
  is ignored: as in Kamailio the ping ends as a 408 at fr_timer.
- UDP and TCP destinations only: one over TLS, SCTP or WebSocket is not
  pinged (a warning), its state only changes by ds_mark_dst or RPC.
- at most 4 pings per destination wait at once (Kamailio: one per round,
  however many fr_timer allows); a round skips a destination that has 4.
- ds_ping_latency_stats is not implemented.
"""
import os
import random
import socket
import time

from asyncd.core import log
from asyncd.core.errors import CfgError
from asyncd.core.net import proto_socket
from asyncd.core.params import split_socket
from asyncd.core.procs import Periodic
from asyncd.modules.dispatcher_list import (DS_DISABLED_DST, DS_INACTIVE_DST, DS_PROBING_DST,
                                            DS_TRYING_DST)
from asyncd.modules.dispatcher_state import Rctx, flags_of, ping_reply_ok, update_state
from asyncd.sip import parse_uri
from asyncd.sip.build import DEFAULT_SERVER_LINE

MOD = "dispatcher"
BRANCH = "z9hG4bKdsp."
PROBE_NONE, PROBE_ALL, PROBE_INACTIVE, PROBE_ONLYFLAGGED = 0, 1, 2, 3
TICK = 0.05
LOCAL_477 = "Unfortunately error on sending to next hop occurred ("   # workers/tcp_main.py unsent


class Pending:
    """One ping in flight (Kamailio: one tm transaction)."""
    __slots__ = ("gen", "half", "idx", "slot", "seq", "data", "addr", "sock", "due", "step", "deadline")

    def __init__(self, gen, half, idx, slot, seq, data, addr, sock, now, reliable=False):
        self.gen, self.half, self.idx, self.slot, self.seq = gen, half, idx, slot, seq
        self.data, self.addr, self.sock = data, addr, sock
        self.step = P.t1
        # RFC 3261 17.1.2.2: timer E retransmits over unreliable transports only
        self.due = float("inf") if reliable else now + self.step
        self.deadline = now + P.fr


class PingState:
    __slots__ = ("st", "interval", "mode", "method", "from_", "t1", "t2", "fr", "next_round",
                 "pending", "seq", "cid", "tag", "ua", "default_socket", "obproxy", "warned")

    def __init__(self):
        self.st = None
        self.interval = 0
        self.pending = []
        self.warned = set()
        self.obproxy = self.default_socket = ""

    def configure(self, st, script, mp):
        """dispatcher.c mod_init's probing part (the tm timers are read once)."""
        self.st = st
        self.interval = int(mp["ds_ping_interval"])
        self.mode = int(mp["ds_probing_mode"])
        self.method = str(mp["ds_ping_method"] or "OPTIONS")
        self.from_ = str(mp["ds_ping_from"] or "sip:dispatcher@localhost")
        self.default_socket = str(mp["ds_default_socket"] or "")
        self.obproxy = str(mp["outbound_proxy"] or "")
        if self.interval <= 0:
            return
        if script.module("tm") is None:
            raise CfgError("dispatcher: could not load the TM-functions - disable DS ping "
                           "(ds_ping_interval needs loadmodule \"tm.so\")")
        tm = script.modparams["tm"]
        self.t1 = int(tm.get("retr_timer1", 500)) / 1000.0
        self.t2 = int(tm.get("retr_timer2", 4000)) / 1000.0
        self.fr = int(tm.get("fr_timer", 30000)) / 1000.0
        self.seq = random.randrange(1, 1 << 30)
        self.cid = random.getrandbits(63)
        self.tag = "%032x" % random.getrandbits(128)
        ua = str(script.core.get("user_agent_header") or "")
        self.ua = ua or "User-Agent: " + DEFAULT_SERVER_LINE.partition(": ")[2]
        self.next_round = 0.0


P = PingState()


def configure(st, script, mp):
    P.configure(st, script, mp)


def periodic_jobs():
    """The pinger's job for the "secondary timer" process (dispatcher.py procs)."""
    return [Periodic(TICK, tick)] if P.interval > 0 else []


# -- the timer process -----------------------------------------------------------------------
def tick(proc):
    now = time.monotonic()
    if P.next_round == 0.0:
        # the first round comes one interval after start, as Kamailio's timer's;
        # a respawned pinger frees the ping slots its predecessor left in flight
        # (their answers are never matched to it: they would block probing)
        half, lst = P.st.current()
        P.st.store.ping_reset(half, lst.ndests)
        P.next_round = now + P.interval
    if now >= P.next_round:
        P.next_round = now + P.interval
        if P.st.store.ping_active():
            try:
                ping_round(proc, now)
            except Exception as e:      # one bad destination never stops the probing
                log.err(MOD, f"ping round failed: {e!r}")
    keep = []
    for p in P.pending:
        if _advance(proc, p, now):
            keep.append(p)
    P.pending = keep


def wants_ping(flags):
    """ds_ping_result_helper (disabled destinations are skipped before)."""
    if P.mode == PROBE_ALL:
        return True
    if P.mode != PROBE_INACTIVE and flags & DS_PROBING_DST:
        return True
    return P.mode == PROBE_INACTIVE and flags & DS_PROBING_DST and flags & DS_INACTIVE_DST


def ping_round(proc, now):
    """ds_ping_set over every set, in the tree's order."""
    half, lst = P.st.current()
    gen = P.st.cache[0]
    for s in lst.order:
        for j, d in enumerate(s.dests):
            flags = flags_of(half, s, j)
            if flags & DS_DISABLED_DST or not wants_ping(flags):
                continue
            _ping_one(proc, gen, half, s, j, d, now)


def _ping_one(proc, gen, half, s, j, d, now):
    target = _target(d)
    if target is None:
        return
    target, proto = target
    index = _send_socket(proc, d, target, proto)
    if index is None:
        _failed(proc, half, s, j, "can't get sending socket")
        return
    idx = s.base + j
    P.seq = P.seq % 0x7FFFFFFF + 1
    slot = P.st.store.ping_take(half, idx, P.seq)
    if slot < 0:
        return
    data = build_ping(proc, index, d, f"{BRANCH}{gen:x}.{idx:x}.{slot}.{P.seq:x}", proto)
    if not proc.send(data, target, index):
        P.st.store.ping_claim(half, idx, slot, P.seq)
        _failed(proc, half, s, j, "send failed")
        return
    P.pending.append(Pending(gen, half, idx, slot, P.seq, data, target, index, now, proto == "tcp"))


def _failed(proc, half, s, j, why):
    """ds_ping_set when tm's t_request fails: a failure with code 500."""
    d = s.dests[j]
    log.err(MOD, f"unable to ping [{d.uri}] in group [{s.id}] ({why})")
    state = DS_TRYING_DST | (DS_PROBING_DST if P.mode != PROBE_NONE else 0)
    if not flags_of(half, s, j) & DS_DISABLED_DST:
        update_state(proc, None, s.id, d.uri, state, Rctx(500, "Sending keepalive failed"))


def _advance(proc, p, now):
    """Retransmit, or time out (408) a ping still unanswered. -> keep it?"""
    st = P.st.store
    if p.gen != P.st.cache[0] or not st.ping_pending(p.half, p.idx, p.slot, p.seq):
        return False
    if now >= p.deadline:
        if st.ping_claim(p.half, p.idx, p.slot, p.seq):
            outcome(proc, p.half, p.idx, 408, None, 0)
        return False
    if now >= p.due:
        proc.send(p.data, p.addr, p.sock)
        p.step = min(p.step * 2, P.t2)
        p.due = now + p.step
    return True


def _target(d):
    """((ip, port), proto) the ping goes to: the host, port and transport
    (UDP or TCP) of the destination's obproxy attr, else of outbound_proxy,
    else of its URI (tm's t_request next hop); None when it cannot be pinged."""
    hop = d.obproxy or P.obproxy
    try:
        u = parse_uri(hop or d.uri)
    except Exception:
        if hop and hop not in P.warned:
            P.warned.add(hop)
            log.err(MOD, f"bad outbound proxy [{hop}]")
        return None
    proto = u.transport or ("tls" if u.scheme == "sips" else "udp")
    if proto not in ("udp", "tcp"):
        if d.uri not in P.warned:
            P.warned.add(d.uri)
            log.warn(MOD, f"{d.uri}: asyncd pings over UDP and TCP only; not probed")
        return None
    ip = None if hop else d.ip
    if ip is None:
        try:
            ip = socket.getaddrinfo(u.host.strip("[]"), None, 0, socket.SOCK_DGRAM)[0][4][0]
        except (OSError, UnicodeError):
            return None
    return (ip, u.port or 5060), proto


def _send_socket(proc, d, target, proto):
    """The destination's socket=, else ds_default_socket, when it speaks
    proto; else the first listen socket of that protocol and family."""
    addrs = getattr(proc.script, "sock_addrs", None) or ()
    for spec in (d.socket, P.default_socket):
        parts = split_socket(spec) if spec else None
        if parts is None:
            continue
        sproto, host, port = parts
        for i, (pr, ip, pt) in enumerate(addrs):
            if pr == (sproto or proto) == proto and ip == host.strip("[]") and (not port or int(port) == pt):
                return i
    return proto_socket(addrs, proto, -1, ":" in target[0])


def _angle(uri):
    return uri if "<" in uri else f"<{uri}>"


def build_ping(proc, index, d, branch, proto="udp"):
    """tm's t_request for ds_ping_set, header for header (src/modules/tm/t_msgbuilder.c)."""
    _proto, ip, port = proc.script.sock_addrs[index]
    host = f"[{ip}]" if ":" in ip else ip
    P.cid = (P.cid + 1) & 0xFFFFFFFFFFFFFFFF
    from_ = d.ping_from or P.from_
    lines = [f"{P.method} {d.uri} SIP/2.0",
             f"Via: SIP/2.0/{proto.upper()} {host}:{port};branch={branch}",
             f"To: {_angle(d.uri)}",
             f"From: {_angle(from_)};tag={P.tag}-{random.getrandbits(32):08x}",
             f"CSeq: 10 {P.method}",
             f"Call-ID: {P.cid:016x}-{os.getpid()}@{ip}",
             "Max-Forwards: 70",
             "Content-Length: 0"]
    if P.ua:
        lines.append(P.ua)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


# -- outcomes ------------------------------------------------------------------------------------
def outcome(proc, half, idx, code, reason, rflags):
    """ds_options_callback for the destination with state index idx."""
    _h, lst = P.st.current()
    for s in lst.order:
        if s.base <= idx < s.base + len(s.dests):
            break
    else:
        return
    j = idx - s.base
    d = s.dests[j]
    flags = flags_of(half, s, j)
    if P.mode == PROBE_ONLYFLAGGED and not flags & DS_PROBING_DST:
        return
    if ping_reply_ok(code):
        state = DS_PROBING_DST if P.mode == PROBE_ALL or (
            P.mode == PROBE_ONLYFLAGGED and flags & DS_PROBING_DST) else 0
    else:
        state = DS_TRYING_DST | (DS_PROBING_DST if P.mode != PROBE_NONE else 0)
    if not flags & DS_DISABLED_DST:
        if update_state(proc, None, s.id, d.uri, state, Rctx(code, reason, rflags)) != 0:
            log.err(MOD, f"Setting the state failed ({d.uri}, group {s.id})")


def reply_in(ctx):
    """A reply whose top Via carries our branch is a ping's: absorbed (True);
    a final one decides the destination's state, here, in this receiver."""
    if P.interval <= 0:
        return False
    try:
        v1 = ctx.msg.via1
        branch = v1.branch if v1 is not None else None
    except Exception:
        return False
    if not branch or not branch.startswith(BRANCH):
        return False
    code = int(ctx.msg.status or 0)
    if code < 200 or (code == 477 and (ctx.msg.reason or "").startswith(LOCAL_477)):
        # asyncd's tcp main answers a refused connect with a local 477 at once;
        # Kamailio's ping transaction waits for fr_timer and ends as a 408
        return True
    try:
        gen, idx, slot, seq = (int(x, 16) for x in branch[len(BRANCH):].split("."))
    except ValueError:
        return True
    half, _lst = P.st.current()
    if gen != P.st.cache[0]:
        return True
    if P.st.store.ping_claim(half, idx, slot, seq):
        outcome(ctx.proc, half, idx, code, ctx.msg.reason, 1)
    return True
