"""db_redis's connection: the DB API calls (srdb.Connection) on Redis.

Runs in: every child that calls the DB API on a redis:// URL (its own
connection, opened on the first call after fork).

Kamailio: src/modules/db_redis/redis_dbase.c (db_redis_query,
db_redis_insert, db_redis_update, db_redis_delete and their perform_*
helpers) and redis_connection.c (db_redis_connect). What is read and
written is Kamailio's, so a Kamailio 5.6 node and an asyncd node on one
Redis see each other's rows:
- insert: HSET of the row on its entry key, then SADD of the entry key to
  each type key the row has values for, and of the type key to the type's
  index set.
- query/update/delete find rows by the entry key when the conditions give its
  columns, else by one type key (SMEMBERS), else by scanning the table's
  entry keys; every row read is checked against all the conditions.
- delete drops the hash and takes the entry key out of its type keys with
  Kamailio's Lua script (which drops an emptied type key from the index set).
- update moves the entry key to the new type keys when it changes their columns.
- a query for table `version` returns the version from the schema files.
Differences, on purpose (docs/kamailio-db_redis.md): SCAN instead of KEYS for
table scans; a `<`/`>` on a datetime is answered by a table scan, not by
key patterns (the same rows); string conditions compare whole strings
(Kamailio's strncmp also matches a longer stored value); a command times out
after cmd_timeout (Kamailio blocks until the server answers).
"""
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from asyncd.core import log
from asyncd.modules import srdb
from asyncd.modules.db_redis_schema import (find_key, matches, row_type_keys, str2val, type_keys,
                                            val2str)
from asyncd.modules.srdb import DbError, DbUnreachable

MOD = "db_redis"
# redis_dbase.h SREM_KEY_LUA: KEYS = type key, index set, entry key
SREM_KEY_LUA = ("redis.call('SREM', KEYS[1], KEYS[3]); if redis.call('SCARD', KEYS[1]) == 0 "
                "then redis.call('SREM', KEYS[2], KEYS[1]) end")
BATCH = 1000            # rows fetched per pipeline (redis_dbase.c: 1000 per round trip)
_REDIS_ERRORS = (redis.RedisError, OSError)
_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, OSError)   # no answer


class RedisConnection(srdb.Connection):
    caps = (srdb.CAP_QUERY, srdb.CAP_INSERT, srdb.CAP_DELETE, srdb.CAP_UPDATE)

    def __init__(self, url, tables, connect_timeout=1.0, cmd_timeout=1.0):
        super().__init__(url)
        self.tables = tables
        self.r = redis.Redis(
            host=url.host or "127.0.0.1", port=url.port or 6379, db=_db_number(url),
            username=url.username or None, password=url.password or None,
            socket_connect_timeout=connect_timeout, socket_timeout=cmd_timeout,
            retry=Retry(NoBackoff(), 0), decode_responses=True,
            encoding_errors="surrogateescape", health_check_interval=0)
        self.srem = self.r.register_script(SREM_KEY_LUA)
        self.down = False

    # -- plumbing --------------------------------------------------------------------------
    def _table(self):
        if self.table is None:
            raise DbError("prefix (table) name not set")
        t = self.tables.get(self.table)
        if t is None:
            raise DbError(f"query to undefined table '{self.table}', define it in schema file!")
        return t

    def _run(self, what, fn, *args):
        """One DB call: Redis errors become a logged DbError; the next call
        reconnects (redis-py drops a broken connection from its pool)."""
        try:
            out = fn(*args)
        except DbError as e:
            log.err(MOD, f"failed to do the {what} on table '{self.table}': {e}")
            raise
        except _REDIS_ERRORS as e:
            gone = isinstance(e, _UNREACHABLE)
            self.down = self.down or gone
            msg = f"redis at {self.url.host}:{self.url.port or 6379} failed during {what} on " \
                  f"table '{self.table}': {type(e).__name__}: {e}"
            log.err(MOD, msg)
            raise (DbUnreachable if gone else DbError)(msg) from None
        if self.down:
            self.down = False
            log.info(MOD, f"redis at {self.url.host}:{self.url.port or 6379} is reachable again")
        return out

    def _row_keys(self, what, t, keys, ops, vals):
        """(entry keys to read, scanned): by entry key, one type key, or a scan."""
        ek = find_key(t, "entry", t.entry, keys, ops, vals) if keys else None
        if ek is not None:
            return [ek]
        for kind, cols in t.types if keys else ():
            tk = find_key(t, kind, cols, keys, ops, vals)
            if tk is not None:
                return sorted(self.r.smembers(tk))
        if keys:        # redis_dbase.c warns the same way (db_redis_perform_query & co.)
            log.warn(MOD, f"performing full table scan on table '{t.name}' while doing the {what} "
                          f"(scan keys: {', '.join(keys)})")
        pattern = f"{t.key_prefix('entry')}::*"
        return list(self.r.scan_iter(match=pattern, count=1000))

    def _rows(self, entry_keys, fields):
        """[(entry key, {field: string or None})] of the keys that exist."""
        out = []
        for i in range(0, len(entry_keys), BATCH):
            chunk = entry_keys[i:i + BATCH]
            p = self.r.pipeline(transaction=False)
            for k in chunk:
                p.exists(k)
                p.hmget(k, fields)
            replies = p.execute()
            for j, k in enumerate(chunk):
                if replies[2 * j]:
                    out.append((k, dict(zip(fields, replies[2 * j + 1]))))
        return out

    def _matching(self, what, t, keys, ops, vals, fields):
        wanted = list(dict.fromkeys(list(keys) + list(fields)))
        rows = self._rows(self._row_keys(what, t, keys, ops, vals), wanted)
        return [(k, raw) for k, raw in rows
                if all(matches(v, ops[i] if ops else srdb.OP_EQ, raw.get(keys[i]))
                       for i, v in enumerate(vals))]

    # -- the DB API ------------------------------------------------------------------------
    def query(self, keys=(), ops=None, vals=(), columns=(), order=None):
        """Rows in Redis's order: `order` is ignored, as Kamailio's db_redis does."""
        return self._run("query", self._query, list(keys), ops, list(vals), list(columns))

    def _query(self, keys, ops, vals, columns):
        if (self.table == "version" and keys[:1] == ["table_name"] and columns == ["table_version"]
                and vals and vals[0].value in self.tables):
            return srdb.Result(columns, [srdb.INT], [[self.tables[vals[0].value].version]])
        t = self._table()
        columns = columns or list(t.columns)
        types = [t.columns.get(c, srdb.STRING) for c in columns]
        res = srdb.Result(columns, types)
        for _k, raw in self._matching("query", t, keys, ops, vals, columns):
            res.rows.append([str2val(ct, raw.get(c)) for c, ct in zip(columns, types)])
        return res

    def insert(self, keys, vals):
        return self._run("insert", self._insert, list(keys), list(vals))

    def _insert(self, keys, vals):
        t = self._table()
        ek = find_key(t, "entry", t.entry, keys, None, vals)
        if ek is None:
            raise DbError("Failed to create direct entry key, no matching key definition")
        row = {k: val2str(v) or "" for k, v in zip(keys, vals)}
        p = self.r.pipeline(transaction=False)
        p.hset(ek, mapping=row)
        for kind, tk in type_keys(t, keys, vals):
            p.sadd(tk, ek)
            p.sadd(t.index_set(kind), tk)
        p.execute()
        return 0

    def delete(self, keys=(), ops=None, vals=()):
        """-> rows deleted."""
        return self._run("delete", self._delete, list(keys), ops, list(vals))

    def _delete(self, keys, ops, vals):
        t = self._table()
        rows = self._matching("delete", t, keys, ops, vals, t.type_columns())
        for ek, raw in rows:
            p = self.r.pipeline(transaction=False)
            p.delete(ek)
            for kind, tk in row_type_keys(t, raw):
                self.srem(keys=[tk, t.index_set(kind), ek], client=p)
            p.execute()
        return len(rows)

    def update(self, keys, ops, vals, ukeys, uvals):
        """-> rows updated (existing rows only: no insert)."""
        return self._run("update", self._update, list(keys), ops, list(vals), list(ukeys), list(uvals))

    def _update(self, keys, ops, vals, ukeys, uvals):
        t = self._table()
        new = dict(type_keys(t, ukeys, uvals))
        values = {k: val2str(v) or "" for k, v in zip(ukeys, uvals)}
        rows = self._matching("update", t, keys, ops, vals, t.type_columns())
        for ek, raw in rows:
            p = self.r.pipeline(transaction=False)
            p.hset(ek, mapping=values)
            for kind, old in row_type_keys(t, raw):
                tk = new.get(kind)
                if tk is None or tk == old:
                    continue
                p.sadd(tk, ek)
                p.sadd(t.index_set(kind), tk)
                self.srem(keys=[old, t.index_set(kind), ek], client=p)
            p.execute()
        return len(rows)

    def close(self):
        try:
            self.r.close()
        except _REDIS_ERRORS:
            pass


def _db_number(url):
    db = url.database or "0"
    return int(db) if db.isdigit() else 0
