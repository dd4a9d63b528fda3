"""The usrloc store: one location table (Kamailio's udomain) in shared memory.

Runs in: main process (created in usrloc's mod_init, before fork), every
child that runs a route (save/lookup: udp and tcp receivers, async task
workers), the RPC processes (ul.* methods), the "USRLOC Timer" process (expiry) and
nathelper's "TIMER NH" processes (records by partition).

Built on ShmHashTable (hashtable.py): one entry per address of record (the
key, bytes), its value all the record's contacts, marshalled as one list of
tuples (layout below). A change is a read-modify-write of that value under the
bucket's robust stripe lock (`update`), so a record is never seen half
updated, whichever process changes it; a process killed mid-write leaves the
old value or the new one (hashtable.py: replace with one store). Reads take
the lock-free path of ShmHashTable.find.

Contact tuple (index: field), Kamailio's ucontact_t fields (usrloc/ucontact.h):
    0 c (contact URI)      1 expires (wall-clock seconds, 0 = permanent)
    2 q (int, 0..1000, -1 = unspecified)   3 callid     4 cseq
    5 flags                6 cflags        7 path       8 received
    9 user_agent          10 sock (e.g. "udp:1.2.3.4:5060", "" = none)
   11 instance            12 reg_id       13 last_modified (wall seconds)
   14 ruid                15 methods (-1 = all)  16 tcpconn_id (-1 = none)

Order of a record's contacts: Kamailio's mem_insert_ucontact (urecord.c):
by q, highest first, a new contact after the ones of equal q; with
desc_time_order the newest first.

Bounded: entries come from the arena; a full arena makes `update` return
FULL (the caller answers 500 and logs), never raises.
"""
import itertools
import marshal
import os
import time

from asyncd.core import log
from shm.hashtable import _NEXT, ShmHashTable

(C_URI, C_EXPIRES, C_Q, C_CALLID, C_CSEQ, C_FLAGS, C_CFLAGS, C_PATH, C_RECEIVED, C_UA,
 C_SOCK, C_INSTANCE, C_REGID, C_LASTMOD, C_RUID, C_METHODS, C_CONID) = range(17)
NFIELDS = 17
Q_UNSPECIFIED = -1

# update() results besides the callback's own
FULL = object()

# matching modes (usrloc.h): which stored contact a REGISTER's Contact updates
CONTACT_ONLY, CONTACT_CALLID, CONTACT_PATH, CONTACT_CALLID_ONLY = 0, 1, 2, 3


def new_contact(uri, expires, q=Q_UNSPECIFIED, callid="", cseq=0, flags=0, cflags=0, path="",
                received="", user_agent="", sock="", instance="", reg_id=0, ruid="",
                methods=-1, conid=-1, now=None):
    """A contact tuple (layout in the module docstring)."""
    return (uri, int(expires), int(q), callid, int(cseq), int(flags), int(cflags), path,
            received, user_agent, sock, instance, int(reg_id), int(now or time.time()), ruid,
            int(methods), int(conid))


_ruids = itertools.count(1)


def new_ruid():
    """A record unique id (Kamailio's sruid: `uloc-<time>-<pid>-<n>`)."""
    return f"uloc-{int(time.time()):x}-{os.getpid():x}-{next(_ruids)}"


def valid(c, now):
    """Kamailio's VALID_CONTACT (ucontact.h): not yet expired, or permanent."""
    return c[C_EXPIRES] == 0 or c[C_EXPIRES] > now


def insert_sorted(contacts, c, desc_time_order=False):
    """mem_insert_ucontact's order: q highest first, FIFO within equal q."""
    if desc_time_order:
        contacts.insert(0, c)
        return
    for i, o in enumerate(contacts):
        if o[C_Q] < c[C_Q]:
            contacts.insert(i, c)
            return
    contacts.append(c)


def update_in_place(contacts, i, c, desc_time_order=False):
    """Put updated contact c at index i's place as Kamailio's
    update_contact_pos (ucontact.c): with desc_time_order to the front; else
    it stays while its q still fits between its neighbours, and otherwise
    goes before the first contact of q >= its own (Kamailio walks for the
    smaller q first here, so a raised q can land behind lower ones: kept,
    lookups must pick what Kamailio picks)."""
    del contacts[i]
    if desc_time_order:
        contacts.insert(0, c)
        return
    q = c[C_Q]
    if (i == 0 or q <= contacts[i - 1][C_Q]) and (i >= len(contacts) or q >= contacts[i][C_Q]):
        contacts.insert(i, c)
        return
    for j, o in enumerate(contacts):
        if o[C_Q] >= q:
            contacts.insert(j, c)
            return
    contacts.append(c)


def find_contact(contacts, mode, uri, callid="", path=""):
    """Index of the stored contact a Contact matches (get_ucontact's match step), -1 if none."""
    for i, c in enumerate(contacts):
        if mode == CONTACT_ONLY and c[C_URI] == uri:
            return i
        if mode == CONTACT_CALLID and c[C_URI] == uri and c[C_CALLID] == callid:
            return i
        if mode == CONTACT_PATH and c[C_URI] == uri and c[C_PATH] == path:
            return i
        if mode == CONTACT_CALLID_ONLY and c[C_CALLID] == callid:
            return i
    return -1


def _enc(s):
    return s.encode("utf-8", "surrogateescape")


def _dec(b):
    return b.decode("utf-8", "surrogateescape")


def _load(value):
    try:
        out = marshal.loads(value)
    except (EOFError, ValueError, TypeError):
        return []
    return out if type(out) is list else []


class ULStore:
    """One location table: AOR (str) -> list of contact tuples."""

    in_memory = True            # usrloc_db.DbDomain (db_mode 3) has the same interface, False

    def __init__(self, arena, name, nbuckets=1024):
        self.name = name
        self.t = ShmHashTable(arena, max(16, nbuckets), min(max(16, nbuckets), 64),
                              f"usrloc {name}")
        self.size = self.t.nbuckets

    # -- reads -------------------------------------------------------------------------------
    def get(self, aor):
        """The record's contacts (expired ones included: callers filter with `valid`)."""
        r = self.t.find(_enc(aor))
        return [] if r is None else _load(r[2])

    def slot_of(self, aor):
        return self.t.index_of(_enc(aor))

    def records(self, part=None):
        """[(slot, aor, contacts)] of every record, a snapshot bucket by bucket;
        part = (idx, max): only buckets b with b % max == idx (usrloc dlist.c
        get_all_mem_ucontacts's partitions, for nathelper's pinger)."""
        out = []
        t = self.t
        for b in (range(part[0], t.nbuckets, part[1]) if part else range(t.nbuckets)):
            if not _NEXT.unpack_from(t.buf, t.boff + 16 * b)[0]:
                continue
            for _l, kb, vb, _iv, _fl, _ex in t.iter_bucket(b):
                out.append((b, _dec(kb), _load(vb)))
        return out

    def users(self):
        """Records in the table (bucket counters, no walk)."""
        return self.t.count()

    def contacts(self):
        return sum(len(cs) for _b, _a, cs in self.records())

    # -- writes ------------------------------------------------------------------------------
    def update(self, aor, fn):
        """Read-modify-write of one record under its stripe lock.

        fn(contacts) -> (new contacts or None to keep, result); an empty list
        deletes the record. -> fn's result, or FULL when shm is exhausted."""
        t = self.t
        kb = _enc(aor)
        h = t._hash(kb)
        b = h & t.mask
        s = b & t.smask
        t._lock(s)
        try:
            prev, off = t._find_l(b, kb, h)
            contacts = _load(t._value(off)) if off else []
            new, result = fn(contacts)
            if new is None:
                return result
            if not new:
                if off:
                    t._unlink_l(b, prev, off)
                return result
            value = marshal.dumps(new)
            if off:
                ok = t._set_value_l(b, prev, off, value)
            else:
                ok = t._link_l(b, kb, value, h, 0, 0, 0)[0]
            if not ok:
                log.err("usrloc", f"{self.name}: no shared memory left for record {aor!r} "
                        "(raise -m)")
                return FULL
            return result
        finally:
            t._unlock(s)

    def delete(self, aor):
        return self.t.delete_key(_enc(aor))

    def clear(self):
        self.t.clear()

    def expire(self, now=None):
        """Drop every expired contact (and records left empty) -> contacts dropped.
        Kamailio's nodb_timer (urecord.c): the same test as VALID_CONTACT."""
        now = int(time.time()) if now is None else now
        dropped = 0
        for _b, aor, contacts in self.records():
            if all(valid(c, now) for c in contacts):
                continue
            dropped += self.update(aor, lambda cs: _drop_expired(cs, now))
        return dropped


def _drop_expired(contacts, now):
    keep = [c for c in contacts if valid(c, now)]
    n = len(contacts) - len(keep)
    return (keep if n else None), n
