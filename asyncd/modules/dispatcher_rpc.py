"""dispatcher's RPC methods: dispatcher.list, reload, set_state,
set_duid_state, ping_active, hash, add, remove.

Runs in: the processes that serve RPC (ctl handler, JSONRPCS FIFO/DATAGRAM).
The list and the states are the shm ones (shm/dispatcher.py): a state set
here is what the next ds_select_dst() in any process sees.

Kamailio: src/modules/dispatcher/dispatcher.c, dispatcher_rpc_list
(ds_rpc_print_set: the reply shape, the one-letter state names),
dispatcher_rpc_reload, dispatcher_rpc_set_state_helper,
dispatcher_rpc_ping_active, dispatcher_rpc_hash, dispatcher_rpc_add and
dispatcher_rpc_remove (dispatch.c ds_add_dst / ds_remove_dst) (names, parameters,
faults and reply shapes are 5.6's). `full` adds HOST, IPADDR, PORT, PROTOID
and DNSTIME_SEC/USEC (0: asyncd resolves once, at load).
"""
from asyncd.core import log
from asyncd.core.rpc import RpcExport, RpcFault, Struct
from asyncd.modules.dispatcher_list import (DS_DISABLED_DST, DS_INACTIVE_DST, DS_NODNSARES_DST,
                                            DS_PROBING_DST, DS_TRYING_DST, ds_get_hash, pack_dest)
from asyncd.modules.dispatcher_load import dload
from asyncd.modules.dispatcher_state import flags_of, rebuild, reinit_state, reload, reload_guard

MOD = "dispatcher"

PRINT_NORMAL, PRINT_SHORT, PRINT_FULL = 1, 2, 3


def state_letters(flags):
    """ds_rpc_print_set: I, D, T or A, then P or X."""
    if flags & DS_INACTIVE_DST:
        c = "I"
    elif flags & DS_DISABLED_DST:
        c = "D"
    elif flags & DS_TRYING_DST:
        c = "T"
    else:
        c = "A"
    return c + ("P" if flags & DS_PROBING_DST else "X")


def parse_rpc_state(text):
    """dispatcher_rpc_set_state_helper's state: 0/i, 1/a, 2/d, 3/t, a second
    letter p adds probing. -> the bits, or None."""
    if not text:
        return None
    c, probing = text[0].lower(), len(text) > 1 and text[1] in "pP"
    if c in "0i":
        return DS_INACTIVE_DST | (DS_PROBING_DST if probing else 0)
    if c in "1a":
        return DS_PROBING_DST if probing else 0
    if c in "2d":
        return DS_DISABLED_DST
    if c in "3t":
        return DS_TRYING_DST | (DS_PROBING_DST if probing else 0)
    return None


def _named_list(call):
    """Kamailio adds each SET / DEST to an array with rpc->struct_add: BINRPC
    sends the named records in the array (kamcmd prints `SET: {`), JSON-RPC
    an array of one-member objects ([{"SET": {...}}])."""
    if call.transport == "binrpc":
        return lambda pairs: Struct(pairs)
    return lambda pairs: [{k: v} for k, v in pairs]


class DispatcherRpc:
    """The methods, bound to dispatcher's state (asyncd/modules/dispatcher_state.py)."""

    def __init__(self, state):
        self.st = state

    def _dest(self, half, s, j, mode):
        d = s.dests[j]
        out = {"URI": d.uri, "FLAGS": state_letters(flags_of(half, s, j)), "PRIORITY": d.priority}
        if mode == PRINT_FULL:
            out.update({"HOST": d.host, "IPADDR": d.ip or "", "PORT": d.port, "PROTOID": d.proto,
                        "DNSTIME_SEC": 0, "DNSTIME_USEC": 0})
        if mode != PRINT_SHORT and d.body is not None:
            out["ATTRS"] = {"BODY": d.body, "DUID": d.duid, "MAXLOAD": d.maxload,
                            "WEIGHT": d.weight, "RWEIGHT": d.rweight, "SOCKET": d.socket,
                            "SOCKNAME": d.sockname, "OBPROXY": d.obproxy}
        if self.st.mp.get("ds_hash_size", 0) > 0:
            out["RUNTIME"] = {"DLGLOAD": dload(half, s, j)}
        return out

    def _targets(self, named, half, s, mode):
        return named(("DEST", self._dest(half, s, j, mode)) for j in range(len(s.dests)))

    def list(self, call):
        params = call.scan("*S")
        mode = PRINT_NORMAL
        if params and params[0].lower() in ("short", "full"):
            mode = PRINT_SHORT if params[0].lower() == "short" else PRINT_FULL
        half, lst = self.st.current()
        if not lst.order:
            raise RpcFault(500, "No Destination Sets")
        named = _named_list(call)
        records = named(("SET", {"ID": s.id, "TARGETS": self._targets(named, half, s, mode)})
                        for s in lst.order)
        call.add({"NRSETS": len(lst.order), "RECORDS": records})

    def reload(self, call):
        err = reload()
        if err is not None:
            raise RpcFault(500, err)
        call.add("Ok. Dispatcher successfully reloaded.")

    def _set_state(self, call, by_duid):
        state, group, dest = call.scan(".SdS", fault=(500, "Invalid Parameters"))
        if not state:
            raise RpcFault(500, "Invalid State Parameter")
        bits = parse_rpc_state(state)
        if bits is None:
            raise RpcFault(500, "Unknown State Value")
        if dest == "all":
            reinit_state(group, "all", bits)
        elif reinit_state(group, dest, bits, by_duid) < 0:
            raise RpcFault(500, "State Update Failed")
        call.add("Ok. Dispatcher state updated.")

    def set_state(self, call):
        self._set_state(call, False)

    def set_duid_state(self, call):
        self._set_state(call, True)

    def ping_active(self, call):
        params = call.scan("*d")
        old = self.st.store.ping_active()
        if not params:
            call.add({"OldPingState": old})
            return
        self.st.store.set_ping_active(params[0])
        call.add({"NewPingState": params[0], "OldPingState": old})

    def hash(self, call):
        vals = call.scan("dS*S", fault=(500, "Invalid Parameters"))
        nslots, v1 = vals[0], vals[1]
        v2 = vals[2] if len(vals) > 2 else None
        h = ds_get_hash(v1.encode("utf-8", "surrogateescape"),
                        v2.encode("utf-8", "surrogateescape") if v2 is not None else None)
        slot = h % nslots if nslots > 0 else 0
        if call.transport == "binrpc":      # BINRPC integers are signed 32-bit: kamcmd prints so
            h = (h ^ 0x80000000) - 0x80000000
        call.add({"hashid": h, "slot": slot})

    def add(self, call):
        """dispatcher.add group uri [flags [priority [attrs]]]."""
        busy = reload_guard()
        if busy:
            raise RpcFault(500, busy)
        vals = call.scan("dS*ddS", fault=(500, "Invalid Parameters"))
        group, dest = vals[0], vals[1]
        flags = vals[2] if len(vals) > 2 else 0
        prio = vals[3] if len(vals) > 3 else 0
        attrs = vals[4] if len(vals) > 4 else ""
        err = rebuild(add=(group, dest, flags, prio, attrs))
        if err is not None:
            raise RpcFault(500, "Adding dispatcher dst failed")
        call.add("Ok. Dispatcher destination added.")

    def remove(self, call):
        """dispatcher.remove group uri."""
        busy = reload_guard()
        if busy:
            raise RpcFault(500, busy)
        group, dest = call.scan("dS", fault=(500, "Invalid Parameters"))
        try:
            uri = pack_dest(dest, DS_NODNSARES_DST, 0, "").uri
        except ValueError:
            log.err(MOD, f"failed to pack address: {group} {dest}")
            raise RpcFault(500, "Removing dispatcher dst failed") from None
        err = rebuild(drop=(group, uri))
        if err is not None:
            raise RpcFault(500, "Removing dispatcher dst failed")
        call.add("Ok. Dispatcher destination removed.")

    def exports(self):
        return [
            RpcExport("dispatcher.reload", self.reload, "Reload dispatcher destination sets"),
            RpcExport("dispatcher.list", self.list, "Return the content of dispatcher sets"),
            RpcExport("dispatcher.set_state", self.set_state, "Set the state of a destination by address"),
            RpcExport("dispatcher.set_duid_state", self.set_duid_state,
                      "Set the state of a destination by duid"),
            RpcExport("dispatcher.ping_active", self.ping_active,
                      "Manage setting on/off the pinging (keepalive) of destinations"),
            RpcExport("dispatcher.hash", self.hash, "Compute the hash if the values"),
            RpcExport("dispatcher.add", self.add, "Add a destination address in memory"),
            RpcExport("dispatcher.remove", self.remove, "Remove a destination address from memory"),
        ]
