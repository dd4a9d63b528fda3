"""The cfgutils module: sleep/usleep (blocking, the classic thing async
replaces), random events, route existence checks.

Runs in: main process (mod_init), every process running routes.

Kamailio: src/modules/cfgutils/cfgutils.c. sleep() blocks the calling
process, exactly as Kamailio's does: it is the baseline the ASYNC module's
async_sleep() is measured against.
"""
import random
import time

from asyncd.core.exports import FuncExport, ModuleExports, P, ParamExport
from asyncd.core.route_types import ANY_ROUTE

MOD = "cfgutils"


class CfgutilsState:
    """The rand_event() probability, in percent: the initial_probability
    modparam and the current value. Set in main by mod_init and inherited;
    rand_set_prob() then changes the current value of its own process only
    (cfgutils.c keeps `probability` in shm, one value for all processes)."""
    __slots__ = ("initial_prob", "prob")

    def __init__(self):
        self.initial_prob = self.prob = None

    def configure(self, mp):
        """`mp` holds every modparam of the export table."""
        self.initial_prob = self.prob = int(mp["initial_probability"])


S = CfgutilsState()


def _nonneg_fixup(site):
    a = site.args[0]
    if a.literal and (a.int_value is None or a.int_value < 0):
        site.arg_error(0, f"{site.name}(): {a.value!r} is not a non-negative integer")


def w_sleep(ctx, site, secs):
    if secs is None or secs < 0:
        return -1
    time.sleep(secs)
    return 1


def w_usleep(ctx, site, us):
    if us is None or us < 0:
        return -1
    time.sleep(us / 1e6)
    return 1


def w_rand_event(ctx, site):
    return 1 if random.random() * 100 < S.prob else -1


def w_rand_set_prob(ctx, site, p):
    if p is None or not 0 <= p <= 100:
        return -1
    S.prob = p
    return 1


def w_rand_reset_prob(ctx, site):
    S.prob = S.initial_prob
    return 1


def w_rand_get_prob(ctx, site):
    return S.prob


def w_check_route_exists(ctx, site, name):
    return 1 if site.script.has_route(name) else -1


def w_route_if_exists(ctx, site, name):
    fn = site.script._named.get(name)
    if fn is None:
        return -1
    r = fn(ctx)
    return r


def mod_init(script):
    S.configure(script.modparams[MOD])


EXPORTS = ModuleExports(
    name=MOD,
    functions=[
        FuncExport("sleep", (P.INT,), w_sleep, ANY_ROUTE, _nonneg_fixup),
        FuncExport("usleep", (P.INT,), w_usleep, ANY_ROUTE, _nonneg_fixup),
        FuncExport("rand_event", (), w_rand_event, ANY_ROUTE),
        FuncExport("rand_set_prob", (P.INT,), w_rand_set_prob, ANY_ROUTE),
        FuncExport("rand_reset_prob", (), w_rand_reset_prob, ANY_ROUTE),
        FuncExport("rand_get_prob", (), w_rand_get_prob, ANY_ROUTE),
        FuncExport("check_route_exists", (P.STR,), w_check_route_exists, ANY_ROUTE),
        FuncExport("route_if_exists", (P.STR,), w_route_if_exists, ANY_ROUTE),
    ],
    params=[ParamExport("initial_probability", int, 10),
            ParamExport("hash_file", str, ""),
            ParamExport("lock_set_size", int, 8)],
    mod_init=mod_init,
)

S.configure(EXPORTS.param_defaults())     # until mod_init: the export table's defaults
