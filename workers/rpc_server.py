"""The loop of an RPC transport process: `ctl handler` (BINRPC), `JSONRPCS
FIFO`, `JSONRPCS DATAGRAM`.

Runs in: every process of a ROLE_RPC row (rank PROC_RPC).

Kamailio's ctl handler and jsonrpcs' processes each run their own io_wait
loop over their listening sockets and accepted connections
(src/modules/ctl/io_listener.c io_listen_loop, src/modules/jsonrpcs/
jsonrpcs_fifo.c, jsonrpcs_sock.c). Here the module hands its endpoints over
(asyncd.core.procs.RpcHandlers) and this one loop polls them: a readable
endpoint runs its handler, which may give back new endpoints (an accepted
connection) and marks itself closed when done. A handler that raises is
logged and its endpoint dropped; the process lives on, so a malformed or
hostile request costs that request only.
"""
import gc
import select

from asyncd.core import log
from asyncd.core.cfg_groups import updater

MOD = "core"
POLL_S = 0.2        # how soon a stop request is seen


def tick(fn, proc):
    """The row's tick; a bug in it is logged, never the end of the process."""
    try:
        fn(proc)
    except Exception as ex:  # noqa: BLE001 - the loop outlives a broken handler
        log.err(MOD, f"{proc.desc}: tick: {type(ex).__name__}: {ex}")


def run(proc, row, idx):
    """Loop until proc.stopping: poll the endpoints, run the readable ones."""
    ep = select.epoll()
    watched = {}

    def watch(endpoints):
        for e in endpoints or ():
            fd = e.fileno()
            if fd < 0 or fd in watched:
                continue
            watched[fd] = e
            ep.register(fd, select.EPOLLIN)

    def drop(fd):
        e = watched.pop(fd, None)
        try:
            ep.unregister(fd)
        except (OSError, ValueError):
            pass
        if e is not None and not getattr(e, "closed", False) and hasattr(e, "close"):
            e.close()

    watch(row.handlers.open(proc, idx))
    gc.freeze()     # what we inherited from main is never garbage: keep it out of GC scans
    cfg_update = updater(proc.script)     # Kamailio's cfg_update() per request
    try:
        while not proc.stopping:
            try:
                events = ep.poll(POLL_S)
            except InterruptedError:
                continue
            for fd, _ev in events:
                e = watched.get(fd)
                if e is None:
                    continue
                try:
                    cfg_update()
                    watch(e.on_readable(proc))
                except Exception as ex:  # noqa: BLE001 - one bad request never ends the process
                    log.err(MOD, f"{proc.desc}: {type(ex).__name__}: {ex}")
                    drop(fd)
                    continue
                if getattr(e, "closed", False):
                    drop(fd)
            if row.handlers.tick is not None:
                tick(row.handlers.tick, proc)
    finally:
        for fd in list(watched):
            drop(fd)
        ep.close()
