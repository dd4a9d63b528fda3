"""ndb_redis on asyncd and on the real Kamailio 5.6.3 (its ndb_redis.so), same
cfg, same redis-server, same requests: the return code and every
$redis(...) key (type, value, info, size, value[n], type[n], nested
value[n]=>...) must be the same, for string, integer, nil, array, nested
array, status and error replies, `%s` arguments with spaces, pipelines,
and an index taken from a variable.

Runs in: the pytest process; redis-server, Kamailio and asyncd run as real
processes on loopback. Kamailio goes first on an empty Redis; the store is
flushed and asyncd replays the same requests. Then Redis is stopped (both
fail the call and empty the reply) and started again (both use it again at
once, without a restart).
"""

import pytest

from tests.helpers import SipClient
from tests.helpers.kamailio import SKIP_KAMAILIO, SKIP_KAMAILIO_REDIS, kamailio_has_module, run_kamailio
from tests.helpers.redis_server import REDIS_SERVER, SKIP_REDIS, run_redis
from tests.helpers.server import run_server

from bench.servers import kamailio_binary

pytestmark = [
    pytest.mark.kamailio,
    pytest.mark.server,
    pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REDIS),
    pytest.mark.skipif(kamailio_binary() is None, reason=SKIP_KAMAILIO),
    pytest.mark.skipif(not kamailio_has_module("ndb_redis"), reason=SKIP_KAMAILIO_REDIS),
]

KEYS = ["type", "value", "info", "size", "type[0]", "type[1]", "value[0]", "value[1]", "value[2]",
        "value[$var(i)]", "value[0]=>value[0]", "value[0]=>size", "value[0]=>type[1]",
        "value[0]=>value[1]=>value[0]"]
SHOW = "".join(f"X-K{i}: $redis(r=>{k})\\r\\n" for i, k in enumerate(KEYS))

CFG = """#!KAMAILIO
listen=udp:127.0.0.1:LPORT
children=1
disable_tcp=yes
debug=2
loadmodule "sl.so"
loadmodule "ctl.so"
loadmodule "pv.so"
loadmodule "textops.so"
loadmodule "ndb_redis.so"
modparam("ndb_redis", "server", "name=srv;addr=127.0.0.1;port=RPORT;db=3")
request_route {
    $var(i) = $(hdr(X-I){s.int});
    if ($hdr(X-P) != $null) {
        redis_pipe_cmd("srv", "$hdr(X-C)", "r");
        redis_pipe_cmd("srv", "$hdr(X-P)", "p2");
        redis_execute("srv");
        $var(rc) = $rc;
        append_to_reply("X-P2: $redis(p2=>type) $redis(p2=>value) $redis(p2=>info)\\r\\n");
    } else if ($hdr(X-B) != $null) {
        redis_cmd("srv", "$hdr(X-C)", "$hdr(X-A)", "$hdr(X-B)", "r");
        $var(rc) = $rc;
    } else if ($hdr(X-A) != $null) {
        redis_cmd("srv", "$hdr(X-C)", "$hdr(X-A)", "r");
        $var(rc) = $rc;
    } else {
        redis_cmd("srv", "$hdr(X-C)", "r");
        $var(rc) = $rc;
    }
    if ($redis(r=>type) == $redisd(rpl_sts)) {
        append_to_reply("X-Sts: yes\\r\\n");
    }
    if ($hdr(X-F) != $null) {
        redis_free("r");
        append_to_reply("X-F: $rc\\r\\n");
    }
    append_to_reply("X-RC: $var(rc)\\r\\nSHOW");
    sl_send_reply("200", "ok");
}
""".replace("SHOW", SHOW)

# (headers) in order: the store's state carries from one to the next
CASES = [
    {"X-C": "SET foo bar"},
    {"X-C": "GET foo"},
    {"X-C": "GET nokey"},
    {"X-C": "INCR cnt"},
    {"X-C": "RPUSH l a b 7"},
    {"X-C": "LRANGE l 0 -1", "X-I": "2"},
    {"X-C": "LRANGE l 0 -1", "X-I": "5"},
    {"X-C": "GET foo bar"},                                   # error reply
    {"X-C": "SET %s %s", "X-A": "k sp", "X-B": "v with space"},
    {"X-C": "GET %s", "X-A": "k sp"},
    {"X-C": "SET e%sx  y", "X-A": ""},
    {"X-C": "GET ex"},
    {"X-C": "SET big 3000000000"},
    {"X-C": "INCR big"},                                      # cut to 32 bits by $redis
    {"X-C": "MULTI"},
    {"X-C": "LRANGE l 0 -1"},
    {"X-C": "EXEC"},                                          # nested array
    {"X-C": "GET %s"},                                        # refused: the previous reply stays
    {"X-C": "HGETALL nohash"},
    {"X-C": "PING"},
    {"X-C": "SET pct 100%%"},
    {"X-C": "GET pct"},
    {"X-C": "SADD s m1"},
    {"X-C": "MULTI"},
    {"X-C": "GET foo"},
    {"X-C": "LRANGE l 0 1"},
    {"X-C": "SET x"},                                         # an error queued in MULTI
    {"X-C": "EXEC"},
    {"X-C": "SET foo baz", "X-P": "GET foo"},                 # pipeline
    {"X-C": "INCR foo", "X-P": "INCR cnt"},                   # pipeline with an error reply
    {"X-C": "GET foo", "X-F": "1"},                           # redis_free
    {"X-C": "ECHO %s", "X-A": "a b"},
    {"X-C": "ECHO", "X-P": "PING"},                           # pipeline, first reply an error
]


def _ask(c, case):
    r = c.final("OPTIONS", headers=[f"{k}: {v}" for k, v in case.items()], timeout=5)
    assert r is not None, case
    got = {h: r.hdr(h) for h in ("X-RC", "X-Sts", "X-P2", "X-F")}
    got.update({k: r.hdr(f"X-K{i}") for i, k in enumerate(KEYS)})
    return got


def _same(want, got):
    for (case, w), (_, g) in zip(want, got):
        assert g == w, f"{case}: asyncd {g} != Kamailio {w}"


def test_same_redis_values_as_kamailio(tmp_path):
    with run_redis() as redis_srv:
        cfg = CFG.replace("RPORT", str(redis_srv.port))
        with run_kamailio(cfg) as kam, run_server(cfg, args=("-Y", str(tmp_path / "run"))) as srv, \
                SipClient(("127.0.0.1", kam.port)) as k, SipClient(srv.addr) as a:
            want = [(case, _ask(k, case)) for case in CASES]
            redis_srv.client().flushall()
            _same(want, [(case, _ask(a, case)) for case in CASES])
            # Redis stopped: the call fails and the reply is emptied; back: used again, no restart
            redis_srv.stop()
            down = [({"X-C": "GET foo"}, _ask(k, {"X-C": "GET foo"}))]
            _same(down, [({"X-C": "GET foo"}, _ask(a, {"X-C": "GET foo"}))])
            redis_srv.start()
            up = [({"X-C": "PING"}, _ask(k, {"X-C": "PING"}))]
            _same(up, [({"X-C": "PING"}, _ask(a, {"X-C": "PING"}))])
    assert down[0][1]["X-RC"] == "-1" and down[0][1]["type"] == "<null>"
    assert up[0][1]["X-RC"] == "1" and up[0][1]["info"] == "PONG"
    # the cases do reach every reply type
    types = {w["type"] for _, w in want}
    assert {"1", "2", "3", "4", "5", "6"} <= types, types
