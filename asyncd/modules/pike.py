"""The pike module: pike_check_req(), pike_check_ip(ip), the pike.top /
pike.list RPC and the pike:blocked_ips statistic.

Runs in: main (mod_init: the shared table), every process running routes
(pike_check_req), the RPC processes (pike.top).

Kamailio: src/modules/pike/ (pike.c, pike_funcs.c pike_check_ipaddr,
ip_tree.c mark_node / refresh_node, pike_rpc.c pike_top). The state is one
table in shm (shm/pike_table.py) so that every receiver counts the same
source; the per-unit swap and the expiry run lazily under its lock rather
than on the core timer (docs/kamailio-nat-acc.md "pike").

Return codes of pike_check_req: 1 the source is fine, -1 it is blocked,
-2 this request made it blocked (the `PIKE - BLOCKing ip` line is logged
then, at pike_log_level).
"""
import ipaddress

from asyncd.core import log
from asyncd.core.exports import FuncExport, ModuleExports, P, ParamExport
from asyncd.core.route_types import ONREPLY_ROUTE, REQUEST_ROUTE
from asyncd.core.rpc import RpcExport, RpcFault
from shm.pike_table import NEW_RED, PikeTable

MOD = "pike"


class PikeState:
    """Filled by mod_init."""
    __slots__ = ("table", "log_level", "blocked")

    def __init__(self):
        self.table = None
        self.log_level = log.L_WARN
        self.blocked = 0


S = PikeState()


def _addr_text(key):
    if len(key) == 4:
        return str(ipaddress.IPv4Address(key))
    if len(key) == 16:
        return str(ipaddress.IPv6Address(key))
    return ".".join(str(b) for b in key)


def _unblocked(key):
    log.log(S.log_level, MOD, f"refresh_node(): PIKE - UNBLOCKing node {_addr_text(key)}",
            where="modules/pike.py")


def check_ip(ctx, ip):
    """pike_funcs.c pike_check_ipaddr on an address string."""
    try:
        packed = ipaddress.ip_address(ip.strip("[]")).packed
    except ValueError:
        log.err(MOD, f"failed to parse ip address: {ip}")
        return -1
    if S.table is None:
        return 1
    rc = S.table.mark(packed, _unblocked)
    if rc == NEW_RED:
        log.log(S.log_level, MOD, f"pike_check_ipaddr(): PIKE - BLOCKing ip {ip}",
                where="modules/pike.py")
        ctx.proc.cnt[S.blocked] += 1
    return rc


def w_pike_check_req(ctx, site):
    return check_ip(ctx, ctx.msg.src[0])


def w_pike_check_ip(ctx, site, ip):
    if not ip:
        return -1
    return check_ip(ctx, ip)


def rpc_top(call):
    """pike.top [ALL|HOT|WARM]: the IP leaves, Kamailio's struct (max_hits,
    list of {ip_addr, leaf_hits_prev, leaf_hits_curr, expires, status},
    number_of_rows). The option is matched as a substring, any case."""
    opt = call.scan("*s")
    opt = (opt[0] if opt else "HOT").upper()
    which = "ALL" if "ALL" in opt else "HOT" if "HOT" in opt else "WARM" if "WARM" in opt else None
    if which is None:
        raise RpcFault(500, "Bad argument. Select: ALL, HOT or WARM")
    rows = S.table.top(which) if S.table is not None else []
    items = [{"ip_addr": _addr_text(k), "leaf_hits_prev": p, "leaf_hits_curr": c,
              "expires": e, "status": st} for k, p, c, e, st in rows]
    call.add({"max_hits": S.table.max_hits if S.table else 0, "list": items,
              "number_of_rows": len(items)})


def mod_init(script):
    mp = script.modparams[MOD]
    unit, reqs, latency = int(mp["sampling_time_unit"]), int(mp["reqs_density_per_unit"]), \
        int(mp["remove_latency"])
    if unit <= 0 or reqs <= 0 or latency <= 0:
        raise RuntimeError("pike: sampling_time_unit, reqs_density_per_unit and remove_latency "
                           "must be > 0")
    log.info(MOD, "PIKE - initializing")
    S.table = PikeTable(script.shm, reqs, unit, latency)
    S.log_level = int(mp["pike_log_level"])
    S.blocked = script.stats.register("pike", "blocked_ips")


EXPORTS = ModuleExports(
    name="pike",
    functions=[FuncExport("pike_check_req", (), w_pike_check_req, REQUEST_ROUTE | ONREPLY_ROUTE),
               FuncExport("pike_check_ip", (P.STR,), w_pike_check_ip, REQUEST_ROUTE | ONREPLY_ROUTE)],
    params=[ParamExport("sampling_time_unit", int, 2), ParamExport("reqs_density_per_unit", int, 30),
            ParamExport("remove_latency", int, 120), ParamExport("pike_log_level", int, log.L_WARN)],
    mod_init=mod_init,
    rpc=[RpcExport("pike.top", rpc_top, "pike.top Dump parts of the pike table"),
         RpcExport("pike.list", rpc_top, "pike.top Dump parts of the pike table")],
)
