"""dispatcher on asyncd picks what Kamailio 5.6.3 picks: the same cfg and list
file, the same requests (30 Call-IDs, From, To and R-URI users) -> the same
$du for the hash algorithms 0-3, round-robin (4) and priority (8), the same
failover list ($xavp(_dsdst_), $xavp(_dsctx_=>cnt)), the same R-URI from
ds_select_domain, and `kamcmd dispatcher.list` prints the same thing.

Runs in: the pytest process; Kamailio and asyncd run as subprocesses.
"""
import contextlib
import json
import os
import re
import socket
import tempfile
import time

import pytest

from tests.helpers import run_server
from tests.helpers.kamailio import KAMCMD, SKIP_KAMAILIO, SKIP_KAMCMD, kamcmd, run_kamailio
from tests.helpers.sipclient import SipClient, build_request
from bench.servers import kamailio_binary

pytestmark = [pytest.mark.kamailio,
              pytest.mark.skipif(KAMCMD is None, reason=SKIP_KAMCMD)]

LIST = """\
# set 1: priorities, attributes, a bare host:port, equal priorities
1 sip:127.0.0.1:5071 0 5 weight=50;duid=a
1 sip:127.0.0.1:5072 0 5
1 sip:127.0.0.1:5073;transport=udp 0 10 duid=c;maxload=5
1 127.0.0.1:5074
1 sip:127.0.0.2:5075 0 1
# set 7: one disabled by its file flags
7 sip:127.0.0.1:5081 4
7 sip:127.0.0.1:5082
7 sip:127.0.0.1:5083 0 2
3 sip:127.0.0.3 16 0 duid=nodns
2 sip:127.0.0.1:5091   # a comment after the URI
# set 4: call load (algorithm 10)
4 sip:127.0.0.1:6001 0 0 duid=d1;maxload=2
4 sip:127.0.0.1:6002 0 0 duid=d2
4 sip:127.0.0.1:6003 0 0 duid=d3;maxload=1
"""

CFG = """
debug=2
listen=udp:127.0.0.1:LPORT
children=1
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "textops.so"
loadmodule "ctl.so"
loadmodule "jsonrpcs.so"
loadmodule "cfg_rpc.so"
loadmodule "dispatcher.so"
modparam("dispatcher", "list_file", "LISTFILE")
modparam("dispatcher", "flags", 2)
modparam("dispatcher", "setid_pvname", "$avp(dsset)")
modparam("dispatcher", "attrs_pvname", "$avp(dsattrs)")
modparam("dispatcher", "ds_hash_size", 4)
modparam("dispatcher", "reload_delta", 1)
request_route {
    if ($hdr(X-Mode) == "unload") {
        $var(rc) = ds_load_update();
        append_to_reply("X-From: $var(rc)\r\n");
        sl_send_reply("200", "OK");
        exit;
    }
    $var(set) = $(hdr(X-Set){s.int});
    $var(alg) = $(hdr(X-Alg){s.int});
    if ($hdr(X-Mode) == "from") {
        if ($hdr(X-Uri) == $null) {
            $var(rc) = ds_is_from_list("$var(set)", "$var(alg)");
        } else {
            $var(rc) = ds_is_from_list("$var(set)", "$var(alg)", "$hdr(X-Uri)");
        }
        append_to_reply("X-From: $var(rc) $avp(dsset) $avp(dsattrs)\r\n");
        sl_send_reply("200", "OK");
        exit;
    }
    if ($hdr(X-Mode) == "domain") {
        if (!ds_select_domain("$var(set)", "$var(alg)")) { sl_send_reply("503", "none"); exit; }
    } else if ($hdr(X-Mode) == "routes" && $hdr(X-Limit) != $null) {
        $var(lim) = $(hdr(X-Limit){s.int});     # Kamailio's igp fixup wants an int pv here
        $var(rc) = ds_select_routes("$hdr(X-Rules)", "$hdr(X-Rmode)", "$var(lim)");
        if ($var(rc) < 0) { sl_send_reply("503", "none $var(rc)"); exit; }
    } else if ($hdr(X-Mode) == "routes") {
        $var(rc) = ds_select_routes("$hdr(X-Rules)", "$hdr(X-Rmode)");
        if ($var(rc) < 0) { sl_send_reply("503", "none $var(rc)"); exit; }
    } else if ($hdr(X-Limit) != $null) {
        if (!ds_select_dst("$var(set)", "$var(alg)", "$hdr(X-Limit)")) { sl_send_reply("503", "none"); exit; }
    } else {
        if (!ds_select_dst("$var(set)", "$var(alg)")) { sl_send_reply("503", "none"); exit; }
    }
    append_to_reply("X-Du: $du\\r\\nX-Ru: $ru\\r\\nX-Cnt: $xavp(_dsctx_=>cnt)\\r\\n");
    append_to_reply("X-L: $xavp(_dsdst_[0]=>uri) $xavp(_dsdst_[1]=>uri) $xavp(_dsdst_[2]=>uri)");
    append_to_reply(" $xavp(_dsdst_[3]=>uri) $xavp(_dsdst_[4]=>uri)\\r\\n");
    append_to_reply("X-A: $xavp(_dsdst_[0]=>grp) $xavp(_dsdst_[0]=>attrs)\\r\\n");
    if ($hdr(X-Mode) != "load" || $hdr(X-Move) == "1") {
        if (ds_next_dst()) { append_to_reply("X-Next: $du\\r\\n"); }
    }
    sl_send_reply("200", "OK");
}
"""


def _cfg(listfile):
    return CFG.replace("LISTFILE", listfile)


def _requests():
    """(alg, set, mode, ruri, headers, callid) for each request, the same for both servers."""
    out = []
    for alg in (0, 1, 2, 3):
        for n in range(30):
            out.append((alg, 1, "dst", f"sip:u{n * 7}x@example{n % 3}.net:50{n % 2}{n % 10}",
                        [f"From: <sip:caller{n}@host{n % 4}.org>;tag=f{n}"], f"cid-{alg}-{n * 13}-\xe9x"))
    for n in range(12):
        out.append((4, 1 + 6 * (n % 2), "dst", f"sip:rr{n}@example.net", [], f"rr-{n}"))
    for n in range(10):      # 5: digest username, round-robin without credentials
        hdr = ("Proxy-Authorization", "Authorization")[n % 2]
        cred = ([f'{hdr}: Digest username="user{n * 3}@realm.org", '
                 f'realm="realm.org", nonce="x", uri="sip:a@b", response="00"'] if n % 3 else [])
        out.append((5, 1, "dst", "sip:auth@example.net", cred, f"auth-{n}"))
    rules = (("1=0;7=8", "d", None), ("7=4;1=0;2=0", "0", None), ("9=0;1=8", "r", None),
             ("1=0;7=8", "x", None), ("1=0;7=8", "d", "3"), ("7=8;1=3", "1", "1"),
             ("1=a", "d", None), ("1=0", "q", None), ("9=0", "d", None))
    for n, (rules, rmode, lim) in enumerate(rules):
        hdrs = [f"X-Rules: {rules}", f"X-Rmode: {rmode}"] + ([f"X-Limit: {lim}"] if lim else [])
        out.append((0, 1, "routes", f"sip:r{n}@example.net", hdrs, f"routes-{n}"))
    for lim in (0, 1, 2, 9):
        out.append((0, 1, "dst", "sip:lim@example.net", [f"X-Limit: {lim}"], f"limit-{lim}"))
    for alg in (8, 0):
        out.append((alg, 7, "dst", "sip:p@example.net", [], "prio"))
    for n in range(6):
        out.append((0, 1, "domain", f"sip:dom{n}@example.net;user=phone", [], f"dom-{n}"))
    out.append((0, 3, "dst", "sip:x@example.net", [], "sock"))
    # algorithm 10: INVITEs to the least loaded below maxload; ds_next_dst moves the
    # call; a BYE (ds_load_update) ends one; a Call-ID counted already falls back to 0
    for n in range(7):
        out.append((10, 4, "load", "sip:call@example.net", ["X-Move: 1"] if n == 4 else [], f"load-{n}"))
    out.append((10, 4, "load", "sip:call@example.net", [], "load-3"))
    for n in (0, 2, 9):
        out.append((10, 4, "unload", "sip:call@example.net", [], f"load-{n}"))
    for n in range(7, 10):
        out.append((10, 4, "load", "sip:call@example.net", [], f"load-{n}"))
    for sid in (-1, 1, 2, 7):
        for mode in range(8):
            out.append((mode, sid, "from", "sip:f@example.net", [], f"from-{sid}-{mode}"))
            for uri in ("sip:127.0.0.1:5072", "sip:127.0.0.1:5073;transport=udp",
                        "sip:127.0.0.2:5075;transport=tcp", "sip:127.0.0.1"):
                out.append((mode, sid, "from", "sip:f@example.net", [f"X-Uri: {uri}"], f"fu-{sid}-{mode}"))
    out.append((0, 9, "dst", "sip:x@example.net", [], "noset"))
    return out


def _ask(port):
    seen = []
    with SipClient(("127.0.0.1", port)) as c:
        for alg, sid, mode, ruri, hdrs, cid in _requests():
            extra = [f"X-Set: {sid}", f"X-Alg: {alg}", f"X-Mode: {mode}"]
            method = {"load": "INVITE", "unload": "BYE"}.get(mode, "OPTIONS")
            data, _b, _c = build_request(method, ruri, c.local, callid=cid, headers=extra)
            for h in hdrs:      # the From user varies (algorithm 1); X-Uri for ds_is_from_list
                if h.startswith("From"):
                    data = re.sub(rb"\r\nFrom: [^\r]*", b"\r\n" + h.encode(), data, count=1)
                else:
                    data = data.replace(b"\r\nContent-Length", b"\r\n" + h.encode() + b"\r\nContent-Length")
            r = None
            for _ in range(3):
                c.send_raw(data)
                rs = c.collect(2.0, until=lambda rs: rs[-1].status is not None and rs[-1].status >= 200)
                r = rs[-1] if rs and rs[-1].status and rs[-1].status >= 200 else None
                if r is not None:
                    break
            assert r is not None, (alg, sid, cid)
            seen.append((alg, sid, mode, cid, r.status, r.first_line, r.hdr("X-Du"), r.hdr("X-Ru"),
                         r.hdr("X-Cnt"),
                         r.hdr("X-L"), r.hdr("X-A"), r.hdr("X-Next"), r.hdr("X-From")))
    return seen


@pytest.fixture(scope="module")
def servers():
    if kamailio_binary() is None:
        pytest.skip(SKIP_KAMAILIO)
    if not os.path.exists("/usr/lib/x86_64-linux-gnu/kamailio/modules/dispatcher.so"):
        pytest.skip("Kamailio's dispatcher module is not installed")
    work = tempfile.mkdtemp(prefix="ds-vs-")
    listfile = os.path.join(work, "dispatcher.list")
    with open(listfile, "w") as f:
        f.write(LIST)
    with run_kamailio(_cfg(listfile)) as kam:
        with run_server(_cfg(listfile), args=("-Y", os.path.join(work, "run"))) as srv:
            srv.rundir = os.path.join(work, "run")
            yield kam, srv, f"unix:{work}/run/kamailio_ctl"


def test_same_destinations_as_kamailio(servers):
    kam, srv, _ctl = servers
    theirs = _ask(kam.port)
    ours = _ask(srv.port)
    assert [r[4] for r in theirs].count(200) > 100
    for t, o in zip(theirs, ours):
        assert o == t


def test_dispatcher_list_prints_the_same(servers):
    kam, _srv, ctl = servers
    for args in ((), ("short",)):
        theirs = kamcmd(kam.ctl, "dispatcher.list", *args)
        ours = kamcmd(ctl, "dispatcher.list", *args)
        assert theirs.returncode == 0, theirs.stderr
        assert ours.stdout == theirs.stdout


def _jsonrpc(rundir, method, *params):
    """One JSON-RPC datagram to jsonrpcs' kamailio_rpc.sock -> the decoded reply."""
    d = tempfile.mkdtemp(prefix="ds-jrpc-")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.bind(os.path.join(d, "c"))
        s.settimeout(3.0)
        req = {"jsonrpc": "2.0", "method": method, "id": 1, "params": list(params)}
        s.sendto(json.dumps(req).encode(), os.path.join(rundir, "kamailio_rpc.sock"))
        return json.loads(s.recv(70000))
    finally:
        s.close()
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(d, "c"))
        os.rmdir(d)


def test_dispatcher_list_over_jsonrpc_is_kamailios(servers):
    kam, srv, _ctl = servers
    for params in ((), ("short",)):
        theirs = _jsonrpc(kam.rundir, "dispatcher.list", *params)
        ours = _jsonrpc(srv.rundir, "dispatcher.list", *params)
        assert ours == theirs
    for vals in ((5, "a", "b"), (7, "abcdefghi")):
        ours = _jsonrpc(srv.rundir, "dispatcher.hash", *vals)
        assert ours == _jsonrpc(kam.rundir, "dispatcher.hash", *vals)
    for vals in (("5", "a", "b"), ("7", "abcdefghi")):
        ours = kamcmd(_ctl, "dispatcher.hash", *vals).stdout
        assert ours == kamcmd(kam.ctl, "dispatcher.hash", *vals).stdout


def test_add_remove_and_state_rpcs_are_kamailios(servers):
    """After the routing tests: the same RPC steps on both, the same replies and lists."""
    kam, _srv, ctl = servers
    steps = [("dispatcher.set_state", "ip", "1", "sip:127.0.0.1:5072"),
             ("dispatcher.set_state", "d", "7", "all"),
             ("dispatcher.set_duid_state", "tp", "1", "a"),
             ("dispatcher.set_state", "i", "1", "sip:nowhere"),
             ("dispatcher.set_state", "q", "1", "all"),
             ("dispatcher.add", "1", "sip:127.0.0.1:5099", "0", "5", "duid=new"),
             ("dispatcher.remove", "2", "sip:127.0.0.1:5091"),        # within reload_delta
             ("sleep",),
             ("dispatcher.remove", "2", "sip:127.0.0.1:5091"),
             ("sleep",),
             ("dispatcher.add", "6", "127.0.0.1:5098"),
             ("dispatcher.ping_active",), ("dispatcher.ping_active", "0"), ("dispatcher.ping_active",),
             ("cfg.get", "dispatcher", "probing_threshold"),
             ("cfg.seti", "dispatcher", "inactive_threshold", "3"),
             ("cfg.get", "dispatcher", "inactive_threshold"),
             ("cfg.sets", "dispatcher", "ping_reply_codes", "class=4"),
             ("cfg.get", "dispatcher", "ping_reply_codes"), ("cfg.help", "dispatcher", "probing_threshold")]
    for step in steps:
        if step[0] == "sleep":
            time.sleep(1.2)
            continue
        theirs = kamcmd(kam.ctl, *step)
        ours = kamcmd(ctl, *step)
        assert (ours.stdout, ours.stderr) == (theirs.stdout, theirs.stderr), step
        for args in ((), ("short",)):
            theirs = kamcmd(kam.ctl, "dispatcher.list", *args)
            assert kamcmd(ctl, "dispatcher.list", *args).stdout == theirs.stdout, step


PING_CFG = """
debug=2
listen=udp:127.0.0.1:LPORT
children=1
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "ctl.so"
loadmodule "dispatcher.so"
modparam("tm", "fr_timer", 1000)
modparam("dispatcher", "list_file", "LISTFILE")
modparam("dispatcher", "ds_ping_interval", 1)
modparam("dispatcher", "ds_probing_mode", 1)
modparam("dispatcher", "ds_ping_from", "sip:prober@cluster.example")
request_route { sl_send_reply("404", "Not here"); }
event_route[dispatcher:dst-down] {
    xlog("L_NOTICE", "DOWN ru=$ru du=$du code=$dsv(code) reason=$dsv(reason) flags=$dsv(flags)\\n");
}
event_route[dispatcher:dst-up] {
    xlog("L_NOTICE", "UP ru=$ru du=$du code=$dsv(code) reason=$dsv(reason) flags=$dsv(flags)\\n");
}
"""


def _probe(start):
    """One server pinging a destination we play: silent for the first pings
    (they time out: 408, dst-down), then answering 200 (dst-up). -> (the pings
    as received with their arrival times, the event lines of the log)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    work = tempfile.mkdtemp(prefix="ds-ping-")
    listfile = os.path.join(work, "dispatcher.list")
    with open(listfile, "w") as f:
        f.write(f"1 sip:127.0.0.1:{port}\n")
    got = []
    with start(PING_CFG.replace("LISTFILE", listfile), work) as srv:
        sock.settimeout(0.2)
        t0 = None
        end = time.monotonic() + 4.5
        while time.monotonic() < end:
            try:
                data, src = sock.recvfrom(65535)
            except socket.timeout:
                continue
            now = time.monotonic()
            t0 = t0 or now
            got.append((now - t0, data.replace(str(port).encode(), b"PORT")))
            if now - t0 > 2.5:        # answer from now on
                head = data.split(b"\r\n\r\n")[0].split(b"\r\n")
                names = (b"Via", b"From", b"To", b"Call-ID", b"CSeq")
                keep = [h for h in head[1:] if h.split(b":")[0] in names]
                sock.sendto(b"\r\n".join([b"SIP/2.0 200 OK"] + keep + [b"Content-Length: 0", b"", b""]), src)
        log = srv.log()
    sock.close()
    return got, [ln.split("NOTICE: ")[-1].split(": ", 1)[-1].replace(str(port), "PORT")
                 for ln in log.splitlines() if " DOWN ru=" in ln or " UP ru=" in ln]


def _headers(data):
    lines = data.decode().split("\r\n\r\n")[0].split("\r\n")
    return lines[0], [ln.split(":", 1)[0] for ln in lines[1:]], dict(ln.split(": ", 1) for ln in lines[1:])


def test_probing_pings_and_events_are_kamailios():
    if kamailio_binary() is None:
        pytest.skip(SKIP_KAMAILIO)

    def kam(cfg, work):
        return run_kamailio(cfg)

    def ours(cfg, work):
        return run_server(cfg, args=("-Y", os.path.join(work, "run")))
    theirs_pings, theirs_events = _probe(kam)
    our_pings, our_events = _probe(ours)
    t_first, t_head, t_hdr = _headers(theirs_pings[0][1])
    o_first, o_head, o_hdr = _headers(our_pings[0][1])
    assert o_first == t_first and o_head == t_head
    for name in ("To", "CSeq", "Max-Forwards", "Content-Length"):
        assert o_hdr[name] == t_hdr[name]
    assert o_hdr["From"].split(";tag=")[0] == "<sip:prober@cluster.example>"
    assert t_hdr["From"].split(";tag=")[0] == "<sip:prober@cluster.example>"
    # the first ping is retransmitted once, T1 (0.5 s) later, before fr_timer (1 s) ends it
    for pings in (theirs_pings, our_pings):
        assert pings[1][1] == pings[0][1] and 0.3 < pings[1][0] < 1.0, [p[0] for p in pings]
    assert our_events == theirs_events, (our_events, theirs_events)
    assert our_events[:2] == ["DOWN ru=sip:127.0.0.1:PORT du=<null> code=408 reason=<null> flags=0",
                              "UP ru=sip:127.0.0.1:PORT du=<null> code=200 reason=OK flags=1"]
