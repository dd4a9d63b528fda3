"""Two real softphones (baresip) on two asyncd nodes that share registrations
through a real redis-server (usrloc db_mode 3 on db_redis).

Runs in: the pytest process (redis-server, two asyncd process trees and two
headless baresips are real processes on loopback).

Both nodes run the same small cfg (CFG below: tm, sl, rr, db_redis, usrloc
db_mode 3, registrar) on one Redis. alice registers through node 1, bob
through node 2; bob's binding is a row in Redis (Kamailio 5.6's db_redis key
layout, docs/kamailio-db_redis.md), so node 1 finds it: alice dials bob
through node 1, bob's phone rings, he answers, both phones report the call
established, alice hangs up and both report it closed. The dialog stays on
node 1 (its Record-Route): ACK and BYE go through node 1 only.
Media is not checked (RTP flows phone to phone).
"""

import pytest

from bench.servers import kamailio_binary
from tests.helpers.baresip import BARESIP, SKIP_BARESIP, run_baresip
from tests.helpers.kamailio import SKIP_KAMAILIO, SKIP_KAMAILIO_REDIS, kamailio_has_module, run_kamailio
from tests.helpers.redis_server import HAVE_SCHEMAS, REDIS_SERVER, SKIP_REDIS, SKIP_SCHEMAS, run_redis
from tests.helpers.server import run_server

EV_TIMEOUT = 8.0

pytestmark = [pytest.mark.skipif(BARESIP is None, reason=SKIP_BARESIP),
              pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REDIS),
              pytest.mark.skipif(not HAVE_SCHEMAS, reason=SKIP_SCHEMAS)]

CFG = """#!KAMAILIO
listen=udp:127.0.0.1:LPORT
loadmodule "ctl.so"
loadmodule "pv.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "siputils.so"
loadmodule "textops.so"
loadmodule "db_redis.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
modparam("db_redis", "keys", "location=entry:ruid&usrdom:username&timer:partition,keepalive")
modparam("usrloc", "db_url", "redis://127.0.0.1:RPORT/0")
modparam("usrloc", "db_mode", 3)
request_route {
  if (has_totag()) {
    if (loose_route()) { t_relay(); exit; }
    if (is_method("ACK")) { if (t_check_trans()) { t_relay(); } exit; }
    sl_send_reply("404", "Not here");
    exit;
  }
  if (is_method("CANCEL")) { if (t_check_trans()) { t_relay(); } exit; }
  if (is_method("REGISTER")) { save("location"); exit; }
  if (is_method("INVITE")) { record_route(); }
  if (!lookup("location")) { sl_send_reply("404", "Not Found"); exit; }
  t_relay();
}
"""


@pytest.fixture(scope="module")
def redis():
    with run_redis() as r:
        yield r


@pytest.fixture(scope="module")
def two_nodes(redis, tmp_path_factory):
    cfg = CFG.replace("RPORT", str(redis.port))
    d1, d2 = (str(tmp_path_factory.mktemp(n)) for n in ("node1", "node2"))
    with run_server(cfg, args=("-Y", d1)) as n1, run_server(cfg, args=("-Y", d2)) as n2:
        yield n1.addr, n2.addr
        for n in (n1, n2):
            assert "Traceback" not in n.log(), n.log()[-3000:]


@pytest.fixture(scope="module")
def kamailio_node(redis):
    if kamailio_binary() is None:
        pytest.skip(SKIP_KAMAILIO)
    if not kamailio_has_module("db_redis"):
        pytest.skip(SKIP_KAMAILIO_REDIS)
    with run_kamailio(CFG.replace("RPORT", str(redis.port))) as k:
        yield ("127.0.0.1", k.port)


def users_in_redis(redis):
    rc = redis.client()
    return sorted(rc.hget(k, "username") for k in rc.scan_iter("location:entry::*"))


def call_across(redis, node_a, node_b, caller, callee):
    """`caller` registers through node_a, `callee` through node_b; caller dials callee
    through node_a: established, hung up, every in-dialog request through node_a only."""
    with run_baresip(caller, node_a) as a, run_baresip(callee, node_b) as b:
        assert users_in_redis(redis) == sorted([caller, callee])    # both bindings are rows in Redis
        a.dial(a.uri(callee))                            # sip:callee@<node_a>
        incoming = b.wait_event("CALL_INCOMING", EV_TIMEOUT)
        assert incoming["peeruri"] == a.aor, incoming
        a.wait_event("CALL_RINGING", EV_TIMEOUT)
        b.accept()
        ea, eb = a.wait_event("CALL_ESTABLISHED", EV_TIMEOUT), b.wait_event("CALL_ESTABLISHED", EV_TIMEOUT)
        assert ea["id"] == eb["id"], (ea, eb)
        a.hangup()
        ca, cb = a.wait_event("CALL_CLOSED", EV_TIMEOUT), b.wait_event("CALL_CLOSED", EV_TIMEOUT)
        assert (ca["param"], cb["param"]) == ("Connection reset by user", "Connection reset by peer")
        via_a = f"127.0.0.1:{node_a[1]}"
        got = [m for m in b.received() if m.header("Call-ID") == ea["id"] and m.method]
        assert [(m.method, m.src) for m in got] == [("INVITE", via_a), ("ACK", via_a), ("BYE", via_a)], got
        sent = [m for m in a.sent() if m.header("Call-ID") == ea["id"]]
        assert [(m.method, m.dst) for m in sent] == [("INVITE", via_a), ("ACK", via_a), ("BYE", via_a)], sent
        a.wait_trace(lambda ms: any(a.incoming(m) and m.status and m.cseq_method() == "BYE" for m in ms))
        bye_ok = [m.status for m in a.received()
                  if m.header("Call-ID") == ea["id"] and m.cseq_method() == "BYE"]
        assert bye_ok == ["200 OK"], bye_ok
    # baresip unregisters when it stops: the rows are deleted through node_a and node_b
    assert users_in_redis(redis) == []


def test_call_across_nodes(redis, two_nodes):
    call_across(redis, two_nodes[0], two_nodes[1], "alice", "bob")


@pytest.mark.kamailio
@pytest.mark.server
def test_call_from_asyncd_to_a_phone_on_kamailio(redis, two_nodes, kamailio_node):
    """Mixed cluster: the callee registered through Kamailio 5.6.3 (its own db_redis)."""
    call_across(redis, two_nodes[0], kamailio_node, "carol", "dave")


@pytest.mark.kamailio
@pytest.mark.server
def test_call_from_kamailio_to_a_phone_on_asyncd(redis, two_nodes, kamailio_node):
    """Mixed cluster: Kamailio 5.6.3 finds the binding asyncd wrote."""
    call_across(redis, kamailio_node, two_nodes[1], "erin", "frank")
