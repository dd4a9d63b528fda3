"""registrar's save(): REGISTER processing (RFC 3261 10.3) into a usrloc table.

Runs in: udp and tcp receivers, async task workers (wherever request_route runs).

Kamailio: src/modules/registrar/save.c (save, add_contacts, insert_contacts,
update_contacts, delete_contacts, test_max_contacts), sip_msg.c
(calc_contact_expires, calc_contact_q, check_contacts), common.c
(extract_aor), reply.c (build_contact, reg_reply_helper: codes, reason texts,
P-Registrar-Error). The rules in our words: docs/kamailio-registrar.md.
The whole record is changed in one locked step (shm/usrloc.py `update`), so
two REGISTERs for one AOR in two processes never interleave.
"""
import time

from asyncd.core import log
from asyncd.core.net import sock_name
from asyncd.modules import sl
from asyncd.sip.hdrs import SipParseError
from asyncd.sip.uri import parse_uri_cached, unescape
from shm.usrloc import (C_EXPIRES, C_INSTANCE, C_Q, C_RECEIVED, C_REGID, C_URI, C_CALLID,
                        C_CSEQ, C_LASTMOD, C_RUID, FULL, Q_UNSPECIFIED, find_contact,
                        insert_sorted, new_contact, new_ruid, update_in_place, valid)

# save() flags (registrar.h REG_SAVE_*_FL)
F_MEM = 1 << 0          # memory only (always, with db_mode 0)
F_NORPL = 1 << 1        # no reply sent by save()
F_REPL = 1 << 2         # the request's contacts replace all others
F_NOVARIATION = 1 << 3  # no expires_range randomisation

# (code, reason, P-Registrar-Error text) of reply.c's codes/error_info tables
R_FINE = (200, "OK", None)
R_INV_CSEQ = (400, "Bad Request", "Invalid CSeq number")
R_AOR_PARSE = (400, "Bad Request", "Error while parsing AOR")
R_INV_EXP = (400, "Bad Request", "Invalid expires param in contact")
R_INV_Q = (400, "Bad Request", "Invalid q param in contact")
R_TO_MISS = (400, "Bad Request", "To header not found")
R_CID_MISS = (400, "Bad Request", "Call-ID header not found")
R_CS_MISS = (400, "Bad Request", "CSeq header not found")
R_PARSE_EXP = (400, "Bad Request", "Expires parse error")
R_PARSE_CONT = (400, "Bad Request", "Contact parse error")
R_STAR_EXP = (400, "Bad Request", "* used in contact and expires is not zero")
R_STAR_CONT = (400, "Bad Request", "* used in contact and more than 1 contact")
R_CONTACT_LEN = (400, "Bad Request", "Contact/received too long")
R_CALLID_LEN = (400, "Bad Request", "Callid too long")
R_TOO_MANY = (503, "Service Unavailable", "Too many registered contacts")
R_LOW_EXP = (423, "Interval Too Brief", "Interval too brief")
R_UL_INS_C = (500, "Server Internal Error", "usrloc_contact_insert failed")
R_UL_GET_R = (500, "Server Internal Error", "usrloc_record_get failed")


# Kamailio's METHOD_* bits (src/core/parser/msg_parser.h): a contact's `methods`
METHOD_BITS = {"INVITE": 1, "CANCEL": 2, "ACK": 4, "BYE": 8, "INFO": 16, "REGISTER": 32,
               "SUBSCRIBE": 64, "NOTIFY": 128, "MESSAGE": 256, "OPTIONS": 512, "PRACK": 1024,
               "UPDATE": 2048, "REFER": 4096, "PUBLISH": 8192, "KDMQ": 16384, "GET": 32768,
               "POST": 65536, "PUT": 131072, "DELETE": 262144}
METHOD_OTHER = 524288
ALL_METHODS = -1       # stored as 0xFFFFFFFF by Kamailio, shown -1 by ul.dump


def methods_of(text):
    """parse_methods: a comma separated method list -> bit mask."""
    bits = 0
    for m in text.split(","):
        m = m.strip().strip('"').upper()
        if m:
            bits |= METHOD_BITS.get(m, METHOD_OTHER)
    return bits


def allowed_methods(msg, params):
    """get_allowed_methods (save.c): the Contact's `methods` param, else the
    Allow headers, else every method."""
    m = params.get("methods")
    if m:
        return methods_of(m)
    allow = msg.hdrs("Allow")
    if allow:
        return methods_of(",".join(allow))
    return ALL_METHODS


class RegError(Exception):
    def __init__(self, r):
        super().__init__(r[2])
        self.r = r


def extract_aor(uri_text, use_domain, case_sensitive=1):
    """common.c extract_aor: user (unescaped) [@host], host lowercased
    (everything when case_sensitive is 0). RegError(R_AOR_PARSE) if unparsable."""
    u = parse_uri_cached(uri_text) if uri_text else None
    if u is None:
        raise RegError(R_AOR_PARSE)
    user = unescape(u.user or "")
    aor = user
    if use_domain:
        host = (u.host or "").lower()
        aor = f"{user}@{host}" if user else host
    return aor if case_sensitive else aor.lower()


def domain_aor(cfg, ul, table, uri, fname):
    """(usrloc domain `table`, the AOR of `uri`), or None: no such table, or
    an unparsable URI (logged as `fname(): bad AOR URI`)."""
    d = ul.domain(table)
    if d is None:
        return None
    try:
        return d, extract_aor(uri, ul.use_domain, cfg.case_sensitive)
    except RegError:
        log.err("registrar", f"{fname}(): bad AOR URI {uri!r}")
        return None


def _q_of(params):
    """calc_contact_q: the q param (0..1) as an int of thousandths; default_q when absent."""
    q = params.get("q")
    if q is None or q == "":
        return None
    try:
        v = float(q)
    except ValueError:
        raise RegError(R_INV_Q) from None
    if not 0.0 <= v <= 1.0 or q.count(".") > 1:
        raise RegError(R_INV_Q)
    return int(round(v * 1000))


def _expires_hf(msg):
    """get_expires_hf: the Expires header's seconds; -1 when absent or not a
    number (parse_expires.c takes it for an RFC 2543 date: "not valid", no
    error); an empty one is a parse error."""
    v = msg.hdr("Expires")
    if v is None:
        return -1
    v = v.strip()
    if not v:
        raise RegError(R_PARSE_EXP)
    v = v.split()[0]
    if len(v) > 10 or not v.isdigit():
        return -1
    return int(v)


def contact_expires(cfg, msg, params, now, novariation=True):
    """calc_contact_expires: param, else header, else default_expires; min then
    max applied (a value under min_expires is raised to it, or 423 when
    min_expires_mode is 1). -> absolute wall seconds, 0 = remove."""
    ep = params.get("expires")
    if ep:
        e = int(ep) if ep.isdigit() else cfg.default_expires
    else:
        e = _expires_hf(msg)
        if e < 0:
            e = cfg.default_expires
    if e == 0:
        return 0
    if e < cfg.min_expires:
        if cfg.min_expires_mode:
            raise RegError(R_LOW_EXP)
        e = cfg.min_expires
    if cfg.max_expires and e > cfg.max_expires:
        e = cfg.max_expires
    return now + e


def _check_contacts(msg, contacts):
    """check_contacts (save.c): `*` only alone and with Expires 0; URIs not too long."""
    star = any(c.uri == "*" for c in contacts)
    if star:
        if _expires_hf(msg) != 0:
            raise RegError(R_STAR_EXP)
        if len(contacts) > 1:
            raise RegError(R_STAR_CONT)
        return True
    for c in contacts:
        if len(c.uri) > 512:        # contact_max_size's default
            raise RegError(R_CONTACT_LEN)
    return False


def _contacts(msg):
    try:
        return msg.contacts
    except (SipParseError, ValueError):
        raise RegError(R_PARSE_CONT) from None


def _info(ctx, cfg, now):
    """What every contact of this REGISTER shares (pack_ci)."""
    msg = ctx.msg
    callid = msg.callid
    if not callid:
        raise RegError(R_CID_MISS)
    if len(callid) > 255:           # CALLID_MAX_SIZE (usrloc.h)
        raise RegError(R_CALLID_LEN)
    try:
        cseq = int(msg.cseq_num)
    except (TypeError, ValueError):
        raise RegError(R_CS_MISS) from None
    ua = (msg.hdr("User-Agent") or "").strip() or "n/a"
    sock = f"{msg.proto}:{sock_name(*msg.dst[:2])}" if msg.dst else ""
    received = cfg.received_of(ctx)
    path = ",".join(v.strip() for v in (msg.hdrs("Path") or ())) if cfg.use_path else ""
    return {"callid": callid, "cseq": cseq, "user_agent": ua, "sock": sock,
            "received": received, "path": path, "flags": 0,
            "cflags": (ctx.extra or {}).get("bflags", 0),     # branch 0's flags (setbflag)
            "conid": msg.conid or -1, "msg": msg}


def _new(c, ci, expires, q, now):
    p = c.params
    inst = p.get("+sip.instance", "")
    reg_id = p.get("reg-id", "0")
    return new_contact(c.uri, expires, Q_UNSPECIFIED if q is None else q, ci["callid"],
                       ci["cseq"], ci["flags"], ci["cflags"], ci["path"], ci["received"],
                       ci["user_agent"], ci["sock"], inst.strip('"'),
                       int(reg_id) if reg_id.isdigit() else 0, new_ruid(),
                       allowed_methods(ci["msg"], p), ci["conid"], now)


def _updated(old, c, ci, expires, q, now):
    """update_ucontact: new expires, q, Call-ID, CSeq, ...; the ruid stays."""
    fresh = list(_new(c, ci, expires, q, now))
    fresh[C_RUID] = old[C_RUID]
    fresh[C_LASTMOD] = now
    return tuple(fresh)


def _apply(cfg, ul, contacts, req, ci, now, flags):
    """update_contacts / insert_contacts on the record's list (stripe lock held).
    req: [(NameAddr, expires, q)]. -> (new list, None) or raises RegError."""
    out = list(contacts)
    for c, expires, q in req:
        i = find_contact(out, ul.matching_mode, c.uri, ci["callid"], ci["path"])
        if i < 0:
            if expires == 0:
                continue
            if cfg.max_contacts and sum(1 for o in out if valid(o, now)) >= cfg.max_contacts:
                raise RegError(R_TOO_MANY)
            insert_sorted(out, _new(c, ci, expires, q, now), ul.desc_time_order)
            continue
        old = out[i]
        if old[C_CALLID] == ci["callid"] or ul.matching_mode == 1:
            if ci["cseq"] < old[C_CSEQ]:
                raise RegError(R_INV_CSEQ)
            if ci["cseq"] == old[C_CSEQ]:
                if old[C_LASTMOD] + ul.cseq_delay > now:
                    continue                    # a retransmission: nothing changes
                raise RegError(R_INV_CSEQ)
        if expires == 0:
            del out[i]
            continue
        update_in_place(out, i, _updated(old, c, ci, expires, q, now), ul.desc_time_order)
    if flags & F_REPL:
        keep = {c.uri for c, e, _q in req if e}
        out = [o for o in out if o[C_URI] in keep]
    return out


def save(ctx, cfg, ul, table, flags=0, uri=None):
    """save("location"[, flags[, uri]]) -> 1 (200), -1 (error reply, unless F_NORPL)."""
    now = int(time.time())
    d = ul.domain(table)
    try:
        if d is None:
            raise RegError(R_UL_GET_R)
        msg = ctx.msg
        to = msg.to
        if to is None and uri is None:
            raise RegError(R_TO_MISS)
        aor = extract_aor(uri or to.uri, ul.use_domain, cfg.case_sensitive)
        contacts = _contacts(msg)
        star = _check_contacts(msg, contacts)
        ci = _info(ctx, cfg, now)
        if star:
            d.delete(aor)
            bindings = []
        else:
            req = [(c, contact_expires(cfg, msg, c.params, now, flags & F_NOVARIATION),
                    _q_of(c.params) if "q" in c.params else cfg.default_q_int()) for c in contacts]
            bindings = d.update(aor, lambda cs: _record_step(cfg, ul, cs, req, ci, now, flags))
            if bindings is FULL:
                raise RegError(R_UL_INS_C)
    except RegError as e:
        ctx.proc.cnt[cfg.st_rejected] += 1
        if not flags & F_NORPL:
            _reply(ctx, e.r, None, now, cfg)
        return -1
    ctx.proc.cnt[cfg.st_accepted] += 1
    if not flags & F_NORPL:
        _reply(ctx, R_FINE, bindings, now, cfg)
    return 1


def _record_step(cfg, ul, contacts, req, ci, now, flags):
    """One locked step: apply the request, then the record's live bindings (for the 200)."""
    if not req:
        return None, [c for c in contacts if valid(c, now)]
    new = _apply(cfg, ul, contacts, req, ci, now, flags)
    return new, [c for c in new if valid(c, now)]


def q_str(q):
    """q2str: 1000 -> "1", 500 -> "0.5", 0 -> "0"."""
    if q >= 1000:
        return "1"
    if q <= 0:
        return "0"
    return ("0.%03d" % q).rstrip("0")


def contact_header(bindings, now, rcv_param="received"):
    """build_contact (reply.c): every live binding with its q and seconds left."""
    parts = []
    for c in bindings:
        s = f"<{c[C_URI]}>"
        if c[C_Q] != Q_UNSPECIFIED:
            s += f";q={q_str(c[C_Q])}"
        s += f";expires={c[C_EXPIRES] - now if c[C_EXPIRES] else 0}"
        if rcv_param and c[C_RECEIVED]:
            s += f';{rcv_param}="{c[C_RECEIVED]}"'
        if c[C_INSTANCE]:
            s += f';+sip.instance="{c[C_INSTANCE]}"'
        if c[C_REGID] > 0:
            s += f";reg-id={c[C_REGID]}"
        parts.append(s)
    return "Contact: " + ", ".join(parts) if parts else None


def _reply(ctx, r, bindings, now, cfg):
    """reg_reply_helper: the Contact list on 200, P-Registrar-Error (and
    Min-Expires on 423) otherwise; sent with sl's send_reply (stateful when
    the request has a transaction)."""
    code, reason, err = r
    lumps = ctx.msg.reply_lumps
    if code == 200:
        h = contact_header(bindings or [], now, cfg.rcv_param)
        if h:
            lumps.append(h + "\r\n")
    else:
        lumps.append(f"P-Registrar-Error: {err}\r\n")
        if code == 423:
            lumps.append(f"Min-Expires: {cfg.min_expires}\r\n")
        if 500 <= code < 600 and cfg.retry_after:
            lumps.append(f"Retry-After: {cfg.retry_after}\r\n")
    if sl.send_reply(ctx, code, reason) < 0:
        log.err("registrar", f"failed to send {code} {reason}")
