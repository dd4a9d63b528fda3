"""SIP over TCP between processes: the channels to and from the `tcp main
process`, the frames on them, and the sender every process writes through.

Runs in: main (TcpPlan is made before the fork), `tcp main process` (owns
every connection), `tcp receiver (generic) child=<i>` (runs the script on
what tcp main read), and every process that sends on TCP (replies from udp
receivers, task workers and the tm `timer`; relayed requests).

The process that owns a connection is the only one that reads or writes it
(docs/kamailio-tcp.md, "asyncd"): TLS will keep its session state in that
one process. Everything else talks to it through kernel datagram channels
made by main before the fork (AF_UNIX SOCK_DGRAM socketpairs; main keeps
both ends open for the life of the server, so a datagram queued for a
process that dies waits for its replacement instead of being lost):

- *to tcp main* (one channel, every process writes its shared end): a send
  request `[op, conid, sock, port, ip, data]`. tcp main writes the bytes to
  the connection with that id, else to the one to (ip, port), else opens one
  (requests), or for a reply whose connection is gone, to the top Via's
  received/sent-by (RFC 3261 §18.2.2).
- *to tcp receiver i* (one channel each): a complete message as framed by
  tcp main `[conid, sock, port, ip, message]`. A message goes to the
  receiver its Call-ID hashes to, so one call's messages run in the order
  they arrived, as Kamailio's tcp reader runs a connection's, while the
  calls of one busy connection (a trunk) use every receiver. An empty message is a *drain marker*: tcp main
  sends it after the last message of a connection it is closing (the peer's
  EOF, or framing lost), and the receiver answers OP_CLOSE once it has run
  every message before it, so their replies, which reach tcp main before the
  OP_CLOSE, are written before the close (Kamailio's reader answers a message
  before it reads what follows it: src/core/tcp_read.c tcp_read_req).

A socketpair's datagrams are not capped by `net.unix.max_dgram_qlen` (the
two ends are each other's peer), only by the send buffer: 8 MB here.
"""
import errno
import mmap
import os
import socket
import struct

MAX_MSG = 65535           # the largest message a channel carries (Kamailio's BUF_SIZE)
CHAN_BUF = 8 << 20        # send buffer of each channel
CHAN_DGRAM = MAX_MSG + 512

# op of a frame to tcp main (low nibble), and send flags (high nibble, from a 3-tuple address);
# OP_CLOSE closes the connection once what is queued for it is written
OP_SEND, OP_ALIAS, OP_CLOSE = 1, 3, 4
SND_NO_CONNECT, SND_CLOSE = 1, 2

_TX = struct.Struct("<BIHHB")    # op, conid, sock index, port, len(ip); then ip, data
_RX = struct.Struct("<IHHB")     # conid, sock index, peer port, len(ip); then ip, message

# statistics (Kamailio's tcp: group names, src/core/tcp_stats.h), u64 words in a shared page
STATS = ("established", "passive_open", "connect_success", "connect_failed", "local_reject",
         "con_timeout", "con_reset", "send_timeout", "sendq_full", "current_opened_connections",
         "current_write_queue_size", "iplimit_reject", "read_timeout", "msg_too_big",
         "bad_framing", "crlf_pings", "msgs_in", "msgs_out")
S = {name: i for i, name in enumerate(STATS)}


def pack_tx(op, conid, sock, ip, port, data=b""):
    b = ip.encode()
    return _TX.pack(op, conid, sock, port, len(b)) + b + data


def unpack_tx(buf):
    op, conid, sock, port, n = _TX.unpack_from(buf)
    o = _TX.size
    return op, conid, sock, buf[o:o + n].decode(), port, buf[o + n:]


def pack_rx(conid, sock, ip, port, data):
    b = ip.encode()
    return _RX.pack(conid, sock, port, len(b)) + b + data


def pack_drain(conid, sock, ip, port):
    """The drain marker of a connection (see the module docstring)."""
    return pack_rx(conid, sock, ip, port, b"")


def unpack_rx(buf):
    conid, sock, port, n = _RX.unpack_from(buf)
    o = _RX.size
    return conid, sock, (buf[o:o + n].decode(), port), buf[o + n:]


def _pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (a, b):
        for opt, force in ((socket.SO_SNDBUF, 32), (socket.SO_RCVBUF, 33)):
            try:
                s.setsockopt(socket.SOL_SOCKET, force, CHAN_BUF)    # SO_*BUFFORCE: root only
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, opt, CHAN_BUF)
    return a, b


class TcpConf:
    """The core parameters tcp main enforces (Kamailio's names; defaults in
    asyncd/core/params.py TABLE, meanings in docs/kamailio-tcp.md)."""

    def __init__(self, core):
        def get(name, default):
            v = core.get(name)
            return default if v is None else int(v)
        self.max_connections = get("tcp_max_connections", 2048)
        self.accept_iplimit = get("tcp_accept_iplimit", 1024)
        self.lifetime = get("tcp_connection_lifetime", 120)
        self.connect_timeout = get("tcp_connect_timeout", 10)
        self.send_timeout = get("tcp_send_timeout", 10)
        self.msg_read_timeout = get("tcp_msg_read_timeout", 20)
        self.accept_no_cl = bool(get("tcp_accept_no_cl", 0))
        self.crlf_ping = bool(get("tcp_crlf_ping", 1))
        # Kamailio reads a message into one tcp_rd_buf_size buffer: the largest is one byte less
        self.max_msg = max(256, min(get("tcp_rd_buf_size", 16384), MAX_MSG + 1) - 1)
        self.conn_wq_max = get("tcp_conn_wq_max", 32 * 1024)
        self.no_connect = bool(get("tcp_no_connect", 0))


class TcpSender:
    """What `proc.sockets[i]` is for a TCP listen socket i: `sendto` asks tcp
    main to write (ProcState.send stays one call for every transport), and
    `getsockname` is the listen address (Via, $Ri/$Rp)."""

    __slots__ = ("chan", "index", "addr")

    def __init__(self, chan, index, addr):
        self.chan, self.index, self.addr = chan, index, addr

    def getsockname(self):
        return self.addr

    def sendto(self, data, addr, op=OP_SEND, conid=0):
        """addr is (ip, port) or (ip, port, flags): SND_NO_CONNECT (set_*_no_connect(): use an
        open connection or drop), SND_CLOSE (set_*_close(): close it once this is written).
        Raises OSError(EMSGSIZE) for a message over MAX_MSG, as a UDP socket does for an
        oversized datagram: tcp main reads at most CHAN_DGRAM bytes of a datagram, so a
        longer one would go out cut short and break the peer's framing of everything after
        it. Kamailio builds no message over BUF_SIZE."""
        if len(data) > MAX_MSG:
            raise OSError(errno.EMSGSIZE, f"{os.strerror(errno.EMSGSIZE)} ({len(data)} bytes, "
                                          f"{MAX_MSG} at most over TCP)")
        if len(addr) > 2:
            op |= addr[2] << 4
        b = addr[0].encode()
        self.chan.send(_TX.pack(op, conid, self.index, int(addr[1]), len(b)) + b + data)
        return len(data)

    def alias(self, conid, ip, port):
        """force_tcp_alias(): replies and requests to (ip, port) may use connection conid."""
        self.sendto(b"", (ip, port), OP_ALIAS, conid)

    def close(self):
        pass


class TcpPlan:
    """Made in main before the fork: the channels, the shared counters and the
    connection-id sequence. `listen` maps a socket index to its bound,
    listening socket (only tcp main accepts on them)."""

    def __init__(self, conf, nreceivers):
        self.conf = conf
        self.n = nreceivers
        self.listen = {}                  # socket index -> listening socket
        self.tx_w, self.tx_r = _pair()    # any process -> tcp main
        self.tx_w.settimeout(1.0)         # a stalled tcp main must not freeze a sender for long
        self.rx = [_pair() for _ in range(max(1, nreceivers))]   # (tcp main end, receiver end)
        self._mm = mmap.mmap(-1, mmap.PAGESIZE)
        self.words = memoryview(self._mm).cast("Q")   # 0: last conid; 8..: STATS

    def sender(self, index, addr):
        return TcpSender(self.tx_w, index, addr)

    def next_conid(self):
        """Connection ids are never reused, also across a respawn of tcp main:
        a reply for a dead connection must not reach a new one."""
        self.words[0] += 1
        return self.words[0]

    def stats(self):
        return {name: self.words[8 + i] for i, name in enumerate(STATS)}

    def close(self):
        for s in self.listen.values():
            s.close()
        for s in (self.tx_w, self.tx_r):
            s.close()
        for a, b in self.rx:
            a.close()
            b.close()
