"""The core.* RPC methods (asyncd/core/core_rpc.py) in process: Kamailio
5.6's result shapes and faults (src/core/core_cmd.c)."""
import pytest

from asyncd.cfg.compiler import compile_cfg
from asyncd.core.rpc import RpcFault


class _Shm:
    def usage(self):
        return {"total": 64 << 20, "free": 60 << 20, "used": 1 << 20, "real_used": 4 << 20,
                "max_used": 4 << 20, "fragments": 3}


class _Table:
    def rows(self):
        return [(0, 100, 0, "main process - attendant"), (1, 101, 1, "udp receiver child=0 sock=x")]


@pytest.fixture
def s():
    script = compile_cfg(text="request_route { exit; }\n")
    script.shm = _Shm()
    script.proctable = _Table()
    script.start_time = 1000.0
    return script


def call(s, method, *params):
    return s.rpc.call(s, None, method, list(params)).values


def test_process_lists(s):
    assert call(s, "core.ps") == [100, "main process - attendant", 101, "udp receiver child=0 sock=x"]
    assert call(s, "core.psx")[1] == {"IDX": 1, "PID": 101, "DSC": "udp receiver child=0 sock=x"}
    want = {"index": 0, "pid": 100, "status": 1, "rank": 0, "description": "main process - attendant"}
    assert call(s, "core.psa")[0] == want


def test_shmmem_units_and_bad_unit(s):
    assert call(s, "core.shmmem")[0]["total"] == 64 << 20
    assert call(s, "core.shmmem", "m")[0] == {"total": 64, "free": 60, "used": 1, "real_used": 4,
                                              "max_used": 4, "fragments": 3}
    assert call(s, "core.shmmem", "KB")[0]["total"] == 64 << 10
    for bad in ("x", "kk"):
        with pytest.raises(RpcFault) as e:
            call(s, "core.shmmem", bad)
        assert (e.value.code, e.value.text) == (500, "bad param, (use b|k|m|g)")


def test_uptime_and_version(s):
    (u,) = call(s, "core.uptime")
    assert list(u) == ["now", "up_since", "uptime"] and u["uptime"] > 0
    assert call(s, "core.version")[0].startswith("asyncd ")
    assert list(call(s, "core.info")[0]) == ["version", "id", "compiler", "compiled", "flags"]


def test_tcp_info_and_its_fault_when_tcp_is_disabled(s):
    assert list(call(s, "core.tcp_info")[0]) == ["readers", "max_connections", "max_tls_connections",
                                                 "opened_connections", "opened_tls_connections",
                                                 "write_queued_bytes"]
    s.core["disable_tcp"] = 1
    with pytest.raises(RpcFault) as e:
        call(s, "core.tcp_info")
    assert (e.value.code, e.value.text) == (500, "tcp support disabled")


def test_prints_printi_stop_at_the_first_bad_parameter(s):
    assert call(s, "core.printi", 1, "2", "x") == [1, 2]
    with pytest.raises(RpcFault):
        call(s, "core.printi", "x")
    assert call(s, "core.prints", "a", 5) == ["a", "5"]
    with pytest.raises(RpcFault) as e:
        call(s, "system.methodSignature", "core.ps")
    assert e.value.text == "Not Implemented Yet"
