"""The maxfwd module: mf_process_maxfwd_header (RFC 3261 16.6 step 3, 16.3 step 2).

Runs in: main process (mod_init), every process running routes.

Kamailio: src/modules/maxfwd/maxfwd.c. Return codes as Kamailio's: 2 the
header was missing and was added, 1 it was decremented, -1 it is 0 (the
script replies 483), -2 it cannot be parsed.
"""
from asyncd.core.exports import FuncExport, ModuleExports, P, ParamExport
from asyncd.core.route_types import REQUEST_ROUTE, FAILURE_ROUTE, BRANCH_ROUTE

MOD = "maxfwd"


class MaxfwdState:
    """The max_limit modparam: set in main by mod_init, inherited by every child."""
    __slots__ = ("max_limit",)

    def __init__(self):
        self.max_limit = None

    def configure(self, mp):
        """`mp` holds every modparam of the export table."""
        self.max_limit = int(mp["max_limit"])


S = MaxfwdState()


def _fixup(site):
    a = site.args[0]
    if a.literal:
        v = a.int_value
        if v is None or not 0 < v <= 255:
            site.arg_error(0, f"mf_process_maxfwd_header(): bad value {a.value!r} (1..255)")


def w_mf_process_maxfwd_header(ctx, site, limit):
    m = ctx.msg
    if getattr(m, "_maxfwd_done", None) is not None:
        return m._maxfwd_done
    try:
        mf = m.max_forwards
    except Exception:
        return -2
    cap = S.max_limit
    if mf is None:
        val = min(limit or cap, cap)
        m.hdr_adds.append(f"Max-Forwards: {val}\r\n")
        rc = 2
    else:
        if mf == 0:
            return -1
        val = min(mf, cap) - 1 if mf > cap else mf - 1
        m.hdr_removes.add("max-forwards")
        m.hdr_adds.append(f"Max-Forwards: {val}\r\n")
        rc = 1
    m._maxfwd_done = rc
    return rc


def w_is_maxfwd_lt(ctx, site, n):
    try:
        mf = ctx.msg.max_forwards
    except Exception:
        return -2
    if mf is None:
        return -1
    return 1 if mf < n else -1


def mod_init(script):
    S.configure(script.modparams[MOD])


EXPORTS = ModuleExports(
    name=MOD,
    functions=[
        FuncExport("mf_process_maxfwd_header", (P.INT,), w_mf_process_maxfwd_header,
                   REQUEST_ROUTE | FAILURE_ROUTE | BRANCH_ROUTE, _fixup),
        FuncExport("maxfwd_process", (P.INT,), w_mf_process_maxfwd_header,
                   REQUEST_ROUTE | FAILURE_ROUTE | BRANCH_ROUTE, _fixup),
        FuncExport("is_maxfwd_lt", (P.INT,), w_is_maxfwd_lt, REQUEST_ROUTE | FAILURE_ROUTE | BRANCH_ROUTE),
    ],
    params=[ParamExport("max_limit", int, 70)],
    mod_init=mod_init,
)

S.configure(EXPORTS.param_defaults())     # until mod_init: the export table's defaults
