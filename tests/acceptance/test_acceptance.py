"""Acceptance: Kamailio-style cfgs a user would bring, on the real server.

Runs in: the pytest process (asyncd and SIPp run as real processes on
loopback, free ports).

proxy.cfg is the shape of Kamailio's stock kamailio.cfg (REQINIT checks,
t_precheck_trans retransmission handling, WITHINDLG with loose_route,
record_route, route(RELAY) with t_on_branch/t_on_reply/t_on_failure,
$sht/$shv/$avp/$xavp, switch); async_proxy.cfg relays from async task
workers and timers (async_task_route, async_route, async_ms_sleep inside a
switch case, task groups, while and transformations). Every test checks
that `asyncd -c` accepts the cfg as written and that the tm table is empty
in the exit log (wt_timer is shortened with -A WT=... so the wait ends
before the stop).
"""
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.kamailio import KAMCMD, kamcmd
from tests.helpers.net import free_udp_port
from tests.helpers.server import REPO_ROOT, run_server
from tests.helpers.sipp import SippUas, run_sipp

HERE = Path(__file__).parent
PROXY = str(HERE / "proxy.cfg")
ASYNC = str(HERE / "async_proxy.cfg")
FEATURES = str(HERE / "features.cfg")
WT = 300        # ms: transactions leave the table well before the stop
# SIPp's built-in uas sends 180 and 200 back to back; two receivers relay them,
# and tm keeps their order (replies leave under the transaction lock, as in
# Kamailio): the call tests run with two receivers to keep that true.
TWO_RCV = ("-n", "2")

needs_sipp = pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp not installed")


@pytest.fixture
def uas():
    made = []

    def make(**kw):
        u = SippUas(**kw)
        made.append(u)
        return u
    yield make
    for u in made:
        u.stop()


def _stop_clean(srv, settle=0.8):
    """Let the wait timers run out, SIGTERM, and check the shutdown log."""
    time.sleep(settle)
    rc = srv.stop()
    log = srv.log()
    assert rc == 0, log[-3000:]
    assert "transaction table: 0 entries at exit" in log, log[-3000:]
    assert "all processes stopped, shared memory released" in log
    assert "Traceback" not in log, log[-3000:]
    return log


def _invite(client, ruri, timeout=3.0, **kw):
    """INVITE and its final reply for this Call-ID (a 2xx/non-2xx gets its ACK)."""
    ft = "ft" + os.urandom(4).hex()
    _, branch, callid = client.send("INVITE", ruri, from_tag=ft, **kw)
    replies = client.collect(timeout, until=lambda rs: any(
        r.hdr("call-id") == callid and r.status and r.status >= 200 for r in rs))
    mine = [r for r in replies if r.hdr("call-id") == callid]
    final = mine[-1] if mine and mine[-1].status >= 200 else None
    if final is not None:
        if final.status < 300:      # end to end ACK, new branch (RFC 3261 13.2.2.4)
            client.send("ACK", ruri, callid=callid, from_tag=ft, to_tag=final.to_tag)
        else:                       # hop-by-hop ACK, same branch (17.1.1.3)
            client.send("ACK", ruri, callid=callid, from_tag=ft, to_tag=final.to_tag, branch=branch)
    return mine, final, callid, ft


@pytest.mark.unit          # asyncd -c only, no server
@pytest.mark.parametrize("cfg", [PROXY, ASYNC, FEATURES, str(HERE / "stock_snippets.cfg")])
def test_cfg_check_accepts(cfg):
    p = subprocess.run([sys.executable, "-m", "asyncd", "-c", "-f", cfg, "-A", "LPORT=5060"],
                       capture_output=True, text=True, cwd=REPO_ROOT, timeout=30)
    assert p.returncode == 0, p.stderr
    assert "config file ok" in p.stdout + p.stderr


def test_stock_proxy_local_replies(sip_client):
    """REQINIT, WITHINDLG and the switch answer without any UAS."""
    with run_server(cfg_path=PROXY, defines={"WT": WT, "UASPORT": 9}) as srv:
        c = sip_client(srv.addr)
        host = f"127.0.0.1:{srv.port}"
        r = c.final("OPTIONS", f"sip:{host}")
        assert (r.status, r.reason) == (200, "Keepalive")
        assert c.final("INVITE", f"sip:{host}").status == 484          # no user in the R-URI
        mine, final, _, _ = _invite(c, f"sip:busy@{host}")
        assert final.status == 486 and final.reason == "Busy Here"
        assert _invite(c, f"sip:gone@{host}")[1].status == 410
        assert c.final("INVITE", f"sip:x@{host}", max_forwards=0).status == 483
        # in-dialog request for no known call and no Route: the stock 404
        r = c.final("INFO", f"sip:x@{host}", to_tag="abc")
        assert (r.status, r.reason) == (404, "Not here")
        # a scanner is banned ($sht(ipban=>$si)): no reply, then nothing for that IP
        c.send("OPTIONS", f"sip:{host}", headers=("User-Agent: friendly-scanner",))
        assert c.recv(0.5) is None
        c.send("OPTIONS", f"sip:{host}")
        assert c.recv(0.5) is None
        _stop_clean(srv)


@needs_sipp
@pytest.mark.sipp
def test_stock_proxy_sipp_calls_complete(uas):
    """SIPp uac -> stock-shaped proxy -> SIPp uas: INVITE/180/200/ACK/BYE all relayed."""
    u = uas(builtin="uas")
    with run_server(cfg_path=PROXY, defines={"WT": WT, "UASPORT": u.port}, args=TWO_RCV) as srv:
        r = run_sipp(srv.addr, builtin="uac", calls=30, rate=30, timeout=20)
        assert r.rc == 0 and r.successful == 30 and r.failed == 0, r.summary()
        log = _stop_clean(srv)
    # the cfg's log_prefix ({$mt $hdr(CSeq) $ci}) sits between the level and <script>
    assert len(re.findall(r"INFO: \{[^}]*\} <script> .*reply 200 OK for", log)) >= 60     # INVITE + BYE
    assert len(re.findall(r"BYE for \S+ without Route, callee service", log)) == 30
    assert "received 90 requests" in log


@needs_sipp
@pytest.mark.sipp
def test_stock_proxy_failure_route(uas, sip_client):
    """A 486 from the UAS runs failure_route[MANAGE_FAILURE]: t_check_status, $avp and
    $xavp of the request, append_to_reply + t_reply("480")."""
    u = uas(scenario="tm_uas_486.xml")
    with run_server(cfg_path=PROXY, defines={"WT": WT, "UASPORT": u.port}) as srv:
        c = sip_client(srv.addr)
        mine, final, callid, _ = _invite(c, f"sip:alice@127.0.0.1:{srv.port}")
        assert final is not None and (final.status, final.reason) == (480, "Temporarily Unavailable")
        assert final.hdr("X-Reason") == "busy"
        assert 100 in [r.status for r in mine]
        srv.wait_log(rf"failure 486 for {re.escape(callid)} \(caller tester, callee alice\)")
        _stop_clean(srv)


@needs_sipp
@pytest.mark.sipp
def test_async_proxy_calls_and_timers(uas, sip_client):
    """async_ms_sleep in a switch case, async_route(…, 1), async_task_route relays, task
    group data + route answering a MESSAGE; $avp/$xavp survive every suspend."""
    u = uas(builtin="uas")
    with run_server(cfg_path=ASYNC, defines={"WT": WT, "UASPORT": u.port}, args=TWO_RCV) as srv:
        c = sip_client(srv.addr)
        host = f"127.0.0.1:{srv.port}"
        assert c.final("OPTIONS", f"sip:{host}").status == 200

        mine, final, callid, _ = _invite(c, f"sip:slow@{host}")
        assert final is not None and final.status == 200, mine
        assert 0.19 <= final.elapsed < 1.0, final.elapsed
        assert [r.status for r in mine][0] == 100          # suspended: 100 at once
        srv.wait_log(rf"relaying {re.escape(callid)} for tester to slow \(len 4, slept yes\)")

        mine, final, callid, _ = _invite(c, f"sip:later@{host}")
        assert final is not None and final.status == 200, mine
        assert 0.95 <= final.elapsed < 2.0, final.elapsed
        srv.wait_log(rf"relaying {re.escape(callid)} for tester to later \(len 5, slept <null>\)")

        r = c.final("MESSAGE", f"sip:bob@{host}", body="hi", timeout=3)
        assert r is not None and (r.status, r.reason) == (202, "Accepted")
        assert int(r.hdr("X-Seen")) > 0
        srv.wait_log(r"lookup task: from=tester to=bob")

        res = run_sipp(srv.addr, builtin="uac", calls=30, rate=30, timeout=20)
        assert res.rc == 0 and res.successful == 30 and res.failed == 0, res.summary()
        log = _stop_clean(srv, settle=1.0)
    # 30 async_task_route + the async_ms_sleep continuation (the ms timer hands it to default)
    assert "task group [default]: accepted=31, rejected=0, run=31, skipped=0, pending=0" in log, log[-3000:]
    assert "task group [lookup]: accepted=2, rejected=0, run=2, skipped=0, pending=0" in log


@needs_sipp
@pytest.mark.sipp
def test_async_proxy_busy_runs_failure_route_after_resume(uas, sip_client):
    u = uas(scenario="tm_uas_486.xml")
    with run_server(cfg_path=ASYNC, defines={"WT": WT, "UASPORT": u.port}) as srv:
        c = sip_client(srv.addr)
        mine, final, _, _ = _invite(c, f"sip:carol@127.0.0.1:{srv.port}")
        assert final is not None and (final.status, final.reason) == (480, "Try Later"), mine
        srv.wait_log(r"busy: 486 tester")
        _stop_clean(srv)


def test_features_cfg_init_routes_and_transformations(sip_client):
    with run_server(cfg_path=FEATURES) as srv:
        c = sip_client(srv.addr)
        host = f"127.0.0.1:{srv.port}"
        # event_route[htable:mod-init] filled $sht before the receivers forked
        r = c.final("OPTIONS", f"sip:a@{host}", headers=("User-Agent: tester 1.0", "X-List: a,b,c"))
        assert (r.status, r.reason, r.hdr("X-Greeting")) == (200, "Booted", "Booted")
        r = c.final("MESSAGE", f"sip:bob@{host}", body="x", headers=("X-Secret: 1",))
        assert (r.status, r.reason) == (403, "Forbidden 2")
        srv.wait_log(r"first worker up, greeting Booted")
        srv.wait_log(r"list count=2 second=b upper=A,B,C")
        srv.wait_log(r"avp stack 2 1")
        srv.wait_log(r"tester agent")
        srv.wait_log(r"NOTICE: <script> .*OPTIONS from sip:tester@127.0.0.1 user=a ftag=ft\S+ vias=1")
        log = _stop_clean(srv, settle=0)
    assert log.count("first worker up") == 1


@needs_sipp
@pytest.mark.sipp
def test_async_proxy_retransmission_and_cancel_while_suspended(uas, sip_client):
    """t_precheck_trans/t_check_trans: retransmissions of an INVITE waiting in
    async_route get the 100 again and one relay; a CANCEL meanwhile gives 487 and
    the resume is skipped."""
    from tests.helpers.sipclient import build_request
    u = uas(builtin="uas")
    with run_server(cfg_path=ASYNC, defines={"WT": WT, "UASPORT": u.port}) as srv:
        c = sip_client(srv.addr)
        ruri = f"sip:later@127.0.0.1:{srv.port}"
        data, branch, callid = c.send("INVITE", ruri, from_tag="ftr")
        time.sleep(0.2)
        c.send_raw(data)
        time.sleep(0.2)
        c.send_raw(data)
        rs = [r for r in c.collect(2.0, until=lambda rs: any(
            r.hdr("call-id") == callid and r.status == 200 for r in rs)) if r.hdr("call-id") == callid]
        assert [r.status for r in rs][:3] == [100, 100, 100], rs
        assert rs[-1].status == 200
        ack, _, _ = build_request("ACK", ruri, c.local, callid=callid, from_tag="ftr", to_tag=rs[-1].to_tag)
        c.send_raw(ack)

        data, branch, callid2 = c.send("INVITE", ruri, from_tag="ftc")
        time.sleep(0.3)
        cancel, _, _ = build_request("CANCEL", ruri, c.local, branch=branch, callid=callid2, from_tag="ftc")
        c.send_raw(cancel)
        rs = [r for r in c.collect(1.5) if r.hdr("call-id") == callid2]
        codes = [(r.status, r.hdr("cseq").split()[1]) for r in rs]
        assert (200, "CANCEL") in codes and (487, "INVITE") in codes, codes
        final = [r for r in rs if r.status == 487][0]
        c.send_raw(build_request("ACK", ruri, c.local, branch=branch, callid=callid2, from_tag="ftc",
                                 to_tag=final.to_tag)[0])
        time.sleep(0.5)         # past the 1 s resume time of the cancelled one
        log = _stop_clean(srv)
    assert len(re.findall(rf"relaying {re.escape(callid)} ", log)) == 1
    assert f"relaying {callid2} " not in log
    assert "seconds timer: accepted=2, rejected=0, run=1, skipped=1, pending=0" in log


def test_stock_snippets(sip_client):
    snip = str(HERE / "stock_snippets.cfg")
    with run_server(cfg_path=snip, defines={"WT": WT}) as srv:
        c = sip_client(srv.addr)
        host = f"127.0.0.1:{srv.port}"
        r = c.final("OPTIONS", f"sip:a@{host}")
        assert (r.status, r.reason, r.hdr("X-Du")) == (200, "ok", "sip:127.0.0.1:9")
        r = c.final("MESSAGE", f"sip:udp@{host}", body="x")
        assert (r.status, r.reason) == (202, "udp from loopback")
        r = c.final("REGISTER", f"sip:{host}")
        assert (r.status, r.reason) == (200, "ok, not stored")
        r = c.final("MESSAGE", f"sip:b@{host}", body="x")
        assert (r.status, r.reason) == (404, "Not found")       # t_newtran + t_reply
        _stop_clean(srv)


STOCK = HERE / "stock" / "kamailio.cfg"    # Debian's, byte-exact (stock/README.md)


@pytest.mark.parametrize("define", [None, "WITH_JSONRPC", "WITH_ANTIFLOOD"])
def test_kamailio_stock_cfg_runs(tmp_path, sip_client, define):
    """Kamailio's stock kamailio.cfg (Debian's, the unchanged copy in stock/):
    checks, starts with -l, answers as Kamailio's stock cfg does (registrar included); its
    ctl, jsonrpcs, cfg_rpc, counters and kex are there, so the real kamcmd and (with
    WITH_JSONRPC) JSON-RPC over HTTP answer; WITH_ANTIFLOOD loads pike and the ipban
    htable (loopback is `myself`, so REQINIT skips pike, as on Kamailio)."""
    cfg = STOCK
    jsonrpc = define == "WITH_JSONRPC"
    defines = ["-A", define] if define else []
    p = subprocess.run([sys.executable, "-m", "asyncd", "-c", "-f", str(cfg), *defines], capture_output=True,
                       text=True, cwd=REPO_ROOT, timeout=30)
    assert p.returncode == 0, p.stderr
    port = free_udp_port()
    rundir = tmp_path / "run"
    listen = ["-l", f"udp:127.0.0.1:{port}"] + (["-l", f"tcp:127.0.0.1:{port}"] if jsonrpc else [])
    with run_server(cfg_path=str(cfg), port=port, args=[*listen, "-n", "2", "-Y", str(rundir), *defines]) as srv:
        c = sip_client(srv.addr)
        host = f"127.0.0.1:{port}"
        r = c.final("OPTIONS", f"sip:{host}")
        assert (r.status, r.reason) == (200, "Keepalive")            # REQINIT: uri==myself
        mine, final, _, _ = _invite(c, f"sip:bob@{host}")
        # LOCATION: t_newtran() then send_reply(404): no 100 first, as on Kamailio 5.6.3
        # (tm/reply.py auto_100; compared in tests/integration/test_softphone.py)
        assert [x.status for x in mine] == [404] and final.reason == "Not Found"
        r = c.final("REGISTER", f"sip:alice@{host}", headers=["Expires: 7200"])          # REGISTRAR
        assert r.status == 200 and r.hdr("Contact").endswith(";expires=3600")          # max_expires
        r = c.final("MESSAGE", "sip:bob@example.com", body="x")
        assert (r.status, r.reason) == (403, "Not relaying")          # AUTH: not for us
        r = c.final("BYE", f"sip:bob@{host}", to_tag="x")
        assert (r.status, r.reason) == (404, "Not here")              # WITHINDLG
        if KAMCMD is not None:
            out = kamcmd(f"unix:{rundir}/kamailio_ctl", "core.psx").stdout
            for title in ("ctl handler", "JSONRPCS FIFO", "JSONRPCS DATAGRAM"):
                assert title in out, out
        if jsonrpc:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("POST", "/RPC", body='{"jsonrpc": "2.0", "method": "core.uptime", "id": 1}')
            rsp = conn.getresponse()
            assert rsp.status == 200 and "uptime" in json.loads(rsp.read())["result"]
            conn.close()
        srv.stop()
        log = srv.log()
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]
