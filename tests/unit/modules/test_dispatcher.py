"""dispatcher in process: the list file (format, order of sets and
destinations, attributes, bad lines), ds_get_hash against values Kamailio
5.6.3's `dispatcher.hash` printed, the state machine of ds_update_state
(thresholds), each algorithm on a real shm arena (use_default, inactive
destinations skipped, round-robin), the failover xavps with ds_next_dst,
ds_mark_dst, ds_is_from_list modes, the RPC replies.

Runs in: the pytest process.
"""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncd.cfg.compiler import compile_cfg
from asyncd.core.context import ProcState
from asyncd.core.rpc import Registry, RpcFault
from asyncd.modules import dispatcher_load, dispatcher_ping, dispatcher_state
from asyncd.modules.dispatcher import EXPORTS
from asyncd.modules.dispatcher_list import (DS_DISABLED_DST, DS_INACTIVE_DST, DS_PROBING_DST,
                                            DS_TRYING_DST, AvlOrder, ListError, build, ds_get_hash,
                                            load_file, parse_line, split_params, uri_hash_keys)
from asyncd.modules.dispatcher_rpc import parse_rpc_state, state_letters
from asyncd.modules.dispatcher_state import next_state
from asyncd.sip import parse_msg
from shm.arena import ShmArena

pytestmark = pytest.mark.unit
M = 0xFFFFFFFF


# -- the list file ---------------------------------------------------------------------------
def test_parse_line_fields_comments_and_defaults():
    assert parse_line("  # a comment\n") is None
    assert parse_line("\n") is None
    assert parse_line("1 sip:a.example\n") == (1, "sip:a.example", 0, 0, "")
    assert parse_line("2 sip:b:5070 8 # flags only\n") == (2, "sip:b:5070", 8, 0, "")
    assert parse_line("3\tsip:c 0 10 weight=5;duid=x extra\n") == (3, "sip:c", 0, 10, "weight=5;duid=x")
    assert parse_line("4 sip:d#comment\n") == (4, "sip:d", 0, 0, "")
    with pytest.raises(ListError):
        parse_line("5   \n")


def test_order_of_sets_and_destinations(tmp_path):
    f = tmp_path / "ds.list"
    f.write_text("1 sip:127.0.0.1:5071 0 5 weight=50;duid=a\n1 sip:127.0.0.1:5072 0 5\n"
                 "1 sip:127.0.0.1:5073 0 10\n5 127.0.0.1:5074\n2 sip:127.0.0.1:5075\n")
    lst = load_file(str(f))
    # Kamailio's AVL tree walked children first: 1, 5, 2 (dispatcher.list printed the same)
    assert [s.id for s in lst.order] == [1, 5, 2]
    # highest priority first, equal priorities in the reverse order of the file
    assert [d.uri for d in lst.sets[1].dests] == ["sip:127.0.0.1:5073", "sip:127.0.0.1:5072",
                                                  "sip:127.0.0.1:5071"]
    assert lst.sets[5].dests[0].uri == "sip:127.0.0.1:5074"      # "sip:" added
    d = lst.sets[1].dests[2]
    assert (d.duid, d.weight, d.body) == ("a", 50, "weight=50;duid=a")
    assert [s.base for s in lst.order] == [0, 3, 4]


def test_avl_postorder_matches_a_balanced_tree():
    t = AvlOrder()
    for i in range(1, 8):
        t.insert(i)
    assert t.postorder() == [1, 3, 2, 5, 7, 6, 4]
    t = AvlOrder()
    for i in (3, 2, 1):
        t.insert(i)
    assert t.postorder() == [1, 3, 2]


def test_bad_destinations_are_skipped_or_fail_the_load():
    entries = [(1, "sip:[bad", 0, 0, ""), (1, "sip:127.0.0.1", 0, 0, ""),
               (2, "sip:no-such-host.invalid", 0, 0, ""), (3, "sip:no-such-host.invalid", 16, 0, "")]
    lst = build(entries)
    assert [s.id for s in lst.order] == [3, 1]       # post-order: the child before the root
    assert lst.sets[3].dests[0].ip is None            # flag 16: no DNS lookup
    with pytest.raises(ListError):
        build(entries, load_mode=1)
    # a socket= that is not one of ours: skipped (pack_dest "non-local socket")
    ours = (("udp", "127.0.0.1", 5060),)
    lst = build([(1, "sip:127.0.0.1:1", 0, 0, "socket=udp:127.0.0.1:5060"),
                 (1, "sip:127.0.0.1:2", 0, 0, "socket=udp:10.9.9.9:5060")], sockets=ours)
    assert [d.uri for d in lst.sets[1].dests] == ["sip:127.0.0.1:1"]


def test_attrs_and_weights():
    assert split_params('a=1;b="x;y";c') == [("a", "1"), ("b", "x;y"), ("c", "")]
    lst = build([(1, "sip:127.0.0.1:1", 0, 0, "weight=30"), (1, "sip:127.0.0.1:2", 0, 0, "weight=500")])
    s = lst.sets[1]
    assert s.dests[1].weight == 30 and s.dests[0].weight == 0      # 500 is out of range
    # the first destination has no weight: every slot picks it (dp_init_weights)
    assert s.wlist == [0] * 100
    lst = build([(1, "sip:127.0.0.1:1", 0, 0, "weight=30"), (1, "sip:127.0.0.1:2", 0, 0, "weight=50")])
    w = lst.sets[1].wlist
    assert (w.count(0), w.count(1)) == (50, 50)       # 50, then the rest for the last one


# -- hashes ------------------------------------------------------------------------------------------
def test_ds_get_hash_is_kamailios():
    """Values printed by `kamcmd dispatcher.hash` on Kamailio 5.6.3 (signed there)."""
    assert ds_get_hash(b"abc") == 7167810
    assert ds_get_hash(b"abcd") == 1834959896
    assert ds_get_hash(b"abcdefghi") == -684033920 & M
    assert ds_get_hash(b"caller12", b"host.org") == 1778352226
    assert ds_get_hash("é€x".encode()) == -1155821350 & M
    assert ds_get_hash(b"a", b"b") == 219
    assert ds_get_hash(b"x", b"y:5070") == 1982864240


def test_uri_hash_keys():
    assert uri_hash_keys("sip:alice@example.com") == ("alice", "example.com")
    assert uri_hash_keys("sip:alice@example.com:5060;transport=udp") == ("alice", "example.com")
    assert uri_hash_keys("sips:alice@example.com:5060") == ("alice", "example.com:5060")
    assert uri_hash_keys("sip:alice:pw@example.com:5070?h=1") == ("alice", "example.com:5070")
    assert uri_hash_keys("sip:example.com") == (None, "example.com")
    assert uri_hash_keys("sip:alice@example.com", user_only=True) == ("alice", None)
    with pytest.raises(Exception):
        uri_hash_keys("sip:@")


# -- the state machine -----------------------------------------------------------------------------
def test_probing_threshold_and_inactive_threshold():
    T, P, INA = DS_TRYING_DST, DS_PROBING_DST, DS_INACTIVE_DST
    # active, threshold 3: trying, trying, then inactive
    f, c = next_state(0, 0, T | P, 3, 2)
    assert (f, c) == (T | P, 1)
    f, c = next_state(f, c, T | P, 3, 2)
    assert (f, c) == (T | P, 2)
    f, c = next_state(f, c, T | P, 3, 2)
    assert (f, c) == (INA | P, 0)
    # inactive: a trying result keeps it inactive
    assert next_state(INA | P, 0, T | P, 3, 2) == (INA | P, 0)
    # inactive, inactive_threshold 2: the first success keeps it inactive, the second activates
    f, c = next_state(INA | P, 0, P, 3, 2)
    assert (f, c) == (INA | P, 1)
    assert next_state(f, c, P, 3, 2) == (P, 0)
    # disabled wins over the rest
    assert next_state(INA, 0, DS_DISABLED_DST | T, 3, 2)[0] == DS_DISABLED_DST


def test_rpc_state_names():
    assert state_letters(0) == "AX" and state_letters(DS_INACTIVE_DST | DS_PROBING_DST) == "IP"
    assert state_letters(DS_DISABLED_DST) == "DX" and state_letters(DS_TRYING_DST) == "TX"
    assert parse_rpc_state("ip") == DS_INACTIVE_DST | DS_PROBING_DST
    assert parse_rpc_state("1") == 0 and parse_rpc_state("aP") == DS_PROBING_DST
    assert parse_rpc_state("2") == DS_DISABLED_DST and parse_rpc_state("x") is None


# -- routing on a real shm arena -----------------------------------------------------------------------
LIST = """\
1 sip:127.0.0.1:5071 0 3 duid=one
1 sip:127.0.0.1:5072 0 2
1 sip:127.0.0.1:5073 0 1
1 sip:127.0.0.1:5074 0 0 duid=default
2 sip:10.1.1.1:5080;transport=tcp
2 sip:10.1.1.2
"""

CFG = r'''
loadmodule "pv.so"
loadmodule "textops.so"
loadmodule "dispatcher.so"
modparam("dispatcher", "list_file", "LISTFILE")
modparam("dispatcher", "flags", 2)
modparam("dispatcher", "use_default", USEDEF)
modparam("dispatcher", "setid_pvname", "$var(setid)")
request_route {
    $var(setid) = 0;
    if ($hdr(X-Op) == "select") {
        $var(r) = ds_select_dst("$hdr(X-Set)", "$hdr(X-Alg)");
    } else if ($hdr(X-Op) == "next") {
        $var(r) = ds_select_dst("1", "8");
        $var(n) = ds_next_dst();
        $var(m) = ds_mark_dst("i");
        $var(n2) = ds_next_dst();
    } else if ($hdr(X-Op) == "from") {
        $var(r) = ds_is_from_list("$hdr(X-Set)", "$hdr(X-Mode)", "$hdr(X-Uri)");
    } else if ($hdr(X-Op) == "fromsrc") {
        $var(r) = ds_is_from_list();
    }
    $var(du) = $du;
    $var(cnt) = $xavp(_dsctx_=>cnt);
}
'''

REQ = ("OPTIONS sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1\r\n"
       "From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: {cid}\r\n"
       "CSeq: 1 OPTIONS\r\n{hdrs}Content-Length: 0\r\n\r\n")


@pytest.fixture(params=[0, 1], ids=["plain", "use_default"])
def script(request, tmp_path):
    f = tmp_path / "ds.list"
    f.write_text(LIST)
    s = compile_cfg(text=CFG.replace("LISTFILE", str(f)).replace("USEDEF", str(request.param)))
    s.shm = ShmArena.create(16 << 20)
    s.init_modules()
    s.use_default = request.param
    yield s
    dispatcher_state.S.store = None
    s.shm.destroy()


def run(s, src=("192.0.2.7", 5060), cid="c-1", **hdrs):
    proc = ProcState(s, 1, "test", "receiver")
    text = REQ.format(cid=cid, hdrs="".join(f"X-{k.title()}: {v}\r\n" for k, v in hdrs.items()))
    ctx = s.new_ctx(parse_msg(text.encode(), src, ("127.0.0.1", 5060)), proc)
    s.run_request_route(ctx)
    return proc.vars, ctx


def test_priority_round_robin_and_inactive_skipped(script):
    v, ctx = run(script, op="select", set=1, alg=8)
    assert (v["r"], v["du"]) == (1, "sip:127.0.0.1:5071")
    n = 3 if script.use_default else 4
    assert v["cnt"] == 4
    # round-robin over the set (without the default entry when use_default)
    seen = [run(script, op="select", set=1, alg=4)[0]["du"] for _ in range(2 * n)]
    assert seen[:n] == [d for d in ["sip:127.0.0.1:5071", "sip:127.0.0.1:5072", "sip:127.0.0.1:5073",
                                    "sip:127.0.0.1:5074"][:n]]
    assert seen[n:] == seen[:n]
    # mark every regular one inactive: use_default falls back to the last one, else -1
    for uri in ("sip:127.0.0.1:5071", "sip:127.0.0.1:5072", "sip:127.0.0.1:5073"):
        assert dispatcher_state.reinit_state(1, uri, DS_INACTIVE_DST) == 0
    v, _ = run(script, op="select", set=1, alg=0)
    assert v["du"] == "sip:127.0.0.1:5074"
    if script.use_default:
        dispatcher_state.reinit_state(1, "sip:127.0.0.1:5074", DS_DISABLED_DST)
        v, _ = run(script, op="select", set=1, alg=0)
        assert v["r"] == -1
    v, _ = run(script, op="select", set=9, alg=0)
    assert v["r"] == -1


def test_failover_list_next_and_mark(script):
    v, ctx = run(script, op="next")
    assert v["r"] == 1 and v["n"] == 1 and v["m"] == 1 and v["n2"] == 1
    # ds_next_dst dropped the first record; ds_mark_dst marked the one it moved to
    assert v["du"] == "sip:127.0.0.1:5073"
    half, lst = dispatcher_state.S.current()
    s = lst.sets[1]
    assert dispatcher_state.flags_of(half, s, 1) & DS_INACTIVE_DST
    items = ctx.xavps.xavp["_dsdst_"]
    assert items[0]["uri"] == ["sip:127.0.0.1:5073"] and items[0]["grp"] == [1]


def test_hash_algorithms_are_stable_and_spread(script):
    picks = {run(script, op="select", set=1, alg=0, cid=f"call-{i}")[0]["du"] for i in range(40)}
    assert len(picks) >= 3
    a = run(script, op="select", set=1, alg=0, cid="same")[0]["du"]
    assert all(run(script, op="select", set=1, alg=0, cid="same")[0]["du"] == a for _ in range(5))
    for alg in (1, 2, 3, 6, 9):
        assert run(script, op="select", set=1, alg=alg)[0]["r"] == 1


def test_is_from_list_modes(script):
    assert run(script, op="from", set=2, mode=0, uri="sip:10.1.1.2")[0]["r"] == 1
    # from the source address (UDP): a list URI without transport= is PROTO_NONE, so
    # only a mode with 2 (no protocol check) matches it, as in Kamailio
    src = ("127.0.0.1", 5072)
    assert run(script, op="from", set=1, mode=1, uri="", src=src)[0]["r"] == -1
    assert run(script, op="from", set=1, mode=2, uri="", src=src)[0]["r"] == 1
    assert run(script, op="from", set=1, mode=2, uri="", src=("127.0.0.1", 5))[0]["r"] == -1
    assert run(script, op="from", set=2, mode=2, uri="sip:10.1.1.2:5999")[0]["r"] == 1
    assert run(script, op="from", set=2, mode=2, uri="sip:10.1.1.1:5999")[0]["r"] == -1
    assert run(script, op="from", set=2, mode=3, uri="sip:10.1.1.1:5999")[0]["r"] == 1
    assert run(script, op="from", set=2, mode=0, uri="sip:10.1.1.1:5080;transport=tcp")[0]["r"] == 1
    v, _ = run(script, op="fromsrc", src=("127.0.0.1", 5072))
    assert (v["r"], v["setid"]) == (1, 1)
    assert run(script, op="fromsrc", src=("127.0.0.9", 5072))[0]["r"] == -1


def test_rpc_list_and_faults(script):
    reg = Registry()
    for e in EXPORTS.rpc:
        reg.register(e)
    proc = ProcState(script, 0, "rpc", "rpc")
    out = reg.call(script, proc, "dispatcher.list", []).values[0]
    assert out["NRSETS"] == 2
    first = out["RECORDS"][1]["SET"]        # the tree walk: set 2 (a child) before 1
    assert first["ID"] == 1 and first["TARGETS"][0]["DEST"]["FLAGS"] == "AX"
    assert first["TARGETS"][0]["DEST"]["ATTRS"]["DUID"] == "one"
    with pytest.raises(RpcFault):
        reg.call(script, proc, "dispatcher.set_state", ["z", 1, "all"])
    with pytest.raises(RpcFault):
        reg.call(script, proc, "dispatcher.set_state", ["i", 1, "sip:nope"])
    reg.call(script, proc, "dispatcher.set_duid_state", ["d", 1, "one"])
    out = reg.call(script, proc, "dispatcher.list", []).values[0]
    assert out["RECORDS"][1]["SET"]["TARGETS"][0]["DEST"]["FLAGS"] == "DX"
    h = reg.call(script, proc, "dispatcher.hash", [5, "a", "b"]).values[0]
    assert h == {"hashid": 219, "slot": 4}


LOAD_CFG = r'''
loadmodule "pv.so"
loadmodule "dispatcher.so"
modparam("dispatcher", "list_file", "LISTFILE")
modparam("dispatcher", "flags", 2)
modparam("dispatcher", "ds_hash_size", 2)
request_route {
    if ($rm == "INVITE") { $var(r) = ds_select_dst("1", "10"); } else { $var(r) = ds_load_update(); }
    $var(du) = $du;
}
'''


def test_call_load_counts_and_expires(tmp_path):
    f = tmp_path / "ds.list"
    f.write_text("1 sip:127.0.0.1:6001 0 0 duid=a;maxload=1\n1 sip:127.0.0.1:6002 0 0 duid=b;maxload=1\n")
    s = compile_cfg(text=LOAD_CFG.replace("LISTFILE", str(f)))
    s.shm = ShmArena.create(16 << 20)
    try:
        s.init_modules()
        proc = ProcState(s, 1, "test", "receiver")

        def send(method, cid):
            text = REQ.format(cid=cid, hdrs="").replace("OPTIONS", method)
            s.run_request_route(s.new_ctx(parse_msg(text.encode(), ("192.0.2.1", 5060),
                                                    ("127.0.0.1", 5060)), proc))
            return proc.vars["r"], proc.vars.get("du")
        assert send("INVITE", "c1") == (1, "sip:127.0.0.1:6002")
        assert send("INVITE", "c2") == (1, "sip:127.0.0.1:6001")
        assert send("INVITE", "c3")[0] == -1            # both at maxload
        assert send("BYE", "c1")[0] == 1
        assert send("INVITE", "c3") == (1, "sip:127.0.0.1:6002")
        half, lst = dispatcher_state.S.current()
        assert [dispatcher_load.dload(half, lst.sets[1], j) for j in (0, 1)] == [1, 1]
        # unconfirmed calls end after ds_hash_initexpire: the timer gives the load back
        dispatcher_load.L.initexpire = -5
        assert send("INVITE", "c4")[0] == -1
        dispatcher_load.L.table.delete("c2")
        dispatcher_load.L.table.set("c3", "1\t0\t0\t1\tb")   # initexpire long past
        dispatcher_load.expire_tick(proc)
        assert dispatcher_load.dload(half, lst.sets[1], 0) == 0
    finally:
        dispatcher_state.S.store = None
        dispatcher_load.L.table = None
        s.shm.destroy()


def test_relative_weights_follow_the_states(tmp_path):
    f = tmp_path / "ds.list"
    f.write_text("1 sip:127.0.0.1:7001 0 0 rweight=50\n1 sip:127.0.0.1:7002 0 0 rweight=25\n"
                 "1 sip:127.0.0.1:7003 0 0 rweight=25\n")
    s = compile_cfg(text=CFG.replace("LISTFILE", str(f)).replace("USEDEF", "0"))
    s.shm = ShmArena.create(16 << 20)
    try:
        s.init_modules()
        picks = [run(s, op="select", set=1, alg=11)[0]["du"] for _ in range(100)]
        assert [picks.count(f"sip:127.0.0.1:700{n}") for n in (1, 2, 3)] == [50, 25, 25]
        # 7001 down: its share goes to the others (25 / 50 of the slots each)
        dispatcher_state.reinit_state(1, "sip:127.0.0.1:7001", DS_INACTIVE_DST)
        picks = [run(s, op="select", set=1, alg=11)[0]["du"] for _ in range(100)]
        assert [picks.count(f"sip:127.0.0.1:700{n}") for n in (1, 2, 3)] == [0, 50, 50]
    finally:
        dispatcher_state.S.store = None
        s.shm.destroy()


def test_ping_outcomes_and_which_destinations_are_pinged(script):
    P = dispatcher_ping.P
    INA, PR = DS_INACTIVE_DST, DS_PROBING_DST
    P.mode = 0
    assert not dispatcher_ping.wants_ping(0) and dispatcher_ping.wants_ping(PR)
    P.mode = 2
    assert not dispatcher_ping.wants_ping(PR) and dispatcher_ping.wants_ping(PR | INA)
    P.mode = 1
    assert dispatcher_ping.wants_ping(0)
    proc = ProcState(script, 1, "test", "receiver")
    half, lst = dispatcher_state.S.current()
    s = lst.sets[1]
    # mode 1: a time-out (408) takes it down (threshold 1), a 200 brings it back, probing kept
    dispatcher_ping.outcome(proc, half, s.base, 408, None, 0)
    assert dispatcher_state.flags_of(half, s, 0) == INA | PR
    dispatcher_ping.outcome(proc, half, s.base, 200, "OK", 1)
    assert dispatcher_state.flags_of(half, s, 0) == PR
    # a code ds_ping_reply_codes accepts is a success; a disabled one is left alone
    dispatcher_state.S.reply_codes = dispatcher_state.parse_reply_codes("code=404;class=3")
    dispatcher_ping.outcome(proc, half, s.base, 404, "Not Found", 1)
    dispatcher_ping.outcome(proc, half, s.base, 302, "Moved", 1)
    assert dispatcher_state.flags_of(half, s, 0) == PR
    dispatcher_state.reinit_state(1, s.dests[0].uri, DS_DISABLED_DST)
    dispatcher_ping.outcome(proc, half, s.base, 500, "Error", 1)
    assert dispatcher_state.flags_of(half, s, 0) == DS_DISABLED_DST
    dispatcher_state.S.reply_codes = ()
    P.mode = 0


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("0123456789 \t#;=:@.sipSIP<>[]xyzé\r")), max_size=60))
def test_any_list_line_parses_or_is_refused_cleanly(line):
    try:
        e = parse_line(line)
    except ListError:
        return
    if e is not None:
        sid, uri, flags, prio, attrs = e
        assert isinstance(sid, int) and uri and " " not in uri
        build([(sid, uri, flags | 16, prio, attrs)])       # flag 16: no DNS lookups


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40), st.one_of(st.none(), st.binary(max_size=40)))
def test_ds_get_hash_is_a_u32_never_zero(x, y):
    h = ds_get_hash(x, y)
    assert 1 <= h <= M
