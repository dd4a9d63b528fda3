"""Statistics in process: the names asyncd registers against Kamailio 5.6.3's
(src/modules/kex/core_stats.c, sl/sl_stats.c, tmx/tmx_mod.c, as `kamcmd
stats.get_statistics all` lists them), the stats.* / sl.stats / tm.stats /
cnt.* RPC shapes through script.rpc.call, the script functions of the
statistics and counters modules, $stat, reset semantics."""
import socket

import pytest

from asyncd.cfg.compiler import compile_cfg
from asyncd.core.context import ProcState
from asyncd.core.errors import CfgError
from asyncd.core.rpc import RpcFault
from asyncd.sip import parse_msg
from shm.arena import ShmArena

# what Kamailio 5.6.3 lists (kamcmd stats.get_statistics all, sorted by name)
KAMAILIO = {
    "shmem": "fragments free_size max_used_size real_used_size total_size used_size",
    "sl": "1xx_replies 200_replies 202_replies 2xx_replies 300_replies 301_replies 302_replies "
          "3xx_replies 400_replies 401_replies 403_replies 404_replies 407_replies 408_replies "
          "483_replies 4xx_replies 500_replies 5xx_replies 6xx_replies failures received_ACKs "
          "sent_err_replies sent_replies xxx_replies",
    "tmx": "2xx_transactions 3xx_transactions 4xx_transactions 5xx_transactions 6xx_transactions "
           "UAC_transactions UAS_transactions active_transactions inuse_transactions rpl_absorbed "
           "rpl_generated rpl_received rpl_relayed rpl_sent",
    "core": "bad_URIs_rcvd bad_msg_hdr drop_replies drop_requests err_replies err_requests "
            "fwd_replies fwd_requests rcv_replies rcv_replies_18x rcv_replies_1xx "
            + " ".join(f"rcv_replies_{g}xx_{m}" for g in range(1, 7)
                       for m in ("bye", "cancel", "invite", "message", "prack", "refer", "reg",
                                 "update"))
            + " rcv_replies_2xx rcv_replies_3xx rcv_replies_401 rcv_replies_404 rcv_replies_407"
              " rcv_replies_480 rcv_replies_486 rcv_replies_4xx rcv_replies_5xx rcv_replies_6xx"
              " rcv_requests unsupported_methods "
            + " ".join(f"rcv_requests_{m}" for m in (
                "ack", "bye", "cancel", "info", "invite", "message", "notify", "options", "prack",
                "publish", "refer", "register", "subscribe", "update")),
}

HEAD = """
loadmodule "kex.so"
loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "tmx.so"
loadmodule "pv.so"
loadmodule "counters.so"
loadmodule "statistics.so"
modparam("counters", "script_counter", "foo this is foo")
modparam("counters", "script_counter", "bar")
modparam("counters", "script_counter", "calls.inbound:inbound calls")
modparam("statistics", "variable", "mystat")
modparam("statistics", "variable", "keep/no_reset")
"""

REQ = (b"OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1\r\n"
       b"From: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\n"
       b"Content-Length: 0\r\n\r\n")


class Env:
    def __init__(self, body):
        self.script = compile_cfg(text=HEAD + body)
        self.arena = ShmArena.create(16 << 20)
        self.script.shm = self.arena
        self.script.init_modules()
        self.script.stats.allocate(self.arena, 4)
        self.proc = ProcState(script=self.script)
        self.proc.cnt = self.script.stats.row(1)

    def run(self):
        msg = parse_msg(REQ.replace(b"10.0.0.1", b"127.0.0.1"), ("127.0.0.1", 9), ("127.0.0.1", 5060))
        ctx = self.script.new_ctx(msg, self.proc)
        self.script.run_request_route(ctx)
        return ctx

    def call(self, method, *params):
        return self.script.rpc.call(self.script, self.proc, method, list(params)).values

    def stat(self, group, name):
        return self.script.stats.get(self.script.stats.handle(group, name))


@pytest.fixture
def env():
    made = []

    def make(body="request_route { exit; }"):
        e = Env(body)
        made.append(e)
        return e
    yield make
    for e in made:
        e.arena.destroy()


def test_every_kamailio_name_is_registered(env):
    e = env()
    for group, names in KAMAILIO.items():
        ours = sorted(n for g, n, _v in e.script.stats.items(group))
        assert ours == sorted(names.split()), group
    groups = set(e.script.stats.groups())
    assert groups >= {"core", "shmem", "sl", "tmx", "script"}
    assert "tm" not in groups     # tm's own counts are not statistics an operator sees


def test_get_statistics_lines_and_selectors(env):
    e = env()
    lines = e.call("stats.get_statistics", "all")
    assert lines[:2] == ["calls:inbound = 0", "core:bad_URIs_rcvd = 0"]   # sorted, as Kamailio
    assert "sl:200_replies = 0" in lines and "script:foo = 0" in lines
    assert all(" = " in ln for ln in lines)
    assert e.call("stats.get_statistics", "sl:") == [ln for ln in lines if ln.startswith("sl:")]
    assert e.call("stats.get_statistics", "rcv_requests") == ["core:rcv_requests = 0"]
    # Kamailio's get_stat takes bare names only; unknown names answer nothing
    assert e.call("stats.get_statistics", "core:rcv_requests") == []
    assert e.call("stats.get_statistics", "nosuch", "nogroup:") == []
    with pytest.raises(RpcFault) as f:
        e.call("stats.get_statistics")
    assert (f.value.code, f.value.text) == (400, "Please provide which stats to retrieve")


def test_fetch_and_fetchn_shapes(env):
    e = env()
    st, = e.call("stats.fetch", "rcv_requests", "core.rcv_replies", "sl:fail", "sl:")
    d = dict(st)
    assert d["core.rcv_requests"] == "0" and d["core.rcv_replies"] == "0"
    assert d["sl.200_replies"] == "0" and len(d) == 2 + 24
    st, = e.call("stats.fetchn", "shmem:")
    d = dict(st)
    assert sorted(d) == [f"shmem.{n}" for n in KAMAILIO["shmem"].split()]
    assert d["shmem.total_size"] > d["shmem.used_size"] > 0
    assert d["shmem.free_size"] + d["shmem.real_used_size"] == d["shmem.total_size"]


def test_script_functions_stat_pv_and_reset(env):
    e = env("""request_route {
        cnt_inc("foo"); cnt_add("bar", 5); cnt_inc("calls.inbound");
        update_stat("mystat", "+3"); update_stat("keep", "2"); update_stat("mystat", "-1");
        $var(x) = $stat(mystat);
        if ($stat(nosuch) == $null) { $var(n) = "null"; }
        exit;
    }""")
    e.run()
    e.run()
    assert e.proc.vars["x"] == 4 and e.proc.vars["n"] == "null"
    assert e.call("cnt.get_vars", "script") == [{"bar": 10, "foo": 2, "keep": 4, "mystat": 4}]
    assert e.call("cnt.get", "calls", "inbound") == [2]
    assert e.call("cnt.help", "calls", "inbound") == ["inbound calls"]
    assert e.call("cnt.help", "script", "bar") == ["custom script counter."]
    # clear: the new value, and the old one in parentheses when it changed; no_reset stays
    assert e.call("stats.clear_statistics", "script:") == [
        "script:bar = 0 (10)", "script:foo = 0 (2)", "script:keep = 4", "script:mystat = 0 (4)"]
    assert e.call("cnt.get_raw", "script", "foo") == [2]
    e.run()
    assert e.call("cnt.get", "script", "foo") == [1]
    assert e.call("stats.reset_statistics", "foo") == []
    assert e.call("cnt.get", "script", "foo") == [0]
    e.call("cnt.reset", "script", "bar")
    assert e.stat("script", "bar") == 0


def test_cnt_rpcs(env):
    e = env()
    assert e.call("cnt.list_groups") == e.call("cnt.grps_list") == \
        ["calls", "core", "script", "shmem", "sl", "tmx"]
    assert e.call("cnt.var_list", "script") == ["bar", "foo", "keep", "mystat"]
    assert e.call("cnt.get_vars", "nosuch") == [{}]
    with pytest.raises(RpcFault) as f:
        e.call("cnt.get", "script", "nosuch")
    assert (f.value.code, f.value.text) == (400, "non-existent counter script.nosuch\n")


def test_sl_counts_and_sl_stats(env):
    e = env('request_route { sl_send_reply("404", "Nope"); exit; }')
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    e.proc.sockets = [sock]
    try:
        e.run()
        e.run()
    finally:
        sock.close()
    assert e.stat("sl", "404_replies") == 2 and e.stat("sl", "sent_replies") == 2
    st, = e.call("sl.stats")
    assert list(st) == ["200", "202", "2xx", "300", "301", "302", "3xx", "400", "401", "403",
                        "404", "407", "408", "483", "4xx", "500", "5xx", "6xx", "xxx"]
    assert st["404"] == 2
    # computed in Kamailio, so not reset: the same here
    e.call("stats.reset_statistics", "sl:")
    assert e.stat("sl", "404_replies") == 2


def test_tm_stats_shape_and_tmx_follow_tm(env):
    e = env()
    st, = e.call("tm.stats")
    assert list(st) == ["current", "waiting", "total", "total_local", "rpl_received",
                        "rpl_generated", "rpl_sent", "6xx", "5xx", "4xx", "3xx", "2xx",
                        "created", "freed", "delayed_free"]
    stats = e.script.stats
    h = stats.handle("tm", "transactions")
    e.proc.cnt[h] += 3
    e.proc.cnt[stats.handle("tm", "waiting")] += 1
    e.proc.cnt[stats.handle("tm", "deleted")] += 1
    st, = e.call("tm.stats")
    assert (st["total"], st["current"], st["waiting"]) == (3, 2, 0)
    assert e.stat("tmx", "UAS_transactions") == 3
    assert e.stat("tmx", "inuse_transactions") == 2 and e.stat("tmx", "active_transactions") == 2


def test_bad_counter_names_are_startup_errors():
    with pytest.raises(CfgError, match="does not exist"):
        compile_cfg(text=HEAD + 'request_route { cnt_inc("nope"); }')
    with pytest.raises(CfgError, match="has no sense"):
        compile_cfg(text=HEAD + 'request_route { update_stat("mystat", "0"); }')


def test_cnt_pv_counts_avp_and_xavp_values():
    from tests.unit.cfg.cfg_helpers import Runner
    r = Runner("""request_route {
        $avp(a) = 1; $avp(a) = 2; $avp(a) = 3;
        $xavp(k=>s) = "x"; $xavp(k[0]=>s) = "y"; $xavp(k=>s) = "z";
        $var(na) = $cnt($avp(a)); $var(nz) = $cnt($avp(zz));
        $var(nk) = $cnt($xavp(k)); $var(nks) = $cnt($xavp(k=>s));
        $var(nk1s) = $cnt($xavp(k[1]=>s)); $var(nk5) = $cnt($xavp(k[5]));
    }""")
    r.run()
    # k[0] = {s: [z]}, k[1] = {s: [y, x]}: no index means every entry (pv_core.c pv_get_cnt)
    assert r.vars == {"na": 3, "nz": 0, "nk": 2, "nks": 3, "nk1s": 2, "nk5": 0}
    with pytest.raises(CfgError):
        compile_cfg(text='loadmodule "pv.so"\nrequest_route { $var(x) = $cnt($var(y)); }')
