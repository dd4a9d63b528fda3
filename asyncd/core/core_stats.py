"""The `core:` and `shmem:` statistics: their names, and the tables the
receivers index to count a message with a few `proc.cnt[h] += 1`.

Runs in: main process (registration, before the fork), udp and tcp
receivers (the counting), any process reading statistics (shmem: gauges).

Kamailio registers these two groups in kex (src/modules/kex/core_stats.c
register_core_stats): the per-method request and per-class reply counters
from pre-script callbacks, the others from SREV_CORE_STATS events the core
raises (src/core/core_stats.h: receive.c, forward.c, msg_parser.c,
parse_uri.c). asyncd registers them always, whether kex is loaded or not:
the receivers count into them and the attendant's exit summary reads them
(one counting mechanism, docs/operations.md "Statistics"); what kex adds is
the way to read them (`stats.*` RPCs, `$stat`, `update_stat`).
"""
import time

# core_stats.c core_stats[]: rcv_requests_<method>, in Kamailio's order
REQ_METHODS = ("INVITE", "CANCEL", "ACK", "BYE", "INFO", "REGISTER", "SUBSCRIBE", "NOTIFY",
               "MESSAGE", "OPTIONS", "PRACK", "UPDATE", "REFER", "PUBLISH")
# methods Kamailio's parser knows but counts nowhere (not METHOD_OTHER: no unsupported_methods)
KNOWN_UNCOUNTED = ("KDMQ", "GET", "POST", "PUT", "DELETE")
# core_stats.c DECLARE_STATS(...): rcv_replies_<class>xx_<name> by the CSeq method
RPL_METHODS = (("INVITE", "invite"), ("CANCEL", "cancel"), ("BYE", "bye"), ("REGISTER", "reg"),
               ("MESSAGE", "message"), ("PRACK", "prack"), ("UPDATE", "update"),
               ("REFER", "refer"))
RPL_CODES = (401, 404, 407, 480, 486)

EVENTS = ("fwd_requests", "fwd_replies", "drop_requests", "drop_replies", "err_requests",
          "err_replies", "bad_URIs_rcvd", "unsupported_methods", "bad_msg_hdr")

# src/core/tcp_stats.c tcp_cnt_defs[], registered when TCP is enabled
TCP = ("established", "passive_open", "connect_success", "connect_failed", "local_reject",
       "con_timeout", "con_reset", "send_timeout", "sendq_full", "current_opened_connections",
       "current_write_queue_size")

SHMEM = (("total_size", "total"), ("used_size", "used"), ("real_used_size", "real_used"),
         ("max_used_size", "max_used"), ("free_size", "free"), ("fragments", "fragments"))


def core_names():
    """Every name of the core: group, as Kamailio 5.6 registers it."""
    names = ["rcv_requests"] + [f"rcv_requests_{m.lower()}" for m in REQ_METHODS]
    names += ["rcv_replies", "rcv_replies_1xx", "rcv_replies_18x", "rcv_replies_2xx",
              "rcv_replies_3xx", "rcv_replies_4xx"]
    names += [f"rcv_replies_{c}" for c in RPL_CODES]
    names += ["rcv_replies_5xx", "rcv_replies_6xx"]
    names += list(EVENTS)
    names += [f"rcv_replies_{g}xx_{n}" for _m, n in RPL_METHODS for g in range(1, 7)]
    return names


class CoreStats:
    """The handles of core: (attributes named as the statistics) and the lookup
    tables a receiver indexes per message:

    req_method   {method: handle}: rcv_requests_<method>, unsupported_methods
                 for a method Kamailio's parser does not know, -1 for one it
                 knows but does not count
    rpl_class    [handle] by status // 100 (0 and 7+: -1)
    rpl_code     {status: handle}: 401/404/407/480/486 and 180..189 (18x)
    rpl_method   {CSeq method: [handle] by status // 100 - 1}
    """

    def __init__(self, stats, shm_usage=None):
        h = {n: stats.register("core", n) for n in core_names()}
        for n, v in h.items():
            setattr(self, n, v)
        self.req_method = {m: h[f"rcv_requests_{m.lower()}"] for m in REQ_METHODS}
        self.req_method.update({m: -1 for m in KNOWN_UNCOUNTED})
        self.rpl_class = [-1] + [h[f"rcv_replies_{c}xx"] for c in range(1, 7)] + [-1] * 3
        self.rpl_code = {c: h[f"rcv_replies_{c}"] for c in RPL_CODES}
        self.rpl_code.update({c: h["rcv_replies_18x"] for c in range(180, 190)})
        self.rpl_method = {m: [h[f"rcv_replies_{g}xx_{n}"] for g in range(1, 7)]
                           for m, n in RPL_METHODS}
        if shm_usage is not None:
            gauge = _ShmGauge(shm_usage)
            for name, key in SHMEM:
                stats.register("shmem", name, func=gauge.reader(key))


class _ShmGauge:
    """shmem: values from one ShmArena.usage() walk per second at most, as kex
    reads shm_info once per timer tick (core_stats.c stats_shm_update)."""

    def __init__(self, usage):
        self.usage = usage
        self.at = -1.0
        self.last = {}

    def reader(self, key):
        return lambda: self.read(key)

    def read(self, key):
        t = time.monotonic()
        if t - self.at >= 1.0:
            self.last = self.usage()
            self.at = t
        return self.last.get(key, 0)


def register(script):
    """core: and shmem: (and tcp: when TCP listens) on script.stats -> CoreStats,
    also kept as script.core_stats."""
    shm = getattr(script, "shm", None)
    cs = CoreStats(script.stats, shm.usage if shm is not None else None)
    tcp = getattr(script, "tcp", None)
    if tcp is not None:
        register_tcp(script.stats, tcp.stats)
    script.core_stats = cs
    return cs


def register_tcp(stats, read):
    """The tcp: group as computed statistics over what the `tcp main process`
    counts in its shared page (asyncd.ipc.tcp STATS; `read()` -> {name: value}):
    one count, two readers (these and the exit summary). Being computed, they
    do not reset (Kamailio's can, but for the current_* gauges)."""
    for name in TCP:
        stats.register("tcp", name, func=lambda n=name: read()[n])
