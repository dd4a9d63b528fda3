"""Hop-by-hop requests tm sends on a branch of its own: CANCEL to a branch
that is still ringing, ACK to a non-2xx final.

Runs in: udp receivers (replies, CANCELs), the tm `timer` process (fr
timeouts), async workers (resumed routes): wherever a held cell decides it.

Both are built from the bytes sent on the branch (RFC 3261 9.1 for CANCEL,
17.1.1.3 for the ACK), as Kamailio's t_msgbuilder.c build_local() does, and
queued on the handle: they leave when its lock is released. Kamailio:
t_cancel.c (cancel_branch, which_cancel), t_reply.c (the ACK of a negative
final).
"""
from asyncd.core import log
from asyncd.modules.tm.cell import (B_BLIND, B_CANCEL, B_CANCEL_SENT, B_PROV, BR_DST, BR_FLAGS,
                                    BR_REQ, BR_SOCK, BR_STATUS, BR_VIA, F_INVITE)
from asyncd.modules.tm.state import MOD
from asyncd.sip import parse_msg
from asyncd.sip.build import build_ack, build_cancel


def build_hbh(cell, br, method, to_value=None):
    """CANCEL or ACK for a branch, from the bytes sent on it (RFC 3261 9.1, 17.1.1.3)."""
    req = br[BR_REQ]
    if not req:
        return None
    try:
        m = parse_msg(req, ("127.0.0.1", 0), ("127.0.0.1", 0), br[BR_SOCK], "udp")
        return build_cancel(m) if method == "CANCEL" else build_ack(m, to_value)
    except Exception as e:
        log.err(MOD, f"cannot build {method} for branch {br[BR_VIA]}: {e!r}")
        return None


def send_cancel(h, cell, br):
    if br[BR_FLAGS] & (B_CANCEL_SENT | B_BLIND) or br[BR_STATUS] >= 200:
        return
    data = build_hbh(cell, br, "CANCEL")
    br[BR_FLAGS] |= B_CANCEL | B_CANCEL_SENT
    h.dirty = True
    if data:
        h.out.append((data, tuple(br[BR_DST]), br[BR_SOCK]))


def cancel_pending(h, cell):
    """A final went upstream: CANCEL the branches still ringing, mark the
    others to be cancelled once they ring (RFC 3261 16.7 step 10, 9.1)."""
    if not cell.flags & F_INVITE:
        return
    for b in cell.branches:
        if b[BR_STATUS] < 200 and not b[BR_FLAGS] & B_BLIND:
            if b[BR_FLAGS] & B_PROV:
                send_cancel(h, cell, b)
            else:
                b[BR_FLAGS] |= B_CANCEL


def send_ack(h, cell, br, msg):
    """ACK for a non-2xx final, hop by hop (RFC 3261 17.1.1.3)."""
    data = build_hbh(cell, br, "ACK", msg.hdr("To"))
    if data:
        h.out.append((data, tuple(br[BR_DST]), br[BR_SOCK]))
