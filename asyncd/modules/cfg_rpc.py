"""The cfg_rpc module: the runtime configuration over RPC (`cfg.get core
debug`, `cfg.seti core debug 3`, `cfg.list`, delayed changes).

Runs in: the processes that serve RPC (ctl handler, JSONRPCS FIFO/DATAGRAM,
a tcp receiver running jsonrpc_dispatch()). The values live in
asyncd/core/cfg_groups.py (shm, applied by every process at its next
message); this file only words Kamailio's methods around them.

Kamailio: src/modules/cfg_rpc/cfg_rpc.c (method names, parameters, faults
and reply shapes are 5.6's). Differences, on purpose (docs/operations.md
"htable, pv and cfg RPCs"):
- no group instances: `group[id]` parses, but there is never an instance,
  so setting or deleting in one fails as Kamailio does for a missing one;
  cfg.add_group_inst / cfg.del_group_inst always fail;
- changes prepared with cfg.set_delayed* are kept by the RPC process that
  received them (Kamailio's ctx is one for all RPC processes): commit them
  over the same transport.
"""
import re
import syslog

from asyncd.core.cfg_groups import CfgError
from asyncd.core.exports import ModuleExports
from asyncd.core.rpc import RET_ARRAY, RpcExport, RpcFault

MOD = "cfg_rpc"

_GROUP = re.compile(r"^([^\[\]]+)(?:\[(\d+)\])?$")
F_GROUP_SYNTAX = 'Wrong group syntax. Use either "group", or "group[id]"'
F_GROUP_ID = 'Wrong group syntax. Use "group[id]"'


def _group(text, need_id=False):
    """Kamailio's cfg_get_group_id: "group" or "group[id]" -> (name, id or None)."""
    m = _GROUP.match(text)
    if m is None or (need_id and m.group(2) is None):
        raise RpcFault(400, F_GROUP_ID if need_id else F_GROUP_SYNTAX)
    return m.group(1), (int(m.group(2)) if m.group(2) is not None else None)


def _set(call, group, var, value, delayed=False):
    name, gid = _group(group)
    cfg = call.script.cfg
    try:
        if gid is not None:
            raise CfgError("no such group instance")
        if delayed:
            cfg.set_delayed(name, var, value)
        else:
            cfg.set_now(name, var, value)
    except CfgError:
        raise RpcFault(400, "Failed to set the variable") from None


def _auto(call):
    """cfg.set / cfg.set_delayed: the value's own type decides."""
    group, var = call.scan("SS")
    if len(call.params) < 3:
        raise call.scan_fault(2, "int", None)
    value = call.params[2]
    if isinstance(value, float):
        value = int(value)
    return group, var, value


def rpc_set(call):
    _set(call, *_auto(call))


def rpc_set_now_int(call):
    _set(call, *call.scan("SSd"))


def rpc_set_now_string(call):
    _set(call, *call.scan("SSs"))


def rpc_set_delayed(call):
    _set(call, *_auto(call), delayed=True)


def rpc_set_delayed_int(call):
    _set(call, *call.scan("SSd"), delayed=True)


def rpc_set_delayed_string(call):
    _set(call, *call.scan("SSs"), delayed=True)


def rpc_del(call):
    group, _var = call.scan("SS")
    _group(group, need_id=True)
    raise RpcFault(400, "Failed to delete the value")


def rpc_commit(call):
    try:
        call.script.cfg.commit()
    except CfgError:
        raise RpcFault(400, "Failed to commit the changes") from None


def rpc_rollback(call):
    call.script.cfg.rollback()


def _readable(cfg, group, var):
    v = cfg.var(group, var)
    return v is not None and v.readable


def rpc_get(call):
    """cfg.get GROUP [VAR]: one value, or a struct of the group's readable ones."""
    got = call.scan("S*S", fault=(500, "Failed to get the parameters"))
    name, _gid = _group(got[0])
    cfg = call.script.cfg
    if len(got) == 2 and got[1]:
        v = cfg.var(name, got[1])
        if v is None:
            raise RpcFault(400, "Failed to get the variable")
        if not v.readable:
            raise RpcFault(400, "Variable exists, but it is not readable via RPC interface")
        call.add(cfg.current(name, got[1]))
        return
    call.add({v.name: cfg.current(name, v.name) for v in cfg.groups.get(name, ())
              if v.readable})


def rpc_reset(call):
    """cfg.reset GROUP: every variable back to its startup value."""
    group, = call.scan("S")
    name, gid = _group(group)
    cfg = call.script.cfg
    try:
        for v in cfg.groups.get(name, ()):
            start = cfg.startup.get((name, v.name), v.default)
            if cfg.current(name, v.name) != start:
                cfg.set_now(name, v.name, start if v.input is None else _as_input(v, start))
    except CfgError:
        raise RpcFault(500, "Reset failed") from None


def _as_input(v, stored):
    """log_facility is set by name and stored as a number: its name again."""
    if v.name == "log_facility":
        for k, n in vars(syslog).items():
            if k.startswith("LOG_") and n == stored and k != "LOG_KERN":
                return k
    return stored


def rpc_help(call):
    group, var = call.scan("SS")
    v = call.script.cfg.var(group, var)
    if v is None:
        raise RpcFault(400, "Failed to get the variable description")
    call.add(v.doc)
    call.add("(parameter type is integer)" if v.input_type is int else "(parameter type is string)")


def rpc_list(call):
    """cfg.list [GROUP]: "group: var", one value each."""
    got = call.scan("*S")
    want = got[0] if got else ""
    for g, vs in call.script.cfg.groups.items():
        if want and g != want:
            continue
        for v in vs:
            call.add(f"{g}: {v.name}")


def rpc_diff(call):
    for g, n, old, new in call.script.cfg.diff():
        call.add({"group name": g, "variable name": n, "old value": old, "new value": new})


def rpc_add_group_inst(call):
    group, = call.scan("S")
    _group(group, need_id=True)
    raise RpcFault(400, "Failed to add the group instance")


def rpc_del_group_inst(call):
    group, = call.scan("S")
    _group(group, need_id=True)
    raise RpcFault(400, "Failed to delete the group instance")


_NOW = "Sets a runtime configuration variable; every process uses the new value from its next message."
_DELAYED = "Stages a change of a runtime configuration variable until cfg.commit."
_NO_INST = "Group instances: not supported by asyncd (always fails)."

EXPORTS = ModuleExports(
    name=MOD,
    rpc=[
        RpcExport("cfg.set", rpc_set, _NOW),
        RpcExport("cfg.set_now_int", rpc_set_now_int, _NOW),
        RpcExport("cfg.seti", rpc_set_now_int, _NOW),
        RpcExport("cfg.set_now_string", rpc_set_now_string, _NOW),
        RpcExport("cfg.sets", rpc_set_now_string, _NOW),
        RpcExport("cfg.del", rpc_del, _NO_INST),
        RpcExport("cfg.set_delayed", rpc_set_delayed, _DELAYED),
        RpcExport("cfg.set_delayed_int", rpc_set_delayed_int, _DELAYED),
        RpcExport("cfg.set_delayed_string", rpc_set_delayed_string, _DELAYED),
        RpcExport("cfg.del_delayed", rpc_del, _NO_INST),
        RpcExport("cfg.commit", rpc_commit, "Applies the changes staged by cfg.set_delayed*."),
        RpcExport("cfg.rollback", rpc_rollback, "Drops the changes staged by cfg.set_delayed*."),
        RpcExport("cfg.get", rpc_get, "Reads one runtime configuration variable, or a whole group."),
        RpcExport("cfg.reset", rpc_reset, "Puts every variable of a group back to its startup value."),
        RpcExport("cfg.help", rpc_help, "Describes a runtime configuration variable and its type."),
        RpcExport("cfg.list", rpc_list, "Names every runtime configuration variable.", RET_ARRAY),
        RpcExport("cfg.diff", rpc_diff, "Shows the changes staged by cfg.set_delayed*."),
        RpcExport("cfg.add_group_inst", rpc_add_group_inst, _NO_INST),
        RpcExport("cfg.del_group_inst", rpc_del_group_inst, _NO_INST),
    ],
)
