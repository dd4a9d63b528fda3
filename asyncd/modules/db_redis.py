"""db_redis: the DB API driver for `redis://` URLs (Kamailio's db_redis module).

Runs in: main process (modparams; schema files and `keys` read at the first
bind of a redis:// db_url, in a user module's mod_init), every child that
calls the DB API on such a URL (its own connection, asyncd/modules/db_redis_con.py).

Kamailio: src/modules/db_redis (db_redis_mod.c exports, redis_table.c,
redis_dbase.c, redis_connection.c; doc/db_redis_admin.xml). URL
`redis://[user:pass@]host[:port]/db`; modparams `keys` (may be given several
times, joined with ';'), `schema_path` (default the Debian package's
/usr/share/kamailio/db_redis/kamailio), `verbosity` (accepted). The key
layout and value encoding: asyncd/modules/db_redis_schema.py and
docs/kamailio-db_redis.md.
Differences, on purpose (docs/kamailio-db_redis.md):
- `connect_timeout` and `cmd_timeout` (milliseconds, default 1000 each) are
  asyncd's: Kamailio connects with a 1 s timeout and then blocks on a slow
  server; asyncd bounds every command so a route never waits longer.
- a Redis that is down at startup does not stop the server: the calls fail
  (logged) until it answers, and the next call reconnects.
"""
import os

from asyncd.core.errors import CfgError
from asyncd.core.exports import ModuleExports, ParamExport
from asyncd.modules import srdb
from asyncd.modules.db_redis_con import RedisConnection
from asyncd.modules.db_redis_schema import load_schema, parse_keys

MOD = "db_redis"
DEFAULT_SCHEMA_PATH = "/usr/share/kamailio/db_redis/kamailio"


class DbRedisState:
    def __init__(self):
        self.tables = None          # name -> db_redis_schema.Table, after prepare()
        self.connect_timeout = 1.0
        self.cmd_timeout = 1.0

    def prepare(self, script):
        """The schema files and the `keys` modparam, once (db_redis_new_connection)."""
        if self.tables is not None:
            return
        mp = script.modparams[MOD]
        path = str(mp.get("schema_path") or DEFAULT_SCHEMA_PATH)
        spec = ";".join(str(k) for k in (mp.get("keys") or []))
        try:
            tables = load_schema(path)
            if not spec:
                raise ValueError("Failed to parse empty 'keys' mod-param, please define it!")
            parse_keys(spec, tables)
        except ValueError as e:
            raise CfgError(f"db_redis: {e}") from None
        self.connect_timeout = max(1, int(mp["connect_timeout"])) / 1000.0
        self.cmd_timeout = max(1, int(mp["cmd_timeout"])) / 1000.0
        self.tables = tables

    def connect(self, url):
        if self.tables is None:
            raise srdb.DbError("db_redis: schema not loaded (no bind in mod_init)")
        return RedisConnection(url, self.tables, self.connect_timeout, self.cmd_timeout)


S = DbRedisState()
srdb.register_driver("redis", MOD, S.connect, RedisConnection.caps, S.prepare)


def mod_init(script):
    path = str(script.modparams[MOD].get("schema_path") or DEFAULT_SCHEMA_PATH)
    if not os.path.isdir(path):
        raise CfgError(f"db_redis: Failed to open schema directory '{path}' (Kamailio's table "
                       "schemas: the Debian package kamailio-redis-modules, or set schema_path)")


def mod_destroy(script):
    S.tables = None


EXPORTS = ModuleExports(
    name=MOD,
    params=[
        ParamExport("keys", str, None, multi=True),
        ParamExport("schema_path", str, DEFAULT_SCHEMA_PATH),
        ParamExport("verbosity", int, 1),
        ParamExport("connect_timeout", int, 1000),
        ParamExport("cmd_timeout", int, 1000),
    ],
    mod_init=mod_init,
    mod_destroy=mod_destroy,
)
