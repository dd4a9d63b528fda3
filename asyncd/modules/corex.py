"""The corex module: loadable for cfg compatibility. `$atkv` (Kamailio's
corex pv) is provided by the async module's exports here (docs/kamailio-async.md §10.4), so it
works whether or not corex is loaded.

Runs in: main process (loading only).

Kamailio: src/modules/corex/corex_mod.c.
"""
from asyncd.core.exports import FuncExport, ModuleExports, ParamExport
from asyncd.core.route_types import ANY_ROUTE


def w_is_faked_msg(ctx, site):
    m = ctx.msg
    if getattr(m, "faked", False):
        return 1
    return 1 if (m.src == ("127.0.0.1", 5060) and m.callid == "123" and m.from_tag == "123") else -1


EXPORTS = ModuleExports(
    name="corex",
    functions=[FuncExport("is_faked_msg", (), w_is_faked_msg, ANY_ROUTE)],
    params=[ParamExport("alias_subdomains", str, None, multi=True),
            ParamExport("network_io_intercept", int, 0),
            ParamExport("min_msg_len", int, 32)],
)
