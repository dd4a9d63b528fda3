"""registrar's lookup(), lookup_branches(), registered() and unregister().

Runs in: udp and tcp receivers, async task workers (wherever request_route,
failure_route or branch_route run).

Kamailio: src/modules/registrar/lookup.c (lookup_helper, lookup_branches,
registered4, unregister), common.c (extract_aor). The rules in our words:
docs/kamailio-registrar.md "lookup".

The destination set: the R-URI takes the first usable contact (the record
keeps contacts ordered by q, highest first); with append_branches the others
become branches, as append_branch() makes them, in `msg.dset` (a list of
Branch). tm's t_relay sends one branch per entry (parallel forking).
"""
import time

from asyncd.modules.registrar_save import METHOD_BITS, RegError, domain_aor, extract_aor
from asyncd.sip.uri import parse_cur_uri
from shm.usrloc import (C_CFLAGS, C_INSTANCE, C_METHODS, C_PATH, C_Q, C_RECEIVED, C_RUID,
                        C_SOCK, C_URI, FULL, valid)


class Branch:
    """One entry of the destination set (Kamailio's struct branch, dset.c)."""
    __slots__ = ("uri", "dst_uri", "path", "q", "flags", "sock", "ruid", "instance")

    def __init__(self, uri, dst_uri=None, path="", q=-1, flags=0, sock="", ruid="", instance=""):
        self.uri, self.dst_uri, self.path, self.q = uri, dst_uri, path, q
        self.flags, self.sock, self.ruid, self.instance = flags, sock, ruid, instance

    def __repr__(self):
        return f"Branch({self.uri!r}, dst={self.dst_uri!r})"


def _aor_of(ctx, cfg, ul, uri):
    if uri is None:
        u = parse_cur_uri(ctx.msg)
        if u is None:
            raise RegError((400, "", "bad R-URI"))
        uri = ctx.msg.new_uri or ctx.msg.ruri
    return extract_aor(uri, ul.use_domain, cfg.case_sensitive)


def _allowed(cfg, ctx, c):
    """method_filtering: the contact's Allow'ed methods must include the request's."""
    if not cfg.method_filtering or c[C_METHODS] == -1:
        return True
    bit = METHOD_BITS.get(ctx.msg.method, 0)
    return not bit or bool(c[C_METHODS] & bit)


def _branch_of(cfg, c):
    """The branch a contact gives: URI, destination (first Path hop, else the
    NAT'ed source `received`), path, q, branch flags, socket."""
    dst = None
    path = c[C_PATH] if cfg.use_path else ""
    if path:
        dst = path.split(",")[0].strip().strip("<>").split(">")[0]
    elif c[C_RECEIVED]:
        dst = c[C_RECEIVED]
    return Branch(c[C_URI], dst, path, c[C_Q], c[C_CFLAGS], c[C_SOCK], c[C_RUID], c[C_INSTANCE])


def _set_ruri(ctx, br):
    msg = ctx.msg
    msg.new_uri = br.uri
    msg.dst_uri = br.dst_uri
    if br.path:
        # the R-URI branch's Path as Route; tm gives the dset branches their own
        msg.path_route = f"Route: {br.path}\r\n"
        msg.hdr_adds.append(msg.path_route)
    if ctx.extra is None:
        ctx.extra = {}
    ctx.extra["bflags"] = br.flags


def _contact_branches(ctx, cfg, ul, d, uri):
    """(rc, branches) for the AOR of `uri` (None: the R-URI): rc as lookup's."""
    try:
        aor = _aor_of(ctx, cfg, ul, uri)
    except RegError:
        return -3, []
    contacts = d.get(aor)
    if not contacts:
        return -1, []
    now = int(time.time())
    live = [c for c in contacts if valid(c, now) or cfg.use_expired_contacts]
    if not live:
        return -1, []
    usable = [c for c in live if _allowed(cfg, ctx, c)]
    if not usable:
        return -2, []
    return 1, [_branch_of(cfg, c) for c in usable]


def lookup(ctx, cfg, ul, table, uri=None, to_dset=False):
    """lookup("location"[, uri]) as lookup.c lookup_helper: 1 found, -1 no such
    AOR or no valid contact, -2 valid contacts but none allows the request's
    method (method_filtering), -3 the AOR cannot be parsed.
    lookup_to_dset: every contact to the destination set, the R-URI untouched."""
    d = ul.domain(table)
    if d is None:
        return -1
    rc, branches = _contact_branches(ctx, cfg, ul, d, uri)
    if rc < 0:
        return rc
    dset = ctx.msg.dset or []
    if to_dset:
        ctx.msg.dset = dset + branches
        return 1
    _set_ruri(ctx, branches[0])
    if cfg.append_branches:
        ctx.msg.dset = dset + branches[1:]
    return 1


def lookup_branches(ctx, cfg, ul, table):
    """lookup_branches("location"): lookup() for the R-URI, then each branch of
    the destination set replaced by its AOR's contacts (kept when none)."""
    d = ul.domain(table)
    if d is None:
        return -1
    msg = ctx.msg
    old = list(msg.dset or [])
    msg.dset = []
    found = lookup(ctx, cfg, ul, table) > 0
    for br in old:
        rc, branches = _contact_branches(ctx, cfg, ul, d, br.uri)
        if rc > 0:
            found = True
            msg.dset.extend(branches)
        else:
            msg.dset.append(br)
    return 1 if found else -1


def registered(ctx, cfg, ul, table, uri=None, match_option=0, match_action=0):
    """registered("location"[, uri]): 1 when the AOR has a valid contact."""
    d = ul.domain(table)
    if d is None:
        return -1
    try:
        aor = _aor_of(ctx, cfg, ul, uri)
    except RegError:
        return -1
    now = int(time.time())
    return 1 if any(valid(c, now) for c in d.get(aor)) else -1


def unregister(ctx, cfg, ul, table, uri, ruid=None):
    """unregister("location", uri[, ruid]): drop the AOR's contacts (or the one
    with that ruid). 1 done, -1 nothing to remove or error."""
    found = domain_aor(cfg, ul, table, uri, "unregister")
    if found is None:
        return -1
    d, aor = found
    if not ruid:
        return 1 if d.delete(aor) else -1

    def drop(contacts):
        keep = [c for c in contacts if c[C_RUID] != ruid]
        return (keep if len(keep) != len(contacts) else None), len(contacts) - len(keep)

    r = d.update(aor, drop)
    return 1 if r is not FULL and r else -1
