"""usrloc: the user location tables (Kamailio's usrloc module, db_mode 0 and 3).

Runs in: main process (modparams; tables created in mod_init before fork),
every process that runs a route (registrar's save/lookup through `domain()`),
the RPC processes (ul.* methods, asyncd/modules/usrloc_rpc.py), the
"USRLOC Timer" process (expiry, `_expire_tick`) and nathelper's "TIMER NH"
processes (`get_all_ucontacts`, asyncd/modules/nathelper_ping.py).

Kamailio: src/modules/usrloc (usrloc_mod.c exports, udomain.c/urecord.c
semantics). A table ("udomain", e.g. "location") exists once a registrar
function names it (Kamailio's register_udomain from the fixups); here the
registrar's fixups call `want_domain(name)` and mod_init creates each table in
shared memory (shm/usrloc.py). Storage only: the SIP rules are registrar's.
Differences, on purpose (docs/kamailio-registrar.md):
- db_mode 0 (shm tables, shm/usrloc.py) and 3 (DB only, usrloc_db.py, on
  any DB API driver: db_redis) only; 1 and 2 are startup errors. With
  db_mode 3 the usrloc:* counters stay 0 and ul.dump lists no AoRs, as
  Kamailio's (they count memory); db_url's driver module must be loaded.
- expiry runs in one "USRLOC Timer" process every timer_interval seconds whatever
  timer_procs says (Kamailio: the core timer when timer_procs is 0).
- the AoR's HashID in ul.dump is the crc32 asyncd hashes records with, not
  Kamailio's core_hash.
"""
import time
import zlib

from asyncd.core import log
from asyncd.core.errors import CfgError
from asyncd.core.exports import ModuleExports, ParamExport
from asyncd.core.procs import PROC_TIMER, ROLE_TIMER, Periodic, ProcRow, TimerHandlers
from asyncd.modules import srdb
from asyncd.modules.usrloc_db import UL_TABLE_VERSION, DbDomain
from asyncd.modules.usrloc_rpc import UlRpc
from shm.usrloc import (C_CFLAGS, C_PATH, C_RECEIVED, C_RUID, C_SOCK, C_URI, ULStore,
                        valid)

MOD = "usrloc"
DEFAULT_DB_URL = "mysql://kamailio:kamailiorw@localhost/kamailio"     # Kamailio's DEFAULT_DB_URL
# db_mode 3 modparams asyncd takes only at their default (docs/kamailio-registrar.md)
_DB_DEFAULTS_ONLY = {"expires_type": 0, "db_insert_null": 0, "db_ops_ruid": 1, "server_id_filter": 0,
                     "db_update_as_insert": 0, "db_insert_update": 0}


class UsrlocState:
    """The tables (made in main by mod_init, shared by every child) and the
    modparams the registrar reads (use_domain, matching_mode, ...)."""

    def __init__(self):
        self.wanted = []            # table names registrar's fixups asked for, in order
        self.domains = {}           # name -> shm.usrloc.ULStore
        self.use_domain = 0
        self.matching_mode = 0
        self.desc_time_order = 0
        self.nat_bflag = -1
        self.cseq_delay = 20
        self.expires_stat = None    # handle of usrloc:location_expires
        self.db_mode = 0
        self.db = None              # srdb.Binding with db_mode 3

    def configure(self, script, mp):
        mode = int(mp.get("db_mode") or 0)
        if mode not in (0, 3):
            raise CfgError(f"usrloc: db_mode {mode} is not supported by asyncd (0: memory only, "
                           "3: DB only are)")
        if mp.get("preload") and mode != 3:
            raise CfgError("usrloc: preload needs a database (db_mode 3 and a db_url)")
        if not 0 <= int(mp["matching_mode"]) <= 3:
            raise CfgError(f"usrloc: invalid matching_mode {mp['matching_mode']} (0..3)")
        self.use_domain = int(mp["use_domain"])
        self.matching_mode = int(mp["matching_mode"])
        self.desc_time_order = int(mp["desc_time_order"])
        self.nat_bflag = int(mp["nat_bflag"])
        self.cseq_delay = int(mp["cseq_delay"])
        size = 1 << max(1, min(int(mp["hash_size"]), 20))
        self.db_mode = mode
        if mode == 3:
            self.domains = self._db_domains(script, mp, size)
        else:
            self.domains = {name: ULStore(script.shm, name, size) for name in self.wanted}

    def _db_domains(self, script, mp, size):
        """db_mode 3 (usrloc_mod.c mod_init, udomain.c register_udomain): bind
        db_url, check each table's version (version_table), one DbDomain per
        table; preload only names tables (the DB is read on every lookup)."""
        url = str(mp.get("db_url") or DEFAULT_DB_URL)
        for name, default in _DB_DEFAULTS_ONLY.items():
            if int(mp[name]) != default:
                raise CfgError(f"usrloc: {name} {mp[name]} is not supported by asyncd (only {default})")
        self.db = srdb.bind(script, url, MOD)
        for name in mp.get("preload") or []:
            want_domain(str(name))
        if int(mp["version_table"]):
            con = self.db.connection()
            for name in self.wanted:
                try:
                    srdb.check_table_version(con, name, UL_TABLE_VERSION)
                except srdb.DbError as e:
                    raise CfgError(f"usrloc: error during table version check for {name}: {e}") from None
            self.db.close()
        return {name: DbDomain(self.db, name, size, self.use_domain, self.desc_time_order)
                for name in self.wanted}

    def domain(self, name):
        """-> the ULStore, or None (logged) when no table has that name."""
        d = self.domains.get(name)
        if d is None:
            log.err(MOD, f"location table {name!r} does not exist")
        return d


S = UsrlocState()


def want_domain(name):
    """registrar's fixups: the table `name` must exist (register_udomain)."""
    if name not in S.wanted:
        S.wanted.append(name)


def domain(name):
    return S.domain(name)


def get_all_ucontacts(flags=0, part=None):
    """Kamailio's ul API get_all_ucontacts (dlist.c get_all_mem_ucontacts), for
    nathelper's NAT pinging: (contact, received, path, socket, cflags, ruid,
    aorhash) of every valid contact of every table whose cflags hold all of
    `flags` (e.g. 1 << nat_bflag); with part = (part_idx, part_max) only the
    slots whose number % part_max == part_idx. aorhash is asyncd's crc32 (as
    ul.dump's HashID). A snapshot; no lock is held afterwards."""
    now = int(time.time())
    out = []
    for d in S.domains.values():
        for _slot, aor, contacts in d.records(part):
            for c in contacts:
                if valid(c, now) and c[C_CFLAGS] & flags == flags:
                    out.append((c[C_URI], c[C_RECEIVED], c[C_PATH], c[C_SOCK], c[C_CFLAGS],
                                c[C_RUID], zlib.crc32(aor.encode("utf-8", "surrogateescape"))))
    return out


def count_expired(proc, n):
    if n and S.expires_stat is not None:
        proc.cnt[S.expires_stat] += n


# -- statistics (usrloc_mod.c mod_stats, udomain.c register_udomain: "<table>-users") ----
def _register_stats(stats, sep):
    """Kamailio joins table and counter with the core's stats_name_separator
    ("_" by default in 5.6: usrloc:location_users)."""
    stats.register(MOD, "registered_users", func=lambda: sum(d.users() for d in S.domains.values()))
    for name, d in S.domains.items():
        stats.register(MOD, f"{name}{sep}users", func=d.users)
        stats.register(MOD, f"{name}{sep}contacts", func=d.contacts)
        h = stats.register(MOD, f"{name}{sep}expires")
        if S.expires_stat is None:
            S.expires_stat = h


# -- lifecycle -----------------------------------------------------------------------------
def mod_init(script):
    if script.shm is None:
        raise RuntimeError("usrloc: shared memory is not initialised")
    S.configure(script, script.modparams[MOD])
    S.expires_stat = None
    _register_stats(script.stats, str(script.core.get("stats_name_separator") or "_"))


def _expire_tick(proc):
    """USRLOC Timer, every timer_interval: drop expired contacts (nodb_timer)."""
    now = int(time.time())
    for d in S.domains.values():
        try:
            n = d.expire(now)
            if d.in_memory:         # db_timer_udomain counts nothing (usrloc:*_expires stays 0)
                count_expired(proc, n)
        except srdb.DbError:
            log.err(MOD, f"failed to delete expired contacts from table {d.name}")
        except Exception as e:      # one bad table never stops the others' expiry
            log.err(MOD, f"expiry of table {d.name} failed: {e!r}")


def procs(script):
    if not S.domains:
        return []
    every = max(1, int(script.modparams[MOD]["timer_interval"]))
    tick = TimerHandlers(every=(Periodic(float(every), _expire_tick, aligned=True),))
    return [ProcRow(ROLE_TIMER, "USRLOC Timer", PROC_TIMER, 1, tick)]


def mod_destroy(script):
    S.domains.clear()
    if S.db is not None:
        S.db.close()
        S.db = None


EXPORTS = ModuleExports(
    name=MOD,
    params=[
        ParamExport("db_mode", int, 0),
        ParamExport("db_url", str, DEFAULT_DB_URL),
        ParamExport("use_domain", int, 0),
        ParamExport("nat_bflag", int, -1),
        ParamExport("desc_time_order", int, 0),
        ParamExport("matching_mode", int, 0),
        ParamExport("cseq_delay", int, 20),
        ParamExport("timer_interval", int, 60),
        ParamExport("timer_procs", int, 0),
        ParamExport("hash_size", int, 10),
        ParamExport("preload", str, None, multi=True),
        ParamExport("handle_lost_tcp", int, 0),
        ParamExport("close_expired_tcp", int, 0),
        ParamExport("db_load", int, 1),
        ParamExport("db_insert_update", int, 0),
        ParamExport("version_table", int, 1),
        ParamExport("db_ops_ruid", int, 1),
        ParamExport("expires_type", int, 0),
        ParamExport("db_insert_null", int, 0),
        ParamExport("db_timer_clean", int, 0),
        ParamExport("db_update_as_insert", int, 0),
        ParamExport("db_check_update", int, 0),
        ParamExport("server_id_filter", int, 0),
    ],
    mod_init=mod_init,
    procs=procs,
    mod_destroy=mod_destroy,
    rpc=UlRpc(S).exports(),
)
