"""Creating transactions (t_newtran) and matching the requests that arrive
for existing ones (retransmissions, ACKs to our finals).

Runs in: udp receivers (request_in, t_newtran), async task workers and
timer processes (t_newtran from resumed routes).

Kamailio: t_lookup.c (t_newtran, t_lookup_request): a retransmission of a
known transaction is absorbed (its last reply re-sent, RFC 3261 17.2.1 /
17.2.2) and never reaches the script; an ACK to our own final stops its
retransmissions (17.2.1). CANCELs are matched in tm/mod.py, which hands
them to tm/fwd.py.
"""
import msgpack

from asyncd.core import log
from asyncd.modules.tm.cell import F_ACKED, F_FINAL, F_INVITE, Cell, Handle
from asyncd.modules.tm.lookup import ack2xx_key, request_key
from asyncd.modules.tm.reply import local_reply, resend_last
from asyncd.modules.tm.state import MOD, S, arm_fr, arm_wait, flush, hard_deadline, insert_claimed, now
from asyncd.modules.tm.suspend import suspend_cell
from asyncd.sip.build import reply_addr
from shm.tm_table import TableFull

REPLY_EXTRA = 140      # status line, To-tag, Server, Content-Length, Via received/rport, cell fields
_COPIED = ("via", "from", "to", "call-id", "cseq", "record-route")


def reply_estimate(msg):
    """Bytes the final reply will add to the cell: the header lines a reply
    copies from its request, plus REPLY_EXTRA. t_newtran allocates that much
    room up front, so storing the reply (in another process, under the
    transaction lock) rarely has to move the record: an alloc and a free
    under the arena lock. An estimate that is too high would waste a size
    class for the whole wait time, hence only the copied lines are counted."""
    first = getattr(msg, "_first", None)
    if not first:
        return 0
    multi = msg._multi
    n = REPLY_EXTRA
    for k in _COPIED:
        lst = multi.get(k) if multi else None
        if lst is not None:
            n += sum(len(x) + 2 for x in lst)
        else:
            line = first.get(k)
            if line is not None:
                n += len(line) + 2
    return n


def new_cell(ctx):
    msg = ctx.msg
    c = Cell()
    c.method = msg.method
    if msg.method == "INVITE":
        c.flags |= F_INVITE
    c.req = bytes(msg.buf)
    c.src = tuple(msg.src)
    c.dst = tuple(msg.dst) if msg.dst else ("", 0)
    c.sock = msg.sock or 0
    c.reply_to = reply_addr(msg)
    c.fr_ms = S.fr_ms
    c.fr_inv_ms = S.fr_inv_ms
    c.created = now()
    life = S.max_inv_ms if c.flags & F_INVITE else S.max_noninv_ms
    c.eol = c.created + life / 1000.0
    c.msg_flags = ctx.flags
    c.new_uri = msg.new_uri
    c.dst_uri = msg.dst_uri
    pend = ctx.extra.get("tm") if ctx.extra else None
    if pend:
        for k, v in pend.items():
            setattr(c, k, v)
    return c


def t_newtran(ctx, suspend=False):
    """1: created (ctx.t set); 0: a retransmission, absorbed (last reply re-sent,
    ctx.t points at the existing transaction); <0 error (docs/kamailio-tm.md §5).

    suspend=True (the async module, when the request has no transaction yet):
    the cell is created already suspended, as t_newtran then t_suspend would
    leave it, in one table write: no second lock, decode, encode and store.
    Another process can only see it suspended, which is what it would see a
    moment later anyway (a CANCEL then gets its 487 and the resume is skipped)."""
    if ctx.t is not None:
        return 1
    msg = ctx.msg
    if msg.method == "ACK":
        return -1                         # Kamailio: no transaction for ACK
    try:
        key = getattr(msg, "_tmkey", None) or request_key(msg)
        cell = new_cell(ctx)
        if suspend:
            bno, fr, saved = suspend_cell(ctx, cell)
        try:
            # room for the reply only where it is stored in place: a non-INVITE's
            # final reply moves it to its compact wait-state form (cell.py COMPACT_WHEN)
            created, index, label = insert_claimed(
                key, cell.encode(), hard_deadline(cell),
                reply_estimate(msg) if cell.flags & F_INVITE else 0)
        except TableFull as e:
            log.err(MOD, str(e))
            return -2
    except Exception as e:              # malformed headers the parser let through
        log.err(MOD, f"cannot create transaction: {e!r}")
        return -1
    h = ctx.t = Handle(S.table, index, label)
    h.new = created
    if created:               # claimed: ours until the route ends (request_done) or hands it over
        cnt, st = S.cnt, S.st
        cnt[st.transactions] += 1
        cnt[st.t_created] += 1
    if not created:
        resend_last(ctx.proc, h)
        return 0
    if suspend:
        h.saved = saved
        arm_fr(h, cell, bno, fr)       # queues the fr timer; flush() hands it over
        flush(h)
    if suspend and cell.flags & F_INVITE and S.auto_inv_100:
        local_reply(ctx, 100, S.auto_inv_100_reason)     # t_suspend's (tm/reply.py auto_100)
    h.done = suspend            # the automatic 100 answers nothing (t_unref still checks)
    return 1


def match_request(ctx):
    """request_in for anything but CANCEL: absorb retransmissions and ACKs to
    our finals. True when the request was absorbed (the script does not run)."""
    msg = ctx.msg
    key = msg._tmkey = request_key(msg)
    found = S.table.find(key)
    msg._tm_miss = not found       # t_check_trans in the script need not look again
    if found:
        h = Handle(S.table, *found)
        if msg.method == "ACK":
            return _ack_in(ctx, h)
        resend_last(ctx.proc, h)
        return True
    if msg.method == "ACK" and msg.to_tag:
        found = S.table.find(ack2xx_key(msg.callid, msg.cseq_num or 0, msg.to_tag))
        if found:
            return _ack_in(ctx, Handle(S.table, *found), alias=True)
    return False


def _ack_in(ctx, h, alias=False):
    """ACK to our final: stop retransmitting it. An ACK to a relayed 2xx is
    end-to-end and goes to the script (not found here: new branch)."""
    if alias:
        raw = S.table.get(h.index, h.label)
        if raw is None:
            return False
        index, label = msgpack.unpackb(raw)
        h = Handle(S.table, index, label)
    cell = h.acquire()
    if cell is None:
        return True
    try:
        if cell.flags & F_FINAL and not cell.flags & F_ACKED:
            cell.flags |= F_ACKED
            h.dirty = True
            arm_wait(h, cell)
    finally:
        h.release(flush)
    return True
