"""The ctl module: Kamailio's BINRPC control sockets, so the real `kamcmd`
(and `asyncd-ctl`) can call every RPC method of the server.

Runs in: main process (modparams, the run directory, the sockets made and
bound in mod_init, unix socket files removed in mod_destroy), every child
(child_init closes its copies of the sockets), the `ctl handler` process
(rank PROC_RPC, role ROLE_RPC: the endpoints below, run by
workers/rpc_server.py).

Kamailio: src/modules/ctl (ctl.c exports and mod_init, ctrl_socks.c
parse_listen_id for the socket names, init_socks.c binding and
permissions, io_listener.c the handler's loop, binrpc_run.c
process_rpc_req). The codec is asyncd/ipc/binrpc.py; docs/operations.md
has the operator's view. Differences, on purpose:
- the `fifo` socket kind and `binrpc_buffer_size` (rpc->rpl_printf's
  buffer; asyncd's methods do not printf) are accepted with a startup
  WARNING and do nothing;
- parameters are always converted as `autoconversion=1` would (a number
  where a method wants a string is accepted): asyncd.core.rpc scans one
  way for every transport; `autoconversion=0` logs a WARNING;
- a request whose header declares more than the 65535-byte stream buffer
  closes the connection at once (Kamailio waits until its buffer is full);
- a reply the client does not read within 1 s (Kamailio: 10 ms per write,
  io_listener.c IO_LISTEN_TX_TIMEOUT) closes the connection;
- `stream_timeout` (asyncd's own modparam, default Kamailio's 120 s,
  IO_STREAM_CONN_TIMEOUT) closes a stream connection idle that long,
  including one that sent half a packet and stalled.
"""
import os
import select
import socket
import stat
import time

from asyncd.core import log
from asyncd.core.exports import ModuleExports, ParamExport
from asyncd.core.procs import PROC_RPC, ROLE_RPC, ProcRow, RpcHandlers
from asyncd.core.rpc import RpcExport, RpcFault
from asyncd.core.runtime import group2gid, run_dir, set_perms, user2uid
from asyncd.ipc import binrpc

MOD = "ctl"
DEFAULT_PORT = 2049             # ctl_defaults.h DEFAULT_CTL_PORT
DEFAULT_NAME = "kamailio_ctl"   # ctl_defaults.h DEFAULT_CTL_SOCKET_NAME
MAX_CONNECTIONS = 128           # io_listener.h MAX_IO_READ_CONNECTIONS
SEND_TIMEOUT = 1.0              # s a reply may wait for the client to read
DGRAM_MAX = 65535               # io_listener.c DGRAM_BUF_SIZE
TITLE = "ctl handler"
KINDS = {"unix": "unixs", "unixs": "unixs", "unixd": "unixd", "udp": "udp", "tcp": "tcp",
         "fifo": "fifo"}
# socket_proto_name() of ctl's ctrl_socks.c: the names ctl.listen and ctl.who show
KIND_NAMES = {"unixs": "unix_stream", "unixd": "unix_dgram", "udp": "udp", "tcp": "tcp"}


class CtlSocket:
    """One control socket: its kind (unixs, unixd, udp, tcp), the name the
    operator gave, the bound socket, and for unix ones the path and the
    inode we created (mod_destroy removes only that file)."""
    __slots__ = ("kind", "name", "addr", "sock", "path", "ino")

    def __init__(self, kind, name, addr):
        self.kind = kind
        self.name = name
        self.addr = addr
        self.sock = None
        self.path = addr if kind in ("unixs", "unixd") else None
        self.ino = None


class CtlState:
    """ctl's state, in one object: the sockets and limits made by mod_init in
    main; `conns` is the ctl handler's own list of stream connections."""
    __slots__ = ("sockets", "max_body", "struct_max", "stream_timeout", "conns")

    def __init__(self):
        self.sockets = []
        self.max_body = binrpc.DEFAULT_MAX_BODY_KB * 1024
        self.struct_max = binrpc.DEFAULT_STRUCT_MAX_BODY_KB * 1024
        self.stream_timeout = 120
        self.conns = []


S = CtlState()


# -- socket names (ctrl_socks.c parse_listen_id) ---------------------------------------
def parse_socket(spec):
    """`unix:/path`, `unixd:/path`, `udp:ip:port`, `tcp:ip:port`, `tcp:port`,
    a bare path (unix stream) or `ip:port` (udp) -> CtlSocket (address not
    resolved). ValueError names what is wrong."""
    text = str(spec).strip()
    kind = None
    rest = text
    head, sep, tail = text.partition(":")
    if sep and head.lower() in KINDS:
        kind, rest = KINDS[head.lower()], tail
    if kind is None:
        kind = "unixs" if "/" in text or ":" not in text else "udp"
    if kind in ("unixs", "unixd", "fifo"):
        if not rest:
            raise ValueError(f"no path in ctl socket {text!r}")
        return CtlSocket(kind, text, rest)
    host, port = _host_port(rest, text)
    return CtlSocket(kind, text, (host, port))


def _host_port(rest, text):
    if rest.startswith("["):
        host, sep, port = rest[1:].partition("]")
        if not sep or (port and not port.startswith(":")):
            raise ValueError(f"bad IPv6 address in ctl socket {text!r}")
        port = port[1:]
    elif rest.isdigit():
        host, port = "*", rest              # tcp:3012 == tcp:*:3012
    else:
        host, _sep, port = rest.partition(":")
    if not port:
        port = DEFAULT_PORT
    try:
        port = int(port)
    except ValueError:
        try:
            port = socket.getservbyname(port)
        except OSError:
            raise ValueError(f"bad port in ctl socket {text!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"bad port in ctl socket {text!r}")
    return (host or "*"), port


# -- binding (init_socks.c) ------------------------------------------------------------
def _bind_unix(cs, mode, uid, gid):
    if len(cs.path.encode()) > 107:
        raise ValueError(f"unix socket path too long ({len(cs.path)} > 107): {cs.path}")
    st = _lstat(cs.path)
    if st is not None and not stat.S_ISSOCK(st.st_mode):
        raise ValueError(f"{cs.path} exists and is not a socket")
    if st is not None:
        os.unlink(cs.path)          # a stale socket of a killed run (init_socks.c unlink)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM if cs.kind == "unixs" else socket.SOCK_DGRAM)
    try:
        s.bind(cs.path)
        cs.ino = os.lstat(cs.path).st_ino
        set_perms(cs.path, mode, uid, gid)
    except OSError:
        s.close()
        raise
    return s


def _lstat(path):
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _bind_inet(cs):
    host, port = cs.addr
    if host == "*":
        host = "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_STREAM if cs.kind == "tcp" else socket.SOCK_DGRAM
    infos = socket.getaddrinfo(host, port, family, kind)
    s = socket.socket(family, kind)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(infos[0][4])
    except OSError:
        s.close()
        raise
    return s


def _open_socket(cs, mode, uid, gid):
    s = _bind_unix(cs, mode, uid, gid) if cs.path else _bind_inet(cs)
    if cs.kind in ("unixs", "tcp"):
        s.listen(128)
    s.setblocking(False)
    s.set_inheritable(False)
    cs.sock = s


def _ids(mp):
    """user/group modparams -> (uid, gid), -1 for unset (ctl.c fix_user, fix_group:
    a user's own group is not taken)."""
    try:
        return user2uid(mp.get("user"))[0], group2gid(mp.get("group"))
    except KeyError:
        raise RuntimeError(f"ctl: unknown user/group {mp.get('user')!r}/{mp.get('group')!r}") from None


def _run_dir(script):
    try:
        return run_dir(script)
    except OSError as e:
        raise RuntimeError(f"ctl: {e.strerror}") from None


def _warn_unimplemented(mp):
    if mp.get("fifo"):
        log.warn(MOD, f"fifo control sockets are not supported; ignoring fifo={mp['fifo']}")
    if mp.get("binrpc_buffer_size") is not None:
        log.warn(MOD, "binrpc_buffer_size has no effect in asyncd (no method uses rpc->rpl_printf)")
    if mp.get("autoconversion") == 0:
        log.warn(MOD, "autoconversion=0 is not supported: asyncd always converts parameters "
                      "(as autoconversion=1)")


def mod_init(script):
    """Parse and bind every `binrpc` socket (default unix:<run_dir>/kamailio_ctl);
    a bad name or an address we cannot bind stops startup naming it."""
    mp = script.modparams[MOD]
    _warn_unimplemented(mp)
    S.sockets, S.conns = [], []
    S.max_body = (mp["binrpc_max_body_size"] if mp["binrpc_max_body_size"] > 0 else 4) * 1024
    S.struct_max = (mp["binrpc_struct_max_body_size"] if mp["binrpc_struct_max_body_size"] > 0 else 1) * 1024
    S.stream_timeout = max(1, int(mp["stream_timeout"]))
    rdir = _run_dir(script)
    specs = list(mp["binrpc"]) or [f"unix:{rdir}/{DEFAULT_NAME}"]
    uid, gid = _ids(mp)
    for spec in specs:
        try:
            cs = parse_socket(spec)
            if cs.kind == "fifo":
                log.warn(MOD, f"fifo control sockets are not supported; ignoring binrpc={spec}")
                continue
            _open_socket(cs, mp["mode"], uid, gid)
        except (ValueError, OSError) as e:
            mod_destroy(script)
            raise RuntimeError(f"ctl: cannot open control socket {spec}: {e}") from None
        S.sockets.append(cs)
        log.info(MOD, f"listening on binrpc {KIND_NAMES[cs.kind]} {cs.name}")


def child_init(proc, rank):
    """Every child but the ctl handler closes its copies of the control
    sockets (ctl.c mod_child); main keeps them for the next respawn."""
    if proc.desc == TITLE:
        return
    for cs in S.sockets:
        if cs.sock is not None:
            cs.sock.close()
            cs.sock = None
        cs.ino = None           # never unlinked from a child


def mod_destroy(script):
    """Main, at shutdown: close the sockets, remove the unix socket files we
    made (ctl.c mod_destroy) unless another process replaced them since."""
    for cs in S.sockets:
        if cs.sock is not None:
            cs.sock.close()
            cs.sock = None
        if cs.path and cs.ino is not None:
            st = _lstat(cs.path)
            if st is not None and st.st_ino == cs.ino:
                try:
                    os.unlink(cs.path)
                except OSError as e:
                    log.err(MOD, f"could not delete unix socket {cs.path}: {e.strerror}")
    S.sockets = []


# -- one request (binrpc_run.c process_rpc_req) ----------------------------------------
_SCAN_TYPES = {"string": binrpc.T_STR, "int": binrpc.T_INT, "bool": binrpc.T_INT,
               "float": binrpc.T_DOUBLE, "struct": binrpc.T_STRUCT}


def scan_fault(index, expected, got):
    """rpc_scan's fault: `error at parameter N: expected T type but E`, E the
    binrpc error text (a missing parameter is the end of the packet)."""
    tname = binrpc.TYPE_NAME.get(_SCAN_TYPES.get(expected), expected)
    why = binrpc.ERROR_TEXT[binrpc.E_EOP if got is None else binrpc.E_TYPE]
    return RpcFault(400, f"error at parameter {index}: expected {tname} type but {why}")


def serve(proc, pkt):
    """A request packet -> the reply or fault packet to send back."""
    cookie = pkt.cookie
    if pkt.type != binrpc.REQ:
        return binrpc.encode_fault(400, f"bad request: {binrpc.ERROR_TEXT[binrpc.E_BADPKT]}", cookie)
    script = proc.script
    try:
        method, params = pkt.request()
    except binrpc.BinrpcError as e:
        if e.method is None:
            return binrpc.encode_fault(400, f"bad request method: {e}", cookie)
        if script.rpc.lookup(e.method) is None:
            return binrpc.encode_fault(500, f"command {e.method} not found", cookie)
        return binrpc.encode_fault(400, f"bad request: {e}", cookie)
    try:
        call = script.rpc.call(script, proc, method, params, transport="binrpc", scan_fault=scan_fault)
    except KeyError:
        return binrpc.encode_fault(500, f"command {method} not found", cookie)
    except RpcFault as f:
        return binrpc.encode_fault(f.code, f.text, cookie)
    data, dropped = binrpc.encode_reply(call.values, cookie, S.max_body, S.struct_max)
    if dropped:
        log.err(MOD, f"{method}: {dropped} struct member(s) left out: over binrpc_struct_max_body_size")
    return data


# -- endpoints of the ctl handler (workers/rpc_server.py) ------------------------------
class Listener:
    """A listening unix or tcp stream socket: accepts into Conn endpoints."""

    def __init__(self, cs):
        self.cs = cs
        self.closed = False

    def fileno(self):
        return self.cs.sock.fileno()

    def on_readable(self, proc):
        out = []
        while len(S.conns) < MAX_CONNECTIONS:
            try:
                s, peer = self.cs.sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                log.err(MOD, f"accept on {self.cs.name}: {e}")
                break
            c = Conn(self.cs, s, peer)
            S.conns.append(c)
            out.append(c)
        else:
            self._refuse()
        return out

    def _refuse(self):
        """Over MAX_IO_READ_CONNECTIONS: close what waits (io_listener.c handle_new_connect)."""
        try:
            s, _peer = self.cs.sock.accept()
            s.close()
            log.err(MOD, f"too many open connections ({MAX_CONNECTIONS}): refused one on {self.cs.name}")
        except OSError:
            pass


class Conn:
    """One stream connection: packets in (split or batched any way), one
    reply per request. Bad input closes it (after a fault when the packet
    said whom to answer); so does idling past stream_timeout."""

    def __init__(self, cs, sock, peer):
        self.cs = cs
        self.sock = sock
        self.peer = peer
        self.parser = binrpc.StreamParser()
        self.last = time.monotonic()
        self.closed = False
        sock.setblocking(False)

    def fileno(self):
        return -1 if self.closed else self.sock.fileno()

    def on_readable(self, proc):
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            data = b""
        if not data:
            if self.parser.pending():
                log.err(MOD, f"unexpected EOF on {self.cs.name}: half a packet "
                             f"({self.parser.pending()} bytes)")
            self.close()
            return None
        self.last = time.monotonic()
        try:
            packets = self.parser.feed(data)
        except binrpc.BinrpcError as e:
            self._bad(e)
            return None
        for pkt in packets:
            if not self._send(serve(proc, pkt)):
                return None
        return None

    def _bad(self, e):
        log.err(MOD, f"bad packet on {self.cs.name}: {e}{': ' + e.detail if e.detail else ''}")
        if e.code == binrpc.E_BADPKT:
            self._send(binrpc.encode_fault(400, f"bad request: {e}", 0))
        self.close()

    def _send(self, data):
        """Write the whole reply or give up after SEND_TIMEOUT (and close)."""
        view = memoryview(data)
        deadline = time.monotonic() + SEND_TIMEOUT
        while view:
            try:
                n = self.sock.send(view, socket.MSG_NOSIGNAL)
                view = view[n:]
                continue
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self.close()
                return False
            left = deadline - time.monotonic()
            if left <= 0 or not _wait_writable(self.sock, left):
                log.err(MOD, f"reply to a client of {self.cs.name} not read within {SEND_TIMEOUT} s: closing")
                self.close()
                return False
        return True

    def expire(self, now):
        """The handler's tick: an idle connection is shut down here and
        closed by its own on_readable (the EOF), so the loop drops it."""
        if not self.closed and now - self.last > S.stream_timeout:
            log.info(MOD, f"closing a connection of {self.cs.name} idle for {S.stream_timeout} s")
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                self.close()

    def close(self):
        if not self.closed:
            self.closed = True
            self.sock.close()
            if self in S.conns:
                S.conns.remove(self)


def _wait_writable(sock, timeout):
    p = select.poll()
    p.register(sock, select.POLLOUT)
    return bool(p.poll(timeout * 1000))


class Dgram:
    """A udp or unix datagram socket: one packet per datagram, the reply
    goes to the sender (a truncated one is dropped, as Kamailio waits for
    more of it that never comes)."""

    def __init__(self, cs):
        self.cs = cs
        self.closed = False

    def fileno(self):
        return self.cs.sock.fileno()

    def on_readable(self, proc):
        for _ in range(64):
            try:
                data, addr = self.cs.sock.recvfrom(DGRAM_MAX)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError as e:
                log.err(MOD, f"recvfrom on {self.cs.name}: {e}")
                return None
            self._one(proc, data, addr)
        return None

    def _one(self, proc, data, addr):
        try:
            reply = serve(proc, binrpc.parse_datagram(data))
        except binrpc.BinrpcError as e:
            log.err(MOD, f"bad datagram on {self.cs.name}: {e}")
            if e.code != binrpc.E_BADPKT:
                return
            reply = binrpc.encode_fault(400, f"bad request: {e}", 0)
        if not addr:
            log.err(MOD, f"no address to reply to on {self.cs.name} (unbound unix client)")
        elif len(reply) > DGRAM_MAX:
            log.err(MOD, f"reply of {len(reply)} bytes on {self.cs.name}: datagram too big")
        else:
            try:
                self.cs.sock.sendto(reply, addr)
            except OSError as e:
                log.err(MOD, f"sendto on {self.cs.name}: {e}")


def _open(proc, instance):
    return [Listener(cs) if cs.kind in ("unixs", "tcp") else Dgram(cs) for cs in S.sockets]


def _tick(proc):
    now = time.monotonic()
    for c in list(S.conns):
        c.expire(now)


def procs(script):
    """One `ctl handler` (Kamailio's fork_process(PROC_RPC, "ctl handler"))
    when a socket is open."""
    if not S.sockets:
        return []
    return [ProcRow(ROLE_RPC, TITLE, PROC_RPC, 1, RpcHandlers(open=_open, tick=_tick))]


# -- ctl.* methods (ctl.c ctl_rpc, io_listener.c) --------------------------------------
def _port_text(cs):
    return "" if cs.path else str(cs.addr[1])


def _addr_text(cs):
    return cs.path if cs.path else cs.addr[0]


def rpc_listen(call):
    """ctl.listen: payload, transport, name, port of every control socket."""
    for cs in S.sockets:
        for v in ("binrpc", KIND_NAMES[cs.kind], _addr_text(cs), _port_text(cs)):
            call.add(v)


def rpc_connections(call):
    """ctl.connections: the number of open stream connections."""
    call.add(len(S.conns))


def rpc_who(call):
    """ctl.who: each open stream connection's socket kind and both ends."""
    if call.transport != "binrpc":
        raise RpcFault(606, "rpc available only over binrpc (ctl)")
    if not S.conns:
        raise RpcFault(400, "no open stream connection")
    for c in S.conns:
        call.add("binrpc")
        call.add(KIND_NAMES[c.cs.kind])
        if c.cs.path:
            for v in ("<anonymous unix socket>", "", c.cs.path, ""):
                call.add(v)
        else:
            for v in (str(c.peer[0]), str(c.peer[1]), c.cs.addr[0], str(c.cs.addr[1])):
                call.add(v)


EXPORTS = ModuleExports(
    name=MOD,
    params=[
        ParamExport("binrpc", str, None, multi=True),
        ParamExport("fifo", str, None, multi=True),
        ParamExport("mode", int, 0o600),
        ParamExport("user", str, ""),
        ParamExport("group", str, ""),
        ParamExport("autoconversion", int, None),
        ParamExport("binrpc_max_body_size", int, binrpc.DEFAULT_MAX_BODY_KB),
        ParamExport("binrpc_struct_max_body_size", int, binrpc.DEFAULT_STRUCT_MAX_BODY_KB),
        ParamExport("binrpc_buffer_size", int, None),
        ParamExport("stream_timeout", int, 120),     # asyncd's own (see the module docstring)
    ],
    mod_init=mod_init,
    child_init=child_init,
    mod_destroy=mod_destroy,
    procs=procs,
    rpc=[
        RpcExport("ctl.who", rpc_who, "List the open ctl connections."),
        RpcExport("ctl.connections", rpc_connections, "Number of open ctl connections."),
        RpcExport("ctl.listen", rpc_listen, "List the ctl listen sockets."),
    ],
)
