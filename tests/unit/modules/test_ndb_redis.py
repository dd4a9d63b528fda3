"""ndb_redis in process: hiredis' command splitting, the server modparam,
the $redis name grammar and what each reply type yields, then the
functions on a real redis-server (reply types, pipelines, Redis stopped,
slow and back, allowed_timeouts/disable_time, flush_on_reconnect, unix
socket, password, db).

Runs in: the pytest process (redis-server started by tests/helpers/redis_server.py).
"""
import os
import signal
import subprocess
import time

import pytest
import redis

from asyncd.core.errors import CfgError
from asyncd.modules import ndb_redis as nr
from asyncd.modules.ndb_redis_client import (ErrorReply, FormatError, Limits, RedisServer, Status,
                                             format_command, parse_server_spec)
from tests.helpers.redis_server import REDIS_SERVER, SKIP_REDIS, run_redis


# -- command splitting (hiredis redisvFormatCommand) ---------------------------------------------
@pytest.mark.parametrize("text, values, argv", [
    ("SET foo bar", (), ["SET", "foo", "bar"]),
    ("  GET   foo  ", (), ["GET", "foo"]),
    ("GET %s", ("foo bar",), ["GET", "foo bar"]),
    ("HMSET %s %s %s", ("k", "f 1", "v"), ["HMSET", "k", "f 1", "v"]),
    ("SET key%s v", ("_1",), ["SET", "key_1", "v"]),
    ("SET %s v", ("",), ["SET", "", "v"]),              # an empty value is an (empty) argument
    ("SET e%sx y", ("",), ["SET", "ex", "y"]),
    ("SET pct 100%%", (), ["SET", "pct", "100%"]),
    ("SET pct 50%", (), ["SET", "pct", "50%"]),         # a trailing % is a character
    ("SET\tx y", (), ["SET\tx", "y"]),                  # only the space separates
    ("GET %s", ("a", "extra"), ["GET", "a"]),           # values past the last %s are ignored
    ("", (), []),
])
def test_format_command_splits_like_hiredis(text, values, argv):
    assert format_command(text, values) == argv


@pytest.mark.parametrize("text, values", [("GET %s %s", ("a",)), ("GET %d", ("5",)), ("GET %b", ("x",))])
def test_format_command_refuses_what_kamailio_reads_as_garbage(text, values):
    with pytest.raises(FormatError):
        format_command(text, values)


def test_server_spec():
    a = parse_server_spec("name=srvN;addr=127.0.0.1;port=6380;db=1;pass=secret;")
    assert (a["name"], a["addr"], a["port"], a["db"], a["pass"]) == ("srvN", "127.0.0.1", 6380, 1, "secret")
    b = parse_server_spec("name=u; unix=/tmp/r.sock ; port=x; db=-3")
    assert (b["unix"], b["port"], b["db"]) == ("/tmp/r.sock", 6379, 0)
    with pytest.raises(ValueError, match="no server name"):
        parse_server_spec("addr=127.0.0.1;port=6379")
    with pytest.raises(ValueError, match="sentinel"):
        parse_server_spec("name=z;sentinel_group=g;sentinel=1.2.3.4:26379")


def test_configure_refuses_no_server_and_cluster():
    mp = {p.name: ([] if p.multi else p.default) for p in nr.EXPORTS.params}
    with pytest.raises(CfgError, match="no redis servers defined"):
        nr.S.configure(mp)
    mp["server"] = ["name=a;addr=127.0.0.1"]
    mp["cluster"] = 1
    with pytest.raises(CfgError, match="cluster"):
        nr.S.configure(mp)


# -- $redis(name=>key) grammar (pv_parse_redisc_name) ---------------------------------------------
@pytest.mark.parametrize("inner, name, keys", [
    ("r=>type", "r", [("type", None)]),
    (" r => value ", "r", [("value", None)]),
    ("r=>value[1]", "r", [("value", 1)]),
    ("r=>value[ 2 ]", "r", [("value", 2)]),
    ("r=>type[0]", "r", [("type", 0)]),
    ("r=>info", "r", [("info", None)]),
    ("r=>size", "r", [("size", None)]),
    ("r=>value[0]=>size", "r", [("value", 0), ("size", None)]),
    ("r=>value[0]=>value[1]=>type[-1]", "r", [("value", 0), ("value", 1), ("type", -1)]),
])
def test_redis_name(inner, name, keys):
    assert nr.parse_redis_name(inner) == (name, keys)


@pytest.mark.parametrize("inner", ["", "r", "=>type", "r=>", "r=>sizes", "r=>foo", "r=>info=>type",
                                   "r=>value[x]", "r=>value[]", "r=>value=>size", "r=>type[0]=>size",
                                   "r=>value[0] =>size", "r" + "=>value[0]" * 11 + "=>size"])
def test_redis_name_refused(inner):
    with pytest.raises(ValueError):
        nr.parse_redis_name(inner)


def test_redis_index_from_a_variable():
    name, keys = nr.parse_redis_name("r=>value[$var(i)]")
    assert name == "r" and keys[0][0] == "value" and keys[0][1].name == "var"


# -- what each reply type yields (pv_get_redisc), on replies as redis-py parses them ----------------
def _get(reply, inner):
    nr.S.replies["r"] = reply
    return nr._redis_get(None, nr.parse_redis_name(inner), None)


NESTED = [[b"a", 7, None, Status(b"OK"), [b"x"]], ErrorReply(b"ERR e")]


@pytest.mark.parametrize("reply, key, want", [
    (b"bar", "type", 1), (b"bar", "value", "bar"), (b"bar", "info", "bar"), (b"bar", "size", None),
    (b"bar", "value[0]", None), (b"bar", "type[0]", None),
    (12, "type", 3), (12, "value", 12), (12, "info", None), (3000000001, "value", -1294967295),
    (None, "type", 4), (None, "value", None), (None, "info", None),
    (Status(b"OK"), "type", 5), (Status(b"OK"), "value", None), (Status(b"OK"), "info", "OK"),
    (ErrorReply(b"ERR x y"), "type", 6), (ErrorReply(b"ERR x y"), "value", None),
    (ErrorReply(b"ERR x y"), "info", "ERR x y"),
    ([], "type", 2), ([], "size", 0), ([], "value", None), ([], "value[0]", None),
    ([b"a", 5, None, Status(b"OK")], "size", 4), ([b"a", 5], "value[0]", "a"), ([b"a", 5], "value[1]", 5),
    ([b"a", 5, None, Status(b"OK")], "value[2]", None), ([b"a", 5, None, Status(b"OK")], "value[3]", None),
    ([b"a", 5, None, Status(b"OK")], "type[2]", 4), ([b"a", 5, None, Status(b"OK")], "type[3]", 5),
    ([b"a"], "value[-1]", None), ([b"a"], "type[9]", None), ([b"a"], "info", None),
    (NESTED, "value[0]=>size", 5), (NESTED, "value[0]=>value[1]", 7), (NESTED, "value[0]=>type[4]", 2),
    (NESTED, "value[0]=>value[4]=>value[0]", "x"), (NESTED, "value[1]=>info", "ERR e"),
    (NESTED, "value[1]=>type", 6), (NESTED, "value[2]=>type", None), (NESTED, "value[0]", None),
])
def test_redis_values(reply, key, want):
    assert _get(reply, "r=>" + key) == want


def test_redis_empty_container_and_redisd():
    nr.S.replies.clear()
    assert nr._redis_get(None, nr.parse_redis_name("nothing=>type"), None) is None
    assert [nr._redisd_get(None, nr._redisd_parse(k), None)
            for k in ("rpl_str", "rpl_arr", "rpl_int", "rpl_nil", "rpl_sts", "rpl_err")] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError):
        nr._redisd_parse("rpl_xxx")


# -- on a real redis-server -----------------------------------------------------------------------
needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REDIS)


@pytest.fixture
def redis_srv():
    with run_redis() as r:
        yield r


def _use(spec, **limits):
    """The module's state as mod_init + child_init would leave it, on `spec`."""
    mp = {p.name: ([] if p.multi else p.default) for p in nr.EXPORTS.params}
    mp.update(limits)
    mp["server"] = [spec] if isinstance(spec, str) else list(spec)
    nr.S.configure(mp)
    for rsrv in nr.S.servers.values():
        rsrv.connect(False)
    return nr.S


def _v(inner):
    return nr._redis_get(None, nr.parse_redis_name(inner), None)


@needs_redis
def test_commands_and_reply_types(redis_srv):
    _use(f"name=srv;addr=127.0.0.1;port={redis_srv.port};db=2")
    try:
        assert nr.w_redis_cmd_values(None, None, "srv", "SET %s %s", "k sp", "v with space", "r") == 1
        assert (_v("r=>type"), _v("r=>info")) == (5, "OK")
        assert nr.w_redis_cmd_values(None, None, "srv", "GET %s", "k sp", "r") == 1
        assert (_v("r=>type"), _v("r=>value")) == (1, "v with space")
        assert redis_srv.client(db=2).get("k sp") == "v with space"         # db=2 selected
        assert nr.w_redis_cmd3(None, None, "srv", "GET %s", "r") == -1      # %s without a value
        assert _v("r=>value") == "v with space"                              # the reply is untouched
        assert nr.w_redis_cmd3(None, None, "srv", "GET a b", "r") == -1     # an error reply fails
        assert (_v("r=>type"), _v("r=>info")) == (6, "ERR wrong number of arguments for 'get' command")
        assert nr.w_redis_cmd3(None, None, "nosuch", "PING", "r") == -1
        nr.w_redis_cmd3(None, None, "srv", "RPUSH l a 2", "r")
        nr.w_redis_cmd3(None, None, "srv", "MULTI", "r")
        nr.w_redis_cmd3(None, None, "srv", "LRANGE l 0 -1", "q")
        assert (_v("q=>type"), _v("q=>info")) == (5, "QUEUED")
        assert nr.w_redis_cmd3(None, None, "srv", "EXEC", "r") == 1
        assert (_v("r=>size"), _v("r=>value[0]=>size"), _v("r=>value[0]=>value[1]")) == (1, 2, "2")
        assert nr.w_redis_free(None, None, "r") == 1 and _v("r=>type") is None
        assert nr.w_redis_free(None, None, "never") == -1
    finally:
        nr.mod_destroy(None)


@needs_redis
def test_bytes_of_sip_text_reach_redis_unchanged(redis_srv):
    _use(f"name=srv;addr=127.0.0.1;port={redis_srv.port}")
    raw = b"caf\xe9 \xff"                       # not UTF-8, as a SIP header may carry
    text = raw.decode("utf-8", "surrogateescape")  # how asyncd decodes SIP text
    try:
        assert nr.w_redis_cmd_values(None, None, "srv", "SET %s %s", "k", text, "r") == 1
        assert redis.Redis(port=redis_srv.port).get("k") == raw
        assert nr.w_redis_cmd3(None, None, "srv", "GET k", "r") == 1 and _v("r=>value") == text
    finally:
        nr.mod_destroy(None)


@needs_redis
def test_pipeline(redis_srv):
    _use(f"name=srv;addr=127.0.0.1;port={redis_srv.port}")
    try:
        assert nr.w_redis_execute(None, None, "srv") == -1                  # nothing queued
        assert nr.w_redis_pipe_cmd(None, None, "srv", "SET %s %s", "p", "1", "r1") == 1
        assert nr.w_redis_pipe_cmd(None, None, "srv", "INCR p", "r2") == 1
        assert nr.w_redis_pipe_cmd(None, None, "srv", "GET p q", "r3") == 1
        assert _v("r2=>type") is None                                         # not sent yet
        assert nr.w_redis_execute(None, None, "srv") == 1                   # an error reply inside is fine
        assert (_v("r1=>info"), _v("r2=>value"), _v("r3=>type")) == ("OK", 2, 6)
        # a redis_cmd with commands still queued runs them first
        nr.w_redis_pipe_cmd(None, None, "srv", "INCR p", "r4")
        assert nr.w_redis_cmd3(None, None, "srv", "GET p", "r5") == 1
        assert (_v("r4=>value"), _v("r5=>value")) == (3, "3")
        srv = nr.S.servers["srv"]
        srv.pending = [(["PING"], "x")] * 1000
        assert nr.w_redis_pipe_cmd(None, None, "srv", "PING", "x") == -1   # MAXIMUM_PIPELINED_COMMANDS
        srv.pending = []
    finally:
        nr.mod_destroy(None)


@needs_redis
def test_redis_stopped_then_back_reconnects_by_itself(redis_srv):
    _use(f"name=srv;addr=127.0.0.1;port={redis_srv.port}", cmd_timeout=500)
    try:
        assert nr.w_redis_cmd3(None, None, "srv", "SET a 1", "r") == 1
        redis_srv.stop()
        t = time.monotonic()
        assert nr.w_redis_cmd3(None, None, "srv", "GET a", "r") == -1
        assert nr.w_redis_cmd3(None, None, "srv", "GET a", "r") == -1
        assert time.monotonic() - t < 1.0                    # refused: no wait at all
        assert _v("r=>type") is None
        nr.w_redis_pipe_cmd(None, None, "srv", "PING", "p")
        assert nr.w_redis_execute(None, None, "srv") == -1
        redis_srv.start()
        assert nr.w_redis_cmd3(None, None, "srv", "SET a 2", "r") == 1
        assert _v("r=>info") == "OK"
        # a connection dropped under an idle process: one reconnect and the command goes
        redis_srv.stop()
        redis_srv.start()
        assert nr.w_redis_cmd3(None, None, "srv", "GET a", "r") == 1 and _v("r=>type") == 4
    finally:
        nr.mod_destroy(None)


@needs_redis
def test_slow_redis_fails_within_cmd_timeout(redis_srv):
    _use(f"name=srv;addr=127.0.0.1;port={redis_srv.port}", cmd_timeout=300)
    try:
        assert nr.w_redis_cmd3(None, None, "srv", "SET a 1", "r") == 1
        os.kill(redis_srv.pid, signal.SIGSTOP)
        try:
            t = time.monotonic()
            assert nr.w_redis_cmd3(None, None, "srv", "INCR a", "r") == -1
            took = time.monotonic() - t
        finally:
            os.kill(redis_srv.pid, signal.SIGCONT)
        assert 0.25 < took < 0.9, took                      # one cmd_timeout, no resend
        assert nr.w_redis_cmd3(None, None, "srv", "GET a", "r") == 1
        assert _v("r=>value") == "2"                         # INCR ran once (it was sent once)
    finally:
        nr.mod_destroy(None)


@needs_redis
def test_allowed_timeouts_disable_then_restore(redis_srv):
    _use(f"name=srv;addr=127.0.0.1;port={redis_srv.port}", allowed_timeouts=1, disable_time=1)
    try:
        redis_srv.stop()
        assert nr.w_redis_cmd3(None, None, "srv", "PING", "r") == -1      # error 1: allowed
        assert nr.w_redis_cmd3(None, None, "srv", "PING", "r") == -1      # error 2: disabled
        assert nr.S.servers["srv"].disabled
        redis_srv.start()
        nr.w_redis_pipe_cmd(None, None, "srv", "PING", "p")
        assert nr.w_redis_execute(None, None, "srv") == -2                # disabled: -2, queue dropped
        assert nr.S.servers["srv"].pending == []
        assert nr.w_redis_cmd3(None, None, "srv", "PING", "r") == -1
        time.sleep(2.1)                                                     # past disable_time
        assert nr.w_redis_cmd3(None, None, "srv", "PING", "r") == 1
        assert not nr.S.servers["srv"].disabled
    finally:
        nr.mod_destroy(None)


@needs_redis
def test_flush_on_reconnect(redis_srv):
    _use(f"name=srv;addr=127.0.0.1;port={redis_srv.port}", flush_on_reconnect=1)
    try:
        assert nr.w_redis_cmd3(None, None, "srv", "SET a 1", "r") == 1
        redis_srv.client().execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        assert nr.w_redis_cmd3(None, None, "srv", "GET a", "r") == 1     # reconnected, FLUSHALL first
        assert _v("r=>type") == 4
    finally:
        nr.mod_destroy(None)


@needs_redis
def test_unix_socket_and_password(tmp_path):
    sock = str(tmp_path / "r.sock")
    srv = RedisServer(parse_server_spec(f"name=u;unix={sock};pass=pw"), Limits())
    p = subprocess.Popen([REDIS_SERVER, "--port", "0", "--unixsocket", sock, "--requirepass", "pw",
                          "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if os.path.exists(sock):
                break
            time.sleep(0.02)
        assert srv.connect(False)
        assert srv.execute(["PING"]) == (0, b"PONG")
        bad = RedisServer(parse_server_spec(f"name=u;unix={sock};pass=wrong"), Limits())
        assert not bad.connect(False)
    finally:
        srv.close()
        p.terminate()
        p.wait(timeout=10)
