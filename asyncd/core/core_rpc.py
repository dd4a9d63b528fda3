"""The core's RPC methods: `system.*` (introspection) and `core.*`.

Runs in: the processes that serve RPC (asyncd.core.rpc).

Kamailio's src/core/core_cmd.c and the `system.*` methods of
src/core/rpc_lookup.c; names, arguments and reply shapes are Kamailio 5.6's.
"""
from asyncd.core.rpc import RpcExport, RpcFault


def rpc_list_methods(call):
    """system.listMethods: every method name, one value each."""
    for name in call.script.rpc.names():
        call.add(name)


def rpc_method_help(call):
    """system.methodHelp NAME: the method's doc text."""
    name, = call.scan("s")
    export = call.script.rpc.lookup(name)
    if export is None:
        raise RpcFault(400, "command not found")
    call.add(export.doc or "undocumented")


def rpc_method_signature(call):
    """system.methodSignature: Kamailio answers "signatures not supported"."""
    call.add("signatures not supported")


def rpc_echo(call):
    """core.echo: every parameter back, as it came."""
    for v in call.params:
        call.add(v)


RPC = [
    RpcExport("system.listMethods", rpc_list_methods, "Lists all RPC methods supported by the server."),
    RpcExport("system.methodSignature", rpc_method_signature, "Returns signature of given method."),
    RpcExport("system.methodHelp", rpc_method_help, "Print the help string for given method."),
    RpcExport("core.echo", rpc_echo, "Returns back its parameters."),
]
