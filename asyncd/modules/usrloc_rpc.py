"""The usrloc module's RPC methods: ul.dump, ul.lookup, ul.rm, ul.rm_contact,
ul.flush, ul.add, ul.db_users, ul.db_contacts, ul.db_expired_contacts.

Runs in: the processes that serve RPC (ctl handler, JSONRPCS FIFO/DATAGRAM).
The tables are the shm ones every process shares (shm/usrloc.py): a contact
ul.add stores is what the next lookup() in any process finds.

Kamailio: src/modules/usrloc/ul_rpc.c (names, parameters, faults and reply
shapes are 5.6's). The ul.db_* methods answer, as Kamailio does with db_mode
0, "Command is not supported in db_mode=0", and with db_mode 3 on db_redis
(no raw queries) "Database does not support raw queries"; ul.flush has
nothing to write and succeeds. With db_mode 3, as Kamailio's DB_ONLY, ul.dump
lists each table with no AoRs (nothing is kept in memory) while ul.lookup,
ul.rm, ul.rm_contact and ul.add read and write the database.
"""
import time
import zlib

from asyncd.core.rpc import RpcExport, RpcFault, Struct
from shm.usrloc import (C_CALLID, C_CFLAGS, C_CONID, C_CSEQ, C_EXPIRES, C_FLAGS, C_INSTANCE,
                        C_LASTMOD, C_METHODS, C_PATH, C_Q, C_RECEIVED, C_REGID, C_RUID, C_SOCK,
                        C_UA, C_URI, CONTACT_ONLY, FULL, Q_UNSPECIFIED, find_contact,
                        insert_sorted, new_contact, new_ruid, valid)

NOT_SET = "[not set]"
# ul_rpc.c: the Call-ID, User-Agent and CSeq of contacts ul.add makes
RPC_CALLID = "dfjrewr12386fd6-343@kamailio.rpc"
RPC_UA = "kamailio SIP Router - RPC Server"
RPC_CSEQ = 1
F_PARAMS = "Not enough parameters (table and AOR to lookup)"


def q_float(q):
    """q2double: the stored int (0..1000, -1 unspecified) as a float."""
    return -1.0 if q == Q_UNSPECIFIED else q / 1000.0


def contact_struct(c, now, state="CS_NEW"):
    """rpc_dump_contact: one contact's fields, in Kamailio's order; `state`
    CS_SYNC for a contact read from the DB (db_mode 3, udomain.c db_load_urecord)."""
    ex = c[C_EXPIRES]
    return {
        "Address": c[C_URI],
        "Expires": "permanent" if ex == 0 else ("expired" if ex <= now else int(ex - now)),
        "Q": q_float(c[C_Q]),
        "Call-ID": c[C_CALLID],
        "CSeq": c[C_CSEQ],
        "User-Agent": c[C_UA] or NOT_SET,
        "Received": c[C_RECEIVED] or NOT_SET,
        "Path": c[C_PATH] or NOT_SET,
        "State": state,
        "Flags": c[C_FLAGS],
        "CFlags": c[C_CFLAGS],
        "Socket": c[C_SOCK] or NOT_SET,
        "Methods": c[C_METHODS],
        "Ruid": c[C_RUID] or NOT_SET,
        "Instance": c[C_INSTANCE] or NOT_SET,
        "Reg-Id": c[C_REGID],
        "Server-Id": 0,
        "Tcpconn-Id": c[C_CONID],
        "Keepalive": 0,
        "Last-Keepalive": c[C_LASTMOD],
        "KA-Roundtrip": 0,
        "Last-Modified": c[C_LASTMOD],
    }


def aor_hash(aor):
    return zlib.crc32(aor.encode("utf-8", "surrogateescape"))


def _is_set(p):
    """ul_rpc_is_param_set: "", "." and "0" mean not given."""
    return bool(p) and p not in (".", "0")


class UlRpc:
    """The methods, bound to usrloc's state (tables made by mod_init before fork)."""

    def __init__(self, state):
        self.st = state

    def _domain(self, name):
        d = self.st.domains.get(name)
        if d is None:
            raise RpcFault(500, "Domain table not found")
        return d

    def _fix_aor(self, aor):
        """rpc_fix_aor: with use_domain the AOR needs its domain, else it is cut at '@'."""
        user, at, _host = aor.partition("@")
        if self.st.use_domain:
            if not at:
                raise RpcFault(500, "Domain missing in AOR")
            return aor
        return user

    def dump(self, call):
        brief = call.scan("*S")
        summary = bool(brief) and brief[0] == "brief"
        now = int(time.time())
        domains = Struct()
        for name, d in self.st.domains.items():
            aors, per_slot = Struct(), {}
            for slot, aor, contacts in (d.records() if d.in_memory else ()):
                per_slot[slot] = per_slot.get(slot, 0) + 1
                if summary:
                    aors.append(("AoR", aor))
                    continue
                cs = Struct(("Contact", contact_struct(c, now)) for c in contacts)
                aors.append(("Info", {"AoR": aor, "HashID": aor_hash(aor), "Contacts": cs}))
            stats = {"Records": sum(per_slot.values()), "Max-Slots": max(per_slot.values(), default=0)}
            domains.append(("Domain", {"Domain": name, "Size": d.size, "AoRs": aors, "Stats": stats}))
        call.add({"Domains": domains})

    def lookup(self, call):
        table, aor = call.scan("SS", fault=(500, F_PARAMS))
        d = self._domain(table)
        aor = self._fix_aor(aor)
        contacts = d.get(aor)
        if not contacts:
            raise RpcFault(500, "AOR not found in location table")
        now = int(time.time())
        state = "CS_NEW" if d.in_memory else "CS_SYNC"
        live = Struct(("Contact", contact_struct(c, now, state)) for c in contacts if valid(c, now))
        if not live:
            raise RpcFault(500, "AOR has no contacts")
        call.add({"AoR": aor, "Contacts": live})

    def rm(self, call):
        table, aor = call.scan("SS", fault=(500, F_PARAMS))
        d = self._domain(table)
        d.delete(self._fix_aor(aor))       # a missing AOR is no error (delete_urecord)

    def rm_contact(self, call):
        table, aor, uri = call.scan("SSS", fault=(500, "Not enough parameters (table, AOR and contact)"))
        d = self._domain(table)
        aor = self._fix_aor(aor)

        def drop(contacts):
            if not contacts:
                return None, 404
            i = find_contact(contacts, self.st.matching_mode, uri, RPC_CALLID, "dummypath")
            if i < 0:
                return None, 405
            return contacts[:i] + contacts[i + 1:], 0

        r = d.update(aor, drop)
        if r == 404:
            raise RpcFault(404, "AOR not found")
        if r == 405:
            raise RpcFault(404, "Contact not found")
        if r is FULL:
            raise RpcFault(500, "Internal error (can't delete contact)")

    def flush(self, call):
        """Nothing to write: db_mode 0 has no database, db_mode 3 keeps nothing in
        memory (synchronize_all_udomains)."""

    def add(self, call):
        p = call.scan("SSSdfSuuu*SS", fault=(500, "Not enough parameters or wrong format"))
        table, aor, uri, expires, q, path, flags, cflags, methods = p[:9]
        received = p[9] if len(p) > 9 and _is_set(p[9]) else ""
        sock = p[10] if len(p) > 10 and _is_set(p[10]) else ""
        d = self._domain(table)
        aor = self._fix_aor(aor)
        now = int(time.time())
        c = new_contact(uri, expires + now if expires else 0, _q_int(q), RPC_CALLID, RPC_CSEQ,
                        flags, cflags, path if _is_set(path) else "", received, RPC_UA, sock,
                        ruid=new_ruid(), methods=methods, now=now)
        st = self.st

        def put(contacts):
            i = find_contact(contacts, CONTACT_ONLY, uri)
            if i >= 0:
                del contacts[i]
            insert_sorted(contacts, c, st.desc_time_order)
            return contacts, 0

        if d.update(aor, put) is FULL:
            raise RpcFault(500, "Can't insert contact")

    def db_unsupported(self, call):
        """ul_rpc_db_users & co.: a raw SQL count; no driver of asyncd has raw queries."""
        if not self.st.db_mode:
            raise RpcFault(500, "Command is not supported in db_mode=0")
        raise RpcFault(500, "Database does not support raw queries")

    def exports(self):
        return [
            RpcExport("ul.dump", self.dump, "Dump user location tables"),
            RpcExport("ul.lookup", self.lookup, "Lookup one AOR in the usrloc location table"),
            RpcExport("ul.rm", self.rm, "Delete a address of record including its contacts"),
            RpcExport("ul.rm_contact", self.rm_contact, "Delete a contact from an AOR record"),
            RpcExport("ul.flush", self.flush, "Flush the usrloc memory cache to DB"),
            RpcExport("ul.add", self.add, "Add a new contact for an address of record"),
            RpcExport("ul.db_users", self.db_unsupported,
                      "Tell number of different unexpired users (AoRs) in database"),
            RpcExport("ul.db_contacts", self.db_unsupported, "Tell number of unexpired contacts in database"),
            RpcExport("ul.db_expired_contacts", self.db_unsupported,
                      "Tell number of expired contacts in database"),
        ]


def _q_int(q):
    """double2q: a q value as the stored int (-1: unspecified)."""
    if q < 0:
        return Q_UNSPECIFIED
    return min(1000, int(round(q * 1000)))
