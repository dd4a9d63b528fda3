"""pike in process on a real shm arena: the 22nd request of one unit from
one address blocks it (density 16: the prefix tree grows one byte per 4
hits, ip_tree.c), other addresses are not blocked, the block ends two
units later, pike.top's shape, the blocked_ips statistic.

Runs in: the pytest process.
"""
import pytest

from asyncd.cfg.compiler import compile_cfg
from asyncd.core.context import ProcState
from asyncd.core.rpc import RpcFault
from asyncd.modules import pike
from asyncd.sip import parse_msg
from shm.arena import ShmArena

pytestmark = pytest.mark.unit

CFG = r'''
loadmodule "pv.so"
loadmodule "pike.so"
modparam("pike", "sampling_time_unit", 2)
modparam("pike", "reqs_density_per_unit", 16)
modparam("pike", "remove_latency", 4)
request_route {
    $var(r) = pike_check_req();
    if ($hdr(X-Ip) != $null) { $var(r) = pike_check_ip("$hdr(X-Ip)"); }
}
'''
REQ = (b"OPTIONS sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1\r\n"
       b"From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: c-1\r\n"
       b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")


@pytest.fixture
def script():
    s = compile_cfg(text=CFG)
    s.shm = ShmArena.create(16 << 20)
    s.init_modules()
    yield s
    pike.S.table = None
    s.shm.destroy()


def check(s, proc, src="192.0.2.7"):
    s.run_request_route(s.new_ctx(parse_msg(REQ, (src, 5060), ("127.0.0.1", 5060)), proc))
    return proc.vars["r"]


def test_the_22nd_request_blocks_then_all_are_blocked(script):
    proc = ProcState(script)
    rcs = [check(script, proc) for _ in range(25)]
    assert rcs[:21] == [1] * 21
    assert rcs[21] == -2 and rcs[22:] == [-1] * 3
    assert check(script, proc, "192.0.2.8") == 1
    assert proc.cnt[pike.S.blocked] == 1


def test_the_block_ends_when_the_units_pass(script):
    proc = ProcState(script)
    for _ in range(22):
        check(script, proc)
    # the table's clock is monotonic: move it instead of sleeping
    pike.S.table.t0 -= 2 * 2 + 0.1
    assert check(script, proc) == 1


def test_pike_top(script):
    proc = ProcState(script)
    for _ in range(22):
        check(script, proc)
    top = script.rpc.call(script, None, "pike.top", []).values[0]
    assert top["max_hits"] == 16 and top["number_of_rows"] == 1
    row = top["list"][0]
    assert row["ip_addr"] == "192.0.2.7" and row["status"] == "HOT"
    assert (row["leaf_hits_prev"], row["leaf_hits_curr"]) == (0, 16)
    assert 0 < row["expires"] <= 4
    every = script.rpc.call(script, None, "pike.list", ["all"]).values[0]
    assert [r["ip_addr"] for r in every["list"]] == ["192.0.2.7"]
    with pytest.raises(RpcFault) as e:
        script.rpc.call(script, None, "pike.top", ["cold"])
    assert e.value.code == 500


def test_pike_check_ip_counts_the_address_given(script):
    proc = ProcState(script)
    req = REQ.replace(b"Content-Length: 0", b"X-Ip: 2001:db8::1\r\nContent-Length: 0")
    rcs = []
    for _ in range(22):
        script.run_request_route(script.new_ctx(parse_msg(req, ("192.0.2.7", 5060), ("127.0.0.1", 5060)),
                                                proc))
        rcs.append(proc.vars["r"])
    # an IPv6 address is 16 bytes deep: the tree needs more requests to reach it
    assert rcs == [1] * 22
