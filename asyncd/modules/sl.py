"""sl: stateless replies (Kamailio's sl module).

Runs in: udp receivers, async task workers, ASYNC module timers (wherever a
route runs).

A stateless reply is built from the request alone (RFC 3261 8.2.6: Vias,
From, Call-ID and CSeq copied, To-tag added) and sent from the socket the
request arrived on to the address RFC 3261 18.2.2 / RFC 3581 name. Nothing
is kept, so a retransmitted request gets the same reply again, including the
same To-tag (stable_to_tag hashes what is constant across retransmissions).

`send_reply` is stateful when the request has a transaction (ctx.t set by
tm), as Kamailio's sl module does through the tm API; otherwise it is
`sl_send_reply`.

Statistics: the sl: group and the `sl.stats` RPC, Kamailio 5.6's names
(src/modules/sl/sl_stats.c): a reply sent counts by its code as
update_sl_stats does (1xx and 700+ in xxx_replies: Kamailio's 1xx_replies
never moves), a reply that cannot be built or sent in `failures`;
sent_replies is their sum. Like Kamailio's (computed from sl's own
per-process array) they do not reset. sent_err_replies and received_ACKs
stay 0: Kamailio 5.6 never adds the first into its total, and asyncd's sl
has no filter of ACKs to its own replies (sl_filter_ACK) to count in the
second (docs/operations.md "Statistics").
"""
from asyncd.core import log
from asyncd.core.counters import NO_RESET
from asyncd.core.exports import FuncExport, ModuleExports, P
from asyncd.core.rpc import RpcExport
from asyncd.core.route_types import (BRANCH_ROUTE, FAILURE_ROUTE, ONREPLY_ROUTE,
                                     REQUEST_ROUTE)
from asyncd.modules.tm import api as tm_api
from asyncd.sip.build import build_reply, reply_addr

MOD = "sl"
# The Server header of replies: asyncd.sip.build (core params server_header / server_signature).
# Kamailio's default text when sl_reply_error has no more specific error (sl_funcs.c, error.c).
DEFAULT_ERROR = (500, "I'm terribly sorry, server error occurred (1/SL)")


def _where(ctx):
    site = ctx.site
    return str(site.loc) if site is not None and getattr(site, "loc", None) is not None else ""


def sl_send_reply(ctx, code, reason, extra_headers=None):
    """Send a stateless reply to ctx.msg. Returns 1, or -1 (logged) when no reply can be sent."""
    msg = ctx.msg
    if code is None or not 100 <= code <= 699:
        log.err(MOD, f"sl_send_reply(): invalid reply code {code!r}", _where(ctx))
        return -1
    if not msg.is_request:
        log.err(MOD, "sl_send_reply(): cannot reply to a reply", _where(ctx))
        return -1
    if msg.method == "ACK":
        # RFC 3261 17.2.1: an ACK is never answered; Kamailio's sl ignores it the same way.
        return 1
    # build_reply adds stable_to_tag(msg) to a To without tag, never to a 100 (RFC 3261 8.2.6.2)
    headers = extra_headers or ()
    try:
        data = build_reply(msg, code, reason, extra_headers=headers)
    except Exception as e:  # a header too broken to copy: say so, never raise into the route
        ctx.proc.cnt[ST.failures] += 1
        log.err(MOD, f"sl_send_reply(): cannot build reply: {e}", _where(ctx))
        return -1
    if not ctx.proc.send(data, reply_addr(msg), msg.sock):
        ctx.proc.cnt[ST.failures] += 1
        log.err(MOD, f"sl_send_reply(): send to {reply_addr(msg)} failed", _where(ctx))
        return -1
    ctx.proc.cnt[ST.by_code[code]] += 1
    if code >= 200:
        ctx.replied = True
    return 1


def sl_reply_error(ctx):
    """Reply with the error the core recorded for this message (ctx.extra['sl_error']) or a 500."""
    err = (ctx.extra or {}).get("sl_error") or DEFAULT_ERROR
    return sl_send_reply(ctx, err[0], err[1])


def send_reply(ctx, code, reason):
    """Stateful reply when the request has a transaction, else stateless."""
    if ctx.t is not None:
        return tm_api.t_reply(ctx, code, reason)
    return sl_send_reply(ctx, code, reason)


# -- script wrappers ----------------------------------------------------

def w_sl_send_reply(ctx, site, code, reason):
    return sl_send_reply(ctx, code, reason)


def w_sl_reply_error(ctx, site):
    return sl_reply_error(ctx)


def w_send_reply(ctx, site, code, reason):
    return send_reply(ctx, code, reason)


def _fixup_code(site):
    """A literal code outside 100..699 is a startup error (Kamailio finds it only at run time)."""
    arg = site.args[0]
    if arg.literal:
        try:
            code = int(arg.value)
        except (TypeError, ValueError):
            site.arg_error(0, f"reply code must be a number, not {arg.value!r}")
        if not 100 <= code <= 699:
            site.arg_error(0, f"reply code {code} out of range 100..699")


# -- statistics (src/modules/sl/sl_stats.c) -------------------------------------
# reply types in Kamailio's order (sl_stats.h enum reply_type), then the others
REPLY_TYPES = ("1xx", "200", "202", "2xx", "300", "301", "302", "3xx", "400", "401", "403",
               "404", "407", "408", "483", "4xx", "500", "5xx", "6xx", "xxx")
OTHERS = ("sent_replies", "sent_err_replies", "failures", "received_ACKs")


def reply_type(code):
    """update_sl_stats(): the reply type a sent reply counts as."""
    if code < 200 or code >= 700:
        return "xxx"
    if str(code) in REPLY_TYPES:
        return str(code)
    return f"{code // 100}xx"


class SlStats:
    """Handles of the sl: group; by_code[code] is the handle a reply of that code bumps."""

    def __init__(self):
        self.types = {}
        self.by_code = [0] * 700        # until mod_init: a process without shm rows bumps a dict
        self.failures = self.sent_err_replies = self.received_ACKs = 0

    def register(self, stats):
        self.types = {t: stats.register("sl", f"{t}_replies", NO_RESET) for t in REPLY_TYPES}
        sent = list(self.types.values())
        stats.register("sl", "sent_replies", func=lambda: sum(stats.get(h) for h in sent))
        for name in OTHERS[1:]:
            setattr(self, name, stats.register("sl", name, NO_RESET))
        self.by_code = [self.types[reply_type(c)] for c in range(700)]


ST = SlStats()


def mod_init(script):
    ST.register(script.stats)


def rpc_stats(call):
    """sl.stats: the replies sent, by type (Kamailio's order; no 1xx)."""
    stats = call.script.stats
    call.add({t: stats.get(ST.types[t]) for t in REPLY_TYPES[1:]})


EXPORTS = ModuleExports(
    name="sl",
    mod_init=mod_init,
    rpc=[RpcExport("sl.stats", rpc_stats, "The stateless replies sent, by code.")],
    functions=[
        FuncExport("sl_send_reply", (P.INT, P.STR), w_sl_send_reply, REQUEST_ROUTE, _fixup_code),
        FuncExport("sl_reply_error", (), w_sl_reply_error, REQUEST_ROUTE),
        FuncExport("send_reply", (P.INT, P.STR), w_send_reply,
                   REQUEST_ROUTE | FAILURE_ROUTE | ONREPLY_ROUTE | BRANCH_ROUTE, _fixup_code),
    ],
)
