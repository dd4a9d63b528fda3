"""The htable.*, pv.shv* and cfg.* RPC methods through the registry a
transport calls (`script.rpc.call`), on a compiled cfg with a real shm
arena and mod_init: reply shapes and values, Kamailio 5.6's faults, and
what the script then sees ($sht, $shv, the log level).

Runs in: the pytest process.
"""
import re

import pytest

from asyncd.cfg.compiler import compile_cfg
from asyncd.core import log
from asyncd.core.context import ProcState
from asyncd.core.rpc import RpcFault, Struct
from asyncd.sip import parse_msg
from shm.arena import ShmArena

CFG = r'''
loadmodule "pv.so"
loadmodule "htable.so"
loadmodule "cfg_rpc.so"
modparam("htable", "htable", "t=>size=4;autoexpire=100")
modparam("htable", "htable", "u=>size=2")
modparam("pv", "shvset", "g=i:7")
modparam("pv", "shvset", "h=s:hello")
request_route {
    $var(a) = $sht(t=>k1);
    $var(b) = $shv(g);
    $shv(x) = 1;
    exit;
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
    saved = log.state.level
    s.cfg.allocate(s.shm)
    yield s
    log.state.level = saved
    s.shm.destroy()


def call(s, method, *params):
    return s.rpc.call(s, None, method, list(params)).values


def fault(s, method, *params):
    with pytest.raises(RpcFault) as e:
        call(s, method, *params)
    return e.value.code, e.value.text


def run_route(s):
    proc = ProcState(script=s)
    ctx = s.new_ctx(parse_msg(REQ, ("10.0.0.1", 5060), ("127.0.0.1", 5060)), proc)
    s.run_request_route(ctx)
    return proc.vars


# -- htable -----------------------------------------------------------------------------
def test_htable_set_get_dump_and_the_script_sees_the_value(script):
    assert call(script, "htable.sets", "t", "k1", "v1") == ["Ok. Key set to new value."]
    assert call(script, "htable.seti", "t", "k2", "5") == ["Ok. Key set to new value."]
    assert run_route(script)["a"] == "v1"
    item = call(script, "htable.get", "t", "k2")[0]["item"]
    assert item["name"] == "k2" and item["value"] == 5 and item["flags"] == 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", item["expire"])     # autoexpire=100
    call(script, "htable.sets", "u", "s", "x")
    assert call(script, "htable.get", "u", "s")[0]["item"] == {
        "name": "s", "value": "x", "flags": 2, "expire": "NEVER"}
    dump = call(script, "htable.dump", "t")
    assert all(set(e) == {"entry", "size", "slot"} and 0 <= e["entry"] < 16 for e in dump)
    items = sorted((i["name"], i["value"], i["type"]) for e in dump for i in e["slot"])
    assert items == [("k1", "v1", "str"), ("k2", 5, "int")]
    assert sum(e["size"] for e in dump) == 2


def test_htable_tables_stats_delete_flush(script):
    call(script, "htable.seti", "t", "a", 1)
    call(script, "htable.seti", "t", "b", 2)
    tables = call(script, "htable.listTables")
    assert [t["name"] for t in tables] == ["u", "t"]           # Kamailio: last defined first
    assert tables[1] == {"name": "t", "dbtable": "", "dbmode": 0, "expire": 100, "updateexpire": 1,
                         "size": 16, "dmqreplicate": 0}
    st = {r["name"]: r for r in call(script, "htable.stats")}
    assert st["t"]["slots"] == 16 and st["t"]["all"] == 2 and st["u"]["all"] == 0
    assert st["t"]["max"] >= 1 and st["u"]["min"] == 0
    assert call(script, "htable.delete", "t", "a") == ["Ok. Key deleted."]
    assert fault(script, "htable.delete", "t", "a") == (404, "Key not found in htable.")
    assert call(script, "htable.flush", "t") == ["Ok. Htable flushed."]
    assert call(script, "htable.dump", "t") == []
    assert call(script, "htable.setxi", "t", "e", 3, 10) == ["Ok. Key set to new value."]
    assert call(script, "htable.setex", "t", "e", 50) == ["Ok"]


def test_htable_faults(script):
    assert fault(script, "htable.get", "zz", "k") == (500, "No such htable")
    assert fault(script, "htable.get", "t", "zz") == (500, "Key name doesn't exist in htable.")
    assert fault(script, "htable.get", "t") == (500, "Not enough parameters (htable name and key name)")
    assert fault(script, "htable.dump") == (500, "No htable name given")
    assert fault(script, "htable.dump", "zz") == (500, "No such htable")
    assert fault(script, "htable.seti", "t", "k", "abc")[1].startswith("Not enough parameters")
    assert fault(script, "htable.setxs", "zz", "k", "v", 1) == (500, "Failed to set the item")
    assert fault(script, "htable.reload", "t") == (500, "No htable db_url")
    assert fault(script, "htable.store", "t") == (500, "No htable db_url")


# -- pv ---------------------------------------------------------------------------------
def test_shv_get_set_and_the_script_sees_the_value(script):
    assert call(script, "pv.shvGet", "g") == [{"name": "g", "type": "int", "value": 7}]
    everything = call(script, "pv.shvGet")[0]
    assert list(everything) == ["items"] and isinstance(everything["items"], Struct)
    got = {v["name"]: v for k, v in everything["items"] if k == "shv"}
    assert set(got) == {"g", "h", "x"} and got["h"]["type"] == "string"
    assert call(script, "pv.shvSet", "g", "int", "9") == ["Ok. Variable set to new value."]
    assert run_route(script)["b"] == 9
    call(script, "pv.shvSet", "g", "str", "nine")
    assert call(script, "pv.shvGet", "g") == [{"name": "g", "type": "string", "value": "nine"}]


def test_shv_faults(script):
    assert fault(script, "pv.shvGet", "nope") == (404, "Variable not found")
    assert fault(script, "pv.shvSet", "nope", "int", 1) == (404, "Variable not found")
    assert fault(script, "pv.shvSet", "g", "foo", "1") == (500, "Unknown parameter type (Types: int or str)")
    assert fault(script, "pv.shvSet", "g", "int", "abc") == (
        500, "Missing integer parameter value (Parameters: varname type value)")
    assert fault(script, "pv.shvSet") == (500, "Missing parameter varname (Parameters: varname type value)")


# -- cfg --------------------------------------------------------------------------------
def test_cfg_seti_debug_sets_the_log_level(script):
    assert call(script, "cfg.seti", "core", "debug", 3) == []
    assert call(script, "cfg.get", "core", "debug") == [3]
    assert log.state.level == 3
    call(script, "cfg.set", "core", "debug", 1)
    assert log.state.level == 1
    group = call(script, "cfg.get", "core")[0]
    assert group["debug"] == 1 and "log_facility" not in group       # not readable, as Kamailio
    assert "core: debug" in call(script, "cfg.list")
    assert call(script, "cfg.list", "nope") == []
    assert call(script, "cfg.help", "core", "debug") == ["debug level", "(parameter type is integer)"]
    assert call(script, "cfg.sets", "core", "log_facility", "LOG_LOCAL0") == []


def test_cfg_delayed_commit_rollback_diff(script):
    call(script, "cfg.set_delayed_int", "core", "debug", 2)
    assert call(script, "cfg.diff") == [{"group name": "core", "variable name": "debug",
                                         "old value": script.cfg.get("core", "debug"), "new value": 2}]
    call(script, "cfg.commit")
    assert call(script, "cfg.get", "core", "debug") == [2] and call(script, "cfg.diff") == []
    call(script, "cfg.set_delayed", "core", "debug", 3)
    call(script, "cfg.rollback")
    assert call(script, "cfg.get", "core", "debug") == [2]


def test_cfg_faults(script):
    assert fault(script, "cfg.get") == (500, "Failed to get the parameters")
    assert fault(script, "cfg.get", "core", "nope") == (400, "Failed to get the variable")
    assert fault(script, "cfg.get", "core", "log_facility") == (
        400, "Variable exists, but it is not readable via RPC interface")
    assert fault(script, "cfg.seti", "core", "nope", 1) == (400, "Failed to set the variable")
    assert fault(script, "cfg.seti", "core", "log_facility", 3) == (400, "Failed to set the variable")
    assert fault(script, "cfg.seti", "core[1]", "debug", 1) == (400, "Failed to set the variable")
    assert fault(script, "cfg.seti", "co[re", "debug", 1) == (
        400, 'Wrong group syntax. Use either "group", or "group[id]"')
    assert fault(script, "cfg.del", "core", "debug") == (400, 'Wrong group syntax. Use "group[id]"')
    assert fault(script, "cfg.help", "core", "nope") == (400, "Failed to get the variable description")
    assert fault(script, "cfg.seti", "core")[0] == 500            # the transport's scan fault


def test_tm_timers_are_a_runtime_cfg_group():
    from asyncd.modules.tm.state import S as tm_state
    s = compile_cfg(text='loadmodule "tm.so"\nloadmodule "cfg_rpc.so"\n'
                         'modparam("tm", "fr_timer", 4000)\nrequest_route { exit; }\n')
    s.shm = ShmArena.create(16 << 20)
    try:
        s.init_modules()
        s.cfg.allocate(s.shm)
        assert call(s, "cfg.get", "tm", "fr_timer") == [4000]
        call(s, "cfg.seti", "tm", "fr_timer", 2500)
        assert tm_state.fr_ms == 2500           # what the next t_newtran copies
        assert fault(s, "cfg.seti", "tm", "wt_timer", 0) == (400, "Failed to set the variable")
        assert "tm: fr_inv_timer" in call(s, "cfg.list", "tm")
    finally:
        s.destroy_modules()
        s.shm.destroy()
