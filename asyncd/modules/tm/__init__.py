"""tm: stateful transactions kept in shared memory, so a request received by
one process can be relayed, replied, suspended, timed out or resumed by any
other (Kamailio's tm module; docs/kamailio-tm.md).

Runs in: main (fixups, mod_init), udp receivers, the `timer` process, async
task workers and the ASYNC module's timers (see each file).

Split by concern as Kamailio's src/modules/tm/t_*.c, each file importing
only the ones above it in this list:

    cell.py     the record and the handle a process holds it by (h_table.c)
    state.py    S, the one state object: parameters, table, timer feed;
                flush() and arming timers
    lookup.py   matching keys, our Via branch, rebuilding a request (t_lookup.c)
    cancel.py   hop-by-hop CANCEL and ACK of a branch (t_cancel.c)
    reply.py    local replies, replies on our branches, failure routes (t_reply.c)
    suspend.py  t_suspend, t_continue (t_suspend.c)
    newtran.py  t_newtran, retransmission and ACK matching (t_lookup.c)
    fwd.py      t_relay, CANCEL of an INVITE transaction (t_fwd.c)
    timer.py    the timer handlers and the `timer` process row (timer.c)
    api.py      what other modules call (tm_load.c)
    mod.py      the export table, script functions, hooks, lifecycle (tm.c)

The table itself is shm/tm_table.py.
"""
from asyncd.modules.tm import api
from asyncd.modules.tm.mod import EXPORTS

__all__ = ["EXPORTS", "api"]
