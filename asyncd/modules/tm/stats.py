"""tm's counts and the `tm.stats` RPC (Kamailio's src/modules/tm/t_stats.c).

Runs in: main (registration in tm's mod_init), every process running tm
(the bumps, through S.cnt / S.st: asyncd/modules/tm/state.py), the RPC
processes (tm.stats) and whoever reads the tmx: statistics.

Kamailio keeps these in a per-process array of its own (tm_stats[], summed
by tm_rpc_stats and tm_get_stats); here they are INTERNAL rows of the one
statistics store (asyncd/core/counters.py): no second mechanism, and not
listed among the statistics, as Kamailio lists none of them. Where they are
bumped, as in Kamailio:

    transactions, t_created   a new server transaction (h_table.h insert_into_hash_table)
    waiting                   put on wait after the final reply (t_funcs.c put_on_wait)
    deleted, t_freed          its end after the wait timer (h_table.h remove_from_hash_table)
    completed_<N>xx           a final reply sent upstream, local or relayed (t_reply.c)
    rpl_generated             a reply tm built itself, provisional ones too (_reply_light)
    rpl_sent                  every reply sent upstream (local and relayed)
    rpl_received              a reply matched to one of tm's transactions (reply_received)

client_transactions (UAC) and delayed_free stay 0: asyncd has no local UAC
(Kamailio's uac.c t_uac) and frees a cell only in the wait timer.
"""
from asyncd.core.counters import INTERNAL
from asyncd.modules.tm.state import COUNTS, S


def register(script):
    """tm's mod_init: the counts as INTERNAL statistics; their handles into S.st."""
    stats = script.stats
    st = S.st
    for name in COUNTS:
        setattr(st, name, stats.register("tm", name, INTERNAL))
    st.by_class = [-1, -1] + [getattr(st, f"completed_{c}xx") for c in range(2, 7)] + [-1] * 3


def totals(stats):
    """{count name: value} over every process (tm_get_stats)."""
    return {name: stats.get(getattr(S.st, name)) for name in COUNTS}


def rpc_stats(call):
    """tm.stats: Kamailio 5.6's struct, in its order (t_stats.c tm_rpc_stats);
    `current` and `waiting` are Kamailio's differences, never below 0 here."""
    t = totals(call.script.stats)
    call.add({
        "current": max(0, t["transactions"] - t["deleted"]),
        "waiting": max(0, t["waiting"] - t["deleted"]),
        "total": t["transactions"],
        "total_local": t["client_transactions"],
        "rpl_received": t["rpl_received"],
        "rpl_generated": t["rpl_generated"],
        "rpl_sent": t["rpl_sent"],
        "6xx": t["completed_6xx"], "5xx": t["completed_5xx"], "4xx": t["completed_4xx"],
        "3xx": t["completed_3xx"], "2xx": t["completed_2xx"],
        "created": t["t_created"],
        "freed": t["t_freed"],
        "delayed_free": t["delayed_free"],
    })
