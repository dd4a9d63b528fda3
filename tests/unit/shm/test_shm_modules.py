"""The script side: htable module ($sht & co, sht_* functions, HTable Timer)
and pv_shm ($shv + shvset, $avp, $xavp) through the real cfg compiler.

Runs in: the pytest process and the processes it forks.
"""
import os
import signal
import subprocess
import sys
import time

import pytest

from asyncd.core.context import ProcState
from asyncd.core.errors import CfgError
from asyncd.modules import htable as htable_mod
from shm.arena import ShmArena
from shm.proctable import ProcTable, read_segment
from shm_testutil import fork, wait_all
from workers import timer as timer_loop

REQ = (b"OPTIONS sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1\r\n"
       b"From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: c-1\r\n"
       b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")

HEAD = r'''
loadmodule "pv.so"
loadmodule "htable.so"
modparam("htable", "htable", "a=>size=4;autoexpire=2;")
modparam("htable", "htable", "c=>size=4;initval=0;")
modparam("htable", "htable", "s=>size=8")
modparam("pv", "shvset", "g=i:7")
modparam("pv", "shvset", "h=s:hello")
'''


def _script(body, arena_mb=16):
    from asyncd.cfg.compiler import compile_cfg
    s = compile_cfg(text=HEAD + body)
    s.shm = ShmArena.create(arena_mb << 20)
    s.init_modules()
    return s


def _run(s, route_vars=None):
    from asyncd.sip import parse_msg
    msg = parse_msg(REQ, ("10.0.0.1", 5060), ("127.0.0.1", 5060))
    proc = ProcState(script=s)
    ctx = s.new_ctx(msg, proc)
    s.run_request_route(ctx)
    return ctx, proc


@pytest.fixture
def script_factory():
    made = []

    def make(body):
        s = _script(body)
        made.append(s)
        return s

    yield make
    for s in made:
        s.shm.destroy()


def test_sht_set_get_types_and_dynamic_keys(script_factory):
    s = script_factory(r'''
request_route {
    $sht(s=>int) = 5;
    $sht(s=>str) = "5";
    $sht(s=>$fU) = "from alice";
    $var(a) = $sht(s=>int) + 1;
    $var(b) = $sht(s=>str) + 1;
    $var(c) = $sht(s=>alice);
    $var(d) = $shtinc(c=>n);
    $var(e) = $shtinc(c=>n);
    $var(f) = $shtdec(s=>missing);
    $sht(s=>gone) = "x";
    $sht(s=>gone) = $null;
    $var(g) = $shtcn(s=>~~^(int|str)$);
    $var(h) = $shtcv(s=>==from alice);
    $var(i) = $shtex(a=>nokey);
    exit;
}''')
    ctx, proc = _run(s)
    v = proc.vars
    assert v["a"] == 6            # int stays int
    assert v["b"] == "51"         # string stays string ("5" + 1 concatenates)
    assert v["c"] == "from alice"
    assert (v["d"], v["e"]) == (1, 2)
    assert v["f"] == 0            # $null ($shtdec without initval) stored in $var reads 0
    assert v["g"] == 2 and v["h"] == 1 and v["i"] == 0
    assert htable_mod.S.tables["s"].get("gone") is None


def test_sht_functions(script_factory):
    s = script_factory(r'''
request_route {
    $sht(s=>user-1) = "a"; $sht(s=>user-2) = "b"; $sht(s=>keep) = "c"; $sht(s=>vx) = "drop-me";
    sht_rm_name_re("s=>^user-1$");
    sht_rm_value_re("s=>^drop");
    sht_rm("s", "keep");
    $var(n) = $shtcn(s=>**);
    sht_lock("s=>k"); $sht(s=>k) = 1; sht_unlock("s=>k");
    $sht(c=>x) = 3;
    sht_reset("c");
    $var(m) = $sht(c=>x);
    exit;
}''')
    ctx, proc = _run(s)
    assert proc.vars["n"] == 1
    assert htable_mod.S.tables["s"].get("user-2") == "b"
    assert proc.vars["m"] == 0          # initval after reset


def test_bad_regex_literal_is_a_startup_error():
    from asyncd.cfg.compiler import compile_cfg
    with pytest.raises(CfgError) as e:
        compile_cfg(text=HEAD + 'request_route { sht_rm_name_re("s=>(unclosed"); }')
    assert "regular expression" in str(e.value)


def _init_fails(cfg_text):
    """mod_init of this cfg must refuse it with a CfgError (a startup error)."""
    from asyncd.cfg.compiler import compile_cfg
    s = compile_cfg(text=cfg_text)
    s.shm = ShmArena.create(4 << 20)
    try:
        with pytest.raises(CfgError):
            s.init_modules()
    finally:
        s.shm.destroy()


def test_bad_table_definition_is_a_startup_error():
    _init_fails('loadmodule "htable.so"\nmodparam("htable", "htable", "t=>size=x")\n'
                'request_route { exit; }')


def test_shv_shared_across_processes_with_shvset(script_factory):
    s = script_factory(r'''
request_route {
    $shv(g) = $shv(g) + 1;
    $var(h) = $shv(h);
    $var(u) = $shv(unset);
    exit;
}''')

    def child():
        ctx, proc = _run(s)
        assert proc.vars["h"] == "hello" and proc.vars["u"] == 0

    # one child after another: `$shv(g) = $shv(g) + 1` is a read then a write, not
    # atomic (nor is it in Kamailio), so three at once could lose an increment (seen: 9)
    res = [wait_all([fork(child)], 20) for _ in range(3)]
    assert [set(r.values()) for r in res] == [{0}] * 3
    assert s.shm.shv.get("g") == 10


def test_avp_and_xavp_from_the_cfg_survive_dumps(script_factory):
    s = script_factory(r'''
request_route {
    $avp(x) = 1; $avp(x) = "two"; $avp(i:3) = 3;
    $var(all) = $(avp(x)[*]);
    $var(second) = $(avp(x)[1]);
    $xavp(r=>f) = "v1"; $xavp(r[0]=>g) = 9; $xavp(r=>f) = "v2";
    $var(x0) = $xavp(r=>f); $var(x1) = $xavp(r[1]=>f); $var(xg) = $xavp(r[1]=>g);
    $xavu(u=>a) = 1; $xavu(u=>a) = 2;
    $var(u) = $xavu(u=>a);
    $avp(x) = $null;
    exit;
}''')
    ctx, proc = _run(s)
    v = proc.vars
    assert v["all"] == "two,1" and v["second"] == 1
    assert (v["x0"], v["x1"], v["xg"], v["u"]) == ("v2", "v1", 9, 2)
    from shm.avp import AvpList, XavpList
    a = AvpList.loads(ctx.avps.dumps())
    assert a.values("x") == [1] and a.get(3) == 3
    x = XavpList.loads(ctx.xavps.dumps())
    assert x.get("xavp", "r", 1, "g") == 9


def test_htable_timer_process_reclaims_expired(script_factory):
    s = script_factory('request_route { $sht(a=>k) = 1; exit; }\n'
                       'event_route[htable:expired:a] {\n'
                       '    $sht(s=>expired-$shtrecord(key)) = $shtrecord(value);\n}\n')
    rows = htable_mod.procs(s)
    assert [(r.role, r.title, r.rank, r.count) for r in rows] == [("timer", "HTable Timer", -1, 1)]
    _run(s)
    ht = htable_mod.S.tables["a"]
    assert ht.count() == 1

    def timer():
        proc = ProcState(script=s, rank=-1, desc="HTable Timer", role="timer")
        signal.signal(signal.SIGTERM, lambda *a: setattr(proc, "stopping", True))
        timer_loop.run(proc, rows[0], 0)

    pid = fork(timer)
    deadline = time.monotonic() + 6
    while ht.count() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ht.count() == 0
    deadline = time.monotonic() + 2
    while htable_mod.S.tables["s"].get("expired-k") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert htable_mod.S.tables["s"].get("expired-k") == 1     # the event route ran
    t0 = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    assert wait_all([pid], 3)[pid] == 0
    assert time.monotonic() - t0 < 1.5


def test_no_timer_process_without_autoexpire():
    from asyncd.cfg.compiler import compile_cfg
    s = compile_cfg(text='loadmodule "htable.so"\nmodparam("htable", "htable", "t=>size=4")\n'
                         'request_route { exit; }')
    s.shm = ShmArena.create(4 << 20)
    try:
        s.init_modules()
        assert htable_mod.procs(s) == []
    finally:
        s.shm.destroy()


def test_proctable_readable_from_outside_without_unlinking(arena):
    pt = ProcTable(arena, 8)
    pt.set(0, os.getpid(), 0, "main process - attendant")
    pt.set(1, 4242, 1, "udp receiver child=0 sock=127.0.0.1:5060")
    assert [r[3] for r in pt.rows()] == ["main process - attendant",
                                          "udp receiver child=0 sock=127.0.0.1:5060"]
    code = ("import sys; from shm.proctable import read_segment;"
            f"print(read_segment({arena.name!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20,
                         env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert "udp receiver child=0" in out.stdout, out.stderr
    assert os.path.exists("/dev/shm/" + arena.name)
    assert read_segment(arena.name)[1][1] == 4242


def test_varset_initialises_each_process_vars():
    from asyncd.cfg.compiler import compile_cfg
    from asyncd.modules import pv_shm
    s = compile_cfg(text='loadmodule "pv.so"\nmodparam("pv", "varset", "a=i:5")\n'
                         'modparam("pv", "varset", "b=s:text")\nrequest_route { exit; }')
    s.shm = ShmArena.create(4 << 20)
    try:
        s.init_modules()
        proc = ProcState(script=s, rank=1)
        pv_shm.child_init(proc, 1)
        assert proc.vars == {"a": 5, "b": "text"}
    finally:
        s.shm.destroy()


def test_bad_shvset_is_a_startup_error():
    _init_fails('loadmodule "pv.so"\nmodparam("pv", "shvset", "a=x:5")\nrequest_route { exit; }')


def test_iterator_and_setx(script_factory):
    s = script_factory(r'''
request_route {
    $sht(s=>a) = 1; $sht(s=>b) = "two";
    $var(keys) = "";
    $var(sum) = 0;
    sht_iterator_start("i1", "s");
    while (sht_iterator_next("i1")) {
        $var(keys) = $var(keys) + $shtitkey(i1) + ",";
        if ($shtitkey(i1) == "a") { sht_iterator_rm("i1"); }
    }
    sht_iterator_end("i1");
    sht_setxi("a", "x", "5", "10");
    sht_setxs("a", "y", "text", "0");
    $var(x) = $sht(a=>x);
    $var(xe) = $shtex(a=>x);
    $var(y) = $sht(a=>y);
    exit;
}''')
    ctx, proc = _run(s)
    assert sorted(proc.vars["keys"].strip(",").split(",")) == ["a", "b"]
    assert htable_mod.S.tables["s"].get("a") is None and htable_mod.S.tables["s"].get("b") == "two"
    assert proc.vars["x"] == 5 and proc.vars["xe"] == 10 and proc.vars["y"] == "text"
