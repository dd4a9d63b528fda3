"""The htable module's RPC methods: htable.dump, get, sets, seti, setex,
setxs, setxi, delete, flush, listTables, stats, reload, store.

Runs in: the processes that serve RPC (ctl handler, JSONRPCS FIFO/DATAGRAM).
The tables are the shm ones every process shares (shm/htable.py), so a
value set here is what the next $sht read in any process sees.

Kamailio: src/modules/htable/htable.c, the htable_rpc_* functions (names,
parameters, faults and reply shapes are 5.6's). Kamailio's table has
2^size slots; asyncd's has at least 1024 buckets (asyncd/modules/htable.py)
but reports Kamailio's geometry: a key's slot is its Kamailio hash
(core_case_hash) & (2^size - 1),
so `entry` in htable.dump stays below `size` in htable.listTables and
`slots` in htable.stats. htable.reload and htable.store (htable.c
htable_rpc_reload, htable_rpc_store) read and write the table's dbtable on
db_url (asyncd/modules/htable_db.py), with Kamailio's faults; a DB that does
not answer is "Failed to open htable db connection", as Kamailio's
connection attempt fails. Differences, on purpose: on a dbmode=2 table
(asyncd's: it lives in the DB) both answer Ok without doing anything, the
DB already holds it; htable.store on a table with `cols` leaves the DB rows
alone (Kamailio deletes them, then declines to write); no DMQ.
"""
import time

from asyncd.core import log
from asyncd.core.rpc import RET_ARRAY, RpcExport, RpcFault
from asyncd.modules.htable_db import HtDbFailed, delete_records, read_table, save_table, unreachable
from asyncd.modules.srdb import DbError
from shm.htable import TICKS, now_ticks

F_NO_TABLE = "No such htable"
AVP_VAL_STR = 2         # Kamailio's usr_avp.h flag, reported by htable.get as `flags`


def _icase(b):
    """hashes.h ch_icase on a C (signed) char."""
    c = b | 0x20 if 65 <= b <= 90 else b
    return c - 256 if c > 127 else c


def core_case_hash(key):
    """hashes.h core_case_hash(s, 0, 0): the hash Kamailio's htable takes a
    key's slot from (ht_api.h ht_compute_hash), so htable.dump numbers the
    slots as Kamailio does."""
    b = str(key).encode("utf-8", "surrogateescape")
    m, h, n = 0xFFFFFFFF, 0, len(b) - len(b) % 4
    for i in range(0, n, 4):
        v = ((_icase(b[i]) << 24) + (_icase(b[i + 1]) << 16) + (_icase(b[i + 2]) << 8)
             + _icase(b[i + 3])) & m
        h = (h + (v ^ (v >> 3))) & m
    v = 0
    for c in b[n:]:
        v = ((v << 8) + _icase(c)) & m
    h = (h + (v ^ (v >> 3))) & m
    return ((h + (h >> 11)) + ((h >> 13) + (h >> 23))) & m


class HtableRpc:
    """The methods, bound to the htable module's state (its `tables` and the
    table specs), which mod_init fills before the fork."""

    def __init__(self, state):
        self.st = state

    def _table(self, name):
        ht = self.st.tables.get(name)
        if ht is None:
            raise RpcFault(500, F_NO_TABLE)
        return ht

    @staticmethod
    def slots(ht):
        """Kamailio's slot count for the table: 2^size."""
        return 1 << max(1, min(int(ht.size), 31))

    def dump(self, call):
        """One struct per non-empty slot: entry, size, slot (array of items)."""
        name, = call.scan("S", fault=(500, "No htable name given"))
        ht = self._table(name)
        mask = self.slots(ht) - 1
        by_slot = {}
        for key, value in ht.items():
            by_slot.setdefault(core_case_hash(key) & mask, []).append((key, value))
        for i in sorted(by_slot):
            items = [{"name": k, "value": v, "type": "int" if type(v) is int else "str"}
                     for k, v in by_slot[i]]
            call.add({"entry": i, "size": len(items), "slot": items})

    def get(self, call):
        name, key = call.scan("SS", fault=(500, "Not enough parameters (htable name and key name)"))
        ht = self._table(name)
        found = ht.lookup(key)
        if found is None:
            raise RpcFault(500, "Key name doesn't exist in htable.")
        value, ex = found
        expire = "NEVER"
        if ex:
            wall = time.time() + (ex - now_ticks()) / TICKS
            expire = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall))
        flags = 0 if type(value) is int else AVP_VAL_STR
        call.add({"item": {"name": key, "value": value, "flags": flags, "expire": expire}})

    def _set(self, call, fmt):
        name, key, value = call.scan(
            fmt, fault=(500, "Not enough parameters (htable name, key name and value)"))
        ht = self._table(name)
        if not ht.set(key, value):
            raise RpcFault(500, "Failed to set the item")
        call.add("Ok. Key set to new value.")

    def sets(self, call):
        self._set(call, "SS.S")

    def seti(self, call):
        self._set(call, "SS.d")

    def setex(self, call):
        name, key, exval = call.scan(
            "SS.d", fault=(500, "Not enough parameters (htable name, item name and expire)"))
        ht = self._table(name)
        if not ht.set_expire(key, exval):
            raise RpcFault(500, "Failed to set the item")
        call.add("Ok")

    def _setx(self, call, fmt):
        name, key, value, exval = call.scan(
            fmt, fault=(500, "Not enough parameters (htable name, key name, value and expire)"))
        ht = self.st.tables.get(name)
        if ht is None or not ht.set(key, value):
            raise RpcFault(500, "Failed to set the item")
        if exval:
            ht.set_expire(key, exval)
        call.add("Ok. Key set to new value.")

    def setxs(self, call):
        self._setx(call, "SS.Sd")

    def setxi(self, call):
        self._setx(call, "SS.dd")

    def delete(self, call):
        name, key = call.scan("SS", fault=(500, "Not enough parameters (htable name & key name"))
        ht = self._table(name)
        if ht.lookup(key) is None or not ht.delete(key):
            raise RpcFault(404, "Key not found in htable.")
        call.add("Ok. Key deleted.")

    def flush(self, call):
        name, = call.scan("S", fault=(500, "No htable name given"))
        self._table(name).reset()
        call.add("Ok. Htable flushed.")

    def _tables(self):
        """Kamailio lists the last defined table first (its list is prepended)."""
        tables = list(self.st.tables.values())
        if not tables:
            raise RpcFault(500, "No htables")
        return reversed(tables)

    def list_tables(self, call):
        for ht in self._tables():
            spec = self.st.specs.get(ht.name, {})
            call.add({"name": ht.name, "dbtable": str(spec.get("dbtable", "")),
                      "dbmode": int(spec.get("dbmode", 0)), "expire": int(ht.autoexpire),
                      "updateexpire": int(ht.updateexpire), "size": self.slots(ht),
                      "dmqreplicate": int(spec.get("dmqreplicate", 0))})

    def stats(self, call):
        for ht in self._tables():
            n = self.slots(ht)
            per = [0] * n
            for key, _v in ht.items():
                per[core_case_hash(key) & (n - 1)] += 1
            call.add({"name": ht.name, "slots": n, "all": sum(per), "min": min(per), "max": max(per)})

    def _db_table(self, call):
        """The checks both methods start with -> (name, spec, connection)."""
        if not self.st.db_url:
            raise RpcFault(500, "No htable db_url")
        if self.st.conf is None or self.st.conf.binding is None:
            raise RpcFault(500, "Failed to init htable db connection")
        name, = call.scan("S", fault=(500, "No htable name given"))
        self._table(name)
        spec = self.st.specs.get(name, {})
        if not spec.get("dbtable"):
            raise RpcFault(500, "No database htable")
        return name, spec, self.st.conf.connection()

    @staticmethod
    def _db_fault(con, text):
        """A DB that does not answer fails where Kamailio's fresh connection would."""
        if getattr(con, "down", False):
            raise RpcFault(500, "Failed to open htable db connection")
        raise RpcFault(500, text)

    def reload(self, call):
        name, spec, con = self._db_table(call)
        if spec.get("dbmode") == 2:
            call.add("Ok. Htable reloaded.")
            return
        try:
            entries = read_table(self.st.conf, spec, name, con)
        except HtDbFailed:
            self._db_fault(con, "Htable reload failed")
        ht = self.st.tables[name]
        ht.reset()
        for key, value, _ex in entries:
            ht.set(key, value)
        now = int(time.time())
        for key, _v, ex in entries:
            if ht.autoexpire and ex > 0:
                ht.set_expire(key, ex - now)
        self.st.set_loaded(name)
        call.add("Ok. Htable reloaded.")

    def store(self, call):
        name, spec, con = self._db_table(call)
        if spec.get("dbmode") == 2:
            call.add("Ok. Htable successfully stored to DB.")
            return
        if spec.get("cols"):
            log.warn("htable", f"saving htable [{name}] with custom db columns is not available")
            call.add("Ok. Htable successfully stored to DB.")
            return
        if unreachable(delete_records(con, spec["dbtable"])):
            raise RpcFault(500, "Failed to open htable db connection")
        try:
            save_table(self.st.conf, spec, self.st.tables[name], con)
        except (HtDbFailed, DbError):
            self._db_fault(con, "Storing htable failed")
        call.add("Ok. Htable successfully stored to DB.")

    def exports(self):
        return [
            RpcExport("htable.dump", self.dump, "Dumps the items of a hash table, slot by slot.", RET_ARRAY),
            RpcExport("htable.delete", self.delete, "Deletes one key of a hash table."),
            RpcExport("htable.get", self.get, "Reads one key of a hash table."),
            RpcExport("htable.sets", self.sets, "Sets one key of a hash table to a string."),
            RpcExport("htable.seti", self.seti, "Sets one key of a hash table to an integer."),
            RpcExport("htable.setex", self.setex, "Sets the expiry of one key of a hash table."),
            RpcExport("htable.setxs", self.setxs, "Sets one key to a string, with its expiry."),
            RpcExport("htable.setxi", self.setxi, "Sets one key to an integer, with its expiry."),
            RpcExport("htable.listTables", self.list_tables, "Lists the hash tables.", RET_ARRAY),
            RpcExport("htable.reload", self.reload, "Reloads a hash table from its database table."),
            RpcExport("htable.store", self.store, "Stores a hash table to its database table."),
            RpcExport("htable.stats", self.stats, "Item counts of every hash table.", RET_ARRAY),
            RpcExport("htable.flush", self.flush, "Deletes every item of a hash table."),
        ]
