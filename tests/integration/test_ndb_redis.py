"""ndb_redis on the real asyncd and a real redis-server: Redis down at start
(startup refused, or init_without_redis=1), Redis stopped and restarted
under requests (the cfg's own 503 while it is away, answered within
cmd_timeout, 200 again without a restart), a hung (SIGSTOPped) Redis, and
the pattern of docs/kamailio-ndb_redis.md: Redis work in an
async_task_route worker so the receiver keeps answering.

Runs in: the pytest process; asyncd and redis-server run as real processes
on loopback.
"""
import os
import shutil
import signal
import tempfile
import time

import pytest

from bench.servers import free_tcp_port
from tests.helpers import REPO_ROOT, SipClient
from tests.helpers.redis_server import REDIS_SERVER, SKIP_REDIS, RedisServer
from tests.helpers.server import ServerFailed, run_server

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REDIS)

SLACK = 1.5         # the host is shared: replies may come late, never this late
CMD_TIMEOUT = 0.5

# the cfg of docs/kamailio-ndb_redis.md ("Slow Redis work off the receivers"), with
# X-Async choosing the worker or the receiver for the same route
CFG = """#!KAMAILIO
listen=udp:127.0.0.1:LPORT
children=1
async_workers=1
disable_tcp=yes
debug=2
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "textops.so"
loadmodule "async.so"
loadmodule "ndb_redis.so"
modparam("ndb_redis", "server", "name=main;addr=127.0.0.1;port=RPORT")
INIT
modparam("ndb_redis", "connect_timeout", 500)
modparam("ndb_redis", "cmd_timeout", 500)
request_route {
    if (is_method("OPTIONS")) {
        sl_send_reply("200", "alive");
        exit;
    }
    if ($hdr(X-Async) == "1") {
        # the receiver is free again at once; a task worker runs route[REDIS]
        async_task_route("REDIS");
        exit;
    }
    route(REDIS);
}
route[REDIS] {
    if (!redis_cmd("main", "INCR calls", "r")) {
        xlog("L_ERR", "redis unavailable for $ci\\n");
        send_reply("503", "Redis unavailable");
        exit;
    }
    send_reply("200", "calls=$redis(r=>value) pid=$pp");
}
"""


def _cfg(redis_port, init_without_redis):
    init = 'modparam("ndb_redis", "init_without_redis", 1)' if init_without_redis else ""
    return CFG.replace("RPORT", str(redis_port)).replace("INIT", init)


@pytest.fixture
def redis_off():
    """A redis-server that is not running yet, on a port of its own."""
    workdir = tempfile.mkdtemp(prefix="redis-test-")
    srv = RedisServer(free_tcp_port(), workdir)
    try:
        yield srv
    finally:
        if srv.proc is not None:
            os.kill(srv.pid, signal.SIGCONT)
        srv.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _message(c, asynchronous=False, timeout=5.0):
    t = time.monotonic()
    r = c.final("MESSAGE", headers=["X-Async: 1"] if asynchronous else [], timeout=timeout)
    assert r is not None, "no final reply"
    return r.status, r.reason, time.monotonic() - t


def test_redis_down_at_start_refuses_startup(redis_off, tmp_path):
    with pytest.raises(ServerFailed) as e:
        with run_server(_cfg(redis_off.port, False), args=("-Y", str(tmp_path))):
            pass
    assert "failed to initialize redis connections" in str(e.value)
    assert f"127.0.0.1:{redis_off.port}/0" in str(e.value)


def test_redis_away_and_back_without_restart(redis_off, tmp_path):
    with run_server(_cfg(redis_off.port, True), args=("-Y", str(tmp_path))) as srv, SipClient(srv.addr) as c:
        assert "failed to initialize redis connections, but initializing module anyway" in srv.log()
        # down since the start: the cfg's own 503, at once (connection refused)
        status, _, took = _message(c)
        assert status == 503 and took < SLACK
        redis_off.start()
        status, reason, _ = _message(c)
        assert status == 200 and reason.startswith("calls=1 ")     # reconnected by itself
        assert _message(c)[1].startswith("calls=2 ")
        # stopped under requests: 503 while away, 200 again once it is back
        redis_off.stop()
        for _ in range(3):
            status, _, took = _message(c)
            assert status == 503 and took < CMD_TIMEOUT + SLACK
        redis_off.start()
        status, reason, _ = _message(c)
        assert status == 200 and reason.startswith("calls=1 ")     # a fresh, empty Redis
        log = srv.log()
        assert "unable to reconnect to redis server: main" in log
        assert f"failed to connect to redis server [main] (127.0.0.1:{redis_off.port}/0)" in log
        assert "redis unavailable for" in log


def test_hung_redis_fails_within_cmd_timeout(redis_off, tmp_path):
    redis_off.start()
    with run_server(_cfg(redis_off.port, False), args=("-Y", str(tmp_path))) as srv, SipClient(srv.addr) as c:
        direct, worker = _message(c), _message(c, asynchronous=True)
        assert direct[0] == worker[0] == 200
        # the same route, run by the receiver and by the task worker: two processes
        assert direct[1].split("pid=")[1] != worker[1].split("pid=")[1]
        os.kill(redis_off.pid, signal.SIGSTOP)
        try:
            # on the receiver: its 503 after one cmd_timeout, not later
            status, _, took = _message(c)
            assert status == 503 and CMD_TIMEOUT * 0.9 <= took < CMD_TIMEOUT + SLACK, took
        finally:
            os.kill(redis_off.pid, signal.SIGCONT)
        assert _message(c)[0] == 200
        assert "did not answer within cmd_timeout 500 ms" in srv.log()


def _doc_cfg(redis_port):
    """The cfg of docs/kamailio-ndb_redis.md, "Slow Redis work off the receivers", as written."""
    page = (REPO_ROOT / "docs" / "kamailio-ndb_redis.md").read_text()
    section = page[page.index("## Slow Redis work off the receivers"):]
    block = section.split("```")[1]
    head = "#!KAMAILIO\nlisten=udp:127.0.0.1:LPORT\nchildren=1\ndisable_tcp=yes\n"
    return head + block.replace("port=6379", f"port={redis_port}")


def test_documented_async_worker_pattern_keeps_the_receiver_answering(redis_off, tmp_path):
    redis_off.start()
    with run_server(_doc_cfg(redis_off.port), args=("-Y", str(tmp_path))) as srv, SipClient(srv.addr) as c:
        assert _message(c)[:2] == (200, "calls=1")
        os.kill(redis_off.pid, signal.SIGSTOP)
        try:
            with SipClient(srv.addr) as other:
                c.send("MESSAGE")
                t = time.monotonic()
                r = other.final("OPTIONS", timeout=5)
                assert r is not None and r.status == 200 and time.monotonic() - t < CMD_TIMEOUT
                late = c.collect(CMD_TIMEOUT + 2 * SLACK, until=lambda rs: rs[-1].status >= 200)
                assert late and late[-1].status == 503 and late[-1].reason == "Redis unavailable"
        finally:
            os.kill(redis_off.pid, signal.SIGCONT)
        # the INCR that timed out had been sent: Redis runs it (once) when it resumes
        assert _message(c)[:2] == (200, "calls=3")
        assert "redis unavailable for" in srv.log()
