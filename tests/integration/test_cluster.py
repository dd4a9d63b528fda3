"""The three-node cluster (docs/cluster.md) on a real redis-server: a dispatcher node
in front of two proxy nodes that share registrations through Redis (usrloc db_mode 3
on db_redis), run as asyncd trees and as Kamailio 5.6.3 trees on the same cfg files
(tests/cluster/*.cfg).

Runs in: the pytest process; Redis, the nodes and SIPp are subprocesses.

- A UA (a SIPp UAS) registers through proxy node A; calls through the dispatcher land
  on A and on B (round-robin; the proxy adds `X-Node: <its port>`) and all reach it.
- Proxy node A killed under load: probing marks it down (dispatcher.list, the
  dst-down event route's log line) within ping interval + fr_timer, calls go to B
  with 0 failed (a call A carried when it died loses its BYE: A record-routed it);
  restarted: probing marks it up and it takes calls again.
- A mixed cluster: an asyncd dispatcher in front of a Kamailio proxy and an asyncd
  proxy on the same Redis: a UA registered through Kamailio is called through both.
- Redis stopped and restarted under load: calls fail (error replies from the
  cfg: REGISTER 500, INVITE 404, both at once) only while it is down, every
  INVITE is answered (SIPp: no timeout, no unexpected message), and after Redis
  is back the nodes serve again with no restart.

The Kamailio runs are the reference (they skip without Kamailio or
kamailio-redis-modules); the asyncd runs always run.
"""
import os
import re
import tempfile
import threading
import time
from pathlib import Path

import pytest

from bench.servers import kamailio_binary
from tests.helpers.cluster import run_cluster
from tests.helpers.kamailio import KAMCMD, SKIP_KAMAILIO_REDIS, SKIP_KAMCMD, kamailio_has_module, kamcmd
from tests.helpers.redis_server import REDIS_SERVER, SKIP_REDIS
from tests.helpers.sipclient import SipClient
from tests.helpers.sipp import SippUas, run_sipp, sipp_path

PING_INTERVAL = 1.0         # dispatcher.cfg ds_ping_interval
FR_TIMER = 1.0              # dispatcher.cfg tm fr_timer: a probe of a dead node fails after it
USER = "alice"

pytestmark = [pytest.mark.sipp,
              pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REDIS),
              pytest.mark.skipif(sipp_path() is None, reason="sipp not installed"),
              pytest.mark.skipif(KAMCMD is None, reason=SKIP_KAMCMD)]


def _kamailio_skip():
    if kamailio_binary() is None:
        return "Kamailio is not installed"
    if not kamailio_has_module("db_redis"):
        return SKIP_KAMAILIO_REDIS
    return ""


KIND_PARAMS = [
    pytest.param("asyncd"),
    pytest.param("kamailio", marks=[pytest.mark.kamailio, pytest.mark.skipif(
        bool(_kamailio_skip()), reason=_kamailio_skip() or "-")]),
]


@pytest.fixture(params=KIND_PARAMS)
def cluster(request):
    with run_cluster(request.param) as c:
        yield c


@pytest.fixture
def uas():
    u = SippUas(scenario="cluster_uas.xml", trace_msg=True)
    yield u
    u.stop()


def register(node, uas, expires=300, cseq=1):
    """REGISTER USER with the UAS's address as Contact, sent to `node`; the SippResult."""
    return run_sipp(node.addr, scenario="stock_register", service=USER, calls=1, rate=100, timeout=5,
                    extra=["-key", "cport", str(uas.port), "-key", "ctr", "udp",
                           "-key", "expires", str(expires), "-key", "regcseq", str(cseq),
                           "-cid_str", f"reg-{uas.port}@cluster"])


class Calls:
    """Calls to USER through the dispatcher (tests/sipp/scenarios/cluster_uac.xml), with
    each call's outcome read from SIPp's log ("ok N" / "fail N CODE")."""

    def __init__(self, cluster, calls, rate):
        fd, self.log_file = tempfile.mkstemp(prefix="cluster-uac-", suffix=".log")
        os.close(fd)
        self.calls, self.rate = calls, rate
        self.result = run_sipp(cluster.dispatcher.addr, scenario="cluster_uac", service=USER,
                               calls=calls, rate=rate, timeout=calls / rate + 20,
                               extra=["-trace_logs", "-log_file", self.log_file])
        text = Path(self.log_file).read_text() if os.path.exists(self.log_file) else ""
        os.unlink(self.log_file) if os.path.exists(self.log_file) else None
        self.ok = sorted(int(n) for n in re.findall(r"^ok (\d+)", text, re.M))
        fails = re.findall(r"^fail (\d+) (\d+)", text, re.M)
        self.failed = sorted(int(n) for n, _ in fails)
        self.codes = sorted({int(c) for _, c in fails})        # the error replies' codes

    def assert_all_answered(self):
        """Every call finished its scenario: a 200 (then ACK/BYE) or an error reply; no
        INVITE timed out, no unexpected message (SIPp's stat file)."""
        r = self.result
        assert r.successful == self.calls and r.failed == 0, r.summary()
        assert len(self.ok) + len(self.failed) == self.calls, (self.ok, self.failed)


def _background(fn):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", fn()), daemon=True)
    t.start()
    return t, out


def nodes_seen(uas, cluster):
    """Names of the proxy nodes that relayed INVITEs to the UAS (their X-Node headers)."""
    ports = re.findall(r"^X-Node: (\d+)", uas.messages(), re.M)
    return [cluster.proxy_by_port(p).name for p in ports]


def ds_flags(cluster):
    """{proxy name: dispatcher FLAGS} from `kamcmd dispatcher.list` on the dispatcher node."""
    out = kamcmd(cluster.dispatcher.ctl, "dispatcher.list").stdout
    flags = dict(re.findall(r"URI: sip:127\.0\.0\.1:(\d+)\s+FLAGS: (\w+)", out))
    return {cluster.proxy_by_port(p).name: f for p, f in flags.items()}


def wait_flags(cluster, name, first, timeout):
    """Seconds until proxy `name`'s FLAGS start with `first` ("I" inactive, "A" active)."""
    t0 = time.monotonic()
    while not ds_flags(cluster).get(name, "").startswith(first):
        assert time.monotonic() - t0 < timeout, (name, first, ds_flags(cluster),
                                                 cluster.dispatcher.log()[-3000:])
        time.sleep(0.1)
    return time.monotonic() - t0


def down_replies(cluster, proxy):
    """(final reply to a REGISTER sent to `proxy`, to an INVITE through the dispatcher)."""
    with SipClient(proxy.addr) as sc:
        reg = sc.final("REGISTER", f"sip:{USER}@127.0.0.1:{proxy.port}", headers=["Expires: 300"])
    with SipClient(cluster.dispatcher.addr) as sc:
        inv = sc.final("INVITE", f"sip:{USER}@127.0.0.1:{cluster.dispatcher.port}")
    return reg, inv


def test_register_on_a_call_through_dispatcher_reaches_ua(cluster, uas):
    a, b = cluster.proxies
    r = register(a, uas)
    assert r.successful == 1, r.summary()
    # db_redis's layout (redis_dbase.c): one hash per contact, a set per AOR
    rc = cluster.redis.client()
    entries = rc.keys("location:entry::*")
    assert len(entries) == 1, rc.keys("*")
    assert rc.hget(entries[0], "username") == USER
    assert rc.hget(entries[0], "contact") == f"sip:{USER}@127.0.0.1:{uas.port};transport=udp"
    calls = Calls(cluster, calls=4, rate=10)
    calls.assert_all_answered()
    assert calls.failed == [], calls.result.summary()
    seen = nodes_seen(uas, cluster)
    assert sorted(seen) == ["proxya", "proxya", "proxyb", "proxyb"], seen


@pytest.mark.kamailio
@pytest.mark.skipif(bool(_kamailio_skip()), reason=_kamailio_skip() or "-")
def test_mixed_cluster_asyncd_dispatcher_kamailio_and_asyncd_proxies(uas):
    kinds = {"dispatcher": "asyncd", "proxya": "kamailio", "proxyb": "asyncd"}
    with run_cluster("asyncd", kinds=kinds) as cluster:
        a, b = cluster.proxies
        assert register(a, uas).successful == 1         # saved by Kamailio
        for name in ("proxya", "proxyb"):               # asyncd's probes see both up
            wait_flags(cluster, name, "AP", timeout=PING_INTERVAL + 3)
        calls = Calls(cluster, calls=4, rate=10)
        calls.assert_all_answered()
        assert calls.failed == [], calls.result.summary()
        # found by asyncd's lookup in what Kamailio's save wrote
        assert sorted(nodes_seen(uas, cluster)) == ["proxya", "proxya", "proxyb", "proxyb"]


def test_node_killed_marked_down_calls_to_b_restarted_used_again(cluster, uas):
    a, b = cluster.proxies
    assert register(a, uas).successful == 1
    # both probed and answering ("AX" until the first probe: dispatch.c ds_print_sets)
    for name in ("proxya", "proxyb"):
        wait_flags(cluster, name, "AP", timeout=PING_INTERVAL + 3)
    rate, n = 20, 60
    t0 = time.monotonic()
    t, out = _background(lambda: Calls(cluster, calls=n, rate=rate))
    time.sleep(1.0)
    t_kill = time.monotonic() - t0
    a.kill()
    down = wait_flags(cluster, "proxya", "I", timeout=PING_INTERVAL + FR_TIMER + 4)
    t.join(60)
    calls = out["r"]
    # a call A was carrying when it died loses its BYE (A record-routed it); every call
    # started after the kill is set up, through B (failover after fr_timer until the
    # probe marks A down), and ends with 200s
    in_flight = [i for i in range(1, n + 1) if t_kill - 0.6 < (i - 1) / rate < t_kill + 0.3]
    later = [i for i in range(1, n + 1) if (i - 1) / rate >= t_kill + 0.3]
    assert set(later) <= set(calls.ok), (t_kill, calls.ok, calls.failed, calls.result.summary())
    assert calls.result.failed <= len(in_flight), calls.result.summary()
    assert re.search(rf"proxy sip:127\.0\.0\.1:{a.port} is down", cluster.dispatcher.log())
    assert ds_flags(cluster)["proxyb"] == "AP"
    # after the kill was seen: every call on B
    before = len(nodes_seen(uas, cluster))
    after = Calls(cluster, calls=6, rate=20)
    assert after.failed == [] and after.result.successful == 6, after.result.summary()
    assert set(nodes_seen(uas, cluster)[before:]) == {"proxyb"}
    # A back on the same port: probing marks it up, it takes calls again
    a.start()
    up = wait_flags(cluster, "proxya", "A", timeout=PING_INTERVAL + 4)
    assert re.search(rf"proxy sip:127\.0\.0\.1:{a.port} is up", cluster.dispatcher.log())
    before = len(nodes_seen(uas, cluster))
    again = Calls(cluster, calls=6, rate=20)
    assert again.failed == [] and again.result.successful == 6, again.result.summary()
    assert set(nodes_seen(uas, cluster)[before:]) == {"proxya", "proxyb"}
    print(f"{cluster.kind}: marked down {down:.2f} s after the kill, up {up:.2f} s after the restart")


def test_redis_restarted_under_load_errors_only_while_down(cluster, uas):
    a, b = cluster.proxies
    assert register(a, uas).successful == 1
    rate, calls = 20, 120                           # 6 s of calls
    t0 = time.monotonic()
    t, out = _background(lambda: Calls(cluster, calls=calls, rate=rate))
    time.sleep(1.5)
    t_down = time.monotonic() - t0
    cluster.redis.stop()
    # while it is down: save() fails -> the cfg's sl_reply_error 500; lookup() finds
    # nothing -> 404 (registrar lookup returns -1 when usrloc's DB query fails); at once
    reg, inv = down_replies(cluster, a)
    assert (reg.status, inv.status) == (500, 404), (reg, inv)
    assert max(reg.elapsed, inv.elapsed) < 1.0, (reg.elapsed, inv.elapsed)
    time.sleep(max(0.0, 1.5 - (time.monotonic() - t0 - t_down)))
    cluster.redis.start()
    # Redis came back empty (no persistence): the UA's next refresh puts the binding back
    deadline = time.monotonic() + 3
    while register(a, uas, cseq=2).successful != 1:
        assert time.monotonic() < deadline, a.log()[-3000:]
    t_back = time.monotonic() - t0
    t.join(60)
    res = out["r"]
    res.assert_all_answered()
    assert res.failed, "no call failed while Redis was down"
    assert res.codes == [404], res.codes        # lookup() found nothing: the cfg's 404
    # call N starts (N-1)/rate s after SIPp's start; 1 s of slack for SIPp's start and the host
    first_fail, last_fail = (n / rate for n in (res.failed[0], res.failed[-1]))
    assert first_fail > t_down - 1.0, (t_down, res.failed)
    assert last_fail < t_back + 1.0, (t_back, res.failed)
    assert res.ok[-1] > res.failed[-1], "no call succeeded after Redis was back"
    for node in cluster.nodes:
        assert node.alive(), node.log()[-3000:]
    print(f"{cluster.kind}: {len(res.failed)} of {calls} calls failed while Redis was down "
          f"({t_down:.1f}-{t_back:.1f} s)")
