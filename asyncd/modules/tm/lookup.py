"""Transaction matching: the keys requests are found by, the Via branch our
requests carry, and rebuilding a request from its cell.

Runs in: udp receivers (matching), the tm `timer` process and async workers
(rebuilding a request from its cell), any process (reading a cell).

Matching (RFC 3261 17.2.3): a request whose top Via branch carries the magic
cookie is keyed by branch + sent-by + method, with ACK keyed as INVITE (an ACK
to a non-2xx final shares the INVITE's branch). Otherwise the RFC 2543 rules
(17.2.3 last paragraph / RFC 2543 17): Call-ID, CSeq number, From tag, top
Via and the method class. Replies are matched by our own Via branch, which
names the cell directly: `z9hG4bKtm<tindex hex>.<tlabel hex>.<branch>.<check>`,
so any process finds it with no search (tm/reply.py). Kamailio: t_lookup.c
(t_lookup_request, matching_3261), t_funcs.h (the branch).
"""
from asyncd.modules.tm.cell import F_COMPACT, Handle
from asyncd.modules.tm.state import S, sock_proto
from asyncd.sip import parse_msg

BRANCH_PREFIX = "z9hG4bKtm"
MAGIC = "z9hG4bK"


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


# ---- finding ------------------------------------------------------------------
def lookup_request(ctx):
    """Handle of the transaction this request belongs to, or None."""
    try:
        msg = ctx.msg
        found = S.table.find(getattr(msg, "_tmkey", None) or request_key(msg))
    except Exception:
        return None
    return Handle(S.table, *found) if found else None


def rebuild_request(cell, proc):
    """A private message from the stored request (Kamailio fake_req): R-URI and
    $du as at creation, message flags and saved lumps restored, and the
    transport it came on ($proto), as fake_req copies msg->rcv
    (src/modules/tm/t_reply.c). A compact wait-state cell (cell.py F_COMPACT)
    has no request left: ValueError, which every caller already handles."""
    if cell.flags & F_COMPACT:
        raise ValueError("the transaction is completed: its request is no longer kept")
    msg = parse_msg(cell.req, tuple(cell.src), tuple(cell.dst), cell.sock, sock_proto(cell.sock))
    msg.new_uri = cell.new_uri
    msg.dst_uri = cell.dst_uri
    msg.flags = cell.msg_flags
    if cell.lumps:
        adds, removes, rpl = cell.lumps
        msg.hdr_adds = list(adds)
        msg.hdr_removes = set(removes)
        msg.reply_lumps = list(rpl)
    return msg
