"""The RPC registry and calling convention (asyncd/core/rpc.py): methods from
the core and the modules' export tables, scan conversions and faults."""
import pytest

from asyncd.cfg.compiler import compile_cfg
from asyncd.core.errors import CfgError
from asyncd.core.rpc import Registry, RpcExport, RpcFault

CFG = 'loadmodule "tm.so"\nrequest_route { exit; }\n'


def test_core_methods_are_registered_and_listed():
    s = compile_cfg(text=CFG)
    call = s.rpc.call(s, None, "system.listMethods", [])
    assert "core.echo" in call.values and "system.methodHelp" in call.values
    assert call.values == sorted(call.values)


def test_echo_returns_params_and_help_faults_on_unknown_method():
    s = compile_cfg(text=CFG)
    assert s.rpc.call(s, None, "core.echo", [1, "a", 2.5]).values == ["1", "a", "2.5"]   # scan "*.s"
    assert s.rpc.call(s, None, "system.methodHelp", ["core.echo"]).values == ["Returns back its parameters."]
    with pytest.raises(RpcFault) as e:
        s.rpc.call(s, None, "system.methodHelp", ["no.such"])
    assert e.value.code == 400
    with pytest.raises(KeyError):
        s.rpc.call(s, None, "no.such", [])


def test_scan_converts_and_faults_on_missing_or_bad_params():
    seen = []

    def h(call):
        seen.append(call.scan("sd*f"))
    reg = Registry()
    reg.register(RpcExport("t.x", h))
    reg.call(None, None, "t.x", ["a", "12"])
    reg.call(None, None, "t.x", [3, 4, "1.5"])
    assert seen == [["a", 12], ["3", 4, 1.5]]
    for bad in ([], ["a"], ["a", "x"]):
        with pytest.raises(RpcFault):
            reg.call(None, None, "t.x", bad)


def test_handler_exception_becomes_a_500_fault():
    reg = Registry()
    reg.register(RpcExport("t.boom", lambda call: 1 / 0))
    with pytest.raises(RpcFault) as e:
        reg.call(None, None, "t.boom", [])
    assert e.value.code == 500 and "ZeroDivisionError" in e.value.text


def test_duplicate_method_is_refused():
    reg = Registry()
    reg.register(RpcExport("t.x", lambda c: None))
    with pytest.raises(ValueError):
        reg.register(RpcExport("t.x", lambda c: None))


def test_run_dir_has_kamailio_spellings():
    s = compile_cfg(text='rundir="/tmp/r1"\n' + CFG)
    assert s.core["run_dir"] == "/tmp/r1"
    with pytest.raises(CfgError):
        compile_cfg(text='run_dirx="/tmp/r1"\n' + CFG)


def test_scan_with_the_methods_own_fault():
    """call.scan(fmt, fault=(code, text)): a handler's own fault for a missing or bad
    parameter (Kamailio's handlers check scan's count), the transport's otherwise."""
    def h(call):
        call.add(call.scan("sd", fault=(500, "Not enough parameters")))
    reg = Registry()
    reg.register(RpcExport("t.f", h))
    assert reg.call(None, None, "t.f", ["a", "2"]).values == [["a", 2]]
    for bad in ([], ["a"], ["a", "x"]):
        with pytest.raises(RpcFault) as e:
            reg.call(None, None, "t.f", bad)
        assert (e.value.code, e.value.text) == (500, "Not enough parameters")
