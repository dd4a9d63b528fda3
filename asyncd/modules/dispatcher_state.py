"""dispatcher's shared state: the list in shm as this process sees it, the
destination state changes and the event routes they run, reloads.

Runs in: every process that loads dispatcher (see asyncd/modules/dispatcher.py):
the routing processes, the "secondary timer" process, the receivers that
take ping replies, the RPC processes.

Kamailio: src/modules/dispatcher/dispatch.c ds_update_state (the state
machine with ds_probing_threshold / ds_inactive_threshold), ds_reinit_state,
ds_run_route (event_route[dispatcher:dst-down] / [dispatcher:dst-up] and
$dsv), ds_load_list / ds_reload; dispatcher.c ds_parse_reply_codes.
"""
import random
import time

from asyncd.cfg.fixups import Loc
from asyncd.cfg.pvcore import PvTable, parse_format, parse_pv
from asyncd.core import log
from asyncd.core.errors import CfgError
from asyncd.modules.dispatcher_db import DsDb, DsDbFailed
from asyncd.modules.dispatcher_list import (DS_DISABLED_DST, DS_INACTIVE_DST, DS_PROBING_DST,
                                            DS_STATES_ALL, DS_TRYING_DST, DsList, ListError,
                                            build, is_local_socket, load_file, skip_dst)
from asyncd.sip import faked_request
from shm.dispatcher import F_FLAGS, F_LOAD

MOD = "dispatcher"


class Rctx:
    """ds_rctx_t: what $dsv() reads while event_route[dispatcher:dst-*] runs."""
    __slots__ = ("code", "reason", "flags")

    def __init__(self, code, reason=None, flags=0):
        self.code, self.reason, self.flags = code, reason, flags


class DispatcherState:
    """dispatcher's state in one object: the shm store (made in mod_init),
    the modparams it reads on every call, and per process the list last
    unmarshalled from shm (`cache`) and the running event route's Rctx."""

    def __init__(self):
        self.store = None
        self.cache = (None, 0, DsList([]))     # (generation, half, DsList)
        self.mp = {}
        self.rctx = None
        self.hash_model = None
        self.setid_pv = self.attrs_pv = None
        self.reply_codes = ()
        self.list_file = ""
        self.sockets = None             # our listen sockets, for the socket= check at load
        self.db = None                  # DsDb when db_url is set (the list is read from the DB)

    def configure(self, script, mp):
        self.mp = {k: mp[k] for k in mp}
        for k in ("flags", "use_default", "force_dst", "xavp_dst_mode", "xavp_ctx_mode",
                  "ds_probing_threshold", "ds_inactive_threshold", "ds_probing_mode",
                  "ds_ping_interval", "ds_load_mode", "ds_attrs_none", "reload_delta", "ds_hash_size"):
            self.mp[k] = int(mp[k])
        self.list_file = str(mp["list_file"] or "")
        self.sockets = tuple(getattr(script, "sock_addrs", None) or ()) or None
        self.db = DsDb(mp, self.sockets) if mp["db_url"] else None
        dflt = str(mp["ds_default_socket"] or "")
        if dflt and self.sockets is not None and not is_local_socket(dflt, self.sockets):
            raise CfgError(f"dispatcher: non-local socket <{dflt}>")
        self.mp["ds_default_socket"] = dflt
        table = PvTable()
        self.hash_model = (parse_format(str(mp["hash_pvar"]), Loc("<hash_pvar>", 0, 0), table)
                           if mp["hash_pvar"] else None)
        self.setid_pv = _writable_pv(mp["setid_pvname"], "setid_pvname", table)
        self.attrs_pv = _writable_pv(mp["attrs_pvname"], "attrs_pvname", table)
        self.reply_codes = parse_reply_codes(str(mp["ds_ping_reply_codes"] or ""))

    def current(self):
        """-> (half, DsList) as in shm now; unmarshalled again after a reload."""
        st = self.store
        if st is None:
            return 0, self.cache[2]
        gen = st.generation()
        if gen != self.cache[0]:
            g, half, data = st.read()
            self.cache = (g, half, DsList.loads(data) if data else DsList([]))
        return self.cache[1], self.cache[2]


S = DispatcherState()


def _writable_pv(text, name, table):
    if not text:
        return None
    try:
        pv = parse_pv(str(text), None, table)
    except CfgError as e:
        raise CfgError(f"dispatcher: [{text}]- invalid {name}: {e}") from None
    if not pv.writable:
        raise CfgError(f"dispatcher: [{text}]- invalid {name}")
    return pv


def parse_reply_codes(text):
    """ds_parse_reply_codes: `code=404;class=3` -> ((\"code\", 404), (\"class\", 3))."""
    out = []
    for part in text.split(";"):
        name, _, value = part.partition("=")
        name = name.strip().lower()
        try:
            v = int(value.strip())
        except ValueError:
            continue
        if name == "code" and 100 <= v < 700:
            out.append(("code", v))
        elif name == "class" and 1 <= v < 7:
            out.append(("class", v))
    return tuple(out)


def ping_reply_ok(code):
    """A ping reply that keeps (or makes) the destination active: any 2xx, or
    one ds_ping_reply_codes names (ds_options_callback, ds_ping_check_rplcode)."""
    if 200 <= code <= 299:
        return True
    return any(v == (code if k == "code" else code // 100) for k, v in S.reply_codes)


# -- loading ------------------------------------------------------------------------------
def load_list():
    """ds_load_list (list_file) -> DsList (ListError when it fails). With
    db_url, ds_init_db (DsDbFailed when it fails; asyncd/modules/dispatcher_db.py)."""
    if S.db is not None:
        return S.db.init_load()
    return load_file(S.list_file, S.mp["ds_load_mode"], bool(S.mp["ds_attrs_none"]), S.sockets)


def publish(lst, loads=None):
    """The list in shm for every process; states from each destination's
    flags, call loads from `loads` (per destination, in list order) or 0."""
    S.store.publish(lst.dumps(), [d.flags for s in lst.order for d in s.dests], len(lst.order), loads)
    half, cur = S.current()
    for s in cur.order:
        init_rweights(half, cur, s)
    log_sets(lst)


def init_rweights(half, lst, s):
    """dp_init_relative_weights: each usable destination gets rweight * 100 /
    (sum of the usable ones' rweight) of the 100 slots, the rest the last one
    given slots, shuffled. Nothing for a set of one or without rweights."""
    if len(s.dests) < 2:
        return
    usable = [(j, d.rweight) for j, d in enumerate(s.dests) if not skip_dst(flags_of(half, s, j))]
    total = sum(w for _j, w in usable)
    if total == 0:
        return
    table = []
    for j, w in usable:
        table.extend([j] * (w * 100 // total))
    last = table[-1] if table else len(s.dests) - 1
    if len(table) < 100:
        log.info(MOD, f"extra rweight {100 - len(table)} for last active destination in group {s.id}")
    table.extend([last] * (100 - len(table)))
    random.shuffle(table)
    S.store.set_rwlist(half, lst.order.index(s), table)


def log_sets(lst):
    """ds_log_sets (at DBG), so an operator can see what was loaded."""
    if log.enabled(log.L_DBG):
        for s in lst.order:
            for d in s.dests:
                log.dbg(MOD, f"dst>> {s.id} {d.uri} {d.flags} {d.priority}")


def reload_guard():
    """reload_delta: -> "Ongoing reload" within it, else None (and the time noted)."""
    st = S.store
    now = int(time.time())
    if st.reload_time() and st.reload_time() > now - S.mp["reload_delta"]:
        log.err(MOD, "ongoing reload")
        return "Ongoing reload"
    st.mark_reload()
    return None


def reload():
    """ds_reload: -> None, or the error text (reload_delta, load failure)."""
    busy = reload_guard()
    if busy:
        return busy
    if S.db is not None:
        return _reload_db()
    try:
        publish(load_file(S.list_file, S.mp["ds_load_mode"], bool(S.mp["ds_attrs_none"]), S.sockets))
    except (ListError, ValueError) as e:
        log.err(MOD, f"Error reloading from list: {e}")
        return "Reload Failed"
    return None


def _reload_db():
    """ds_reload_db: a reload whose rows were partly skipped publishes the
    list it built but fails, as Kamailio's (ds_load_db returns -2)."""
    try:
        lst, skipped = S.db.reload()
        publish(lst)
    except (DsDbFailed, ValueError) as e:
        log.err(MOD, f"Error reloading from db: {e}")
        return "Reload Failed"
    if skipped:
        log.err(MOD, f"Error reloading from db: {skipped} destination(s) skipped")
        return "Reload Failed"
    return None


def rebuild(add=None, drop=None):
    """ds_add_dst / ds_remove_dst: the list rebuilt from the current one as
    Kamailio does (every destination added again in walk order, with its
    live state bits and call load, then `add`; `drop` = (group, uri) left
    out), so the new one is ordered as a fresh load would order it. The
    caller has passed reload_guard(). -> None, or the error text."""
    half, lst = S.current()
    entries, loads = [], {}
    for s in lst.order:
        for j, d in enumerate(s.dests):
            if drop is not None and s.id == drop[0] and d.uri == drop[1]:
                continue
            flags = S.store.dword(half, s.base + j, F_FLAGS)
            entries.append((s.id, d.uri, flags, d.priority, d.body or ""))
            loads[(s.id, d.uri)] = S.store.dword(half, s.base + j, F_LOAD)
    if add is not None:
        entries.append(add)
    try:
        new = build(entries, S.mp["ds_load_mode"], bool(S.mp["ds_attrs_none"]), S.sockets)
        publish(new, [loads.get((s.id, d.uri), 0) for s in new.order for d in s.dests])
    except (ListError, ValueError) as e:
        log.err(MOD, f"cannot rebuild the destination list: {e}")
        return "failed"
    return None


# -- state changes --------------------------------------------------------------------------
def next_state(old, count, state, probing_threshold, inactive_threshold):
    """ds_update_state's arithmetic: -> (new flags, new message_count)."""
    init_state = state
    if state & DS_TRYING_DST and old & DS_INACTIVE_DST:
        state = (state & ~DS_TRYING_DST) | DS_INACTIVE_DST
    flags = old & ~DS_STATES_ALL
    flags |= DS_DISABLED_DST if state & DS_DISABLED_DST else state
    if state & DS_TRYING_DST:
        count += 1
        if count >= probing_threshold:
            flags = (flags & ~DS_TRYING_DST) | DS_INACTIVE_DST
            count = 0
    elif not init_state & DS_TRYING_DST and old & DS_INACTIVE_DST:
        count += 1
        if count < inactive_threshold:
            flags |= DS_INACTIVE_DST
            if old & DS_PROBING_DST:
                flags |= DS_PROBING_DST
        else:
            count = 0
    else:
        count = 0
    return flags, count


def update_state(proc, msg, group, uri, state, rctx):
    """ds_update_state: -> 0, or -1 when the set or the URI is unknown. Runs
    event_route[dispatcher:dst-down] / [dispatcher:dst-up] on a change."""
    half, lst = S.current()
    if not lst.order:
        log.err(MOD, "the list is null")
        return -1
    s, i = lst.find(group, uri)
    if s is None:
        log.err(MOD, f"destination set [{group}] not found")
        return -1
    if i < 0:
        return -1
    pt, it = S.mp["ds_probing_threshold"], S.mp["ds_inactive_threshold"]

    def change(old, count):
        new, count = next_state(old, count, state, pt, it)
        return new, count, (old, new)
    old, new = S.store.update(half, s.base + i, change)
    _rweights_follow(half, lst, s, i, old, new)
    if not skip_dst(old) and skip_dst(new):
        run_event(proc, msg, uri, "dispatcher:dst-down", rctx)
    elif skip_dst(old) and not skip_dst(new):
        run_event(proc, msg, uri, "dispatcher:dst-up", rctx)
    return 0


def reinit_state(group, uri, state, by_duid=False):
    """ds_reinit_state / ds_reinit_duid_state / ds_reinit_state_all (uri "all"):
    the state bits replaced, no event route. -> 0 or -1."""
    half, lst = S.current()
    if not lst.order:
        log.err(MOD, "the list is null")
        return -1
    s = lst.set_or_log(group)
    if s is None:
        return -1
    if uri == "all":
        idx = range(len(s.dests))
    else:
        low = uri.lower()
        idx = [i for i, d in enumerate(s.dests)
               if ((d.duid or "") if by_duid else d.uri).lower() == low][:1]
        if not idx:
            what = "duid" if by_duid else "address"
            log.err(MOD, f"destination {what} [{group} : {uri}] not found")
            return -1

    def replace(old, count):
        new = (old & ~DS_STATES_ALL) | state
        return new, count, (old, new)
    for i in idx:
        old, new = S.store.update(half, s.base + i, replace)
        _rweights_follow(half, lst, s, i, old, new)
    return 0


def _rweights_follow(half, lst, s, i, old, new):
    """ds_reinit_rweight_on_state_change: a destination with rweight that
    becomes usable or unusable redistributes its set's slots."""
    if s.dests[i].rweight > 0 and bool(skip_dst(old)) != bool(skip_dst(new)):
        init_rweights(half, lst, s)


def run_event(proc, msg, uri, route, rctx):
    """ds_run_route: the event route on the message being routed, or on a
    faked request whose R-URI is the destination (a ping's outcome)."""
    script = proc.script if proc is not None else None
    if script is None or route not in getattr(script, "event_routes", ()):
        return
    if msg is None:
        msg = faked_request()
        msg.new_uri = uri
    prev, S.rctx = S.rctx, rctx
    try:
        script.run_event_route(route, script.new_ctx(msg, proc))
    except Exception as e:      # a broken route never stops the state change
        log.err(MOD, f"event_route[{route}] failed: {e!r}")
    finally:
        S.rctx = prev


def flags_of(half, s, i):
    """The destination's state bits now (shm)."""
    return S.store.dword(half, s.base + i, F_FLAGS)
