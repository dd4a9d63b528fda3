"""The cfgutils module: sleep/usleep (blocking, the classic thing async
replaces), random events, route existence checks.

Runs in: every process running routes.

Kamailio: src/modules/cfgutils/cfgutils.c. sleep() blocks the calling
process, exactly as Kamailio's does: it is the baseline the ASYNC module's
async_sleep() is measured against.
"""
import random
import time

from asyncd.core.exports import FuncExport, ModuleExports, P, ParamExport
from asyncd.core.route_types import ANY_ROUTE

_state = {"prob": 10}


def _nonneg_fixup(site):
    a = site.args[0]
    if a.literal and (a.int_value is None or a.int_value < 0):
        site.arg_error(0, f"{site.name}(): {a.value!r} is not a non-negative integer")


def sleep_(ctx, site, secs):
    if secs is None or secs < 0:
        return -1
    time.sleep(secs)
    return 1


def usleep_(ctx, site, us):
    if us is None or us < 0:
        return -1
    time.sleep(us / 1e6)
    return 1


def rand_event(ctx, site):
    return 1 if random.random() * 100 < _state["prob"] else -1


def rand_set_prob(ctx, site, p):
    if p is None or not 0 <= p <= 100:
        return -1
    _state["prob"] = p
    return 1


def rand_reset_prob(ctx, site):
    _state["prob"] = (site.script.modparams.get("cfgutils") or {}).get("initial_probability", 10)
    return 1


def rand_get_prob(ctx, site):
    return _state["prob"]


def check_route_exists(ctx, site, name):
    return 1 if site.script.has_route(name) else -1


def route_if_exists(ctx, site, name):
    fn = site.script._named.get(name)
    if fn is None:
        return -1
    r = fn(ctx)
    return r


def _init(script):
    _state["prob"] = script.modparams.get("cfgutils", {}).get("initial_probability", 10)


EXPORTS = ModuleExports(
    name="cfgutils",
    functions=[
        FuncExport("sleep", (P.INT,), sleep_, ANY_ROUTE, _nonneg_fixup),
        FuncExport("usleep", (P.INT,), usleep_, ANY_ROUTE, _nonneg_fixup),
        FuncExport("rand_event", (), rand_event, ANY_ROUTE),
        FuncExport("rand_set_prob", (P.INT,), rand_set_prob, ANY_ROUTE),
        FuncExport("rand_reset_prob", (), rand_reset_prob, ANY_ROUTE),
        FuncExport("rand_get_prob", (), rand_get_prob, ANY_ROUTE),
        FuncExport("check_route_exists", (P.STR,), check_route_exists, ANY_ROUTE),
        FuncExport("route_if_exists", (P.STR,), route_if_exists, ANY_ROUTE),
    ],
    params=[ParamExport("initial_probability", int, 10),
            ParamExport("hash_file", str, ""),
            ParamExport("lock_set_size", int, 8)],
    mod_init=_init,
)
