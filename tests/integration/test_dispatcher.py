"""dispatcher on the real server with real SIPp destinations: failover in a
failure_route (ds_mark_dst + ds_next_dst + t_relay), OPTIONS probing that
marks a dead destination down within interval x threshold and up again when
it answers, with event_route[dispatcher:dst-down/up] run, and the RPCs
(dispatcher.list, set_state, reload, ping_active) over kamcmd.

Runs in: the pytest process; asyncd and SIPp run as subprocesses.
"""
import os
import re
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers import run_server
from tests.helpers.kamailio import KAMCMD, SKIP_KAMCMD, kamcmd
from tests.helpers.net import free_udp_port
from tests.helpers.sipclient import SipClient
from tests.helpers.sipp import SCENARIOS, SippUas, run_sipp, sipp_path

pytestmark = [pytest.mark.sipp,
              pytest.mark.skipif(sipp_path() is None, reason="SIPp is not installed"),
              pytest.mark.skipif(KAMCMD is None, reason=SKIP_KAMCMD)]

CFG = """
debug=2
listen=udp:127.0.0.1:LPORT
children=2
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "textops.so"
loadmodule "ctl.so"
loadmodule "siputils.so"
loadmodule "dispatcher.so"
modparam("tm", "fr_timer", 1000)
modparam("dispatcher", "list_file", "LISTFILE")
modparam("dispatcher", "flags", 2)
modparam("dispatcher", "ds_ping_interval", PING)
modparam("dispatcher", "ds_probing_mode", 1)
modparam("dispatcher", "ds_probing_threshold", 2)
modparam("dispatcher", "ds_inactive_threshold", 2)
request_route {
    if (has_totag()) {
        # in-dialog (SIPp sends ACK and BYE to us): where the Call-ID hash sends the call
        if (!ds_select_dst("1", "0")) { sl_send_reply("503", "No destination"); exit; }
        t_relay();
        exit;
    }
    if (!ds_select_dst("1", "4")) { sl_send_reply("503", "No destination"); exit; }
    xlog("L_NOTICE", "SELECTED $du for $ci $rm\\n");
    t_on_failure("DSFAIL");
    t_relay();
}
failure_route[DSFAIL] {
    if (t_check_status("408|5[0-9][0-9]")) {
        ds_mark_dst("ip");
        if (ds_next_dst()) {
            xlog("L_NOTICE", "FAILOVER to $du for $ci\\n");
            t_on_failure("DSFAIL");
            t_relay();
        }
    }
}
event_route[dispatcher:dst-down] {
    xlog("L_NOTICE", "DST-DOWN ru=$ru du=$du code=$dsv(code)\\n");
}
event_route[dispatcher:dst-up] {
    xlog("L_NOTICE", "DST-UP ru=$ru code=$dsv(code) reason=$dsv(reason)\\n");
}
"""


def _start(dests, ping=0, alg=4, tcp=False, fr=1000):
    work = tempfile.mkdtemp(prefix="ds-")
    listfile = os.path.join(work, "dispatcher.list")
    with open(listfile, "w") as f:
        f.write("".join(f"1 {p}\n" if isinstance(p, str) else f"1 sip:127.0.0.1:{p}\n"
                        for p in dests))
    cfg = CFG.replace("LISTFILE", listfile).replace("PING", str(ping))
    cfg = cfg.replace('modparam("tm", "fr_timer", 1000)', f'modparam("tm", "fr_timer", {fr})')
    cfg = cfg.replace('ds_select_dst("1", "4")', f'ds_select_dst("1", "{alg}")')
    if tcp:
        cfg = cfg.replace("listen=udp:127.0.0.1:LPORT",
                          "listen=udp:127.0.0.1:LPORT\nlisten=tcp:127.0.0.1:LPORT")
    return work, listfile, run_server(cfg, args=("-Y", os.path.join(work, "run")))


def _states(ctl):
    out = kamcmd(ctl, "dispatcher.list").stdout
    return dict(re.findall(r"URI: (\S+)\s+FLAGS: (\w+)", out))


def _uas_on(port):
    """A real SIPp answering OPTIONS with 200, on the port we choose (in the
    foreground: the test stops it by this pid; -bg would fork a child it cannot)."""
    return subprocess.Popen([sipp_path(), "-i", "127.0.0.1", "-p", str(port), "-nostdin",
                             "-sf", str(SCENARIOS / "tm_uas_options.xml")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd="/tmp")


def test_failover_marks_the_dead_destination_and_relays_to_the_next():
    uas = SippUas(scenario="tm_uas_options.xml")
    dead = free_udp_port()
    try:
        work, _lf, server = _start([dead, uas.port])
        with server as srv, SipClient(srv.addr) as c:
            ctl = f"unix:{work}/run/kamailio_ctl"
            # set order is [uas, dead] (equal priorities reversed); round-robin starts at 0
            r1 = c.final("OPTIONS", "sip:svc@example.net", timeout=4.0)
            assert r1 is not None and r1.status == 200
            r2 = c.final("OPTIONS", "sip:svc@example.net", timeout=4.0)
            assert r2 is not None and r2.status == 200
            assert r2.elapsed > 0.8          # fr_timer ran out on the dead one first
            srv.wait_log(rf"FAILOVER to sip:127.0.0.1:{uas.port}")
            # Kamailio runs it on the request being routed: its R-URI, its $du
            srv.wait_log(rf"DST-DOWN ru=sip:svc@example.net du=sip:127.0.0.1:{dead} code=820")
            assert _states(ctl) == {f"sip:127.0.0.1:{uas.port}": "AX", f"sip:127.0.0.1:{dead}": "IP"}
            # the dead one is skipped at once by every receiver now
            for _ in range(4):
                r = c.final("OPTIONS", "sip:svc@example.net", timeout=2.0)
                assert r is not None and r.status == 200 and r.elapsed < 0.8
    finally:
        uas.stop()


def test_probing_marks_down_within_interval_times_threshold_and_up_again():
    alive = SippUas(scenario="tm_uas_options.xml")
    flap = free_udp_port()
    back = None
    try:
        work, _lf, server = _start([alive.port, flap], ping=1)
        with server as srv:
            ctl = f"unix:{work}/run/kamailio_ctl"
            t0 = time.monotonic()
            # 2 failed pings (threshold 2), each a 408 after fr_timer 1 s, one per 1 s round
            srv.wait_log(rf"DST-DOWN ru=sip:127.0.0.1:{flap} du=<null> code=408", timeout=8.0)
            assert time.monotonic() - t0 < 1 * 2 + 1 + 3
            st = _states(ctl)
            assert st[f"sip:127.0.0.1:{flap}"] == "IP"
            assert st[f"sip:127.0.0.1:{alive.port}"] == "AP"
            assert "DST-DOWN ru=sip:127.0.0.1:%d" % alive.port not in srv.log()
            back = _uas_on(flap)
            # inactive_threshold 2: two answered pings bring it back
            srv.wait_log(rf"DST-UP ru=sip:127.0.0.1:{flap} code=200 reason=OK", timeout=8.0)
            assert _states(ctl)[f"sip:127.0.0.1:{flap}"] == "AP"
            # dispatcher.ping_active 0 stops the probing
            assert "NewPingState: 0" in kamcmd(ctl, "dispatcher.ping_active", "0").stdout
            assert "OldPingState: 0" in kamcmd(ctl, "dispatcher.ping_active").stdout
    finally:
        alive.stop()
        if back is not None:
            back.terminate()
            back.wait(3)


def test_rpc_set_state_and_reload():
    work, listfile, server = _start([free_udp_port(), free_udp_port()])
    with server as srv, SipClient(srv.addr) as c:
        ctl = f"unix:{work}/run/kamailio_ctl"
        uris = list(_states(ctl))
        r = kamcmd(ctl, "dispatcher.set_state", "d", "1", uris[0])
        assert r.stdout.strip() == "Ok. Dispatcher state updated."
        assert _states(ctl)[uris[0]] == "DX"
        assert "500" in kamcmd(ctl, "dispatcher.set_state", "x", "1", uris[0]).stderr + \
            kamcmd(ctl, "dispatcher.set_state", "x", "1", uris[0]).stdout
        kamcmd(ctl, "dispatcher.set_state", "i", "1", "all")
        assert set(_states(ctl).values()) == {"IX"}
        r = c.final("OPTIONS", "sip:svc@example.net", timeout=2.0)
        assert r is not None and r.status == 503      # every destination inactive: -1
        with open(listfile, "a") as f:
            f.write("2 sip:127.0.0.1:5999 0 0 duid=new\n")
        assert kamcmd(ctl, "dispatcher.reload").stdout.strip() == "Ok. Dispatcher successfully reloaded."
        st = _states(ctl)
        assert st["sip:127.0.0.1:5999"] == "AX" and set(st.values()) == {"AX"}
        assert "NRSETS: 2" in kamcmd(ctl, "dispatcher.list").stdout
        r = kamcmd(ctl, "dispatcher.reload")         # within reload_delta (5 s)
        assert "Ongoing reload" in r.stdout + r.stderr


def test_a_killed_pinger_is_respawned_and_probing_goes_on():
    dead = free_udp_port()
    work, _lf, server = _start([dead], ping=1)
    with server as srv:
        timer = srv.find("secondary timer")
        assert len(timer) == 1
        timer[0].kill()
        srv.wait_log(r"respawned secondary timer", timeout=5.0)
        srv.wait_log(rf"DST-DOWN ru=sip:127.0.0.1:{dead} du=<null> code=408", timeout=8.0)
        assert _states(f"unix:{work}/run/kamailio_ctl")[f"sip:127.0.0.1:{dead}"] == "IP"


def test_sipp_calls_are_spread_over_the_destinations():
    """12 SIPp calls over two SIPp UASs by Call-ID hash: both used, 0 failed."""
    bench = Path(__file__).resolve().parents[2] / "bench" / "scenarios"
    uases = [SippUas(scenario=str(bench / "uas.xml")) for _ in range(2)]
    try:
        # algorithm 0: the INVITE goes where its ACK and BYE (Call-ID hash) go
        _work, _lf, server = _start([u.port for u in uases], alg=0, fr=8000)
        with server as srv:
            res = run_sipp(srv.addr, scenario=str(bench / "invite_uac.xml"), calls=12, rate=10)
            assert res.successful == 12 and res.failed == 0, res.summary()
            picks = [len(re.findall(rf"SELECTED sip:127.0.0.1:{u.port} for \S+ INVITE", srv.log()))
                     for u in uases]
            assert sum(picks) == 12 and min(picks) >= 1, picks
            assert "FAILOVER" not in srv.log()
    finally:
        for u in uases:
            u.stop()


def test_parallel_forking_reaches_every_destination():
    """Algorithm 12: the chosen one as $du, a branch for each of the others."""
    uases = [SippUas(scenario="tm_uas_options.xml", trace_msg=True) for _ in range(3)]
    try:
        _work, _lf, server = _start([u.port for u in uases], alg=12)
        with server as srv, SipClient(srv.addr) as c:
            r = c.final("OPTIONS", "sip:svc@example.net", timeout=3.0)
            assert r is not None and r.status == 200
            time.sleep(0.3)
            for u in uases:
                assert "OPTIONS sip:svc@example.net SIP/2.0" in u.messages()
    finally:
        for u in uases:
            u.stop()


def test_tcp_destinations_are_pinged_over_tcp():
    uas = SippUas(scenario="tm_uas_options.xml", transport="t1", trace_msg=True)
    dead = free_udp_port()
    try:
        alive = f"sip:127.0.0.1:{uas.port};transport=tcp"
        gone = f"sip:127.0.0.1:{dead};transport=tcp"
        work, _lf, server = _start([alive, gone], ping=1, tcp=True)
        with server as srv:
            # a refused connect still ends as Kamailio's ping does: a 408 after fr_timer
            srv.wait_log(rf"DST-DOWN ru=sip:127.0.0.1:{dead};transport=tcp du=<null> code=408", timeout=8.0)
            st = _states(f"unix:{work}/run/kamailio_ctl")
            assert st == {alive: "AP", gone: "IP"}
            assert "Via: SIP/2.0/TCP 127.0.0.1:" in uas.messages()
    finally:
        uas.stop()


def test_pings_go_through_the_outbound_proxy_attr():
    px = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    px.bind(("127.0.0.1", 0))
    px.settimeout(4.0)
    try:
        dest = f"sip:10.99.99.99:5060 0 0 obproxy=sip:127.0.0.1:{px.getsockname()[1]}"
        _work, _lf, server = _start([dest], ping=1)
        with server:
            data, _src = px.recvfrom(65535)
            assert data.startswith(b"OPTIONS sip:10.99.99.99:5060 SIP/2.0\r\n")
            assert b"\r\nTo: <sip:10.99.99.99:5060>\r\n" in data
    finally:
        px.close()
