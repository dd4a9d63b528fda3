"""The acc module, log backend: a transaction accounted at its reply
(`ACC: transaction answered:`), a failed INVITE as a missed call (`ACC: call
missed:`), and acc_log_request(comment) (`ACC: request accounted:`).

Runs in: main (mod_init: parses log_extra, binds to tm), udp receivers and
the tm `timer` process (the tm callbacks run where the reply goes out),
every process running routes (acc_log_request).

Kamailio: src/modules/acc/acc_logic.c (acc_onreq, should_acc_reply,
acc_onreply, on_missed, w_acc_log_request) and acc.c (core2strar,
acc_log_request: the line's fields and order). Differences
(docs/kamailio-nat-acc.md "acc"): no database, CDR or engine backends (their
modparams are accepted; a db_url makes a WARNING); the flags are read when
the reply goes out, not also at transaction creation; detect_direction and
report_ack are accepted and have no effect; time_mode 0 only.
"""
import time

from asyncd.cfg.pvcore import PvTable, parse_format, to_str
from asyncd.core import log
from asyncd.core.context import ProcState
from asyncd.core.errors import CfgError
from asyncd.core.exports import FuncExport, ModuleExports, P, ParamExport
from asyncd.core.route_types import ANY_ROUTE
from asyncd.modules.tm import api as tm_api
from asyncd.modules.tm.cell import BR_REPLY, BR_RURI, BR_STATUS, F_INVITE
from asyncd.modules.tm.lookup import rebuild_request
from asyncd.modules.tm.state import S as TM, TMCB_ON_FAILURE, TMCB_RESPONSE_OUT
from asyncd.sip import parse_msg
from asyncd.sip.build import stable_to_tag
from asyncd.sip.hdrs import parse_nameaddr

MOD = "acc"
ACC_REQUEST = "ACC: request accounted: "
ACC_MISSED = "ACC: call missed: "
ACC_ANSWERED = "ACC: transaction answered: "
# src/core/error.c error_text: the reason acc logs for a reply tm made itself
_REASONS = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 300: "Multiple Choices", 301: "Moved Permanently",
    302: "Moved Temporarily", 305: "Use Proxy", 380: "Alternative Service", 400: "Bad Request",
    401: "Unauthorized", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 407: "Proxy Authentication Required",
    408: "Request Timeout", 410: "Gone", 413: "Request Entity Too Large",
    414: "Request-URI Too Long", 415: "Unsupported Media Type", 416: "Unsupported URI Scheme",
    417: "Bad Extension", 421: "Extension Required", 423: "Interval Too Brief",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
    482: "Loop Detected", 483: "Too Many Hops", 484: "Address Incomplete", 485: "Ambiguous",
    486: "Busy Here", 487: "Request Terminated", 488: "Not Acceptable Here",
    491: "Request Pending", 500: "Server Internal Error", 501: "Not Implemented",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Server Time-Out",
    505: "Version Not Supported", 513: "Message Too Large", 600: "Busy Everywhere",
    603: "Decline", 604: "Does Not Exist Anywhere", 606: "Not Acceptable"}
_CLASS_REASONS = ((600, "Global Failure"), (500, "Server Failure"), (400, "Request Failure"),
                  (300, "Redirection"), (200, "Successful"), (100, "Provisional"))
FACILITIES = {"LOG_" + n: i << 3 for i, n in enumerate(
    ("KERN", "USER", "MAIL", "DAEMON", "AUTH", "SYSLOG", "LPR", "NEWS", "UUCP", "CRON",
     "AUTHPRIV", "FTP"))}
FACILITIES.update({"LOG_LOCAL%d" % i: (16 + i) << 3 for i in range(8)})


def error_text(code):
    text = _REASONS.get(code)
    if text is not None:
        return text
    for floor, name in _CLASS_REASONS:
        if code >= floor:
            return name
    return "Unspecified"


class AccState:
    """acc's settings, filled by mod_init from the modparams."""
    __slots__ = ("log_flag", "missed_flag", "failed_flag", "level", "facility", "extra",
                 "early_media", "report_cancels", "failed_filter", "proc")

    def configure(self, mp):
        self.log_flag = int(mp["log_flag"])
        self.missed_flag = int(mp["log_missed_flag"])
        self.failed_flag = int(mp["failed_transaction_flag"])
        self.level = int(mp["log_level"])
        fac = str(mp["log_facility"]).upper()
        if fac not in FACILITIES:
            raise CfgError(f"acc: invalid log facility {mp['log_facility']!r}")
        self.facility = FACILITIES[fac]
        self.extra = parse_extra(str(mp["log_extra"] or ""))
        self.early_media = int(mp["early_media"])
        self.report_cancels = int(mp["report_cancels"])
        self.failed_filter = frozenset(int(c) for c in str(mp["failed_filter"] or "").split(",")
                                       if c.strip())
        self.proc = None


S = AccState()


def parse_extra(text):
    """`name=$pv;name2=$pv2` -> [(name, pieces)] (acc_extra.c parse_acc_extra)."""
    out, table = [], PvTable()
    for item in text.split(";"):
        if not item.strip():
            continue
        name, eq, spec = item.partition("=")
        if not eq or not name.strip() or not spec.strip().startswith("$"):
            raise CfgError(f"acc: bad log_extra item {item!r} (expected name=$pv)")
        out.append((name.strip(), parse_format(spec.strip(), None, table)))
    return out


def _flag_on(flags, flag):
    return flag != -1 and bool(flags & (1 << flag))


# ---- the line -------------------------------------------------------------------------
def _tag(value):
    try:
        return parse_nameaddr(value).params.get("tag") or ""
    except Exception:
        return ""


def _extra_values(ctx):
    vals = []
    for name, pieces in S.extra:
        parts = []
        for p in pieces:
            v = p if type(p) is str else (None if p is None else p.get(ctx))
            parts.append("" if v is None else to_str(v))    # $null: empty (extra2strar)
        vals.append((name, "".join(parts)))
    return vals


def acc_log_request(ctx, text, to_tag, code, reason):
    """Write one ACC line for the request in ctx (acc.c acc_log_request:
    timestamp, then method, from_tag, to_tag, call_id, code, reason, extras)."""
    m = ctx.msg
    fields = [("method", m.cseq_method or ""), ("from_tag", m.from_tag or ""),
              ("to_tag", to_tag), ("call_id", m.callid or ""), ("code", code),
              ("reason", reason)] + _extra_values(ctx)
    line = "%stimestamp=%d%s" % (text, int(time.time()),
                                 "".join(";%s=%s" % (k, v) for k, v in fields))
    _emit(line)
    return 1


def _emit(line):
    """At log_level, on log_facility when logging to syslog (LM_GEN2)."""
    if S.level > log.state.level:
        return
    if log.state.stderr or S.facility == log.state.facility:
        log.log(S.level, MOD, "acc_log_request(): " + line, where="modules/acc.py")
        return
    saved = log.state.facility
    log.state.facility = S.facility
    try:
        log.log(S.level, MOD, "acc_log_request(): " + line, where="modules/acc.py")
    finally:
        log.state.facility = saved


# ---- tm callbacks -------------------------------------------------------------------------
def _request_ctx(cell, bno):
    """The stored request as acc reads it: the transaction's flags, the
    winning branch's R-URI as new URI (acc_logic.c acc_onreply: t->uac[br].uri)."""
    msg = rebuild_request(cell, TM.proc)
    if bno is not None and 0 <= bno < len(cell.branches):
        msg.new_uri = cell.branches[bno][BR_RURI] or msg.new_uri
    proc = TM.proc or S.proc
    if proc is None:
        proc = S.proc = ProcState(TM.script)
    ctx = TM.script.new_ctx(msg, proc)
    ctx.flags = cell.msg_flags
    return ctx


def _skip(cell):
    """CANCELs are not accounted unless report_cancels (acc_logic.c skip_cancel)."""
    return cell.method == "CANCEL" and not S.report_cancels


def _should_acc_reply(flags, code, reply):
    """acc_logic.c should_acc_reply."""
    if code >= 300:
        return _flag_on(flags, S.failed_flag) and code not in S.failed_filter
    if not _flag_on(flags, S.log_flag):
        return False
    if code < 200:
        return bool(S.early_media and reply is not None and _has_body(reply))
    return True


def _has_body(reply):
    end = reply.find(b"\r\n\r\n")
    return end >= 0 and len(reply) > end + 4


def _reply_fields(cell, code, reason, reply):
    """(to_tag, code text, reason): a relayed reply's own; tm's reply: the
    request's To tag and error_text(code) (acc_logic.c env_set_reason)."""
    if reply is None:
        return "", str(code), error_text(code)
    try:
        r = parse_msg(reply)
        return (r.to_tag or ""), "%03d" % code, reason
    except Exception:
        return "", "%03d" % code, reason


def _picked(cell, code):
    best = -1
    for i, b in enumerate(cell.branches):
        if b[BR_STATUS] == code:
            best = i
    return best


def on_missed(h, cell, code, bno, reply=None, reason=None):
    """A failed INVITE with log_missed_flag: one `call missed` line, then the
    flag is reset so the same transaction is not reported twice (acc_logic.c
    on_missed)."""
    if not cell.flags & F_INVITE or not _flag_on(cell.msg_flags, S.missed_flag) or _skip(cell):
        return
    ctx = _request_ctx(cell, bno)
    to_tag, code_s, why = _reply_fields(cell, code, reason, reply)
    if reply is None:
        # env_set_totag: the tag tm gives its own reply (tm's t_get_reply_totag)
        to_tag = cell.to_tag or ctx.msg.to_tag or stable_to_tag(ctx.msg)
    acc_log_request(ctx, ACC_MISSED, to_tag, code_s, why)
    cell.msg_flags &= ~(1 << S.missed_flag)
    h.dirty = True


def on_response_out(h, cell, code, reason, reply):
    """acc_logic.c acc_onreply: missed call first, then `transaction answered`."""
    if _skip(cell):
        return
    bno = _picked(cell, code) if reply is not None else None
    if code >= 300:
        on_missed(h, cell, code, bno, reply, reason)
    if not _should_acc_reply(cell.msg_flags, code, reply):
        return
    ctx = _request_ctx(cell, bno)
    to_tag, code_s, why = _reply_fields(cell, code, reason, reply)
    acc_log_request(ctx, ACC_ANSWERED, to_tag, code_s, why)


def on_failure(h, cell, code, bno):
    """Every branch failed (before failure_route): the picked branch's reply
    is the one reported (acc_logic.c tmcb_func, TMCB_ON_FAILURE)."""
    reply = cell.branches[bno][BR_REPLY] if 0 <= bno < len(cell.branches) else None
    if not reply:
        on_missed(h, cell, code, bno)
        return
    try:
        reason = parse_msg(reply).reason or ""
    except Exception:
        reason = error_text(code)
    on_missed(h, cell, code, bno, reply, reason)


# ---- script function ---------------------------------------------------------------------
def w_acc_log_request(ctx, site, comment):
    """acc_log_request("[code ]text"): 1 written (acc_logic.c
    w_acc_log_request, acc_parse_code)."""
    code, reason = "", comment
    if len(comment) >= 3 and comment[:3].isdigit():
        code, reason = comment[:3], comment[3:].lstrip()
    m = ctx.msg
    return acc_log_request(ctx, ACC_REQUEST, m.to_tag or "", code, reason)


def mod_init(script):
    mp = script.modparams[MOD]
    S.configure(mp)
    if mp["db_url"]:
        log.warn(MOD, "db_url is set but asyncd has no database: only the log backend accounts")
    tm_api.register_tmcb(TMCB_RESPONSE_OUT, MOD, on_response_out)
    tm_api.register_tmcb(TMCB_ON_FAILURE, MOD, on_failure)


EXPORTS = ModuleExports(
    name="acc",
    functions=[FuncExport("acc_log_request", (P.STR,), w_acc_log_request, ANY_ROUTE)],
    params=[ParamExport("log_flag", int, -1), ParamExport("log_missed_flag", int, -1),
            ParamExport("failed_transaction_flag", int, -1),
            ParamExport("log_level", int, log.L_NOTICE), ParamExport("log_facility", str, "LOG_DAEMON"),
            ParamExport("log_extra", str, ""), ParamExport("early_media", int, 0),
            ParamExport("report_cancels", int, 0), ParamExport("report_ack", int, 0),
            ParamExport("detect_direction", int, 0), ParamExport("failed_filter", str, ""),
            ParamExport("reason_from_hf", int, 0), ParamExport("time_mode", int, 0),
            ParamExport("clone_msg", int, 1),
            # database backend: accepted, nothing stored (no database in asyncd)
            ParamExport("db_flag", int, -1), ParamExport("db_missed_flag", int, -1),
            ParamExport("db_extra", str, ""), ParamExport("db_url", str, ""),
            ParamExport("db_table_acc", str, "acc"),
            ParamExport("db_table_missed_calls", str, "missed_calls"),
            ParamExport("db_insert_mode", int, 0)],
    mod_init=mod_init,
    depends=("tm",),
)
