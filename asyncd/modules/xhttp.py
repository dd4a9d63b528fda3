"""xhttp: answer HTTP/1.x requests that arrive on the SIP listen sockets from
the script, in event_route[xhttp:request].

Runs in: main process (mod_init), tcp receivers (and udp receivers, for an
HTTP request line in a datagram) that get the request: the route runs there,
as in Kamailio.

Kamailio 5.6 (src/modules/xhttp/xhttp_mod.c): mod_init registers a non-SIP
hook (here `hooks["nonsip_in"]`, docs/contracts.md); for an HTTP request whose
URL passes `url_skip` / `url_match` (POSIX extended regexes; Python's `re`
here) the hook runs event_route[xhttp:request]; `xhttp_reply(code, reason,
ctype, body)` answers over the request's connection; `$hu` is the URL
(`{url.path}` / `{url.querystring}` split it: asyncd/cfg/transformations.py). A
request the route does not answer gets nothing (the client waits, as with
Kamailio); the connection stays open for the next request.

Where asyncd differs on purpose (docs/operations.md "xhttp"):
- a runtime error in the route before any reply answers `500 Server Internal
  Error` and closes the connection (Kamailio answers nothing: the client
  hangs until tcp_connection_lifetime);
- `Connection: close` (or HTTP/1.0 without keep-alive) closes the connection
  once the reply is written (RFC 7230 6.3; Kamailio keeps it open);
- the reply has no `Sia:` header (Kamailio copies the Via it faked, renamed);
- `event_callback` (KEMI) is not supported: a warning, the event_route runs.
"""
import re

from asyncd.core import log
from asyncd.core.errors import ScriptExit
from asyncd.core.exports import FuncExport, ModuleExports, P, ParamExport, PvExport
from asyncd.core.route_types import EVENT_ROUTE, REQUEST_ROUTE
from asyncd.ipc.tcp import SND_CLOSE
from asyncd.sip.http import build_http_reply, wants_close

MOD = "xhttp"
ROUTE = "xhttp:request"


class _State:
    """Per process after fork; set once in mod_init (inherited)."""
    match = None        # compiled url_match, or None
    skip = None         # compiled url_skip, or None


S = _State()


def _compile(name, value):
    try:
        return re.compile(value)
    except re.error as e:
        raise RuntimeError(f"xhttp: bad {name} regular expression {value!r}: {e}") from None


def mod_init(script):
    mp = script.modparams[MOD]
    if mp.get("event_callback"):
        log.warn(MOD, "event_callback (KEMI) is not supported by asyncd: "
                      "event_route[xhttp:request] is run instead")
    if ROUTE not in getattr(script, "event_routes", ()):
        raise RuntimeError("xhttp: failed to find event_route[xhttp:request]")
    if not script.core.get("tcp_accept_no_cl"):
        log.warn(MOD, "tcp_accept_no_cl not set - usually required to handle HTTP "
                      "requests with no Content-Length")
    if script.module("sl") is None:
        # Kamailio's xhttp binds the SL API in mod_init and fails without it
        raise RuntimeError("xhttp: cannot bind to SL API (load the sl module)")
    S.match = _compile("url_match", mp["url_match"]) if mp.get("url_match") else None
    S.skip = _compile("url_skip", mp["url_skip"]) if mp.get("url_skip") else None


# -- the non-SIP hook ---------------------------------------------------------------------------
def nonsip_in(ctx):
    """Kamailio's xhttp_handler: True when this module took the request (the route
    ran, whatever it did), False to let the next hook see it."""
    url = ctx.msg.ruri or ""
    if S.skip is not None and S.skip.search(url):
        return False
    if S.match is not None and not S.match.search(url):
        return False
    ctx.route_type = EVENT_ROUTE
    script = ctx.proc.script
    fn = script.routes.get(("event", ROUTE))
    try:
        if fn is not None:
            fn(ctx)
    except ScriptExit:
        pass
    except Exception as e:  # noqa: BLE001 - the client still gets an answer, the receiver lives
        script.log_exception(e, ctx)
        if not ctx.replied:
            send(ctx, 500, "Server Internal Error", "", b"", close=True)
    return True


# -- replies ------------------------------------------------------------------------------------
def send(ctx, code, reason, ctype, body, close=False):
    """Build the reply and hand it to the request's connection. -> bool."""
    msg = ctx.msg
    data = build_http_reply(msg.version, code, reason, ctype, body, msg.reply_lumps)
    flags = msg.rpl_flags | (SND_CLOSE if close or wants_close(msg) else 0)
    addr = (msg.src[0], msg.src[1], flags) if flags and msg.proto != "udp" else msg.src
    ok = ctx.proc.send(data, addr, msg.sock)
    if ok:
        ctx.replied = True
    else:
        log.err(MOD, f"cannot send the reply {code} to {msg.src[0]}:{msg.src[1]}")
    return ok


def w_xhttp_reply(ctx, site, code, reason, ctype, body):
    """xhttp_reply(code, reason, ctype, body): Kamailio's w_xhttp_send_reply
    checks (code 100..700, a non-empty reason); ctype "" sends no Content-Type."""
    if not ctx.msg.http:
        log.err(MOD, "xhttp_reply(): not an HTTP request")
        return -1
    if code is None or not 100 <= code <= 700:
        log.err(MOD, "xhttp_reply(): invalid code parameter")
        return -1
    if not reason:
        log.err(MOD, "xhttp_reply(): invalid reason parameter")
        return -1
    return 1 if send(ctx, code, reason, ctype or "", body or "") else -1


def _pv_hu(ctx, spec, index):
    """$hu: the URL of the HTTP request line (Kamailio: the first line's URI)."""
    msg = ctx.msg
    return msg.ruri if msg.is_request else None


EXPORTS = ModuleExports(
    name=MOD,
    functions=[
        FuncExport("xhttp_reply", (P.INT, P.STR, P.STR, P.STR), w_xhttp_reply, REQUEST_ROUTE),
    ],
    params=[
        ParamExport("url_match", str, None),
        ParamExport("url_skip", str, None),
        ParamExport("event_callback", str, ""),
    ],
    pvs=[PvExport("hu", _pv_hu, None, None, False)],
    mod_init=mod_init,
    hooks={"nonsip_in": nonsip_in},
)
