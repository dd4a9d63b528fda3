"""jsonrpcs: the RPC methods over JSON-RPC 2.0, on a FIFO (kamctl's
transport) and a datagram socket; `jsonrpc_exec()` and `$jsonrpl(...)` for
the cfg.

Runs in: main process (mod_init makes the FIFO and the socket before the
fork; mod_destroy removes them), `JSONRPCS FIFO` and `JSONRPCS DATAGRAM`
(rank PROC_RPC, the loop of workers/rpc_server.py over the endpoints
below), and every process whose route calls `jsonrpc_exec()`.

Kamailio 5.6: src/modules/jsonrpcs/jsonrpcs_mod.c (exports, jsonrpc_exec,
$jsonrpl), jsonrpcs_fifo.c (FIFO), jsonrpcs_sock.c (datagram). The JSON
itself (request rules, reply shapes, srjson's text) is asyncd/ipc/jsonrpc.py.
docs/operations.md ("jsonrpcs") is the operator's page. Where asyncd
differs on purpose:
- HTTP (`transport` bit 1, `jsonrpc_dispatch()`) is xhttp's: this module
  only offers `handle_request()` for it.
- a reply FIFO is written with a deadline (REPLY_TIMEOUT_S) instead of
  Kamailio's blocking write, so a client that never reads cannot stall the
  FIFO process; a half request whose writer went away is dropped after
  STALE_S instead of being glued to the next one.
- a `jsonrpc` or `method` member that is not a string gets the empty
  result (Kamailio's FIFO and datagram processes crash on it).
- dgram_timeout is accepted and, as in Kamailio 5.6, not used.
"""
import errno
import os
import select
import socket
import stat
import time

from asyncd.core import log
from asyncd.core.errors import CfgError
from asyncd.core.exports import FuncExport, ModuleExports, P, ParamExport, PvExport
from asyncd.core.procs import PROC_RPC, ROLE_RPC, ProcRow, RpcHandlers
from asyncd.core.rpc import RET_ARRAY, RpcExport, RpcFault
from asyncd.core.runtime import group2gid, run_dir, set_perms, user2uid
from asyncd.core.route_types import REQUEST_ROUTE
from asyncd.ipc.jsonrpc import DGRAM_BUF, FifoSplitter, ParseError, execute
from asyncd.modules import xhttp

MOD = "jsonrpcs"
T_HTTP, T_FIFO, T_DGRAM = 1, 2, 4       # `transport` bits; 0 means every one available
REPLY_FIFO_MAX = 128                    # jsonrpcs_fifo.c JSONRPC_MAX_FILENAME: dir + name
REPLY_RETRIES = 4                       # jsonrpcs_fifo.c JSONRPC_REPLY_RETRIES, 80 ms apart
REPLY_TIMEOUT_S = 2.0                   # the whole reply write; Kamailio blocks
STALE_S = 1.0                           # a half request this quiet is dropped
READ_CHUNK = 65536


class JsonrpcsState:
    """The module's state, made by mod_init in main. The FIFO's read end
    (non-blocking) and a write end that keeps it from ever seeing EOF, and
    the datagram socket, are inherited by the forked processes, so a
    respawned one serves the same ones. `plain` is Kamailio's plain reply
    of the last jsonrpc_exec() in this process: (code, text, body)."""
    __slots__ = ("pretty", "fifo_path", "fifo_rfd", "fifo_wfd", "reply_dir", "dgram_path",
                 "dgram_sock", "dgram_workers", "plain", "http")

    def __init__(self):
        self.pretty = True
        self.fifo_path = self.reply_dir = self.dgram_path = None
        self.fifo_rfd = self.fifo_wfd = -1
        self.dgram_sock = None
        self.dgram_workers = 1
        self.http = False           # the HTTP transport is bound to xhttp (jsonrpc_dispatch)
        self.plain = (0, None, None)


S = JsonrpcsState()


# -- startup ------------------------------------------------------------------------
def _in_run_dir(script, name):
    """A relative name lives in the runtime dir (`-Y`, core param run_dir), as
    jsonrpc_fifo_mod_init / jsonrpc_dgram_mod_init place it; the dir is made
    when missing (asyncd.core.runtime)."""
    if name.startswith("/"):
        return name
    try:
        return os.path.join(run_dir(script), name)
    except OSError as e:
        raise CfgError(f"{MOD}: {e.strerror}") from None


def _owner(user, group, what):
    """user2uid / group2gid: a name or a number; a user name also gives its
    group unless `group` says otherwise. -> (uid, gid), -1 for unchanged."""
    try:
        uid, gid = user2uid(user)
        if group is not None and group != "":
            gid = group2gid(group)
    except KeyError:
        raise CfgError(f"{MOD}: bad {what} user/group {user!r}/{group!r}") from None
    return uid, gid


def _mode(mp, name):
    mode = int(mp[name])
    if not mode:
        log.warn(MOD, f"cannot specify {name} = 0, forcing it to rw-------")
        mode = 0o600
    return mode


def _remove_stale(path):
    """A FIFO or socket left by a killed run is replaced, as Kamailio does."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise CfgError(f"{MOD}: stat of {path} failed: {e.strerror}") from None
    try:
        os.unlink(path)
    except OSError as e:
        raise CfgError(f"{MOD}: cannot delete old {path}: {e.strerror}") from None


def _fifo_init(script, mp):
    """jsonrpc_init_fifo_file + jsonrpc_init_fifo_server."""
    path = _in_run_dir(script, str(mp["fifo_name"]))
    reply_dir = str(mp["fifo_reply_dir"] or "")
    if not reply_dir:
        raise CfgError(f"{MOD}: fifo_reply_dir parameter is empty")
    if not os.path.isdir(reply_dir):
        raise CfgError(f"{MOD}: fifo_reply_dir {reply_dir} is not a directory")
    _remove_stale(path)
    mode = _mode(mp, "fifo_mode")
    uid, gid = _owner(mp["fifo_user"], mp["fifo_group"], "fifo")
    try:
        os.mkfifo(path, mode)
        set_perms(path, mode, uid, gid)
        S.fifo_rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        S.fifo_wfd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as e:
        raise CfgError(f"{MOD}: cannot create FIFO {path}: {e.strerror}") from None
    S.fifo_path, S.reply_dir = path, reply_dir


def _dgram_address(script, spec):
    """`udp:host:port` (port 1024..65535) or a unix socket path -> (family, address)."""
    if len(spec) < 6:
        raise CfgError(f"{MOD}: length of socket address is too short: {spec}")
    if not spec.startswith("udp:"):
        path = _in_run_dir(script, spec)
        if len(path.encode()) >= 107:
            raise CfgError(f"{MOD}: socket path is too long: {path}")
        return socket.AF_UNIX, path
    host, sep, port = spec[4:].rpartition(":")
    if not sep or not host or not port.isdigit():
        raise CfgError(f"{MOD}: no valid port in {spec}")
    if not 1024 <= int(port) <= 65535:
        raise CfgError(f"{MOD}: invalid port number; must be in [1024,65535]: {spec}")
    try:
        info = socket.getaddrinfo(host.strip("[]"), int(port), 0, socket.SOCK_DGRAM)[0]
    except OSError:
        raise CfgError(f"{MOD}: failed to resolve {host}") from None
    return info[0], info[4]


def _dgram_init(script, mp):
    """jsonrpc_dgram_mod_init + jsonrpc_dgram_init_server."""
    family, addr = _dgram_address(script, str(mp["dgram_socket"]))
    if family == socket.AF_UNIX:
        _remove_stale(addr)
        mode = _mode(mp, "dgram_mode")
        uid, gid = _owner(mp["dgram_user"], mp["dgram_group"], "dgram")
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.bind(addr)
        if family == socket.AF_UNIX:
            set_perms(addr, mode, uid, gid)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        s.setblocking(False)
    except OSError as e:
        s.close()
        raise CfgError(f"{MOD}: cannot bind datagram socket {addr}: {e.strerror}") from None
    S.dgram_sock = s
    S.dgram_path = addr if family == socket.AF_UNIX else None


def mod_init(script):
    """Kamailio's mod_init: each transport whose bit is set (or every one,
    with transport=0, where a failing one is just left out) is prepared."""
    mp = script.modparams[MOD]
    S.__init__()
    S.pretty = bool(mp["pretty_format"])
    S.dgram_workers = max(1, int(mp["dgram_workers"]))
    transport = int(mp["transport"])
    if transport & T_HTTP and script.module("xhttp") is None:
        raise CfgError(f"{MOD}: cannot bind to XHTTP API (transport {transport} asks for HTTP: "
                       "loadmodule \"xhttp.so\")")
    S.http = (transport == 0 or transport & T_HTTP) and script.module("xhttp") is not None
    for bit, param, init in ((T_FIFO, "fifo_name", _fifo_init), (T_DGRAM, "dgram_socket", _dgram_init)):
        if not (transport == 0 or transport & bit) or not mp[param]:
            continue
        try:
            init(script, mp)
        except CfgError:
            if transport & bit:
                mod_destroy(script)     # startup stops: leave no FIFO behind (no mod_destroy then)
                raise
            log.info(MOD, f"{param} transport left out: {mp[param]}")


# -- the FIFO -----------------------------------------------------------------------
class FifoEndpoint:
    """The FIFO's read end in the `JSONRPCS FIFO` process. The module keeps
    a write end open too, so the last writer leaving is no EOF and the loop
    never spins; requests are cut from the stream by FifoSplitter."""

    def __init__(self, fd):
        self.fd = fd
        self.closed = False
        self.split = FifoSplitter()
        self.last = time.monotonic()

    def fileno(self):
        return self.fd

    def close(self):
        self.closed = True      # the fd is main's too: a respawned process serves it again

    def on_readable(self, proc):
        data = _read_available(self.fd)
        now = time.monotonic()
        if self.split.pending() and now - self.last > STALE_S:
            log.warn(MOD, "dropping the incomplete request of a writer that went away")
            self.split.clear()
        self.last = now
        docs, dropped = self.split.feed(data)
        for _ in range(dropped):
            log.warn(MOD, f"input data too large (more than {self.split.limit - 1} bytes): request dropped")
        for doc in docs:
            try:
                _serve_fifo(proc, doc)
            except Exception as e:  # noqa: BLE001 - the loop would drop the FIFO: never let it
                log.err(MOD, f"request failed: {type(e).__name__}: {e}")


def _read_available(fd):
    out = bytearray()
    while len(out) < 4 * READ_CHUNK:
        try:
            chunk = os.read(fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            break
        if not chunk:
            break
        out += chunk
    return bytes(out)


def _serve_fifo(proc, doc):
    try:
        rpl = execute(proc.script, proc, doc, "jsonrpc", want_reply_name=True, pretty=S.pretty)
    except ParseError:
        log.err(MOD, f"invalid json doc [[{doc[:200]!r}]]")
        return
    if rpl.reply_name is None:
        log.err(MOD, "missing reply_name field in request (or an unsupported jsonrpc version)")
        return
    fd = _open_reply_fifo(rpl.reply_name)
    if fd is None:
        return
    try:
        _write_all(fd, rpl.body, time.monotonic() + REPLY_TIMEOUT_S)
    finally:
        os.close(fd)


def _reply_path(name):
    """fifo_reply_dir + name, refusing names that could leave the dir
    (jsonrpc_open_reply_fifo: no `.`, `/` or `\\`) or are too long."""
    if not name or any(c in name for c in "./\\\0"):
        log.err(MOD, f"Forbidden reply fifo filename: {name!r}")
        return None
    path = S.reply_dir + name
    if len(path.encode("utf-8", "surrogateescape")) + 1 > REPLY_FIFO_MAX:
        log.err(MOD, f"Reply fifo filename too long {len(path)}")
        return None
    return path


def _open_reply_fifo(name):
    """Non-blocking open, retried while the client has not opened its end
    yet (ENXIO), then Kamailio's jsonrpc_fifo_check: a FIFO, not
    hard-linked, not a symlink, the same inode as the name."""
    path = _reply_path(name)
    if path is None:
        return None
    for attempt in range(REPLY_RETRIES + 1):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
            break
        except OSError as e:
            if e.errno != errno.ENXIO:
                log.err(MOD, f"open error ({path}): {e.strerror}")
                return None
            if attempt == REPLY_RETRIES:
                log.err(MOD, f"no client at {path}")
                return None
            time.sleep(0.08)
    try:
        st, lst = os.fstat(fd), os.lstat(path)
    except OSError as e:        # removed since we opened it
        st = lst = None
        log.err(MOD, f"security: stat of {path} failed: {e.strerror}")
    if (st is None or not stat.S_ISFIFO(st.st_mode) or st.st_nlink > 1 or stat.S_ISLNK(lst.st_mode)
            or (st.st_dev, st.st_ino) != (lst.st_dev, lst.st_ino)):
        log.err(MOD, f"security: {path} is not a plain FIFO of its own")
        os.close(fd)
        return None
    return fd


def _write_all(fd, data, deadline):
    """Write the reply before `deadline` or give up (the client is not reading)."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
            view = view[n:]
            continue
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:        # EPIPE: the client is gone
            log.err(MOD, f"failed to write the reply to fifo: {e.strerror}")
            return False
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([], [fd], [], left)[1]:
            log.err(MOD, f"failed to write the reply to fifo: {len(data) - len(view)} out of {len(data)}")
            return False
    return True


# -- the datagram socket --------------------------------------------------------------
class DgramEndpoint:
    """The datagram socket in a `JSONRPCS DATAGRAM` process: one request per
    datagram, the reply to the sender's address (jsonrpc_dgram_server)."""

    def __init__(self, sock):
        self.sock = sock
        self.closed = False

    def fileno(self):
        return self.sock.fileno()

    def close(self):
        self.closed = True      # shared with main and the other workers

    def on_readable(self, proc):
        for _ in range(64):     # then let the loop look at proc.stopping
            try:
                data, addr = self.sock.recvfrom(DGRAM_BUF)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.err(MOD, f"recvfrom: {e.strerror}")
                return
            data = data.strip()
            if not data:
                continue
            try:
                _serve_dgram(proc, self.sock, data, addr)
            except Exception as e:  # noqa: BLE001 - the loop would drop the socket: never let it
                log.err(MOD, f"request failed: {type(e).__name__}: {e}")


def _serve_dgram(proc, sock, data, addr):
    try:
        rpl = execute(proc.script, proc, data, "jsonrpc", pretty=S.pretty)
    except ParseError:
        log.err(MOD, f"invalid json doc [[{data[:200]!r}]]")
        return
    if not addr:
        log.err(MOD, "the client's socket has no address: no reply")
        return
    try:
        sock.sendto(rpl.body, addr)
    except OSError as e:
        log.err(MOD, f"failed to send the response - len: {len(rpl.body)}: {e.strerror}")


# -- processes and shutdown ------------------------------------------------------------
def _open_fifo(proc, idx):
    return [FifoEndpoint(S.fifo_rfd)]


def _open_dgram(proc, idx):
    return [DgramEndpoint(S.dgram_sock)]


def procs(script):
    """Kamailio's child_init(PROC_MAIN): `JSONRPCS FIFO`, then
    `JSONRPCS DATAGRAM` × dgram_workers, all rank PROC_RPC."""
    rows = []
    if S.fifo_rfd >= 0:
        rows.append(ProcRow(ROLE_RPC, "JSONRPCS FIFO", PROC_RPC, 1, RpcHandlers(open=_open_fifo)))
    if S.dgram_sock is not None:
        rows.append(ProcRow(ROLE_RPC, "JSONRPCS DATAGRAM", PROC_RPC, S.dgram_workers,
                            RpcHandlers(open=_open_dgram)))
    return rows


def mod_destroy(script):
    """jsonrpc_fifo_destroy / jsonrpc_dgram_destroy: the FIFO and the unix
    socket are removed."""
    for fd in (S.fifo_rfd, S.fifo_wfd):
        if fd >= 0:
            os.close(fd)
    if S.dgram_sock is not None:
        S.dgram_sock.close()
    for path in (S.fifo_path, S.dgram_path):
        if path:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.err(MOD, f"cannot delete {path}: {e.strerror}")
    S.__init__()


# -- the cfg: jsonrpc_exec() and $jsonrpl -------------------------------------------------
def run_exec(script, proc, cmd):
    """jsonrpc_exec_ex without a reply name: run, keep the plain reply for
    $jsonrpl. -> 1, or -1 when `cmd` is not JSON (the last reply stays)."""
    try:
        rpl = execute(script, proc, cmd, "jsonrpc", pretty=S.pretty)
    except ParseError:
        log.err(MOD, f"invalid json doc [[{cmd[:200]}]]")
        return -1
    S.plain = (rpl.code, rpl.text, rpl.body.decode("utf-8", "surrogateescape"))
    return 1


def w_jsonrpc_exec(ctx, site, cmd):
    if not cmd:
        log.err(MOD, "cannot get the rpc command parameter")
        return -1
    return run_exec(ctx.proc.script, ctx.proc, cmd)


_JRPL = ("code", "text", "body")


def _jsonrpl_parse(inner):
    name = (inner or "").strip()
    if name not in _JRPL:
        raise ValueError(f"unknown inner name [{name}] (expected code, text or body)")
    return _JRPL.index(name)


def _jsonrpl_get(ctx, which, idx):
    """$jsonrpl(code) is 0 before any jsonrpc_exec(); text and body are $null."""
    return S.plain[which]


# -- HTTP, for xhttp's jsonrpc_dispatch() ------------------------------------------------
def handle_request(script, proc, body):
    """What Kamailio's jsonrpc_dispatch() puts in the HTTP reply to a POST
    whose body is `body` (bytes): -> (status, reason, json_body), to be sent
    with `Content-Type: application/json`; or None when Kamailio sends no
    reply (the body is not JSON: jsonrpc_dispatch() then returns -1 to the
    route and the route decides). The status is 200 "OK", or for a fault
    its code (500 for codes up to 100) and its text as the reason, e.g.
    (500, "Method Not Found", b'{..."error"...}'). Runs the method in the
    calling process (the tcp receiver running the route); never raises."""
    try:
        rpl = execute(script, proc, body, "jsonrpc", pretty=S.pretty)
    except ParseError:
        log.err(MOD, "invalid json doc in the HTTP body")
        return None
    return rpl.code, rpl.text, rpl.body


def w_jsonrpc_dispatch(ctx, site):
    """jsonrpc_dispatch() in event_route[xhttp:request]: run the JSON-RPC
    request in the HTTP body and answer it on the same connection with
    `application/json` (Kamailio's ki_jsonrpcs_dispatch). Not an HTTP
    request: 1, nothing done (NONSIP_MSG_PASS); the HTTP transport not
    enabled by `transport`, or a body that is not JSON: -1 and no reply, the
    route decides."""
    msg = ctx.msg
    if not msg.http:
        return 1
    if not S.http:
        log.err(MOD, "jsonrpc over http not initialized - check transport param")
        return -1
    rpl = handle_request(ctx.proc.script, ctx.proc, msg.body or b"")
    if rpl is None:
        return -1
    code, reason, body = rpl
    return 1 if xhttp.send(ctx, code, reason, "application/json", body) else -1


def rpc_echo(call):
    """jsonrpc.echo: its first parameter as a string and, when there is
    one, its second as a number (jsonrpc_rpc_echo)."""
    try:
        vals = call.scan("*.S.d")
    except RpcFault:
        vals = call.scan("*.S")
    for v in vals:
        call.add(v)


EXPORTS = ModuleExports(
    name=MOD,
    functions=[
        FuncExport("jsonrpc_exec", (P.STR,), w_jsonrpc_exec),
        FuncExport("jsonrpc_dispatch", (), w_jsonrpc_dispatch, REQUEST_ROUTE),
    ],
    params=[
        ParamExport("pretty_format", int, 1),
        ParamExport("transport", int, 6),                   # fifo + datagram
        ParamExport("fifo_name", str, "kamailio_rpc.fifo"),
        ParamExport("fifo_mode", int, 0o660),
        ParamExport("fifo_group", (str, int), None),
        ParamExport("fifo_user", (str, int), None),
        ParamExport("fifo_reply_dir", str, "/tmp/"),
        ParamExport("dgram_socket", str, "kamailio_rpc.sock"),
        ParamExport("dgram_workers", int, 1),
        ParamExport("dgram_timeout", int, 2000),
        ParamExport("dgram_mode", int, 0o660),
        ParamExport("dgram_group", (str, int), None),
        ParamExport("dgram_user", (str, int), None),
    ],
    pvs=[PvExport("jsonrpl", _jsonrpl_get, None, _jsonrpl_parse, True)],
    mod_init=mod_init,
    procs=procs,
    mod_destroy=mod_destroy,
    rpc=[RpcExport("jsonrpc.echo", rpc_echo, "Sample echo command", RET_ARRAY)],
)
