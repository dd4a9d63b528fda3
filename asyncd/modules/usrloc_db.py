"""usrloc db_mode 3 (DB only): a location table kept in the database, so every
node on the same db_url sees every binding.

Runs in: main process (made in usrloc's mod_init; no connection is opened
there), every process that runs a route (registrar's save/lookup), the RPC
processes (ul.* methods), the "USRLOC Timer" process (expiry) and
nathelper's "TIMER NH" processes; each opens its own DB connection on first
use (asyncd/modules/srdb.py).

Kamailio: src/modules/usrloc, DB_ONLY paths: udomain.c get_urecord ->
db_load_urecord (the 19 columns, username [+ domain]), urecord.c
insert_ucontact / delete_ucontact, ucontact.c db_insert_ucontact (NULL-able
columns left out), db_update_ucontact_ruid (the row by its ruid, NULL written
as the driver writes it), db_delete_ucontact_ruid, udomain.c
db_timer_udomain (delete where expires < now + 1 and expires != 0).
`DbDomain` has shm/usrloc.py ULStore's interface (get, update, delete,
records, expire, clear), so registrar's save/lookup/registered/unregister
and reg_fetch_contacts run on it unchanged: `update(aor, fn)` reads the
record from the DB, lets fn change the contact list, and writes the
difference back row by row (insert new ruids, update changed ones, delete
dropped ones), the same rows Kamailio's per-contact calls write.
A DB error: get() gives no contacts (lookup -1, as Kamailio's failed
db_load_urecord), update() gives FULL (save answers 500 Server Internal
Error), delete() False; the driver logged the cause.
Differences, on purpose (docs/kamailio-registrar.md): a REGISTER whose
record cannot be read answers 500 (Kamailio takes the record for empty);
save()'s memory-only flag (0x01) is not honoured (Kamailio writes no row).
As Kamailio's, two REGISTERs for one AOR at the same moment are not
serialised (udomain.c lock_udomain takes no lock in DB_ONLY).
"""
import time
import zlib

from asyncd.core import log
from asyncd.modules.srdb import (OP_LT, OP_NEQ, DbError, bitmap_val, datetime_val, double_val,
                                 int_val, str_val)
from shm.usrloc import (C_CALLID, C_CFLAGS, C_CONID, C_CSEQ, C_EXPIRES, C_FLAGS, C_INSTANCE,
                        C_LASTMOD, C_METHODS, C_PATH, C_Q, C_RECEIVED, C_REGID, C_RUID, C_SOCK,
                        C_UA, C_URI, FULL, Q_UNSPECIFIED, insert_sorted, new_contact)

MOD = "usrloc"
UL_TABLE_VERSION = 9        # usrloc/usrloc.h: the location table's version
# udomain.c db_load_urecord's columns, in its order
LOAD_COLUMNS = ["contact", "expires", "q", "callid", "cseq", "flags", "cflags", "user_agent",
                "received", "path", "socket", "methods", "last_modified", "ruid", "instance",
                "reg_id", "server_id", "connection_id", "keepalive"]
ALL_METHODS = 0xFFFFFFFF


def _q_double(q):
    """q2double: -1 when unspecified."""
    return -1.0 if q == Q_UNSPECIFIED else q / 1000.0


def _q_int(v):
    if v is None or v < 0:
        return Q_UNSPECIFIED
    return min(1000, int(round(v * 1000)))


def row_contact(r):
    """A row of LOAD_COLUMNS (python values) -> a contact tuple (dbrow2info)."""
    (uri, expires, q, callid, cseq, flags, cflags, ua, received, path, sock, methods, lastmod,
     ruid, instance, reg_id, _srv, conid, _ka) = r
    m = -1 if methods is None or (methods & ALL_METHODS) == ALL_METHODS else methods
    return new_contact(uri or "", expires or 0, _q_int(q), callid or "", cseq or 0, flags or 0,
                       cflags or 0, path or "", received or "", ua or "", sock or "",
                       instance or "", reg_id or 0, ruid or "", m, -1 if conid is None else conid,
                       now=lastmod)


def insert_row(c, user, domain):
    """db_insert_ucontact's columns and values (empty optional ones left out)."""
    kv = [("username", str_val(user)), ("contact", str_val(c[C_URI])),
          ("expires", datetime_val(c[C_EXPIRES])), ("q", double_val(_q_double(c[C_Q]))),
          ("callid", str_val(c[C_CALLID])), ("cseq", int_val(c[C_CSEQ])),
          ("flags", int_val(c[C_FLAGS])), ("cflags", int_val(c[C_CFLAGS])),
          ("user_agent", str_val(c[C_UA]))]
    for col, i in (("received", C_RECEIVED), ("path", C_PATH), ("socket", C_SOCK)):
        if c[i]:
            kv.append((col, str_val(c[i])))
    if c[C_METHODS] != -1:
        kv.append(("methods", bitmap_val(c[C_METHODS])))
    kv += [("last_modified", datetime_val(c[C_LASTMOD])), ("ruid", str_val(c[C_RUID]))]
    if c[C_INSTANCE]:
        kv.append(("instance", str_val(c[C_INSTANCE])))
    kv += [("reg_id", int_val(c[C_REGID])), ("server_id", int_val(0)),
           ("connection_id", int_val(c[C_CONID])), ("keepalive", int_val(0)),
           ("partition", int_val(0))]
    if domain is not None:
        kv.append(("domain", str_val(domain)))
    return [k for k, _v in kv], [v for _k, v in kv]


def update_row(c):
    """db_update_ucontact_ruid's SET list: empty optional values as NULL."""
    kv = [("expires", datetime_val(c[C_EXPIRES])), ("q", double_val(_q_double(c[C_Q]))),
          ("cseq", int_val(c[C_CSEQ])), ("flags", int_val(c[C_FLAGS])),
          ("cflags", int_val(c[C_CFLAGS])), ("user_agent", str_val(c[C_UA])),
          ("received", str_val(c[C_RECEIVED] or None)), ("path", str_val(c[C_PATH] or None)),
          ("socket", str_val(c[C_SOCK] or None)),
          ("methods", bitmap_val(None if c[C_METHODS] == -1 else c[C_METHODS])),
          ("last_modified", datetime_val(c[C_LASTMOD])), ("callid", str_val(c[C_CALLID])),
          ("instance", str_val(c[C_INSTANCE] or None)), ("reg_id", int_val(c[C_REGID])),
          ("server_id", int_val(0)), ("connection_id", int_val(c[C_CONID])),
          ("keepalive", int_val(0))]
    return [k for k, _v in kv], [v for _k, v in kv]


class DbDomain:
    """One location table in the DB (udomain_t in DB_ONLY mode)."""

    in_memory = False

    def __init__(self, binding, name, size, use_domain=0, desc_time_order=0):
        self.b = binding
        self.name = name
        self.size = size
        self.use_domain = use_domain
        self.desc_time_order = desc_time_order

    def _con(self):
        c = self.b.connection()
        c.use_table(self.name)
        return c

    def split(self, aor):
        """(username, domain or None) as db_load_urecord splits the AOR."""
        if not self.use_domain:
            return aor, None
        user, at, dom = aor.partition("@")
        return (user, dom) if at else ("", aor)

    def _where(self, aor):
        user, dom = self.split(aor)
        if dom is None:
            return ["username"], [str_val(user)]
        return ["username", "domain"], [str_val(user), str_val(dom)]

    # -- reads -----------------------------------------------------------------------------
    def load(self, aor):
        """The record's contacts in Kamailio's order (mem_insert_ucontact); DbError."""
        keys, vals = self._where(aor)
        res = self._con().query(keys, None, vals, LOAD_COLUMNS,
                                order="last_modified" if self.desc_time_order else "q")
        out = []
        for r in sorted(res.rows, key=lambda r: r[12] or 0):
            insert_sorted(out, row_contact(r), self.desc_time_order)
        return out

    def get(self, aor):
        try:
            return self.load(aor)
        except DbError:
            log.err(MOD, f"failed to load record {aor!r} from table {self.name}")
            return []

    def _aor(self, user, dom):
        """The AOR of a row (db_load_urecord's split, backwards)."""
        if not self.use_domain or not dom:
            return user
        return f"{user}@{dom}" if user else dom

    def records(self, part=None):
        """[(slot, aor, contacts)] of every row in the table (a table scan);
        slot = crc32(aor) % size, `part` as ULStore.records."""
        try:
            res = self._con().query([], None, [], ["username", "domain"] + LOAD_COLUMNS)
        except DbError:
            log.err(MOD, f"failed to read table {self.name}")
            return []
        recs = {}
        for r in res.rows:
            user, dom = r[0] or "", r[1]
            aor = self._aor(user, dom)
            recs.setdefault(aor, []).append(r[2:])
        out = []
        for aor, rows in recs.items():
            slot = zlib.crc32(aor.encode("utf-8", "surrogateescape")) % self.size
            if part and slot % part[1] != part[0]:
                continue
            cs = []
            for r in sorted(rows, key=lambda r: r[12] or 0):
                insert_sorted(cs, row_contact(r), self.desc_time_order)
            out.append((slot, aor, cs))
        return out

    def users(self):
        """Kamailio's usrloc counters count memory records: none in DB_ONLY."""
        return 0

    def contacts(self):
        return 0

    # -- writes ----------------------------------------------------------------------------
    def update(self, aor, fn):
        """Read the record, fn(contacts) -> (new list or None, result), write the
        difference back. -> fn's result, or FULL when the DB failed."""
        try:
            old = self.load(aor)
        except DbError:
            log.err(MOD, f"failed to load record {aor!r} from table {self.name}")
            return FULL
        new, result = fn(list(old))
        if new is None:
            return result
        try:
            self._write(aor, old, new)
        except DbError:
            log.err(MOD, f"failed to write record {aor!r} to table {self.name}")
            return FULL
        return result

    def _write(self, aor, old, new):
        con = self._con()
        before = {c[C_RUID]: c for c in old}
        keep = {c[C_RUID] for c in new}
        for c in old:
            if c[C_RUID] not in keep:
                con.delete(["ruid"], None, [str_val(c[C_RUID])])
        user, dom = self.split(aor)
        for c in new:
            o = before.get(c[C_RUID])
            if o is None:
                con.insert(*insert_row(c, user, dom))
            elif o != c:
                con.update(["ruid"], None, [str_val(c[C_RUID])], *update_row(c))

    def delete(self, aor):
        """delete_urecord: every row of the AOR -> True when there were any."""
        keys, vals = self._where(aor)
        try:
            return self._con().delete(keys, None, vals) > 0
        except DbError:
            log.err(MOD, f"failed to delete record {aor!r} from table {self.name}")
            return False

    def clear(self):
        try:
            self._con().delete()
        except DbError:
            log.err(MOD, f"failed to clear table {self.name}")

    def expire(self, now=None):
        """db_timer_udomain: rows with expires < now + 1 and not 0 -> rows deleted."""
        now = int(time.time()) if now is None else now
        return self._con().delete(["expires", "expires"], [OP_LT, OP_NEQ],
                                  [datetime_val(now + 1), datetime_val(0)])
