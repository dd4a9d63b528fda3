"""dbmode=2 (asyncd's own): an htable that lives in its DB table, so every
node on the same db_url sees the same $sht values (a cluster-wide htable).

Runs in: every process that reads or writes the table (udp receivers, async
workers, the RPC handlers, main for event_route[htable:mod-init]), each on
its own DB connection; the "HTable Timer" process (rows past their expiry
deleted every timer_interval).

Kamailio has no such mode: it replicates htables between nodes with DMQ
(dmqreplicate), which asyncd has not. Kamailio reads dbmode as "write back
at shutdown when non-zero", so a cfg with dbmode=2 still runs on Kamailio
(the table is loaded at start and written at stop). Here every set and
delete is written to the DB as it happens and every read asks the DB; the
rows are Kamailio's (ht_db.c ht_db_save_table: key_name, key_type 0,
value_type, key_value, expires) so htable.reload on a Kamailio node reads
them. Expiry lives in the expires column (absolute seconds, 0 = never,
always written in this mode); a row past it reads $null on every node.
The table has the interface of shm.htable.HTable, so htable.py and its
RPCs serve both. Differences from a shm table (docs/kamailio-htable.md):
$shtinc/$shtdec and sht_lock are atomic only within one node; a DB that
fails makes reads $null and writes fail (logged by the driver), each call
bounded by the driver's timeout, and the next call reconnects.
"""
import re
import time

from asyncd.core import log
from asyncd.modules import srdb
from asyncd.modules.htable_db import as_int
from asyncd.modules.srdb import OP_EQ, DbError, int_val, str_val
from shm.htable import TICKS, HTable, now_ticks

MOD = "htable"


class DbTable:
    """One dbmode=2 table. `local` is a small shm table kept only for its
    sht_lock locks (node-wide)."""

    def __init__(self, conf, spec, name, local, timer_interval=20):
        self.conf = conf
        self.dbtable = spec["dbtable"]
        self.name = name
        self.size = spec["size"]
        self.autoexpire = spec["autoexpire"]
        self.initval = spec["initval"]
        self.updateexpire = spec["updateexpire"]
        self.local = local
        self.timer_interval = max(1, int(timer_interval))
        self._next_sweep = 0.0
        c = conf
        self.cols = [c.name_col, c.ktype_col, c.vtype_col, c.value_col, c.expires_col]

    # -- rows ------------------------------------------------------------------------
    def _con(self):
        con = self.conf.connection()
        con.use_table(self.dbtable)
        return con

    def _row(self, con, key):
        """-> (value, expires) of the key's row, expired rows included; None when absent."""
        c = self.conf
        res = con.query([c.name_col], None, [str_val(key)], [c.vtype_col, c.value_col, c.expires_col])
        if not res.rows:
            return None
        vtype, value, expires = res.rows[0]
        return _decode(vtype, value), as_int(expires)

    def _write(self, con, key, value, expires):
        is_int = type(value) is int
        vals = [str_val(key), int_val(0), int_val(1 if is_int else 0), str_val(value), int_val(expires)]
        if self.conf.binding.has(srdb.CAP_REPLACE):
            con.replace(self.cols, vals)
        else:
            con.insert(self.cols, vals)     # db_redis: HSET of the row's entry key (an upsert)

    def _new_expires(self, old, now):
        """Kamailio's ht_set_cell_ex: now + autoexpire, unless updateexpire=0 keeps a live one."""
        if not self.autoexpire:
            return 0
        if old is not None and not self.updateexpire and not _gone(old[1], now):
            return old[1]
        return now + self.autoexpire

    # -- $sht and friends --------------------------------------------------------------------
    def get(self, key):
        try:
            row = self._row(self._con(), key)
        except DbError:
            return None
        if row is None or _gone(row[1], int(time.time())):
            return self.initval
        return row[0]

    def set(self, key, value):
        if value is None:
            return self.delete(key)
        now = int(time.time())
        try:
            con = self._con()
            old = self._row(con, key) if self.autoexpire and not self.updateexpire else None
            self._write(con, key, value, self._new_expires(old, now))
        except DbError:
            log.err(MOD, f"htable {self.name}: key [{key}] not written to db table {self.dbtable}")
            return False
        return True

    def delete(self, key):
        try:
            self._con().delete([self.conf.name_col], None, [str_val(key)])
        except DbError:
            log.err(MOD, f"htable {self.name}: key [{key}] not deleted from db table {self.dbtable}")
            return False
        return True

    def incr(self, key, delta):
        """$shtinc/$shtdec: read, add, write, under the node's sht_lock of the key."""
        self.local.lock_key(key)
        try:
            return self._incr(key, delta)
        except DbError:
            log.err(MOD, f"htable {self.name}: key [{key}] not updated in db table {self.dbtable}")
            return None
        finally:
            self.local.unlock_key(key)

    def _incr(self, key, delta):
        now = int(time.time())
        con = self._con()
        old = self._row(con, key)
        if old is None or _gone(old[1], now):
            if self.initval is None:
                return None
            value, old = self.initval + delta, None
        elif type(old[0]) is not int:
            return None
        else:
            value = old[0] + delta
        self._write(con, key, value, self._new_expires(old, now))
        return value

    def lookup(self, key):
        """-> (value, expires in shm ticks, 0 = never) of a live row (htable.get)."""
        try:
            row = self._row(self._con(), key)
        except DbError:
            return None
        now = time.time()
        if row is None or _gone(row[1], int(now)):
            return None
        ex = row[1]
        return row[0], (now_ticks() + int((ex - now) * TICKS) if ex else 0)

    def get_expire(self, key):
        if not self.autoexpire:
            return 0
        try:
            row = self._row(self._con(), key)
        except DbError:
            return None
        if row is None or not row[1]:
            return 0
        return max(0, row[1] - int(time.time()))

    def set_expire(self, key, seconds):
        if not self.autoexpire:
            return True
        ex = int(time.time()) + seconds if seconds > 0 else 0
        c = self.conf
        try:
            self._con().update([c.name_col], None, [str_val(key)], [c.expires_col], [int_val(ex)])
        except DbError:
            return False
        return True

    # -- whole table -------------------------------------------------------------------------
    def rows(self):
        """[(key, value, expires)] of every row, expired ones included."""
        c = self.conf
        res = self._con().query((), None, (), [c.name_col, c.vtype_col, c.value_col, c.expires_col])
        return [(str(k), _decode(vt, v), as_int(ex)) for k, vt, v, ex in res.rows if k is not None]

    def items(self):
        now = int(time.time())
        try:
            return [(k, v) for k, v, ex in self.rows() if not _gone(ex, now)]
        except DbError:
            return []

    count_match = HTable.count_match        # works on items()

    def remove_match(self, rx, by_value):
        n = 0
        for k, v in self.items():
            txt = (v if type(v) is str else None) if by_value else k
            if txt is not None and rx.search(txt) and self.delete(k):
                n += 1
        return n

    def reset(self):
        self.remove_match(re.compile(""), False)

    def count(self):
        return len(self.items())

    def lock_key(self, key):
        self.local.lock_key(key)

    def unlock_key(self, key):
        return self.local.unlock_key(key)

    # -- expiry ------------------------------------------------------------------------------
    def expire_tick(self, now=None, expired=None):
        """Every timer_interval: delete the rows past their expiry (each
        delete also checks the expires value read, so a row another node
        refreshed meanwhile stays). `expired` gets (key, value) of the rows
        this node deleted."""
        mono = time.monotonic()
        if mono < self._next_sweep:
            return 0
        self._next_sweep = mono + self.timer_interval
        wall = int(time.time())
        c, n = self.conf, 0
        try:
            for k, v, ex in self.rows():
                if not _gone(ex, wall):
                    continue
                got = self._con().delete([c.name_col, c.expires_col], [OP_EQ, OP_EQ],
                                         [str_val(k), int_val(ex)])
                if got and expired is not None:
                    expired.append((k, v))
                n += 1
        except DbError:
            log.err(MOD, f"htable {self.name}: expired rows not deleted from db table {self.dbtable}")
        return n


def _gone(expires, now):
    return 0 < expires <= now


def _decode(vtype, value):
    if value is None:
        return None
    if as_int(vtype):
        return value if type(value) is int else as_int(value)
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)
