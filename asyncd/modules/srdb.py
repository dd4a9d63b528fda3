"""The DB API: what usrloc (db_mode 3), htable (dbtable) and any other module
use to reach a database named by a `db_url`, whatever the driver.

Runs in: main process (`bind` in a user's mod_init: the URL is parsed and
its driver checked, no connection is opened), every child that calls it
(`Binding.connection()` opens the process's own connection on first use,
after fork: connections are never shared between processes).

Kamailio: src/lib/srdb1 (db.h db_func_t and db_bind_mod, db_op.h operators,
db_val.h typed values, db_res.h results, db_id.c URL parsing). The calls
keep Kamailio's shape (use_table, then query/insert/update/delete/replace on
parallel key, operator and value lists) so a module ported from Kamailio
maps line by line. In our words:

    b = srdb.bind(script, "redis://127.0.0.1:6379/0", "usrloc")  # mod_init
    con = b.connection()                                        # any child
    con.use_table("location")
    res = con.query(["username"], None, [srdb.str_val("bob")],
                    ["contact", "expires"], order="q")          # -> Result
    for row in res.rows: ...                                    # python values
    con.insert(["ruid", "username"], [str_val("r1"), str_val("bob")])
    con.update(["ruid"], [OP_EQ], [str_val("r1")], ["expires"], [datetime_val(t)])
    con.delete(["expires", "expires"], [OP_LT, OP_NEQ],
               [datetime_val(now + 1), datetime_val(0)])

Values are `Val(type, value)`; value None is SQL NULL. Python types per DB
type: INT, UINT, BIGINT, UBIGINT, BITMAP -> int; DOUBLE -> float; STRING,
STR -> str; DATETIME -> int (time_t, wall seconds); BLOB -> bytes. `ops`
None means every key compares with OP_EQ (Kamailio passes a NULL op array).

Errors: every call raises DbError when it fails (server down, timeout, a
table the driver does not know, a value it cannot store); the driver has
logged what happened. Callers turn it into Kamailio's return code and log
line (usrloc: save answers 500, lookup returns -1). A connection that failed
is retried by the next call: no call blocks longer than the driver's timeout.

A driver is a module (`db_redis`) that registers its URL scheme here with
`register_driver` when it is imported; `bind` also requires that module to be
loaded by the cfg (`loadmodule "db_redis.so"`), as Kamailio's db_bind_mod
looks the module `db_<scheme>` up among the loaded ones.
"""
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from asyncd.core.errors import CfgError

# db_val.h db_type_t
INT, UINT, BIGINT, UBIGINT, DOUBLE, STRING, STR, DATETIME, BLOB, BITMAP = (
    "int", "uint", "bigint", "ubigint", "double", "string", "str", "datetime", "blob", "bitmap")
TYPES = (INT, UINT, BIGINT, UBIGINT, DOUBLE, STRING, STR, DATETIME, BLOB, BITMAP)

# db_op.h
OP_LT, OP_GT, OP_EQ, OP_LEQ, OP_GEQ, OP_NEQ, OP_BITWISE_AND = "<", ">", "=", "<=", ">=", "<>", "&"
OPS = (OP_LT, OP_GT, OP_EQ, OP_LEQ, OP_GEQ, OP_NEQ, OP_BITWISE_AND)

# db_cap.h: what a driver can do (Kamailio's DB_CAP_* bits, by name)
CAP_QUERY, CAP_RAW_QUERY, CAP_INSERT, CAP_DELETE, CAP_UPDATE, CAP_REPLACE = (
    "query", "raw_query", "insert", "delete", "update", "replace")


class DbError(Exception):
    """A DB call failed; str() says what (the driver logged it too)."""


class DbUnreachable(DbError):
    """The server did not answer (refused, timed out, connection lost), as
    opposed to a server that answered and refused the command: the same call
    may succeed once it is back."""


@dataclass(frozen=True)
class Val:
    """A typed value (db_val_t): `value` None is NULL."""
    type: str
    value: Any = None

    @property
    def null(self):
        return self.value is None


def int_val(v):
    return Val(INT, None if v is None else int(v))


def bigint_val(v):
    return Val(BIGINT, None if v is None else int(v))


def bitmap_val(v):
    return Val(BITMAP, None if v is None else int(v))


def double_val(v):
    return Val(DOUBLE, None if v is None else float(v))


def str_val(v):
    return Val(STR, None if v is None else str(v))


def string_val(v):
    return Val(STRING, None if v is None else str(v))


def datetime_val(v):
    """v: wall-clock seconds (time_t)."""
    return Val(DATETIME, None if v is None else int(v))


def blob_val(v):
    return Val(BLOB, None if v is None else bytes(v))


@dataclass
class Result:
    """db1_res_t: column names, their types (as the driver knows them) and the
    rows, each a list of python values (None = NULL) in column order."""
    columns: list
    types: list
    rows: list = field(default_factory=list)

    def dicts(self):
        """The rows as {column: value} (a convenience; not in Kamailio)."""
        return [dict(zip(self.columns, r)) for r in self.rows]


@dataclass(frozen=True)
class DbUrl:
    """db_id.c: scheme://[user[:password]@]host[:port][/database]."""
    scheme: str
    host: str = ""
    port: int = 0
    database: str = ""
    username: str = ""
    password: str = ""
    text: str = ""

    def __str__(self):
        return self.text


def parse_url(text):
    """-> DbUrl; ValueError with the reason when `text` is not a DB URL."""
    text = str(text or "").strip()
    scheme, sep, rest = text.partition("://")
    if not sep or not scheme:
        raise ValueError(f'invalid DB URL "{text}" (expected scheme://[user:pass@]host[:port][/db])')
    hostport, _, database = rest.partition("/")
    user = password = ""
    if "@" in hostport:
        cred, _, hostport = hostport.rpartition("@")
        user, _, password = cred.partition(":")
    host, port = hostport, 0
    if hostport.startswith("["):                   # IPv6 literal
        end = hostport.find("]")
        host, tail = hostport[1:end], hostport[end + 1:]
        if tail.startswith(":"):
            port = _port(tail[1:], text)
    elif ":" in hostport:
        host, _, p = hostport.rpartition(":")
        port = _port(p, text)
    return DbUrl(scheme.lower(), host, port, database, unquote(user), unquote(password), text)


def _port(p, text):
    if not p.isdigit() or not 0 < int(p) < 65536:
        raise ValueError(f'invalid port in DB URL "{text}"')
    return int(p)


class Connection:
    """A driver's connection in one process (db1_con_t plus db_func_t).

    Drivers override the calls they support; the others raise DbError as
    Kamailio's binding leaves a missing function NULL. `table` is the one
    `use_table` set (CON_TABLE)."""

    caps = ()

    def __init__(self, url):
        self.url = url
        self.table = None

    def use_table(self, table):
        self.table = str(table)
        return 0

    def query(self, keys=(), ops=None, vals=(), columns=(), order=None):
        """SELECT columns FROM table WHERE keys[i] ops[i] vals[i] (AND) ->
        Result. columns empty: every column the driver knows."""
        raise DbError(f"{self.url.scheme}: query is not supported")

    def raw_query(self, text):
        raise DbError("Database does not support raw queries")

    def insert(self, keys, vals):
        raise DbError(f"{self.url.scheme}: insert is not supported")

    def update(self, keys, ops, vals, ukeys, uvals):
        """UPDATE table SET ukeys = uvals WHERE keys ops vals."""
        raise DbError(f"{self.url.scheme}: update is not supported")

    def delete(self, keys=(), ops=None, vals=()):
        """DELETE FROM table WHERE keys ops vals (no keys: every row)."""
        raise DbError(f"{self.url.scheme}: delete is not supported")

    def replace(self, keys, vals, un=0, mode=0):
        raise DbError(f"{self.url.scheme}: replace is not supported")

    def close(self):
        pass


@dataclass
class Driver:
    scheme: str
    module: str                 # the cfg module that provides it: "db_redis"
    connect: Any                # connect(DbUrl) -> Connection (no I/O until the first call)
    caps: tuple = ()
    prepare: Any = None         # prepare(script): read the driver's modparams (once, at bind)


_drivers = {}


def register_driver(scheme, module, connect, caps=(), prepare=None):
    """A driver module's import: URLs `scheme://...` are served by `connect`;
    `prepare(script)` runs at the first bind (its modparams are set by then,
    whatever the order of the mod_inits)."""
    _drivers[scheme.lower()] = Driver(scheme.lower(), module, connect, tuple(caps), prepare)


class Binding:
    """A user's bound DB (db_bind_mod + the URL): one Connection per process,
    opened lazily after fork (the pid is checked, so a connection made in
    main before fork is never reused by a child)."""

    def __init__(self, url, driver, user):
        self.url = url
        self.driver = driver
        self.user = user
        self._con = None
        self._pid = None

    def has(self, *caps):
        """DB_CAPABILITY: the driver can do every one of `caps`."""
        return all(c in self.driver.caps for c in caps)

    def connection(self) -> Connection:
        pid = os.getpid()
        if self._con is None or self._pid != pid:
            self._con = self.driver.connect(self.url)
            self._pid = pid
        return self._con

    def close(self):
        if self._con is not None and self._pid == os.getpid():
            self._con.close()
        self._con = None


def bind(script, url_text, user):
    """db_bind_mod for module `user` (its name starts the error text): ->
    Binding. CfgError when the URL is malformed or no loaded module serves
    its scheme (Kamailio: "Module db_<scheme> not found. Missing loadmodule?")."""
    try:
        url = parse_url(url_text)
    except ValueError as e:
        raise CfgError(f"{user}: {e}") from None
    driver = _drivers.get(url.scheme)
    wanted = driver.module if driver else f"db_{url.scheme}"
    loaded = {m.name for m in getattr(script, "modules", ())}
    if driver is None or wanted not in loaded:
        raise CfgError(f'{user}: no DB driver module loaded for "{url.text}" (module {wanted} '
                       f'not found. Missing loadmodule "{wanted}.so"?)')
    if driver.prepare is not None:
        driver.prepare(script)
    return Binding(url, driver, user)


def table_versions(con, table, version_table="version"):
    """The query of db_table_version (db.c): the table_version values the
    `version` table holds for `table` (normally one; none when it has no row,
    None for a NULL), for the caller to judge. DbError when the query fails."""
    con.use_table(version_table)
    res = con.query(["table_name"], None, [str_val(table)], ["table_version"])
    return [row[0] for row in res.rows]


def check_table_version(con, table, version, version_table="version"):
    """db_check_table_version (db.c): the `version` table's table_version for
    `table` must equal `version`. -> None; DbError with Kamailio's meaning
    ("invalid table version") otherwise."""
    versions = table_versions(con, table, version_table)
    found = versions[0] if versions else None
    if found is None:
        raise DbError(f"no version for table {table} in {version_table}")
    if int(found) != int(version):
        raise DbError(f"invalid table version for {table}: found {found}, expected {version} "
                      "(use kamdbctl reinit)")
