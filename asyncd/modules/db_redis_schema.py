"""db_redis's tables: the schema files, the `keys` modparam, and how values
are written as Redis strings and read back.

Runs in: main process (schema and keys parsed in db_redis's mod_init), every
child that calls the DB API on a redis:// URL (encoding, key building).

Kamailio: src/modules/db_redis/redis_table.c (db_redis_parse_schema,
db_redis_parse_keys, db_redis_create_column) and redis_dbase.c
(db_redis_val2str, db_redis_find_query_key, db_redis_build_type_keys,
db_redis_compare_column), lib/srdb1/db_val.c db_str2val. The layout, in our
words (docs/kamailio-db_redis.md):

    <vc><table>:entry::<v1>[:<v2>...]   hash: one row, column -> string
    <vc><table>:<type>::<v1>[:<v2>...]  set: entry keys whose type columns
                                        have those values (an index)
    <vc><table>::index::<type>          set: every type key of that type

<vc> is the optional version code of the `keys` modparam ("v2:location=..."
gives "v2:"). Values: int "%d", uint/bitmap "%u", bigint "%010lld",
double "%.6f", datetime local time "%Y-%m-%d %H:%M:%S", strings as they are,
NULL as an empty string.
"""
import os
import re
import time
from dataclasses import dataclass, field

from asyncd.modules import srdb
from asyncd.modules.srdb import DbError

# redis_table.c db_redis_create_column: the schema type by its first letters
_COLTYPE = {"s": srdb.STRING, "i": srdb.INT, "u": srdb.UINT, "ub": srdb.UBIGINT, "t": srdb.DATETIME,
            "d": srdb.DOUBLE, "b": srdb.BLOB, "bi": srdb.BIGINT}
TIME_FMT = "%Y-%m-%d %H:%M:%S"
_STRTOL = re.compile(r"\s*([+-]?\d*)(.*)", re.S)
_STRTOD = re.compile(r"\s*([+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|inf|nan)?)",
                     re.I)


@dataclass
class Table:
    name: str
    columns: dict = field(default_factory=dict)     # column -> srdb type
    version: int = 0
    version_code: str = ""
    entry: list = field(default_factory=list)       # columns of the entry key
    types: list = field(default_factory=list)       # [(type name, [columns])]

    def type_columns(self):
        """Every type's columns in order (db_redis_get_keys_for_all_types)."""
        return [c for _t, cols in self.types for c in cols]

    def key_prefix(self, kind):
        return f"{self.version_code}{self.name}:{kind}"

    def index_set(self, kind):
        return f"{self.version_code}{self.name}::index::{kind}"


def column_type(text):
    t = text.strip().lower()
    kind = _COLTYPE.get(t[:2]) if t[:2] in ("ub", "bi") else _COLTYPE.get(t[:1])
    if kind is None:
        raise ValueError(f"Invalid schema column type '{text}', expecting one of string, int, "
                         "timestamp, double, blob")
    return kind


def parse_schema_file(name, text):
    """One schema file: line 1 `col/type,col/type,...`, line 2 the version."""
    lines = text.replace("\r", "").split("\n")
    t = Table(name)
    for spec in lines[0].split(","):
        if not spec:
            continue
        col, sep, typ = spec.partition("/")
        if not sep:
            raise ValueError(f"Invalid column definition '{spec}' in schema of table '{name}', "
                             "expecting <column>/<type>")
        if col in t.columns:
            raise ValueError(f"Found duplicate column definition '{col}' in schema definition of "
                             f"table '{name}'")
        t.columns[col] = column_type(typ)
    digits = _STRTOL.match(lines[1] if len(lines) > 1 else "").group(1)
    t.version = int(digits) if digits.lstrip("+-") else 0
    return t


def load_schema(path):
    """Every regular file in `path` is a table named as the file."""
    try:
        names = sorted(os.listdir(path))
    except OSError as e:
        raise ValueError(f"Failed to open schema directory '{path}': {e.strerror}") from None
    tables = {}
    for n in names:
        full = os.path.join(path, n)
        if not os.path.isfile(full):
            continue
        with open(full, encoding="utf-8", errors="surrogateescape") as f:
            tables[n] = parse_schema_file(n, f.read())
    return tables


def parse_keys(spec, tables):
    """The `keys` modparam: `[vc:]table=type:col[,col...][&type:...][;table=...]`;
    the type `entry` names the columns of the row key."""
    for tdef in spec.split(";"):
        if not tdef.strip():
            continue
        tname, sep, body = tdef.partition("=")
        if not sep:
            raise ValueError(f"Invalid table definition '{tdef}', expecting <table>=<definition>")
        vc, colon, bare = tname.partition(":")
        vc, tname = (vc + ":", bare) if colon else ("", tname)
        t = tables.get(tname)
        if t is None:
            raise ValueError(f"No table schema found for table '{tname}', fix config by adding one "
                             "to the 'schema' mod-param!")
        t.version_code = vc
        for tydef in body.split("&"):
            kind, sep, cols = tydef.partition(":")
            if not sep:
                raise ValueError(f"Invalid type definition '{tydef}', expecting <type>:<definition>")
            columns = [c for c in cols.split(",") if c]
            if kind == "entry":
                t.entry = columns
            else:
                t.types.append((kind, columns))
    return tables


# -- values ------------------------------------------------------------------------------------
def val2str(v):
    """db_redis_val2str: a Val as the string stored (None for NULL)."""
    if v.value is None:
        return None
    t, x = v.type, v.value
    if t == srdb.INT:
        return "%d" % _c_int(x)
    if t in (srdb.UINT, srdb.BITMAP):
        return "%u" % (int(x) & 0xFFFFFFFF)
    if t in (srdb.BIGINT, srdb.UBIGINT):
        return "%010d" % int(x)
    if t in (srdb.STRING, srdb.STR):
        return str(x)
    if t == srdb.DATETIME:
        return time.strftime(TIME_FMT, time.localtime(int(x)))
    if t == srdb.DOUBLE:
        return "%.6f" % float(x)
    raise DbError(f"Unsupported val type {t}")


def _c_int(x):
    """A value as C's int (32 bits, wrapping) as Kamailio stores it."""
    x = int(x) & 0xFFFFFFFF
    return x - (1 << 32) if x >= 1 << 31 else x


def str2val(coltype, s):
    """db_str2val: a stored string (None: missing field) as a python value."""
    if s is None:
        return None
    if coltype in (srdb.STRING, srdb.STR):
        return s
    if coltype in (srdb.INT, srdb.UINT, srdb.BITMAP, srdb.BIGINT, srdb.UBIGINT):
        digits, rest = _STRTOL.match(s).groups()
        if rest:
            raise DbError(f"Unexpected characters: [{rest}]")
        n = int(digits) if digits.lstrip("+-") else 0
        return _c_int(n) if coltype in (srdb.INT, srdb.BITMAP) else n
    if coltype == srdb.DOUBLE:
        m = _STRTOD.match(s).group(1)
        return float(m) if m else 0.0
    if coltype == srdb.DATETIME:
        try:
            return int(time.mktime(time.strptime(s, TIME_FMT)))
        except (ValueError, OverflowError):
            raise DbError(f"Error during time conversion of '{s}'") from None
    if coltype == srdb.BLOB:
        return s.encode("utf-8", "surrogateescape")
    raise DbError(f"Unsupported column type {coltype}")


def _atoi(s):
    digits = _STRTOL.match(s).group(1)
    return int(digits) if digits.lstrip("+-") else 0


def _cmp(a, b, op):
    if op == srdb.OP_EQ:
        return a == b
    if op == srdb.OP_NEQ:
        return a != b
    if op == srdb.OP_LT:
        return a < b
    if op == srdb.OP_GT:
        return a > b
    if op == srdb.OP_LEQ:
        return a <= b
    if op == srdb.OP_GEQ:
        return a >= b
    raise DbError(f"Unsupported op type '{op}'")


def matches(v, op, raw):
    """db_redis_compare_column: does the stored string `raw` (None: missing)
    satisfy `column op v`? Compared as the value's type (ints by atoi,
    datetimes as their formatted strings)."""
    if v.value is None or raw is None:
        return v.value is None and raw is None
    t = v.type
    if t in (srdb.INT, srdb.BIGINT, srdb.UBIGINT, srdb.UINT, srdb.BITMAP):
        n = _atoi(raw)
        if op == srdb.OP_BITWISE_AND:
            return bool(n & int(v.value))
        return _cmp(n, int(v.value), op)
    if t in (srdb.STRING, srdb.STR):
        return _cmp(raw, str(v.value), op)
    if t == srdb.DOUBLE:
        m = _STRTOD.match(raw).group(1)
        return _cmp(float(m) if m else 0.0, float(v.value), op)
    if t == srdb.DATETIME:
        return _cmp(raw, val2str(v), op)
    raise DbError(f"Unsupported val type {t}")


# -- keys ----------------------------------------------------------------------------------------
_RANGE_TYPES = (srdb.DATETIME, srdb.BIGINT, srdb.UBIGINT)


def find_key(table, kind, columns, keys, ops, vals):
    """db_redis_find_query_key: the key of `kind` ("entry" or a type) when the
    condition list gives every one of `columns` with `=` and a non-NULL value,
    else None. A `<`/`>` on a datetime or bigint column is not used as a key
    (Kamailio scans key patterns for it; asyncd scans the table, same rows)."""
    parts = []
    for col in columns:
        found = False
        for i, k in enumerate(keys):
            v = vals[i]
            op = ops[i] if ops else srdb.OP_EQ
            if v.value is None:
                break
            if op != srdb.OP_EQ and not (v.type in _RANGE_TYPES and op in (srdb.OP_LT, srdb.OP_GT)):
                break
            if k == col:
                if op != srdb.OP_EQ:
                    break
                parts.append(val2str(v))
                found = True
                break
        if not found:
            return None
    prefix = table.key_prefix(kind)
    return f"{prefix}::{':'.join(parts)}" if parts else prefix


def type_keys(table, keys, vals):
    """db_redis_build_type_keys: [(type, type key)] for the types whose columns
    all have values among keys/vals."""
    out = []
    for kind, cols in table.types:
        k = find_key(table, kind, cols, keys, None, vals)
        if k is not None:
            out.append((kind, k))
    return out


def row_type_keys(table, raw):
    """The type keys of a stored row: {column: stored string or None} read
    back through the schema types, as Kamailio does before a delete/update."""
    cols = table.type_columns()
    vals = []
    for c in cols:
        ct = table.columns.get(c, srdb.STRING)
        vals.append(srdb.Val(ct, str2val(ct, raw.get(c))))
    return type_keys(table, cols, vals)
