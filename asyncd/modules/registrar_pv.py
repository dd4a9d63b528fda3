"""registrar's reg_fetch_contacts() / reg_free_contacts() and $ulc(profile=>attr).

Runs in: udp and tcp receivers, async task workers (wherever a route runs).

Kamailio: src/modules/registrar/regpv.c. A profile is a private copy of one
AOR's contacts, taken by reg_fetch_contacts and read with
`$(ulc(profile=>attr)[index])`; it belongs to the process (Kamailio keeps
profiles in pkg memory) and stays until the next fetch or reg_free_contacts.
All of the record's contacts are copied, expired ones too; `expires` and
`modified` are absolute Unix times, as Kamailio's.
"""
import zlib

from asyncd.modules.registrar_save import domain_aor
from shm.usrloc import (C_CALLID, C_CFLAGS, C_CONID, C_CSEQ, C_EXPIRES, C_FLAGS, C_INSTANCE,
                        C_LASTMOD, C_METHODS, C_PATH, C_Q, C_RECEIVED, C_REGID, C_RUID, C_SOCK,
                        C_UA, C_URI)

_FIELD = {"addr": C_URI, "path": C_PATH, "received": C_RECEIVED, "expires": C_EXPIRES,
          "callid": C_CALLID, "q": C_Q, "cseq": C_CSEQ, "flags": C_FLAGS, "cflags": C_CFLAGS,
          "user_agent": C_UA, "socket": C_SOCK, "modified": C_LASTMOD, "methods": C_METHODS,
          "ruid": C_RUID, "regid": C_REGID, "instance": C_INSTANCE, "conid": C_CONID}
_OF_RECORD = ("aor", "domain", "aorhash", "count")
ATTRS = frozenset(_FIELD) | frozenset(_OF_RECORD) | {"server_id"}

_profiles = {}      # profile name -> (aor, table, [contact tuples]); per process


def fetch_contacts(cfg, ul, table, uri, profile):
    """reg_fetch_contacts(table, uri, profile): 1 when the AOR has a record."""
    _profiles.pop(profile, None)
    found = domain_aor(cfg, ul, table, uri, "reg_fetch_contacts")
    if found is None:
        return -1
    d, aor = found
    contacts = d.get(aor)
    if not contacts:
        return -1
    _profiles[profile] = (aor, table, contacts)
    return 1


def free_contacts(profile):
    _profiles.pop(profile, None)
    return 1


def parse_ulc(inner):
    """`profile=>attr` -> (profile, attr); ValueError for anything else."""
    profile, sep, attr = (inner or "").partition("=>")
    profile, attr = profile.strip(), attr.strip()
    if not sep or not profile or attr not in ATTRS:
        raise ValueError(f"invalid $ulc name {inner!r} (profile=>attr, attr one of "
                         f"{', '.join(sorted(ATTRS))})")
    return profile, attr


def get_ulc(ctx, spec, idx):
    profile, attr = spec
    p = _profiles.get(profile)
    if p is None:
        return None
    aor, table, contacts = p
    if attr == "aor":
        return aor
    if attr == "domain":
        return table
    if attr == "aorhash":
        return zlib.crc32(aor.encode("utf-8", "surrogateescape"))
    if attr == "count":
        return len(contacts)
    i = idx if type(idx) is int and idx > 0 else 0
    if i >= len(contacts):
        return None
    if attr == "server_id":
        return 0
    c = contacts[i]
    v = c[_FIELD[attr]]
    if attr in ("path", "received", "socket", "instance") and not v:
        return None if attr in ("socket", "instance") else ""
    if attr == "conid" and v < 0:
        return None
    return v
