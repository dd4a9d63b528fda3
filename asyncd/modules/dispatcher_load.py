"""dispatcher's call load (algorithm 10): the calls each destination carries,
ds_load_update(), ds_load_unset() and their expiry.

Runs in: main process (the table made by `configure` from mod_init, before
fork, when ds_hash_size > 0), every process that routes (selection,
ds_load_*), the "secondary timer" process (`expire_tick`, every
ds_hash_check_interval seconds).

Kamailio: src/modules/dispatcher/dispatch.c ds_get_leastloaded,
ds_load_add, ds_load_replace (ds_next_dst moves the call to the next
destination), ds_load_remove, ds_load_update (a BYE or CANCEL ends the
call, a 2xx to the INVITE confirms it), ds_load_unset, ds_ht_timer (a call
ends by itself after ds_hash_expire s, or ds_hash_initexpire s while not
confirmed); ds_ht.c ds_add_cell (a Call-ID already there is refused).
The table is an htable in shm (shm/htable.py) keyed by Call-ID; each
destination's load counter is a word of its state record
(shm/dispatcher.py), so every process sees the same loads.
"""
import time

from asyncd.core import log
from asyncd.modules.dispatcher_list import skip_dst
from asyncd.modules.dispatcher_state import S, flags_of
from shm.dispatcher import F_LOAD
from shm.htable import HTable

MOD = "dispatcher"
LOAD_INIT, LOAD_CONFIRMED = 0, 1


class LoadState:
    __slots__ = ("table", "expire", "initexpire", "interval")

    def __init__(self):
        self.table = None

    def configure(self, script, mp):
        size = int(mp["ds_hash_size"])
        if size <= 0:
            self.table = None
            return
        self.table = HTable(script.shm, "dispatcher load", size)
        self.expire = int(mp["ds_hash_expire"])
        self.initexpire = int(mp["ds_hash_initexpire"])
        self.interval = max(1, int(mp["ds_hash_check_interval"]))


L = LoadState()


def dload(half, s, j):
    return S.store.dword(half, s.base + j, F_LOAD)


def _cell(value):
    setid, state, expire, initexpire, duid = value.split("\t", 4)
    return int(setid), int(state), int(expire), int(initexpire), duid


def least_loaded(half, s):
    """ds_get_leastloaded: the usable destination with the fewest calls below
    its maxload (the first of equals), -1 when none."""
    k, best = -1, 0x7FFFFFFF
    for j, d in enumerate(s.dests):
        load = dload(half, s, j)
        if skip_dst(flags_of(half, s, j)) or (d.maxload and load >= d.maxload):
            continue
        if load < best:
            k, best = j, load
    return k


def over_maxload(half, s, j):
    d = s.dests[j]
    return bool(d.maxload) and dload(half, s, j) >= d.maxload


def load_add(callid, half, s, j):
    """ds_load_add: -> 0, -1 (no duid, Call-ID already counted, no table)."""
    d = s.dests[j]
    if not d.duid:
        log.err(MOD, f"dst unique id not set for {s.id} ({callid})")
        return -1
    t = L.table
    if t is None:
        log.err(MOD, f"cannot add load to {s.id} ({callid})")
        return -1
    now = int(time.time())
    t.lock_key(callid)
    try:
        if t.get(callid) is not None:
            log.warn(MOD, f"call-id already in hash table [{callid}].")
            return -1
        if not t.set(callid, f"{s.id}\t{LOAD_INIT}\t{now + L.expire}\t{now + L.initexpire}\t{d.duid}"):
            log.err(MOD, f"cannot add load to {s.id} ({callid}): out of shared memory")
            return -1
    finally:
        t.unlock_key(callid)
    _add(half, s, j, 1)
    return 0


def _add(half, s, j, delta):
    S.store.update_word(half, s.base + j, F_LOAD, lambda v: max(0, v + delta))


def _by_duid(s, duid):
    low = duid.lower()
    for j, d in enumerate(s.dests):
        if (d.duid or "").lower() == low:
            return j
    return -1


def _take(callid):
    """Remove the call's cell -> (setid, state, ..., duid) or None."""
    t = L.table
    t.lock_key(callid)
    try:
        v = t.get(callid)
        if v is not None:
            t.delete(callid)
    finally:
        t.unlock_key(callid)
    return _cell(v) if v is not None else None


def load_remove(callid):
    """ds_load_remove: -> 0 or -1."""
    cell = _take(callid) if L.table is not None else None
    if cell is None:
        log.err(MOD, f"cannot find load for ({callid})")
        return -1
    return remove_by_id(cell[0], cell[4])


def remove_by_id(setid, duid):
    half, lst = S.current()
    s = lst.set_or_log(setid)
    if s is None:
        return -1
    j = _by_duid(s, duid)
    if j < 0:
        log.err(MOD, f"old destination address not found for [{setid}, {duid}]")
        return -1
    _add(half, s, j, -1)
    return 0


def load_replace(callid, duid):
    """ds_load_replace (ds_next_dst): the call moves to destination duid.
    -> 0, -2 (the new destination is gone: try the next), -1."""
    v = L.table.get(callid) if L.table is not None else None
    if v is None:
        log.err(MOD, f"cannot find load for ({callid})")
        return -1
    setid, _st, _e, _i, old = _cell(v)
    half, lst = S.current()
    s = lst.set_or_log(setid)
    if s is None:
        return -1
    new = _by_duid(s, duid)
    if new < 0:
        log.err(MOD, f"new destination address not found for [{setid}, {duid}]")
        return -2
    _take(callid)
    j = _by_duid(s, old)
    if j < 0:
        log.warn(MOD, f"old destination address not found for [{setid}, {old}]")
    else:
        _add(half, s, j, -1)
    if load_add(callid, half, s, new) < 0:
        log.err(MOD, f"unable to replace destination load [{duid} / {callid}]")
        return -1
    return 0


def load_update(msg):
    """ds_load_update: a BYE or CANCEL ends the call; a 2xx to INVITE confirms it."""
    if msg.callid is None or msg.cseq_method is None:
        log.err(MOD, "cannot parse cseq and callid headers")
        return -1
    if L.table is None:
        return 1
    if msg.is_request:
        if msg.method in ("BYE", "CANCEL"):
            load_remove(msg.callid)
        return 1
    if msg.cseq_method == "INVITE" and 200 <= int(msg.status) < 300:
        t = L.table
        t.lock_key(msg.callid)
        try:
            v = t.get(msg.callid)
            if v is not None:
                setid, _st, e, i, duid = _cell(v)
                t.set(msg.callid, f"{setid}\t{LOAD_CONFIRMED}\t{e}\t{i}\t{duid}")
        finally:
            t.unlock_key(msg.callid)
    return 1


def load_unset(ctx, xavp_dst):
    """ds_load_unset: an INVITE whose failover list has no dstid keeps its load."""
    if not xavp_dst:
        return 1
    msg = ctx.msg
    if msg.is_request and msg.method == "INVITE":
        xl = ctx.xavps
        items = xl.xavp.get(xavp_dst) if xl is not None else None
        if not items or type(items[0]) is not dict or type((items[0].get("dstid") or [None])[0]) is not str:
            return 1
    if msg.callid is None:
        return -1
    return -1 if load_remove(msg.callid) < 0 else 1


def expire_tick(proc):
    """ds_ht_timer: calls past ds_hash_expire, or past ds_hash_initexpire while
    not confirmed, stop counting."""
    if L.table is None:
        return
    now = int(time.time())
    for callid, v in L.table.items():
        try:
            setid, state, e, i, duid = _cell(v)
        except ValueError:
            continue
        if (e and e < now) or (state == LOAD_INIT and i and i < now):
            if _take(callid) is not None:
                remove_by_id(setid, duid)
