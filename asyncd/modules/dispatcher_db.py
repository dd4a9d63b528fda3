"""dispatcher's destination sets read from a database (`db_url`): the
startup load, with the table version check, and the reloads.

Runs in: main process (`bind` and `init_db` from mod_init, before fork: the
connection is closed again before the children start), the processes that
reload (the RPC processes for dispatcher.reload, any routing process for
ds_reload(): each opens its own connection for the reload and closes it).

Kamailio: src/modules/dispatcher/dispatcher.c mod_init (db_url, table_name,
setid_col, destination_col, flags_col, priority_col, attrs_col and
ds_db_extra_attrs: `name=column;...`, each non-empty column value appended
to the attributes as `name=value;`), dispatch.c ds_init_db (the driver
bound, db_table_version: versions 1 to 4 are read, with 2, 3, 4 or 5
columns; any other stops the startup), ds_connect_db / ds_disconnect_db (a
connection only for the time of a load), ds_load_db (the whole table, no
ORDER BY: the rows in the driver's order; a row that cannot be added is
skipped with a warning, or fails the load with ds_load_mode=1; -2 when
some rows were skipped), ds_reload_db. The rows then go through the same
pack_dest / add_dest2list / reindex_dests as the list file's lines
(asyncd/modules/dispatcher_list.py build), so the list behaves exactly as
one loaded from a file with the same lines in the same order.
"""
from asyncd.core import log
from asyncd.core.errors import CfgError
from asyncd.modules import srdb
from asyncd.modules.dispatcher_list import ListError, build, split_params
from asyncd.modules.srdb import DbError, DbUnreachable

MOD = "dispatcher"
VERSIONS = (1, 2, 3, 4)                 # dispatch.c DS_TABLE_VERSION .. DS_TABLE_VERSION4
NCOLS = {1: 2, 2: 3, 3: 4, 4: 5}        # ds_load_db: the columns each version has
MAX_COLS = 32                           # ds_load_db DS_DB_MAX_COLS
ATTRS_MAXSIZE = 1024                    # ds_load_db DS_ATTRS_MAXSIZE
ERR_SKIPPED = -2                        # ds_load_db: loaded, but some rows were skipped


class DsDbFailed(Exception):
    """The load failed (already logged); the list in use is unchanged."""


def _int(v):
    """VAL_INT of a column: an int, or the leading digits of a string; NULL is 0."""
    if v is None:
        return 0
    if type(v) is int:
        return v
    text = v.decode("utf-8", "surrogateescape") if isinstance(v, (bytes, bytearray)) else str(v)
    digits = text.strip()
    sign = -1 if digits[:1] == "-" else 1
    digits = digits.lstrip("+-")
    n = len(digits) - len(digits.lstrip("0123456789"))
    return sign * int(digits[:n]) if n else 0


def _str(v):
    if v is None:
        return None
    return v.decode("utf-8", "surrogateescape") if isinstance(v, (bytes, bytearray)) else str(v)


def parse_extra_attrs(text):
    """mod_init: ds_db_extra_attrs `name=column;...` -> [(name, column)], last
    first: Kamailio's parse_params (parser/parse_param.c) puts each parameter
    at the head of its list, so ds_load_db reads the columns, and appends the
    attributes, in the reverse order of the modparam; CfgError when an item
    has no column."""
    text = str(text or "")
    if len(text) <= 2:
        return []
    if text.endswith(";"):
        text = text[:-1]
    pairs = split_params(text)
    for name, column in pairs:
        if not column:
            log.err(MOD, "invalid db extra attrs parameter")
            raise CfgError(f"dispatcher: invalid db extra attrs parameter [{text}]")
    return pairs[::-1]


class DsDb:
    """The DB modparams, the bound driver and the table version read at startup."""

    def __init__(self, mp, sockets=None):
        self.load_mode = int(mp["ds_load_mode"])
        self.attrs_none = bool(int(mp["ds_attrs_none"]))
        self.sockets = sockets
        self.url = str(mp["db_url"])
        self.table = str(mp["table_name"] or "")
        self.cols = [str(mp[k]) for k in ("setid_col", "destination_col", "flags_col",
                                          "priority_col", "attrs_col")]
        self.extra = parse_extra_attrs(mp["ds_db_extra_attrs"])
        self.binding = None
        self.version = 1

    def bind(self, script):
        """ds_init_db's first half: the table name and the driver module."""
        if not self.table:
            log.err(MOD, "invalid database name")
            raise CfgError("dispatcher: invalid database name (table_name is empty)")
        try:
            self.binding = srdb.bind(script, self.url, MOD)
        except CfgError as e:
            log.err(MOD, "Unable to bind to a database driver")
            raise CfgError(f"{e}; could not initiate a connect to the database") from None

    def columns(self):
        n = NCOLS[self.version]
        cols = self.cols[:n]
        if self.version == 4:
            cols += [column for _name, column in self.extra]
            if len(cols) > MAX_COLS:
                log.err(MOD, f"too many db columns: {len(cols)}")
                raise DsDbFailed(f"too many db columns: {len(cols)}")
        return cols

    # -- the table version (ds_init_db, lib/srdb1/db.c db_table_version) ---------------------
    def read_version(self, con):
        """-> the `version` table's table_version for our table; 0 when it has no row."""
        try:
            found = srdb.table_versions(con, self.table)
        except DbUnreachable:
            raise
        except DbError as e:
            log.err(MOD, "failed to query table version")
            raise DsDbFailed(f"failed to query table version: {e}") from None
        if not found:
            return 0
        if len(found) != 1 or found[0] is None:
            log.err(MOD, "failed to query table version")
            raise DsDbFailed("failed to query table version")
        return _int(found[0])

    def check_version(self, con):
        v = self.read_version(con)
        if v not in VERSIONS:
            msg = f"invalid table version (found {v} , required 1, 2, 3 or 4) (use kamdbctl reinit)"
            log.err(MOD, msg)
            raise DsDbFailed(msg)
        self.version = v

    # -- the rows (ds_load_db) -----------------------------------------------------------------
    def _extra_attrs(self, attrs, values):
        """The extra columns appended to attrs as `name=value;` (empty ones left out)."""
        if attrs and not attrs.endswith(";"):
            attrs += ";"
        for (name, _col), v in zip(self.extra, values):
            v = _str(v)
            if v:
                attrs += f"{name}={v};"
        if len(attrs) >= ATTRS_MAXSIZE - 1:
            log.err(MOD, "cannot build attrs buffer")
            raise DsDbFailed("cannot build attrs buffer")
        return attrs

    def entry(self, row):
        """One row -> (setid, uri, flags, priority, attrs), as a list file line gives."""
        n = len(row)
        flags = _int(row[2]) if n >= 3 else 0
        prio = _int(row[3]) if n >= 4 else 0
        attrs = (_str(row[4]) or "") if n >= 5 else ""
        if n > 5:
            attrs = self._extra_attrs(attrs, row[5:])
        return _int(row[0]), _str(row[1]) or "", flags, prio, attrs

    def _query(self, con):
        cols = self.columns()
        con.use_table(self.table)
        try:
            res = con.query((), None, (), cols)
        except DbUnreachable:
            raise
        except DbError as e:
            log.err(MOD, "error while querying database")
            raise DsDbFailed(f"error while querying database: {e}") from None
        if not res.rows:
            log.warn(MOD, "no dispatching data in the db -- empty destination set")
        return res.rows

    def load(self, con):
        """ds_load_db -> (DsList, rows skipped); DsDbFailed (logged)."""
        entries = [self.entry(r) for r in self._query(con)]
        skipped = []
        try:
            lst = build(entries, self.load_mode, self.attrs_none, self.sockets, skipped)
        except ListError as e:
            raise DsDbFailed(str(e)) from None
        return lst, len(skipped)

    def _session(self, fn):
        """ds_connect_db, fn(con), ds_disconnect_db: a connection for this load only."""
        con = self.binding.connection()
        try:
            return fn(con)
        except DbUnreachable as e:
            log.err(MOD, "cannot initialize db connection")
            log.err(MOD, "unable to connect to the database")
            raise DsDbFailed(f"unable to connect to the database: {e}") from None
        finally:
            self.binding.close()

    def init_load(self):
        """ds_init_db (mod_init): the table version, then the rows -> DsList.
        Skipped rows only warn here; DsDbFailed stops the startup."""
        def run(con):
            self.check_version(con)
            return self.load(con)
        lst, skipped = self._session(run)
        if skipped:
            log.warn(MOD, "failure while loading one or more dispatcher entries")
        return lst

    def reload(self):
        """ds_reload_db -> (DsList, rows skipped): the caller publishes the list
        and reports a reload with skipped rows as failed, as Kamailio's
        dispatcher.reload does (ds_reload_db returns -2); DsDbFailed (logged)."""
        lst, skipped = self._session(self.load)
        if skipped:
            log.warn(MOD, "failure while loading one or more dispatcher entries")
        return lst, skipped
