"""The htable module: shared hash tables for the cfg ($sht and friends).

Runs in: main process (modparams, tables created and loaded from their DB in
mod_init before fork, written back to it in mod_destroy),
udp receivers and async workers ($sht reads/writes, sht_* functions), the
"HTable Timer" process (autoexpire: `_expire_tick`, a periodic job of its
timer row, run by workers/timer.py).

Kamailio: src/modules/htable (htable.c exports, ht_var.c pseudo-variables,
ht_api.c semantics).  Storage and its semantics are in shm/htable.py.
Differences, on purpose:
- expired entries are reclaimed by a wheel that only touches entries that
  come due (Kamailio scans every slot each timer_interval); reads never see
  an expired entry in either.  Tables with autoexpire get one extra process,
  "HTable Timer" (Kamailio's name when timer_procs > 0), ticking every second.
- `size` keeps Kamailio's meaning (2^size slots) but a table never gets
  fewer than 1024 buckets: chains are walked in Python, so long chains cost.
- using a table no `modparam("htable", "htable", ...)` defines logs an
  error (once per table) and reads $null (Kamailio: silently $null).
- sht_iterator_* walk a snapshot taken at sht_iterator_start: no lock is
  held while the script runs between sht_iterator_next calls.
- event_route[htable:expired:NAME] runs in the HTable Timer process after
  the entry is gone and no lock is held ($shtrecord(key), $shtrecord(value));
  Kamailio runs it with the slot locked.
- no DMQ replication. A table with `dbtable` is loaded from db_url in
  mod_init and, with dbmode=1, written back in mod_destroy, as Kamailio does
  (asyncd/modules/htable_db.py). dbmode=2 is asyncd's own: the table lives
  in its DB table, so every node on that db_url shares it
  (asyncd/modules/htable_dbt.py; Kamailio reads 2 as 1). docs/kamailio-htable.md.
RPC methods (htable.dump, htable.get, ...) are in asyncd/modules/htable_rpc.py.
"""
import re

from asyncd.cfg.fixups import Loc
from asyncd.cfg.pvcore import PvTable, fmt, parse_format
from asyncd.core import log
from asyncd.core.context import ProcState
from asyncd.core.errors import CfgError
from asyncd.core.exports import FuncExport, ModuleExports, P, ParamExport, PvExport
from asyncd.core.procs import PROC_TIMER, ROLE_TIMER, Periodic, ProcRow, TimerHandlers
from asyncd.modules.htable_db import HtDbConf, HtDbFailed, delete_records, fill, read_table, save_table
from asyncd.modules.htable_dbt import DbTable
from asyncd.modules.htable_rpc import HtableRpc
from asyncd.modules.srdb import DbError
from asyncd.sip import faked_request
from shm.htable import HTable

MOD = "htable"
DBMODE_SHARED = 2          # asyncd's own dbmode: the table lives in the DB (htable_dbt.py)


class HtableState:
    """htable's state, in one object. `tables` (the shm tables, so every
    child shares their contents; DbTable for dbmode=2) is made in main by
    mod_init, before fork. `iters` and `record` are per process by design:
    each process walks its own iterator snapshots, and the HTable Timer sets
    `record` while an expired entry's event route runs. `pv_table` caches the
    pv classes $sht keys are parsed with (startup). `dbload` holds, per table
    with a dbtable, the shm offset of Kamailio's ht->dbload flag (set by a
    load that found rows, or by htable.reload; read by the write-back)."""
    __slots__ = ("tables", "missing_logged", "iters", "record", "pv_table", "specs", "db_url",
                 "conf", "dbload", "shm")

    def __init__(self):
        self.tables = {}                # name -> shm.htable.HTable or htable_dbt.DbTable
        self.missing_logged = set()     # undefined tables already logged (once each)
        self.iters = {}                 # iterator name -> [table, items, position]
        self.record = None              # (key, value) of the expired entry
        self.pv_table = None            # made on the first key with variables
        self.specs = {}                 # name -> the table's parsed definition (htable.listTables)
        self.db_url = ""                # modparam db_url (htable.reload / htable.store)
        self.conf = None                # htable_db.HtDbConf when db_url is set
        self.dbload = {}                # name -> shm offset of the dbload byte
        self.shm = None

    def configure(self, script, mp):
        """mod_init: one HTable in shm per `htable` modparam (a DbTable for dbmode=2)."""
        self.tables, self.missing_logged, self.iters, self.record = {}, set(), {}, None
        self.specs, self.db_url, self.dbload = {}, str(mp.get("db_url") or ""), {}
        self.shm, self.conf = script.shm, None
        for spec in mp["htable"]:
            try:
                name, p = parse_table_spec(spec)
            except ValueError as e:
                raise CfgError(f"htable: {e}") from None
            if name in self.tables:
                raise CfgError(f"htable: table {name!r} defined twice")
            self.specs[name] = p
            self.tables[name] = HTable(script.shm, name, p["size"], p["autoexpire"], p["initval"],
                                       p["updateexpire"])
        if self.db_url:
            self._configure_db(script, mp)
        else:
            _no_db_checks(self.specs)

    def _configure_db(self, script, mp):
        """htable.c mod_init: bind db_url (the driver module must be loaded);
        dbmode=2 tables become DbTables on it."""
        self.conf = HtDbConf(mp)
        try:
            self.conf.bind(script)
        except DbError as e:
            raise CfgError(f"htable: {e}") from None
        for name, p in self.specs.items():
            if not p.get("dbtable"):
                if p["dbmode"] == DBMODE_SHARED:
                    raise CfgError(f"htable {name}: dbmode=2 needs a dbtable")
                continue
            self.dbload[name] = script.shm.static_alloc(8)
            if p["dbmode"] == DBMODE_SHARED:
                if p.get("cols"):
                    raise CfgError(f"htable {name}: dbmode=2 (asyncd: the table lives in the DB) "
                                   "cannot be used with cols")
                self.tables[name] = DbTable(self.conf, p, name, self.tables[name],
                                            int(mp["timer_interval"]))

    def loaded(self, name):
        off = self.dbload.get(name)
        return off is not None and self.shm.buf[off] != 0

    def set_loaded(self, name, on=True):
        off = self.dbload.get(name)
        if off is not None:
            self.shm.buf[off] = 1 if on else 0


def _no_db_checks(specs):
    for name, p in specs.items():
        if p["dbmode"] == DBMODE_SHARED:
            raise CfgError(f"htable {name}: dbmode=2 needs a dbtable and "
                           "modparam(\"htable\", \"db_url\", ...)")


S = HtableState()


# -- table spec: "name=>size=8;autoexpire=300;initval=0;updateexpire=1" ----------------
_SPEC_KEYS = {"size", "autoexpire", "initval", "updateexpire", "dbtable", "cols", "dbmode",
              "dmqreplicate", "coldelim", "colnull", "reloadat"}


def parse_table_spec(spec):
    """-> (name, dict of params); ValueError on anything Kamailio would refuse."""
    name, sep, rest = str(spec).partition("=>")
    name = name.strip()
    if not sep or not name:
        raise ValueError(f"invalid htable definition {spec!r} (expected name=>attr=value;...)")
    out = {"size": 4, "autoexpire": 0, "initval": None, "updateexpire": 1, "dbmode": 0}
    for part in rest.split(";"):
        part = part.strip()
        if not part:
            continue
        k, eq, v = part.partition("=")
        k = k.strip()
        if not eq or k not in _SPEC_KEYS:
            raise ValueError(f"invalid htable parameter {part!r} in {spec!r}")
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
            v = v[1:-1]         # a quoted value, as parse_params reads it (cols='k,v')
        if k in ("size", "autoexpire", "updateexpire", "initval", "dbmode", "dmqreplicate", "reloadat"):
            try:
                out[k] = int(v)
            except ValueError:
                raise ValueError(f"htable {name}: {k} must be an integer, not {v!r}") from None
        elif k in ("coldelim", "colnull"):
            if len(v) > 1:          # later Kamailio's ht_table_spec: one character
                raise ValueError(f"htable {name}: {k} must be one character, not {v!r}")
            out[k] = v
        else:
            out[k] = v
    if out["size"] < 1:
        out["size"] = 2
    if out["size"] > 31:
        out["size"] = 31
    return name, out


# -- key formats: "$sht(t=>caller-$fU)" ------------------------------------------------
def _key_getter(text):
    """A literal key -> its str; a key with pseudo-variables -> parsed pieces."""
    if "$" not in text:
        return text
    if S.pv_table is None:
        S.pv_table = PvTable()
    return parse_format(text, Loc("<htable key>", 0, 0), S.pv_table)


def _key(ctx, k):
    if type(k) is str:
        return k
    return fmt(ctx, k)


def _parse_ht(inner):
    """`table=>key` -> (table, key or pieces); as pv_parse_ht_name."""
    if inner is None:
        raise ValueError("missing table=>key")
    name, sep, key = inner.partition("=>")
    name = name.strip()
    if not sep or not name:
        raise ValueError(f"expected table=>key, got {inner!r}")
    return name, _key_getter(key)


def _table(name):
    ht = S.tables.get(name)
    if ht is None and name not in S.missing_logged:
        S.missing_logged.add(name)
        log.err(MOD, f"htable {name!r} does not exist: define it with "
                f"modparam(\"htable\", \"htable\", \"{name}=>size=8\") (and loadmodule \"htable.so\")")
    return ht


# -- pseudo-variables ---------------------------------------------------------------------
def _sht_get(ctx, spec, idx):
    ht = S.tables.get(spec[0]) or _table(spec[0])
    if ht is None:
        return None
    k = spec[1]
    return ht.get(k if type(k) is str else _key(ctx, k))


def _sht_set(ctx, spec, idx, value):
    ht = S.tables.get(spec[0]) or _table(spec[0])
    if ht is None:
        return False
    k = spec[1]
    return ht.set(k if type(k) is str else _key(ctx, k), value)


def _shtex_get(ctx, spec, idx):
    ht = _table(spec[0])
    return None if ht is None else ht.get_expire(_key(ctx, spec[1]))


def _shtex_set(ctx, spec, idx, value):
    ht = _table(spec[0])
    if ht is None:
        return False
    # a non-int value means 0 (pv_set_ht_cell_expire)
    n = value if type(value) is int else 0
    return ht.set_expire(_key(ctx, spec[1]), n)


def _add(delta):
    def get(ctx, spec, idx):
        ht = S.tables.get(spec[0]) or _table(spec[0])
        if ht is None:
            return None
        k = spec[1]
        return ht.incr(k if type(k) is str else _key(ctx, k), delta)
    return get


def _count(by_value):
    def get(ctx, spec, idx):
        ht = _table(spec[0])
        if ht is None:
            return None
        return ht.count_match(_key(ctx, spec[1]), by_value)
    return get


# -- functions --------------------------------------------------------------------------------
def _split_ht_re(arg):
    name, sep, rx = str(arg).partition("=>")
    return name.strip(), rx if sep else None


def _fix_ht_re(site):
    a = site.args[0] if site.args else None
    if a is not None and a.literal:
        name, rx = _split_ht_re(a.value)
        if rx is None:
            site.arg_error(0, f"expected 'table=>regexp', got {a.value!r}")
        try:
            site.data["re"] = re.compile(rx, re.I)
        except re.error as e:
            site.arg_error(0, f"bad regular expression {rx!r}: {e}")


def _rm_re(site, arg, by_value):
    name, rx = _split_ht_re(arg)
    ht = _table(name)
    if ht is None or rx is None:
        return -1
    cre = site.data.get("re") if site is not None and site.data else None
    if cre is None:
        try:
            cre = re.compile(rx, re.I)
        except re.error:
            log.err(MOD, f"bad regular expression {rx!r}")
            return -1
    ht.remove_match(cre, by_value)
    return 1


def w_sht_rm_name_re(ctx, site, arg):
    return _rm_re(site, arg, False)


def w_sht_rm_value_re(ctx, site, arg):
    return _rm_re(site, arg, True)


_OPS = {"re": None, "sw": "startswith", "ew": "endswith", "in": "__contains__"}


def _rm_op(name, op, val, by_value):
    ht = _table(name)
    if ht is None or op not in _OPS:
        if op not in _OPS:
            log.err(MOD, f"unsupported operator {op!r} (re, sw, ew, in)")
        return -1
    if op == "re":
        try:
            rx = re.compile(val, re.I)
        except re.error:
            return -1
    else:
        rx = re.compile({"sw": "^", "ew": "", "in": ""}[op] + re.escape(val) + ("$" if op == "ew" else ""))
    ht.remove_match(rx, by_value)
    return 1


def w_sht_rm_name(ctx, site, name, op, val):
    return _rm_op(name, op, val, False)


def w_sht_rm_value(ctx, site, name, op, val):
    return _rm_op(name, op, val, True)


def w_sht_rm(ctx, site, name, key):
    ht = _table(name)
    if ht is None:
        return -1
    ht.delete(key)
    return 1


def w_sht_reset(ctx, site, name):
    ht = _table(name)
    if ht is None:
        return -1
    ht.reset()
    return 1


def _lock_key(arg, lock):
    name, sep, key = str(arg).partition("=>")
    ht = _table(name.strip())
    if ht is None or not sep:
        return -1
    if lock:
        ht.lock_key(key)
    else:
        ht.unlock_key(key)
    return 1


def w_sht_lock(ctx, site, arg):
    return _lock_key(arg, True)


def w_sht_unlock(ctx, site, arg):
    return _lock_key(arg, False)


def _fix_lock(site):
    a = site.args[0] if site.args else None
    if a is not None and a.literal:
        name, sep, _k = str(a.value).partition("=>")
        if not sep:
            site.arg_error(0, f"expected 'table=>key', got {a.value!r}")


def _setx(name, key, val, exval, is_int):
    """sht_setxi / sht_setxs(htname, itname, itval, exval): set with its own expiry."""
    ht = _table(name)
    if ht is None:
        return -1
    if is_int:
        try:
            val = int(val)
        except (TypeError, ValueError):
            log.err(MOD, f"sht_setxi: {val!r} is not an integer")
            return -1
    if not ht.set(key, val):
        return -1
    if exval:
        ht.set_expire(key, int(exval))
    return 1


def w_sht_setxi(ctx, site, name, key, val, exval):
    return _setx(name, key, val, exval, True)


def w_sht_setxs(ctx, site, name, key, val, exval):
    return _setx(name, key, val, exval, False)


# -- iterators: a per-process snapshot (S.iters), so no lock is held while the script
#    runs (Kamailio keeps the slot locked between sht_iterator_next calls) ------------------
def w_sht_iterator_start(ctx, site, iname, name):
    ht = _table(name)
    if ht is None:
        return -1
    if iname not in S.iters and len(S.iters) >= 4:
        log.err(MOD, "no iterator available - max number is 4")
        return -1
    S.iters[iname] = [ht, ht.items(), -1]
    return 1


def w_sht_iterator_next(ctx, site, iname):
    it = S.iters.get(iname)
    if it is None:
        return -1
    it[2] += 1
    return 1 if it[2] < len(it[1]) else -1


def w_sht_iterator_end(ctx, site, iname):
    return 1 if S.iters.pop(iname, None) is not None else -1


def w_sht_iterator_rm(ctx, site, iname):
    it = S.iters.get(iname)
    if it is None or not 0 <= it[2] < len(it[1]):
        return -1
    it[0].delete(it[1][it[2]][0])
    return 1


def _it_cur(i):
    def get(ctx, iname, idx):
        it = S.iters.get(iname)
        if it is None or not 0 <= it[2] < len(it[1]):
            return None
        return it[1][it[2]][i]
    return get


def _it_parse(inner):
    if not inner or not inner.strip():
        raise ValueError("missing iterator name")
    return inner.strip()


# -- lifecycle --------------------------------------------------------------------------------
def mod_init(script):
    if script.shm is None:
        raise RuntimeError("htable: shared memory is not initialised")
    S.configure(script, script.modparams[MOD])
    if S.conf is not None:
        _load_tables()
    if "htable:mod-init" in getattr(script, "event_routes", ()):
        _run_mod_init(script)


def _run_mod_init(script):
    """event_route[htable:mod-init]: Kamailio runs it once in the main process
    after the tables exist and before any fork (htable's child_init for
    PROC_INIT), on a faked request: the place to preload $sht values."""
    proc = ProcState(script, 0, "main process", "main")
    try:
        script.run_event_route("htable:mod-init", script.new_ctx(faked_request(), proc))
    except Exception as e:      # logged like any route error; startup goes on
        log.err(MOD, f"event_route[htable:mod-init] failed: {e!r}")


def _shtrecord(ctx, which, idx):
    r = S.record
    if r is None:
        return None
    return r[0] if which == "key" else r[1]


def _shtrecord_parse(inner):
    w = (inner or "").strip()
    if w not in ("key", "value"):
        raise ValueError("expected $shtrecord(key) or $shtrecord(value)")
    return w


def _run_expired(proc, name, items):
    script = proc.script
    route = f"htable:expired:{name}"
    if script is None or route not in getattr(script, "event_routes", ()):
        return
    for item in items:
        S.record = item
        try:
            ctx = script.new_ctx(faked_request(), proc)
            script.run_event_route(route, ctx)
        except Exception as e:      # a bad route never stops expiry
            log.err(MOD, f"event_route[{route}] failed: {e!r}")
        finally:
            S.record = None


def _expire_tick(proc):
    """HTable Timer, once a second: reclaim the entries whose expiry second is
    over, then run event_route[htable:expired:<table>] for each."""
    routes = getattr(proc.script, "event_routes", ())
    for t in S.tables.values():
        if not t.autoexpire:
            continue
        want = [] if f"htable:expired:{t.name}" in routes else None
        try:
            t.expire_tick(expired=want)
        except Exception as e:      # one bad table never stops the others' expiry
            log.err(MOD, f"expiry of htable {t.name} failed: {e!r}")
        if want:
            _run_expired(proc, t.name, want)


def procs(script):
    """One timer process when a table expires entries (Kamailio's
    timer_procs > 0), ticking on whole seconds as Kamailio's timer does."""
    if not any(t.autoexpire for t in S.tables.values()):
        return []
    tick = TimerHandlers(every=(Periodic(1.0, _expire_tick, aligned=True),))
    return [ProcRow(ROLE_TIMER, "HTable Timer", PROC_TIMER, 1, tick)]


def _load_tables():
    """ht_db_load_tables in mod_init, before fork: every table with a dbtable
    (but dbmode=2's, which is read from the DB as it is used). A DB that
    cannot be read stops the startup, as in Kamailio."""
    try:
        for name, p in S.specs.items():
            if p.get("dbtable") and p["dbmode"] != DBMODE_SHARED:
                entries = read_table(S.conf, p, name)
                fill(S.tables[name], entries)
                S.set_loaded(name, bool(entries))   # Kamailio: no rows, no dbload (no write-back)
    except HtDbFailed as e:
        raise CfgError(f"htable: failed to load the htables from {S.db_url}: {e}") from None
    finally:
        S.conf.binding.close()


def _sync_tables():
    """ht_db_sync_tables at shutdown: dbmode 1 tables that were loaded, without cols."""
    for name, p in S.specs.items():
        if not (p.get("dbtable") and p["dbmode"] and p["dbmode"] != DBMODE_SHARED
                and S.loaded(name) and not p.get("cols")):
            continue
        con = S.conf.connection()
        delete_records(con, p["dbtable"])
        try:
            save_table(S.conf, p, S.tables[name], con)
        except HtDbFailed:
            log.err(MOD, f"failed syncing hash table [{name}] to db")


def mod_destroy(script):
    if S.conf is not None and S.tables:
        try:
            _sync_tables()
        finally:
            S.conf.binding.close()
    S.tables.clear()


def _pv(name, get, set_=None):
    return PvExport(name, get, set_, _parse_ht, True)


EXPORTS = ModuleExports(
    name=MOD,
    functions=[
        FuncExport("sht_rm", (P.STR, P.STR), w_sht_rm),
        FuncExport("sht_rm_name_re", (P.STR,), w_sht_rm_name_re, fixup=_fix_ht_re),
        FuncExport("sht_rm_value_re", (P.STR,), w_sht_rm_value_re, fixup=_fix_ht_re),
        FuncExport("sht_rm_name", (P.STR, P.STR, P.STR), w_sht_rm_name),
        FuncExport("sht_rm_value", (P.STR, P.STR, P.STR), w_sht_rm_value),
        FuncExport("sht_reset", (P.STR,), w_sht_reset),
        FuncExport("sht_setxi", (P.STR, P.STR, P.INT, P.INT), w_sht_setxi),
        FuncExport("sht_setxs", (P.STR, P.STR, P.STR, P.INT), w_sht_setxs),
        FuncExport("sht_iterator_start", (P.STR, P.STR), w_sht_iterator_start),
        FuncExport("sht_iterator_next", (P.STR,), w_sht_iterator_next),
        FuncExport("sht_iterator_end", (P.STR,), w_sht_iterator_end),
        FuncExport("sht_iterator_rm", (P.STR,), w_sht_iterator_rm),
        FuncExport("sht_lock", (P.STR,), w_sht_lock, fixup=_fix_lock),
        FuncExport("sht_unlock", (P.STR,), w_sht_unlock, fixup=_fix_lock),
    ],
    params=[
        ParamExport("htable", str, None, multi=True),
        ParamExport("timer_interval", int, 20),
        ParamExport("timer_procs", int, 0),
        ParamExport("db_url", str, ""),
        ParamExport("key_name_column", str, "key_name"),
        ParamExport("key_type_column", str, "key_type"),
        ParamExport("value_type_column", str, "value_type"),
        ParamExport("key_value_column", str, "key_value"),
        ParamExport("expires_column", str, "expires"),
        ParamExport("array_size_suffix", str, "::size"),
        ParamExport("fetch_rows", int, 100),
        ParamExport("db_expires", int, 0),
        ParamExport("enable_dmq", int, 0),
        ParamExport("dmq_init_sync", int, 0),
        ParamExport("event_callback", str, ""),
        ParamExport("event_callback_mode", int, 0),
    ],
    pvs=[
        _pv("sht", _sht_get, _sht_set),
        _pv("shtex", _shtex_get, _shtex_set),
        _pv("shtinc", _add(1)),
        _pv("shtdec", _add(-1)),
        _pv("shtcn", _count(False)),
        _pv("shtcv", _count(True)),
        PvExport("shtrecord", _shtrecord, None, _shtrecord_parse, True),
        PvExport("shtitkey", _it_cur(0), None, _it_parse, True),
        PvExport("shtitval", _it_cur(1), None, _it_parse, True),
    ],
    mod_init=mod_init,
    procs=procs,
    mod_destroy=mod_destroy,
    rpc=HtableRpc(S).exports(),
)
