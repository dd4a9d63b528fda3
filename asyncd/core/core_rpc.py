"""The core's RPC methods: `system.*` (introspection) and `core.*`.

Runs in: the processes that serve RPC (asyncd.core.rpc).

Kamailio's src/core/core_cmd.c and the `system.*` methods of
src/core/rpc_lookup.c; names, arguments and reply shapes are Kamailio 5.6's.
Where a value is asyncd's own: `core.version`, `core.info` and `core.flags`
name asyncd and Python instead of Kamailio and its compiler; `core.psa`'s
`status` is always 1 (a process in the table is running); `core.arg` is
the command line with `asyncd` as its first word (the interpreter and
`-m` left out). docs/operations.md lists these.
"""
import os
import platform
import sys
import time

from asyncd import __version__
from asyncd.core.rpc import RET_ARRAY, RpcExport, RpcFault, Struct

NAME = "asyncd"
FLAGS = "USE_UDP, USE_TCP, SHM_ARENA, ZMQ_IPC"


def rpc_list_methods(call):
    """system.listMethods: every method name, one value each."""
    for name in call.script.rpc.names():
        call.add(name)


def rpc_method_help(call):
    """system.methodHelp NAME: the method's doc text."""
    name, = call.scan("s", fault=(400, "Method Name Expected"))
    export = call.script.rpc.lookup(name)
    if export is None:
        raise RpcFault(400, "command not found")
    call.add(export.doc or "undocumented")


def rpc_method_signature(call):
    """system.methodSignature: Kamailio's answer is a fault (core_cmd.c)."""
    raise RpcFault(500, "Not Implemented Yet")


def _scan_each(call, ch):
    """Kamailio's `while (rpc->scan(c, "*x", &v) > 0) rpc->add(...)`: each
    parameter converted in turn; the first that does not convert ends the
    list, and is the call's fault only when nothing was added before it."""
    out = []
    for k in range(len(call.params)):
        try:
            out.append(call.scan("*" + ch * (k + 1))[k])
        except RpcFault:
            if out:
                break
            raise
    return out


def rpc_echo(call):
    """core.echo: every parameter back as a string (scan "*.s"). Over BINRPC a
    double ends the list, as ctl cannot turn one into a string."""
    for v in call.params:
        if call.transport == "binrpc" and isinstance(v, float):
            break
        call.add(v if isinstance(v, str) else str(v))


def rpc_prints(call):
    """core.prints: every parameter back as a string."""
    for v in _scan_each(call, "s"):
        call.add(v)


def rpc_printi(call):
    """core.printi: every parameter back as an integer."""
    for v in _scan_each(call, "d"):
        call.add(v)


def full_version():
    """Kamailio's full_version shape: `name version (arch/os)`."""
    return f"{NAME} {__version__} ({platform.machine()}/{sys.platform})"


def rpc_version(call):
    """core.version: one string."""
    call.add(full_version())


def rpc_flags(call):
    """core.flags: the build flags, one string."""
    call.add(FLAGS)


def rpc_info(call):
    """core.info: version, id, compiler, compiled, flags."""
    call.add({"version": f"{NAME} {__version__}", "id": "unknown",
              "compiler": f"python {platform.python_version()}", "compiled": "", "flags": FLAGS})


def _rows(call):
    table = getattr(call.script, "proctable", None)
    return table.rows() if table is not None else []


def rpc_ps(call):
    """core.ps: pid, then description, of every process (flat)."""
    for _i, pid, _rank, desc in _rows(call):
        call.add(pid)
        call.add(desc)


def rpc_psx(call):
    """core.psx: one {IDX, PID, DSC} per process."""
    for i, pid, _rank, desc in _rows(call):
        call.add({"IDX": i, "PID": pid, "DSC": desc})


def rpc_psa(call):
    """core.psa: one {index, pid, status, rank, description} per process."""
    for i, pid, rank, desc in _rows(call):
        call.add({"index": i, "pid": pid, "status": 1, "rank": rank, "description": desc})


def rpc_uptime(call):
    """core.uptime: {now, up_since, uptime}: two ctime strings and seconds."""
    now = time.time()
    start = getattr(call.script, "start_time", None) or now
    call.add({"now": time.ctime(now), "up_since": time.ctime(start), "uptime": int(now - start)})


def rpc_pwd(call):
    """core.pwd: the working directory."""
    try:
        call.add(os.getcwd())
    except OSError:
        raise RpcFault(500, "getcwd Failed") from None


def rpc_arg(call):
    """core.arg: the command line, one value per word."""
    for a in [NAME] + sys.argv[1:]:
        call.add(a)


_SHIFTS = {"b": 0, "k": 10, "m": 20, "g": 30}


def rpc_shmmem(call):
    """core.shmmem [b|k|m|g]: the shm summary, in bytes or the unit given."""
    unit, = call.scan("*s") or ["b"]
    u = unit[:1].lower()
    if u not in _SHIFTS or (len(unit) > 1 and unit[1:].lower() != "b"):
        raise RpcFault(500, "bad param, (use b|k|m|g)")
    shm = call.script.shm
    if shm is None:
        raise RpcFault(500, "shared memory not initialized")
    use = shm.usage()
    sh = _SHIFTS[u]
    call.add({k: int(use[k]) >> sh for k in ("total", "free", "used", "real_used", "max_used")}
             | {"fragments": int(use["fragments"])})


def rpc_tcp_info(call):
    """core.tcp_info: readers, connection limits and counts, queued bytes."""
    core = call.script.core
    if str(core.get("disable_tcp", 0)).lower() in ("1", "yes", "true", "on"):
        raise RpcFault(500, "tcp support disabled")
    tcp = getattr(call.script, "tcp", None)
    st = tcp.stats() if tcp is not None else {}
    maxc = tcp.conf.max_connections if tcp is not None else int(core.get("tcp_max_connections") or 2048)
    call.add({"readers": tcp.n if tcp is not None else 0, "max_connections": maxc,
              "max_tls_connections": int(core.get("tls_max_connections") or 2048),
              "opened_connections": int(st.get("current_opened_connections", 0)),
              "opened_tls_connections": 0,
              "write_queued_bytes": int(st.get("current_write_queue_size", 0))})


def rpc_sockets_list(call):
    """core.sockets_list: an array of `socket` structs (proto, address, port,
    mcast, mhomed, virtual)."""
    out = Struct()
    for proto, ip, port in getattr(call.script, "sock_addrs", None) or ():
        out.append(("socket", {"proto": proto, "address": ip, "port": str(port),
                               "mcast": "no", "mhomed": "no", "virtual": "no"}))
    call.add(out)


def rpc_modules(call):
    """core.modules: the loaded modules' names."""
    for m in call.script.modules:
        call.add(m.name)


RPC = [
    RpcExport("system.listMethods", rpc_list_methods, "Lists all RPC methods supported by the server.",
              RET_ARRAY),
    RpcExport("system.methodSignature", rpc_method_signature, "Returns signature of given method."),
    RpcExport("system.methodHelp", rpc_method_help, "Print the help string for given method."),
    RpcExport("core.prints", rpc_prints, "Returns its string parameters.", RET_ARRAY),
    RpcExport("core.printi", rpc_printi, "Returns its integer parameters.", RET_ARRAY),
    RpcExport("core.echo", rpc_echo, "Returns back its parameters.", RET_ARRAY),
    RpcExport("core.version", rpc_version, "The server's version string."),
    RpcExport("core.flags", rpc_flags, "The server's build flags."),
    RpcExport("core.info", rpc_info, "Version, build and flags of the server."),
    RpcExport("core.uptime", rpc_uptime, "Current time, start time and seconds since the start."),
    RpcExport("core.ps", rpc_ps, "Pid and description of each process.", RET_ARRAY),
    RpcExport("core.psx", rpc_psx, "Index, pid and description of each process.", RET_ARRAY),
    RpcExport("core.psa", rpc_psa, "Every attribute of each process.", RET_ARRAY),
    RpcExport("core.pwd", rpc_pwd, "The working directory.", RET_ARRAY),
    RpcExport("core.arg", rpc_arg, "The command line arguments.", RET_ARRAY),
    RpcExport("core.shmmem", rpc_shmmem, "Shared memory use; optional unit b, k, m or g."),
    RpcExport("core.tcp_info", rpc_tcp_info, "TCP readers, connection limits and counts."),
    RpcExport("core.sockets_list", rpc_sockets_list, "The SIP listen sockets."),
    RpcExport("core.modules", rpc_modules, "The loaded modules.", RET_ARRAY),
]
