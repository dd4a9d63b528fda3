"""htable's database side: a table with `dbtable` loaded from `db_url`, and
written back to it (dbmode=1 at shutdown, htable.store).

Runs in: main process (the startup load in mod_init, before fork; the
write-back in mod_destroy, after the children stopped), the processes that
serve RPC (htable.reload, htable.store: each on its own connection).

Kamailio: src/modules/htable/ht_db.c (ht_db_load_table, ht_db_save_table,
ht_db_delete_records, ht_pack_values), ht_api.c (ht_db_load_tables,
ht_db_sync_tables), htable.c (mod_init, destroy, htable_rpc_reload,
htable_rpc_store). The rows are Kamailio's: key_name, key_type (0 plain,
1 array: rows of one name become name[0], name[1], ... and name::size),
value_type (0 string, 1 integer), key_value (always a string), expires
(absolute time_t; read and written only with db_expires=1 on autoexpire
tables). A table with `cols` loads the first column as the key and the
others joined by `coldelim` (NULL as `colnull`) as a string value; it is
never written back. docs/kamailio-htable.md has the details and the
differences.
"""
import math
import time

from asyncd.core import log
from asyncd.modules import srdb
from asyncd.modules.srdb import BIGINT, BLOB, INT, STR, STRING, DbError, DbUnreachable, int_val, str_val
from shm.htable import TICKS, now_ticks

MOD = "htable"
PACK_BUF = 4096         # ht_db.c HTABLE_PACK_BUF_SIZE: a packed `cols` value is shorter
_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1


class HtDbFailed(Exception):
    """A load or save failed; str() is the log line (already logged)."""


class HtDbConf:
    """The DB modparams (ht_db.c globals) and the bound DB (ht_dbf)."""

    def __init__(self, mp):
        self.url = str(mp.get("db_url") or "")
        self.name_col = str(mp["key_name_column"])
        self.ktype_col = str(mp["key_type_column"])
        self.vtype_col = str(mp["value_type_column"])
        self.value_col = str(mp["key_value_column"])
        self.expires_col = str(mp["expires_column"])
        self.suffix = str(mp["array_size_suffix"] or "") or "::size"     # ht_db_init_params
        self.db_expires = int(mp["db_expires"])
        self.binding = None

    def bind(self, script):
        """ht_db_init_con: the driver module must be loaded; CfgError otherwise."""
        self.binding = srdb.bind(script, self.url, MOD)
        if not self.binding.has(srdb.CAP_QUERY, srdb.CAP_INSERT, srdb.CAP_DELETE, srdb.CAP_UPDATE):
            raise srdb.DbError("database module does not implement all functions needed by the module")

    def connection(self):
        return self.binding.connection()

    def with_expires(self, spec):
        """The expires column is read and written (ht_db_expires_flag && htexpire > 0)."""
        return bool(self.db_expires) and spec["autoexpire"] > 0


def str2sint(text):
    """ut.h str2sint: sign, then digits up to the first other character,
    clamped to a 32-bit int (Kamailio keeps the digits read so far)."""
    s, n, neg, i = str(text), 0, False, 0
    if s[:1] in ("+", "-"):
        neg, i = s[0] == "-", 1
    for c in s[i:]:
        if not "0" <= c <= "9":
            break
        n = n * 10 + (ord(c) - 48)
    n = -n if neg else n
    return max(_INT_MIN, min(_INT_MAX, n))


def as_int(v):
    """A column read as an int (Kamailio's val.int_val): NULL or a non-number is 0."""
    if type(v) is int:
        return v
    return str2sint(_text(v)) if v is not None else 0


def _text(v):
    return v.decode("utf-8", "surrogateescape") if isinstance(v, (bytes, bytearray)) else str(v)


# -- load (ht_db_load_table) ---------------------------------------------------------------
def _columns(conf, spec):
    if spec.get("cols"):
        return [c.strip() for c in spec["cols"].split(",")]
    cols = [conf.name_col, conf.ktype_col, conf.vtype_col, conf.value_col]
    return cols + [conf.expires_col] if conf.with_expires(spec) else cols


def _row_key(row, types, i, name):
    if row[0] is None:
        raise HtDbFailed(f"htable [{name}] row [{i}] has NULL key value")
    if types[0] not in (STR, STRING, BLOB):
        raise HtDbFailed(f"key type must be string (type={types[0]})")
    return _text(row[0])


def _type_col(v, t, col):
    if t not in (INT, BIGINT):
        raise HtDbFailed(f"Wrong db type [{t}] for {col} column")
    return as_int(v)


def _value(v, t, vtype, i):
    """key_value as an int (value_type != 0) or a string (value_type 0)."""
    if t in (STR, STRING, BLOB):
        if v is None:
            raise HtDbFailed(f"null value in row {i}")
        return str2sint(_text(v)) if vtype else _text(v)
    if t in (INT, BIGINT):
        n = int(v or 0)
        return n if vtype else str(n)
    raise HtDbFailed(f"Wrong db type [{t}] for key_value column")


def _pack(row, types, delim, null):
    """ht_pack_values: columns 2..n as one string."""
    parts = []
    for v, t in zip(row[1:], types[1:]):
        if v is None:
            parts.append(null)
        elif t in (STR, STRING, BLOB):
            parts.append(_text(v))
        elif t in (INT, BIGINT):
            parts.append(str(int(v)))
        else:
            raise HtDbFailed(f"unsupported data type for column (type={t})")
    out = delim.join(parts)
    if len(out) + len(parts) + 1 >= PACK_BUF:
        raise HtDbFailed(f"too large values (need {len(out) + len(parts) + 1}, have {PACK_BUF})")
    return out


def _typed_rows(conf, spec, items, types, name, now):
    """Kamailio's pass over the rows: arrays of key_type 1, value types,
    expired rows skipped. -> [(key, value, absolute expires or 0)]."""
    out, pname, n, last = [], "", 0, 0
    exp = conf.with_expires(spec)
    for i, row in enumerate(items):
        key = _row_key(row, types, i, name)
        expires = as_int(row[4]) if exp else 0
        if 0 < expires < now:
            continue                # "skipping expired entry"
        ktype = _type_col(row[1], types[1], "key_type")
        if last == 1 and pname and pname != key:
            out.append((pname + conf.suffix, n, 0))     # the previous array's size
            pname, n = "", 0
        last, pname = ktype, key
        hname = key
        if ktype == 1:
            hname, n = f"{key}[{n}]", n + 1
        vtype = _type_col(row[2], types[2], "value_type")
        out.append((hname, _value(row[3], types[3], vtype, i), expires))
    if last == 1:
        out.append((pname + conf.suffix, n, 0))
    return out


def read_table(conf, spec, name, con=None):
    """-> [(key, value, absolute expires or 0)] of the table's DB rows, in
    Kamailio's order (by key name; a driver that ignores ORDER BY, as
    db_redis does, gets its rows sorted here). HtDbFailed (logged)."""
    cols = _columns(conf, spec)
    con = con or conf.connection()
    con.use_table(spec["dbtable"])
    try:
        res = con.query((), None, (), cols, order=cols[0])
    except DbError as e:
        raise _failed(f"Error while querying db table {spec['dbtable']} for htable [{name}]: {e}")
    rows = sorted(res.rows, key=lambda r: _text(r[0]) if r[0] is not None else "")
    try:
        if spec.get("cols"):
            null, delim = spec.get("colnull", "*"), spec.get("coldelim", ",")
            return [(_row_key(r, res.types, i, name), _pack(r, res.types, delim, null), 0)
                    for i, r in enumerate(rows)]
        return _typed_rows(conf, spec, rows, res.types, name, int(time.time()))
    except HtDbFailed as e:
        raise _failed(f"htable [{name}] not loaded from db table {spec['dbtable']}: {e}")


def _failed(msg):
    log.err(MOD, msg)
    return HtDbFailed(msg)


def fill(ht, entries):
    """Put loaded entries into a shm table, with their expiry (the rest of
    ht_db_load_table: ht_set_cell, then ht_set_cell_expire(expires - now))."""
    now = int(time.time())
    for key, value, expires in entries:
        if not ht.set(key, value):
            raise _failed(f"error adding to hash table {ht.name}")
        if ht.autoexpire and expires > 0:
            ht.set_expire(key, expires - now)


# -- write back (ht_db_save_table, ht_db_delete_records) -----------------------------------------
def delete_records(con, dbtable):
    """DELETE of every row; a failure is logged and the save goes on, as in
    Kamailio (db_redis cannot delete a table without type keys: the rows
    written next overwrite theirs)."""
    con.use_table(dbtable)
    try:
        con.delete((), None, ())
    except DbError as e:
        log.err(MOD, f"failed to delete db records in [{dbtable}]")
        return e
    return None


def unreachable(err):
    """The DB call failed because the server did not answer (not because it
    refused the command)."""
    return isinstance(err, DbUnreachable)


def _wall_expire(ht, key, now):
    """The item's absolute expiry in wall seconds (Kamailio's it->expire), 0 = never.
    shm keeps it in monotonic ticks (set one tick late): back to wall seconds,
    it is exact to the second most of the time, one second late at worst."""
    found = ht.lookup(key)
    if found is None or not found[1]:
        return 0
    return math.floor(now + (found[1] - now_ticks() - 1) / TICKS)


def save_table(conf, spec, ht, con):
    """Insert every live item (ht_db_save_table). Items of an autoexpire
    table that never expire ($shtex = 0) are skipped as Kamailio's
    `it->expire <= now` does. A failed insert is logged and the next is
    tried; once the server is unreachable the rest are left (each would
    wait for the driver's timeout). -> number of rows written."""
    con.use_table(spec["dbtable"])
    keys = [conf.name_col, conf.ktype_col, conf.vtype_col, conf.value_col]
    exp = conf.with_expires(spec)
    if exp:
        keys.append(conf.expires_col)
    now, n = time.time(), 0
    for key, value in ht.items():
        wall = _wall_expire(ht, key, now) if ht.autoexpire else 0
        if ht.autoexpire and wall <= now:
            continue
        is_int = type(value) is int
        vals = [str_val(key), int_val(0), int_val(1 if is_int else 0), str_val(value)]
        if exp:
            vals.append(int_val(wall))
        try:
            con.insert(keys, vals)
            n += 1
        except DbError as e:
            log.err(MOD, f"failed to store key [{key}] in table [{spec['dbtable']}]")
            if unreachable(e):
                raise _failed(f"database unreachable: htable [{ht.name}] not stored ({n} rows written)")
    return n
