"""tm state shared by its files, transaction matching and creation.

Runs in: udp receivers (request_in, t_newtran), the tm `timer` process and
async workers (rebuilding a request from its cell).

Matching (RFC 3261 17.2.3): a request whose top Via branch carries the magic
cookie is keyed by branch + sent-by + method, with ACK keyed as INVITE (an ACK
to a non-2xx final shares the INVITE's branch). Otherwise the RFC 2543 rules
(17.2.3 last paragraph / RFC 2543 17): Call-ID, CSeq number, From tag, top
Via and the method class. Replies are matched by our own Via branch, which
names the cell directly: `z9hG4bKtm<tindex hex>.<tlabel hex>.<branch>.<check>`,
so any process finds it with no search (tm_reply.py).
"""
import os
import time

from asyncd.core import log
from asyncd.modules.tm_cell import Cell, Handle, F_INVITE, F_FINAL, F_ACKED

MOD = "tm"
BRANCH_PREFIX = "z9hG4bKtm"
MAGIC = "z9hG4bK"


class _State:
    """Filled by tm.mod_init in main; every child inherits it by fork."""
    table = None
    script = None
    secret = 0
    fr_ms = 30000
    fr_inv_ms = 120000
    wt_ms = 5000
    t1 = 500
    t2 = 4000
    max_inv_ms = 180000
    max_noninv_ms = 32000
    auto_inv_100 = 1
    auto_inv_100_reason = "trying -- your call is important to us"
    failure_reply_mode = 3
    timer_ep = None
    # per process
    push = None
    push_pid = 0
    addrs = {}             # sock index -> (ip, port) we send from / put in Via
    stats = None


S = _State()


def _b(s):
    return s.encode("utf-8", "surrogateescape") if isinstance(s, str) else (s or b"")


def request_key(msg, method=None):
    """The matching key of a request (ACK and CANCEL callers pass method)."""
    via = msg.via1
    m = method or msg.method
    if m == "ACK":
        m = "INVITE"
    br = via.branch if via is not None else None
    if br and br.startswith(MAGIC):
        port = via.port or 5060
        return b"3|%s|%s:%d|%s" % (_b(br), _b(via.host.lower()), port, _b(m))
    return b"2|%s|%d|%s|%s|%s" % (_b(msg.callid), msg.cseq_num or 0, _b(msg.from_tag),
                                  _b(via.raw if via is not None else ""), _b(m))


def ack2xx_key(callid, cseq_num, to_tag):
    """Alias of an INVITE that got a local 2xx: its ACK is a new transaction
    (RFC 3261 17.1.1.3) and carries only the dialog to find it by."""
    return b"A|%s|%d|%s" % (_b(callid), cseq_num, _b(to_tag))


# ---- our Via branch ---------------------------------------------------------
def _check(index, label):
    return (hash((S.secret, index, label)) & 0xFFFF)


def make_branch(index, label, bno):
    return "%s%x.%x.%d.%x" % (BRANCH_PREFIX, index, label, bno, _check(index, label))


def parse_branch(branch):
    """(index, label, branch_no) from our Via branch, or None when not ours."""
    if not branch or not branch.startswith(BRANCH_PREFIX):
        return None
    try:
        i, l, b, c = branch[len(BRANCH_PREFIX):].split(".")
        index, label, bno = int(i, 16), int(l, 16), int(b)
        if int(c, 16) != _check(index, label):
            return None
    except ValueError:
        return None
    return index, label, bno


def sock_addr(proc, sock):
    a = S.addrs.get(sock)
    if a is None:
        try:
            a = proc.sockets[sock].getsockname()[:2]
        except (IndexError, OSError, AttributeError):
            a = ("127.0.0.1", 5060)
        S.addrs[sock] = a
    return a


from asyncd.sip.build import reply_addr  # noqa: E402  (RFC 3261 18.2.2 + RFC 3581)


def timer_endpoint():
    if S.timer_ep is None:
        from asyncd import ipc
        rundir = getattr(S.script, "rundir", None)
        S.timer_ep = (ipc.endpoint(rundir, "tm_timer") if rundir
                      else ipc.endpoint("/tmp", "asyncd-tm-%d" % os.getppid()))
    return S.timer_ep


REPLY_EXTRA = 140      # a reply's status line, To-tag, Server, Content-Length, Via received/rport, cell fields
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


def now():
    return time.monotonic()


# ---- creation ---------------------------------------------------------------
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


def hard_deadline(cell):
    """The sweep frees anything past this, whatever was lost on the way."""
    return cell.eol + (S.wt_ms + 64 * S.t1) / 1000.0 + 5.0


def t_newtran(ctx, suspend=False):
    """1: created (ctx.t set); 0: a retransmission, absorbed (last reply re-sent,
    ctx.t points at the existing transaction); <0 error (B §6.5, t_lookup.c).

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
        cell.key = key
        if suspend:
            from asyncd.modules.tm_suspend import suspend_cell
            bno, fr, saved = suspend_cell(ctx, cell)
        from shm.tm_table import TableFull
        try:
            created, index, label = S.table.insert(key, cell.encode(), hard_deadline(cell),
                                                   reply_estimate(msg))
        except TableFull as e:
            log.err(MOD, f"t_newtran(): {e}")
            return -2
    except Exception as e:              # malformed headers the parser let through
        log.err(MOD, f"t_newtran(): cannot create transaction: {e!r}")
        return -1
    h = ctx.t = Handle(S.table, index, label)
    h.new = created
    if not created:
        from asyncd.modules import tm_reply
        tm_reply.resend_last(ctx.proc, h)
        return 0
    if suspend:
        from asyncd.modules import tm_timer
        h.saved = saved
        tm_timer.arm_fr(h, cell, bno, fr)       # queues the fr timer; flush() hands it over
        flush(h)
    if cell.flags & F_INVITE and S.auto_inv_100:
        from asyncd.modules import tm_reply
        tm_reply.local_reply(ctx, 100, S.auto_inv_100_reason)
    h.done = suspend            # the automatic 100 answers nothing (t_unref still checks)
    return 1


def lookup_request(ctx):
    """Handle of the transaction this request belongs to, or None."""
    try:
        msg = ctx.msg
        found = S.table.find(getattr(msg, "_tmkey", None) or request_key(msg))
    except Exception:
        return None
    return Handle(S.table, *found) if found else None


def request_in(ctx):
    """Hook: absorb retransmissions, ACKs to our finals and matched CANCELs."""
    msg = ctx.msg
    m = msg.method
    try:
        if m == "CANCEL":
            found = S.table.find(request_key(msg, "INVITE"))
            if not found:
                return False
            from asyncd.modules import tm_fwd
            tm_fwd.e2e_cancel(ctx, Handle(S.table, *found))
            return True
        key = msg._tmkey = request_key(msg)
        found = S.table.find(key)
        if found:
            h = Handle(S.table, *found)
            if m == "ACK":
                return _ack_in(ctx, h)
            from asyncd.modules import tm_reply
            tm_reply.resend_last(ctx.proc, h)
            return True
        if m == "ACK" and msg.to_tag:
            found = S.table.find(ack2xx_key(msg.callid, msg.cseq_num or 0, msg.to_tag))
            if found:
                return _ack_in(ctx, Handle(S.table, *found), alias=True)
    except Exception as e:
        log.err(MOD, f"request matching failed: {e!r}")
    return False


def _ack_in(ctx, h, alias=False):
    """ACK to our final: stop retransmitting it. An ACK to a relayed 2xx is
    end-to-end and goes to the script (not found here: new branch)."""
    if alias:
        raw = S.table.get(h.index, h.label)
        if raw is None:
            return False
        import msgpack
        index, label = msgpack.unpackb(raw)
        h = Handle(S.table, index, label)
    cell = h.acquire()
    if cell is None:
        return True
    try:
        if cell.flags & F_FINAL and not cell.flags & F_ACKED:
            cell.flags |= F_ACKED
            h.dirty = True
            from asyncd.modules import tm_timer
            tm_timer.arm_wait(h, cell)
        elif not cell.flags & F_FINAL and not alias:
            pass                            # ACK before any final: nothing to do
    finally:
        h.release(flush)
    return True


def flush(h, locked=False):
    """Send what a locked section queued (called by Handle.release with the
    lock still held), then, once it is dropped, arm its timers: the timer
    feed may wait for the timer process, which takes transaction locks."""
    if h.out:
        out, h.out = h.out, []
        proc = current_proc()
        if proc is not None:
            for data, addr, sock in out:
                proc.send(data, addr, sock)
    if locked:
        return
    if h.timers:
        from asyncd.modules import tm_timer
        tm, h.timers = h.timers, []
        tm_timer.push_many(tm)


_proc = [None]


def set_proc(proc):
    _proc[0] = proc


def current_proc():
    return _proc[0]


def rebuild_request(cell, proc):
    """A private message from the stored request (Kamailio fake_req): R-URI and
    $du as at creation, message flags and saved lumps restored."""
    from asyncd.sip import parse_msg
    msg = parse_msg(cell.req, tuple(cell.src), tuple(cell.dst), cell.sock, "udp")
    msg.new_uri = cell.new_uri
    msg.dst_uri = cell.dst_uri
    msg.flags = cell.msg_flags
    if cell.lumps:
        adds, removes, rpl = cell.lumps
        msg.hdr_adds = list(adds)
        msg.hdr_removes = set(removes)
        msg.reply_lumps = list(rpl)
    return msg


def state_of(h):
    """Flags of a transaction without holding its lock (reads are atomic)."""
    raw = S.table.get(h.index, h.label)
    return None if raw is None else Cell.decode(raw)
