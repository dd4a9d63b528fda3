"""The server as a user meets it: start on a cfg, see its processes, send SIP, stop it.

Runs in: the pytest process; every test starts the real `python -m asyncd`
(tests/helpers/server.py) on a free loopback port and stops it.
"""
import os
import random
import re
import signal
import time

import psutil
import pytest

from tests.helpers import build_request

SL_CFG = """
#!ifndef LPORT
#!define LPORT 5060
#!endif
debug=1
children=2
listen=udp:127.0.0.1:LPORT
loadmodule "sl.so"
request_route {
    if ($rm == "OPTIONS") {
        sl_send_reply("200", "OK from sl");
        exit;
    }
    sl_send_reply("404", "Not Here");
}
"""


def receiver_titles(port, n):
    return [f"asyncd: udp receiver child={i} sock=127.0.0.1:{port}" for i in range(n)]


def test_process_titles_and_table(run_server):
    with run_server(SL_CFG) as srv:
        procs = srv.processes()
        titles = srv.titles()
        assert titles[0] == "asyncd: main process - attendant"
        assert sorted(titles[1:]) == receiver_titles(srv.port, 2)
        # receivers are direct children of the attendant, in one process group
        main = psutil.Process(srv.pid)
        assert {p.pid for p in main.children()} == {p.pid for p in procs[1:]}
        # nothing with a thread in main (no zmq context before or after fork)
        assert main.num_threads() == 1
        # SIGUSR1 dumps the shm process table: one line per process, with its pid
        os.kill(srv.pid, signal.SIGUSR1)
        m = srv.wait_log(r"process +2 pid +(\d+) rank +2: udp receiver child=1 sock=127\.0\.0\.1:%d" % srv.port)
        child1 = [p for p in procs if p.cmdline()[0].startswith("asyncd: udp receiver child=1")][0]
        assert int(m.group(1)) == child1.pid


def test_options_answered_by_sl_send_reply(run_server, sip_client):
    with run_server(SL_CFG) as srv:
        c = sip_client(srv.addr)
        data, branch, callid = c.send("OPTIONS")
        r = c.recv(2)
        assert r is not None and r.status == 200 and r.reason == "OK from sl"
        assert r.hdr("call-id") == callid
        assert r.hdr("cseq") == "1 OPTIONS"
        via = r.hdr("via")
        assert branch in via and f"rport={c.local[1]}" in via and "received=127.0.0.1" in via
        assert r.to_tag
        assert r.hdr("server").startswith("asyncd")
        assert r.hdr("content-length") == "0"
        assert r.elapsed < 0.5
        # a retransmission (same request bytes) gets the same To-tag (RFC 3261 8.2.6.2)
        c.send_raw(data)
        r2 = c.recv(2)
        assert r2.status == 200 and r2.to_tag == r.to_tag
        # another request gets another tag; a request's own To-tag is kept
        r3 = c.final("OPTIONS")
        assert r3.to_tag != r.to_tag
        r4 = c.final("OPTIONS", to_tag="mytag")
        assert r4.to_tag == "mytag"
        # a request without rport is answered to the Via's sent-by port (RFC 3261 18.2.2)
        other = sip_client(srv.addr)
        req, _, _ = build_request("MESSAGE", f"sip:x@127.0.0.1:{srv.port}", other.local, rport=False)
        c.send_raw(req)
        r5 = other.recv(2)
        assert r5 is not None and r5.status == 404 and r5.reason == "Not Here"
        assert c.recv(0.2) is None


def test_sigterm_stops_everything_within_2s_and_frees_shm(run_server, sip_client):
    before = set(os.listdir("/dev/shm"))
    with run_server(SL_CFG) as srv:
        assert sip_client(srv.addr).final("OPTIONS").status == 200
        mine = [n for n in set(os.listdir("/dev/shm")) - before if n.startswith(f"asyncd_{srv.pid}_")]
        assert mine, "the server's shm segment is named asyncd_<main pid>_<n>"
        pids = [p.pid for p in srv.processes()]
        assert len(pids) == 3
        rc = srv.stop(signal.SIGTERM, timeout=5)
        assert rc == 0
        assert srv.stop_elapsed < 2.0
        assert not srv.group_alive()
        for pid in pids:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        assert not any(os.path.exists(f"/dev/shm/{n}") for n in mine)
        assert "SIGTERM received" in srv.log()


def test_sigint_stops_cleanly(run_server):
    with run_server(SL_CFG) as srv:
        assert srv.stop(signal.SIGINT, timeout=5) == 0
        assert srv.stop_elapsed < 2.0


def test_kill9_of_a_receiver_with_respawn_no_stops_the_server(run_server):
    """Kamailio's policy on request: everything stops, shm is released."""
    with run_server(SL_CFG.replace("children=", "respawn=no\nchildren=", 1), check_clean=False) as srv:
        victim = srv.find("udp receiver child=1 ")[0]
        victim.kill()
        rc = srv.wait(5)
        assert rc == 1
        log = srv.log()
        assert (f"child process {victim.pid} (udp receiver child=1 sock=127.0.0.1:{srv.port}, rank 2) "
                f"terminated by signal 9 (SIGKILL, perhaps out of memory); stopping asyncd "
                f"(respawn=no)") in log
        time.sleep(0.2)
        assert not srv.group_alive()
        assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"asyncd_{srv.pid}_")]


def _fuzz_datagrams(rng, base, n):
    """Seeded mix: truncations, byte flips, header deletions, garbage, empties, oversized."""
    out = []
    for i in range(n):
        kind = i % 6
        if kind == 0:
            d = base[:rng.randrange(0, len(base))]
        elif kind == 1:
            d = bytearray(base)
            for _ in range(rng.randrange(1, 8)):
                d[rng.randrange(len(d))] = rng.randrange(256)
            d = bytes(d)
        elif kind == 2:
            lines = base.split(b"\r\n")
            del lines[rng.randrange(1, 8)]
            d = b"\r\n".join(lines)
        elif kind == 3:
            d = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 600)))
        elif kind == 4:
            d = rng.choice([b"", b"\r\n", b"\r\n\r\n", b"SIP/2.0", b"INVITE", base + base,
                            base.replace(b"SIP/2.0/UDP", b"SIP/3.0/UDP"), base.replace(b"CSeq: 1", b"CSeq: x")])
        else:
            d = base + bytes(rng.randrange(32, 127) for _ in range(rng.randrange(1000, 60000)))
        out.append(d)
    return out


def test_random_and_truncated_datagrams_change_nothing(run_server, sip_client):
    with run_server(SL_CFG) as srv:
        pids = sorted(p.pid for p in srv.processes())
        c = sip_client(srv.addr)
        base, _, _ = build_request("INVITE", f"sip:bob@127.0.0.1:{srv.port}", c.local,
                                   body="v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n")
        rng = random.Random(4242)
        for i, d in enumerate(_fuzz_datagrams(rng, base, 1000)):
            c.send_raw(d)
            if i % 50 == 0:
                c.collect(0.01)
        replies = c.collect(1.0)
        # malformed requests that can be answered get a 400 naming the problem
        assert any(r.status == 400 and r.reason for r in replies)
        # a datagram of 64 KB: nothing happens, nothing breaks
        c.send_raw(b"x" * 65507)
        assert sorted(p.pid for p in srv.processes()) == pids
        for _ in range(10):
            assert c.final("OPTIONS").status == 200
        assert "Traceback" not in srv.log()
    # the attendant's exit summary: the core: statistics (rcv_requests, rcv_replies,
    # bad_msg_hdr for what did not parse, answered or not)
    m = re.search(r"received (\d+) requests, (\d+) replies; (\d+) malformed", srv.log())
    assert m, srv.log()[-2000:]
    requests, replies, malformed = map(int, m.groups())
    assert requests >= 10 and malformed > 100
    assert requests + replies + malformed >= 900


def test_malformed_request_gets_400_with_reason(run_server, sip_client):
    with run_server(SL_CFG) as srv:
        c = sip_client(srv.addr)
        req, branch, _ = build_request("OPTIONS", f"sip:x@127.0.0.1:{srv.port}", c.local)
        c.send_raw(req.replace(b"CSeq: 1 OPTIONS", b"CSeq: one OPTIONS"))
        r = c.recv(2)
        assert r is not None and r.status == 400 and "CSeq" in r.reason
        assert branch in r.hdr("via")
        # no Via at all: no reply possible, dropped
        c.send_raw(b"\r\n".join(ln for ln in req.split(b"\r\n") if not ln.startswith(b"Via")))
        assert c.recv(0.3) is None
        # a broken reply is never answered
        c.send_raw(b"SIP/2.0 abc OK\r\nVia: SIP/2.0/UDP 127.0.0.1:1\r\n\r\n")
        assert c.recv(0.3) is None
        assert c.final("OPTIONS").status == 200


def test_replies_forwarded_statelessly_per_second_via(run_server, sip_client):
    with run_server(SL_CFG) as srv:
        upstream = sip_client(srv.addr)
        c = sip_client(srv.addr)
        reply = (f"SIP/2.0 200 OK\r\n"
                 f"Via: SIP/2.0/UDP 127.0.0.1:{srv.port};branch=z9hG4bKours\r\n"
                 f"Via: SIP/2.0/UDP 127.0.0.1:{upstream.local[1]};branch=z9hG4bKup;rport={upstream.local[1]}\r\n"
                 f"From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=2\r\nCall-ID: fwd1\r\nCSeq: 1 MESSAGE\r\n"
                 f"Content-Length: 0\r\n\r\n")
        c.send_raw(reply)
        r = upstream.recv(2)
        assert r is not None and r.status == 200 and r.hdr("call-id") == "fwd1"
        assert r.hdrs("via") == [f"SIP/2.0/UDP 127.0.0.1:{upstream.local[1]};branch=z9hG4bKup;"
                                 f"rport={upstream.local[1]}"]
        # top Via not ours: dropped (RFC 3261 18.1.2)
        c.send_raw(reply.replace(f"127.0.0.1:{srv.port};branch=z9hG4bKours", "10.9.9.9:5060;branch=z9hG4bKx"))
        assert upstream.recv(0.3) is None
        # ours but no second Via: nobody to relay to, dropped
        c.send_raw(reply.replace(f"Via: SIP/2.0/UDP 127.0.0.1:{upstream.local[1]};branch=z9hG4bKup;"
                                 f"rport={upstream.local[1]}\r\n", ""))
        assert upstream.recv(0.3) is None and c.recv(0.1) is None


def test_kill9_of_the_attendant_takes_the_children_down(run_server):
    with run_server(SL_CFG, check_clean=False) as srv:
        kids = srv.processes()[1:]
        os.kill(srv.pid, signal.SIGKILL)
        srv.wait(5)
        end = time.monotonic() + 2.0
        while [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]:
            assert time.monotonic() < end, "receivers outlived their attendant"
            time.sleep(0.02)
    # its segment stays behind (nobody left to unlink it): the next start removes it.
    # Any asyncd starting on this machine meanwhile (a parallel run) may already have
    # removed it, which is the same cleanup; so only the end state is asserted.
    with run_server(SL_CFG):
        assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"asyncd_{srv.pid}_")]
