"""nathelper's NAT pinger: keepalives to usrloc's contacts every natping_interval.

Runs in: main process (`configure` from nathelper's mod_init, the process rows),
the "TIMER NH" processes (× natping_processes: `tick`, once a second) and every
udp receiver (`reply_in`: replies to our SIP pings are absorbed).

Kamailio: src/modules/nathelper/nathelper.c mod_init (the natping_* checks),
child_init (fork_dummy_timer "TIMER NH", one per natping_processes, a 1 s
tick), nh_timer (the walk and the sends), sip_pinger.h (build_sipping,
sipping_rpl_filter, init_sip_ping); src/modules/usrloc/dlist.c
get_all_mem_ucontacts (the partitions).

Each tick, timer process `idx` pings the contacts of the usrloc slots whose
number modulo natping_processes * natping_interval is idx * natping_interval
+ its iteration (0 .. natping_interval-1): every contact once per interval,
the load spread over the processes and the seconds. A contact needs the
usrloc nat_bflag with ping_nated_only 1 (all contacts with 0) and is skipped
with natping_disable_bflag. The keepalive goes from the contact's socket
(force_socket when set; another UDP one when the contact's is not UDP or not
ours) to its received address, else to its Contact URI's host:port (UDP
only): an SIP request (sipping_method, default OPTIONS; From sipping_from)
when the contact has sipping_bflag, or for every contact when ping_nated_only
is 0 and sipping_bflag is set; else 4 zero bytes.
Differences, on purpose (docs/kamailio-nat-acc.md "NAT pinger"):
natping_socket and udpping_from_path (raw sockets, root only) are not
implemented (a WARNING, plain UDP pings instead); keepalive_timeout (usrloc's
keepalive expiry) is not implemented (a WARNING); nathelper.enable_ping
(RPC) does not exist: pinging is always on.
"""
import random
import socket
import time

from asyncd.core import log
from asyncd.core.errors import CfgError
from asyncd.core.net import proto_socket
from asyncd.core.params import split_socket
from asyncd.core.procs import PROC_TIMER, ROLE_TIMER, Periodic, ProcRow, TimerHandlers
from asyncd.modules import usrloc
from asyncd.sip import parse_uri

MOD = "nathelper"
ZERO_PING = b"\x00\x00\x00\x00"     # nathelper.c sbuf: the UDP keepalive


def rhex(n):
    """ut.h int2reverse_hex: hex digits, least significant first ("0" for 0)."""
    n &= 0xFFFFFFFF
    if n == 0:
        return "0"
    out = []
    while n:
        out.append("0123456789abcdef"[n & 0xF])
        n >>= 4
    return "".join(out)


class PingState:
    __slots__ = ("interval", "nated_only", "nat_flag", "sip_flag", "disable_flag", "procs",
                 "sip_from", "method", "callid", "callid_cnt", "fromtag", "iteration",
                 "force_socket", "started")

    def __init__(self):
        self.interval = 0
        self.procs = 0
        self.sip_flag = 0
        self.callid = ""
        self.iteration = 0

    def configure(self, script, mp):
        """nathelper.c mod_init's natping part; -> True when pinging is on."""
        self.interval = int(mp["natping_interval"])
        if self.interval <= 0:
            return False
        if script.module("usrloc") is None:
            raise CfgError("nathelper: natping_interval is set, but can't find usrloc module")
        self.nated_only = int(mp["ping_nated_only"])
        nat_bflag = int(script.modparams["usrloc"]["nat_bflag"])
        self.nat_flag = 0 if nat_bflag < 0 else 1 << nat_bflag
        if self.nated_only and not self.nat_flag:
            raise CfgError("nathelper: bad config - ping_nated_only enabled, but no nat bflag "
                           "set in usrloc module")
        self.procs = int(mp["natping_processes"])
        if self.procs < 0:
            raise CfgError("nathelper: bad config - natping_processes must be >= 0")
        self.sip_flag = _bit(mp["sipping_bflag"])
        self.disable_flag = _bit(mp["natping_disable_bflag"])
        self.sip_from = str(mp["sipping_from"] or "")
        self.method = str(mp["sipping_method"] or "")
        if self.sip_flag and not self.sip_from:
            raise CfgError("nathelper: SIP ping enabled, but SIP ping FROM is empty!")
        if self.sip_flag and not self.method:
            raise CfgError("nathelper: SIP ping enabled, but SIP ping method is empty!")
        self.force_socket = str(mp["force_socket"] or "")
        _warn_unsupported(mp)
        # sip_pinger.h init_sip_ping: random From-tag counter, Call-ID prefix and counter
        self.fromtag = random.getrandbits(31)
        self.callid = rhex(random.getrandbits(31))[:8]
        self.callid_cnt = random.getrandbits(31)
        self.started = time.monotonic()
        return True


def _bit(v):
    v = int(v)
    return 0 if v < 0 else 1 << v


def _warn_unsupported(mp):
    if mp["natping_socket"] or int(mp["udpping_from_path"]):
        log.warn(MOD, "natping_socket / udpping_from_path (raw socket pings) are not implemented "
                      "in asyncd: keepalives are sent from the contact's own UDP socket")
    if int(mp["keepalive_timeout"]) > 0:
        log.warn(MOD, "keepalive_timeout is not implemented in asyncd: contacts that do not "
                      "answer SIP pings are not expired early")


S = PingState()


# ---- processes ---------------------------------------------------------------------------
def procs(script):
    """nathelper.c child_init: natping_processes "TIMER NH" processes, a 1 s tick each."""
    if S.interval <= 0:
        return []
    return [ProcRow(ROLE_TIMER, "TIMER NH", PROC_TIMER, 1,
                    TimerHandlers(every=(Periodic(1.0, _ticker(i), aligned=True),)))
            for i in range(S.procs)]


def _ticker(idx):
    def nh_timer(proc):
        tick(proc, idx)
    return nh_timer


def tick(proc, idx):
    """nathelper.c nh_timer: this second's share of the contacts, one keepalive each."""
    part = (idx * S.interval + S.iteration, S.procs * S.interval)
    S.iteration = (S.iteration + 1) % S.interval
    contacts = usrloc.get_all_ucontacts(S.nat_flag if S.nated_only else 0, part)
    for c in contacts:
        try:
            ping(proc, c)
        except Exception as e:      # one bad contact never stops the others' pings
            log.err(MOD, f"keepalive to {c[0]!r} failed: {e!r}")


# ---- one keepalive -----------------------------------------------------------------------
def ping(proc, c):
    """Send the keepalive for one (contact, received, path, sock, cflags, ruid, aorhash)."""
    uri, received, path, sock, cflags, ruid, aorhash = c
    if cflags & S.disable_flag:
        return False
    sip = bool(cflags & S.sip_flag) or (not S.nated_only and S.sip_flag != 0)
    target = (_first_route(path) if path and cflags & S.sip_flag else None) or received or uri
    try:
        u = parse_uri(target)
    except Exception:
        log.err(MOD, f"can't parse contact/received uri {target!r}")
        return False
    if (u.transport or "udp") != "udp":
        return False
    dst = _resolve(u.host, u.port or 5060)
    if dst is None:
        log.err(MOD, "can't resolve_host")
        return False
    index = _send_socket(proc, sock, dst)
    if index is None:
        log.err(MOD, "can't get sending socket")
        return False
    data = build_sipping(proc, index, uri, path, ruid, aorhash) if sip else ZERO_PING
    if not proc.send(data, dst, index):
        log.err(MOD, "sip udp_send failed" if sip else "udp_send failed")
        return False
    return True


def _first_route(path):
    """The first Path URI (nathelper.c get_path_dst_uri): where a SIP ping goes."""
    start = path.find("<")
    end = path.find(">", start + 1)
    if start < 0 or end < 0:
        return None
    return path[start + 1:end]


def _resolve(host, port):
    host = host.strip("[]")
    try:
        info = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)
    except (OSError, UnicodeError):
        return None
    return info[0][4][:2] if info else None


def _find(addrs, spec):
    parts = split_socket(spec) if spec else None
    if parts is None:
        return None
    proto, host, port = parts
    for i, (p, ip, pt) in enumerate(addrs):
        if p == (proto or "udp") == "udp" and ip == host.strip("[]") and (not port or int(port) == pt):
            return i
    return None


def _send_socket(proc, sock, dst):
    """force_socket, else the contact's socket when it is one of our UDP ones,
    else the first UDP socket of the destination's family (get_send_socket)."""
    addrs = getattr(proc.script, "sock_addrs", None) or ()
    for spec in (S.force_socket, sock):
        i = _find(addrs, spec)
        if i is not None:
            return i
    return proto_socket(addrs, "udp", -1, ":" in dst[0])


def build_sipping(proc, index, uri, path, ruid, aorhash):
    """sip_pinger.h build_sipping: the request, header for header."""
    _proto, ip, port = proc.script.sock_addrs[index]
    host = f"[{ip}]" if ":" in ip else ip
    branch = int(random.random() * (9999999 - 1000000) + 1000000)
    tag = f"{ruid}-{rhex(aorhash)}-{rhex(S.fromtag)}"
    callid = f"{S.callid}-{rhex(S.callid_cnt)}-{rhex(int(time.monotonic() - S.started))}@{ip}"
    S.fromtag += 1
    S.callid_cnt += 1
    lines = [f"{S.method} {uri} SIP/2.0", f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{branch}"]
    if path:
        lines.append(f"Route: {path}")
    lines += [f"From: {S.sip_from};tag={tag}", f"To: {uri}", f"Call-ID: {callid}",
              f"CSeq: 1 {S.method}", "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")


# ---- replies to our pings ----------------------------------------------------------------
def reply_in(ctx):
    """sip_pinger.h sipping_rpl_filter: a reply with one Via, our method in
    CSeq and our Call-ID prefix is a reply to a SIP ping: absorbed (True)."""
    if not S.sip_flag or S.interval <= 0:
        return False
    msg = ctx.msg
    try:
        if msg.via2 is not None or msg.cseq_method != S.method:
            return False
        callid = msg.callid or ""
    except Exception:
        return False
    n = len(S.callid)
    return len(callid) > n + 1 and callid.startswith(S.callid) and callid[n] == "-"
