"""A transaction cell: what tm keeps per transaction, and the handle a process
holds while it works on one.

Runs in: udp receivers, the tm `timer` process, async task workers, async
module timers (anywhere a transaction is created, matched or resumed).

Kamailio: src/modules/tm/h_table.h (struct cell, the T_* flags). The cell
lives in shm/tm_table.py as one msgpack list (encode/decode below); a
process loads it under the slot lock, changes it and writes it back. Field
order is the wire layout, so only ever append fields. A completed non-INVITE
is written back in a compact form of the same layout (compact_encode:
docs/kamailio-tm.md §8).
"""
import msgpack

from asyncd.core import log

# transaction flags (ours; Kamailio's T_* names in comments, h_table.h)
F_INVITE = 1 << 0
F_CANCELED = 1 << 1        # T_CANCELED
F_FINAL = 1 << 2           # a final reply went upstream (uas.status >= 200)
F_LOCAL = 1 << 3           # that final was generated here: retransmit until ACK (INVITE)
F_ACKED = 1 << 4
F_WAIT = 1 << 5            # in wait state: only retransmission absorbing left
F_NOISY = 1 << 6           # T_NOISY_CTIMER: a timeout must produce a reply
F_CONTINUE = 1 << 12       # T_ASYNC_CONTINUE
F_SUSPENDED = 1 << 15      # T_ASYNC_SUSPENDED
F_IN_FAILURE = 1 << 16     # a failure route runs now: its relays do not end it
F_COMPACT = 1 << 17        # the stored record is the wait-state form (compact_encode below)

# A completed non-INVITE transaction in wait state is stored in a compact form
# (docs/kamailio-tm.md §8): when these flags are exactly F_FINAL | F_WAIT.
# Kamailio keeps the whole cell until its wait timer frees it
# (src/modules/tm/t_funcs.c put_on_wait, src/modules/tm/h_table.c
# free_cell_helper); only absorbing retransmissions and late replies is left, and
# a table that holds 5 s of the top rate at -m 64 needs the room.
COMPACT_MASK = F_INVITE | F_FINAL | F_WAIT | F_SUSPENDED | F_CONTINUE | F_IN_FAILURE
COMPACT_WHEN = F_FINAL | F_WAIT

# branch flags
B_BLIND = 1                # TM_UAC_FLAG_BLIND: a suspension, no request sent
B_PROV = 2                 # a provisional reply was received
B_CANCEL = 4               # CANCEL sent (or due once a provisional arrives)
B_CANCEL_SENT = 8
B_DISCARD = 16             # left out of best-reply selection (failure_reply_mode)
B_TIMEOUT = 32             # ended by its fr timer, no final reply (Kamailio: F_RB_TIMEOUT)
B_REPLIED = 64             # a reply was processed on it (Kamailio: F_RB_REPLIED, set after the reply)

# branch list fields
BR_RURI, BR_DST, BR_SOCK, BR_VIA, BR_REQ, BR_STATUS, BR_REPLY, BR_FLAGS, BR_FR = range(9)


class Cell:
    __slots__ = ("flags", "method", "req", "src", "sock", "reply_to", "uas_status",
                 "uas_reply", "to_tag", "fr_ms", "fr_inv_ms", "on_failure", "on_reply",
                 "on_branch", "branches", "avps", "xavps", "created", "msg_flags",
                 "new_uri", "dst_uri", "aliases", "susp_route_type", "lumps", "eol",
                 "dst", "rpl_retr_ms", "key", "tm_error")

    def __init__(self):
        self.flags = 0
        self.method = ""
        self.req = b""
        self.src = ("", 0)
        self.dst = ("", 0)
        self.sock = 0
        self.reply_to = ("", 0)
        self.uas_status = 0
        self.uas_reply = b""
        self.to_tag = ""
        self.fr_ms = 0
        self.fr_inv_ms = 0
        self.on_failure = None
        self.on_reply = None
        self.on_branch = None
        self.branches = []
        self.avps = None
        self.xavps = None
        self.created = 0.0
        self.msg_flags = 0
        self.new_uri = None
        self.dst_uri = None
        self.aliases = []
        self.susp_route_type = 0
        self.lumps = None
        self.eol = 0.0
        self.rpl_retr_ms = 0
        self.key = b""         # unused (kept for the layout): the key heads the table record
        self.tm_error = None

    # encode/decode are generated below: one tuple pack/unpack, no setattr loop
    def encode(self):
        raise NotImplementedError

    @staticmethod
    def decode(raw):
        raise NotImplementedError

    # ---- derived state -----------------------------------------------------
    @property
    def is_invite(self):
        return self.flags & F_INVITE

    def pending_branches(self, with_blind=True):
        """Branches without a final status (Kamailio: t->uac[i].last_received < 200)."""
        return [i for i, b in enumerate(self.branches)
                if b[BR_STATUS] < 200 and (with_blind or not b[BR_FLAGS] & B_BLIND)]

    def has_pending(self, with_blind=True):
        for b in self.branches:
            if b[BR_STATUS] < 200 and (with_blind or not b[BR_FLAGS] & B_BLIND):
                return True
        return False


def _gen_codec():
    fields = ", ".join("c.%s" % f for f in Cell.__slots__)
    src = ("def encode(c, _p=msgpack.packb):\n    return _p([%s])\n"
           "def decode(raw, _u=msgpack.unpackb, _new=Cell.__new__, _C=Cell):\n"
           "    c = _new(_C)\n    %s, = _u(raw)\n    return c\n") % (fields, fields)
    ns = {"msgpack": msgpack, "Cell": Cell, "F_COMPACT": F_COMPACT, "_stubs": _stubs}
    exec(compile(src, "<tm_cell codec>", "exec"), ns)
    Cell.encode = ns["encode"]
    Cell.decode = staticmethod(ns["decode"])
    kept = ", ".join(_COMPACT.get(f, "c.%s" % f) for f in Cell.__slots__)
    src = ("def compact_encode(c, _p=msgpack.packb, _F=F_COMPACT, _stubs=_stubs):\n"
           "    return _p([%s])\n") % kept
    exec(compile(src, "<tm_cell compact codec>", "exec"), ns)
    return ns["compact_encode"]


# the compact form's fields (the others are kept): what a request
# retransmission (resend_last: the reply, its address and socket), a late
# reply (reply_in: the flags, the branches' status and flags, on_reply), the
# wait timer (aliases), t_continue ("not found") and the $T_*/t_* readers
# (uas_status, the t_on_* names) read; the To-tag is in the reply. Same
# field list, same codec: every reader decodes it as a Cell, one with no
# request, AVPs or lumps.
_COMPACT = {
    "flags": "c.flags | _F", "req": "b''", "src": "('', 0)", "dst": "('', 0)",
    "fr_ms": "0", "fr_inv_ms": "0", "branches": "_stubs(c.branches)", "to_tag": "''",
    "avps": "None", "xavps": "None", "created": "0", "new_uri": "None", "dst_uri": "None",
    "susp_route_type": "0", "lumps": "None", "eol": "0", "key": "b''", "tm_error": "None",
}


def _stubs(branches):
    """The branches in the compact form: none when all are final (a late reply
    to one finds no branch and is absorbed, as it is on a final branch);
    else each by its socket, status and flags only (a late reply on a
    pending one still runs its onreply_route)."""
    for b in branches:
        if b[BR_STATUS] < 200:
            return [("", ("", 0), b[BR_SOCK], "", b"", b[BR_STATUS], b"", b[BR_FLAGS], 0)
                    for b in branches]
    return []


compact_encode = _gen_codec()


class Handle:
    """ctx.t: which transaction, plus the cell while this process holds its lock.

    Settings a request route makes before anything is sent (t_on_failure,
    t_set_fr...) are written through at once: another process may act on the
    transaction at any moment (a CANCEL, a timer), so no stale copy is ever
    written back.
    """
    __slots__ = ("index", "label", "cell", "depth", "out", "timers", "table", "dirty",
                 "reply_code", "reply_msg", "branch", "done", "saved", "new")

    def __init__(self, table, index, label):
        self.table = table
        self.index = index
        self.label = label
        self.cell = None
        self.depth = 0
        self.out = []          # (bytes, addr, sock) to send at the outermost release
        self.timers = []       # timer messages to push once the lock is dropped
        self.dirty = False
        self.reply_code = 0    # $T_reply_code in failure / onreply routes
        self.reply_msg = None  # $T_rpl in failure / onreply routes
        self.branch = -1
        self.done = False      # relayed, replied or suspended by this process's route
        self.saved = None      # (avps, xavps) bytes last written to the cell by this route
        self.new = False       # created by this request route (t_newtran), not a retransmission's

    def acquire(self):
        """Lock and load the cell (re-entrant within this handle). None when
        the transaction is gone."""
        if self.depth:
            self.depth += 1
            return self.cell
        if self.table.held_here(self.index):
            # another transaction of the same lock stripe is held by this very
            # process (e.g. t_continue from a failure route): refuse, never deadlock
            log.err("tm", f"transaction {self.index}:{self.label}: its lock stripe is held by this process")
            return None
        self.table.lock(self.index)
        raw = self.table.get(self.index, self.label)
        if raw is None:
            self.table.unlock(self.index)
            return None
        self.cell = Cell.decode(raw)
        self.dirty = False
        self.depth = 1
        return self.cell

    def release(self, send=None):
        """Outermost release: write back if changed, unlock, flush the outbox."""
        self.depth -= 1
        if self.depth:
            return
        try:
            c = self.cell
            if self.dirty and c is not None:
                if c.flags & COMPACT_MASK == COMPACT_WHEN:
                    # wait state: stored compact, in the smallest size class that
                    # fits, in the same write that stores the final reply
                    self.table.put(self.index, self.label, compact_encode(c), done=True, fit=True,
                                   plain=not c.aliases)
                else:
                    self.table.put(self.index, self.label, c.encode(), done=bool(c.flags & F_FINAL))
            if self.out and send is not None:
                # replies go out before the lock is dropped, as Kamailio relays
                # under REPLY_LOCK: two receivers relaying a back-to-back
                # 180/200 can then never swap them on the wire
                send(self, True)
        finally:
            self.cell = None
            self.table.unlock(self.index)
        if send is not None:
            send(self)
