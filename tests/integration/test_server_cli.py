"""Kamailio's command-line flags on the real entry point (`python -m asyncd`).

Runs in: the pytest process; servers are subprocesses on free loopback ports.
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import psutil
import pytest

from tests.helpers import REPO_ROOT, free_udp_port
from tests.helpers.sipclient import build_request
from tests.integration.test_server import SL_CFG, receiver_titles

ENV = dict(os.environ, PYTHONPATH=str(REPO_ROOT))


def asyncd(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "asyncd", *args], capture_output=True, text=True,
                          env=ENV, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.unit          # asyncd -V only, no server
def test_version_flags():
    for flag in ("-V", "-v"):
        r = asyncd(flag)
        assert r.returncode == 0
        assert r.stdout.startswith("version: asyncd ")


@pytest.mark.unit          # asyncd -c only, no server
def test_check_good_and_bad_cfg_and_dump_compiled(tmp_path):
    good = tmp_path / "good.cfg"
    good.write_text(SL_CFG)
    r = asyncd("-c", "-f", str(good))
    assert r.returncode == 0, r.stderr
    assert "config file ok" in r.stderr
    r = asyncd("-c", "--dump-compiled", "-f", str(good))
    assert r.returncode == 0
    compile(r.stdout, "<dump>", "exec")  # the dump is the Python the cfg compiled to
    bad = tmp_path / "bad.cfg"
    bad.write_text(SL_CFG.replace('sl_send_reply("404", "Not Here");', 'sl_send_reply("404");'))
    r = asyncd("-c", "-f", str(bad))
    assert r.returncode == 255
    line = SL_CFG.replace('sl_send_reply("404", "Not Here");', "@@").split("@@")[0].count("\n") + 1
    assert f"{bad}:{line}:" in r.stderr
    r = asyncd("-c", "-f", str(tmp_path / "missing.cfg"))
    assert r.returncode == 255 and "missing.cfg" in r.stderr


def test_listen_override_children_and_defines(run_server, sip_client):
    other = free_udp_port()
    cfg = SL_CFG.replace('"OK from sl"', '"$var(x)"').replace(
        'if ($rm == "OPTIONS") {', 'if ($rm == "OPTIONS") {\n#!ifdef SAYHI\n$var(x) = "hi";\n#!else\n'
        '$var(x) = "plain";\n#!endif')
    with run_server(cfg, defines={"SAYHI": None}, args=["-l", f"udp:127.0.0.1:{other}", "-n", "3",
                                                        "-m", "16", "-M", "8"]) as srv:
        titles = srv.titles()
        assert sorted(titles[1:]) == receiver_titles(other, 3)
        r = sip_client(("127.0.0.1", other)).final("OPTIONS")
        assert r.status == 200 and r.reason == "hi"
        assert os.path.getsize(f"/dev/shm/asyncd_{srv.pid}_1") == 16 << 20  # -m 16
        assert sip_client(srv.addr).final("OPTIONS", timeout=0.3) is None
    with run_server(cfg) as srv:
        assert sip_client(srv.addr).final("OPTIONS").reason == "plain"


def test_cfg_debug_level_and_d_flag(run_server):
    quiet = SL_CFG.replace("debug=1", "debug=0")
    with run_server(quiet) as srv:
        assert " NOTICE: " not in srv.log()
    assert " NOTICE: " not in srv.log()
    with run_server(quiet, args=["-d"]) as srv:
        srv.wait_log(r" 0\(%d\) NOTICE: <core> \[workers/supervisor\.py:\d+\]: announce_ready\(\): "
                     r"asyncd \S+ started: 3 processes" % srv.pid)


def test_embedded_default_cfg_shows_the_async_module(run_server, sip_client):
    with run_server(None) as srv:
        titles = srv.titles()
        assert titles[0] == "asyncd: main process - attendant"
        assert sorted(titles[1:]) == sorted(receiver_titles(srv.port, 2) + [
            "asyncd: Async Task Worker - default", "asyncd: Async Task Worker - default",
            "asyncd: Async Task Worker - tkv", "asyncd: timer", "asyncd: ASYNC MOD TIMER",
            "asyncd: tcp receiver (generic) child=0", "asyncd: tcp receiver (generic) child=1",
            "asyncd: tcp main process"])
        c = sip_client(srv.addr)
        # keepalive: stateless, straight from the receiver
        r = c.final("OPTIONS", ruri=f"sip:127.0.0.1:{srv.port}")
        assert r is not None and r.status == 200 and r.reason == "Keepalive"
        # any other request: suspended, answered by an async task worker, tkv event logged
        _, _, callid = c.send("MESSAGE", body="hello")
        r = c.recv(3)
        assert r is not None and r.status == 200 and r.hdr("call-id") == callid
        m = srv.wait_log(r"\d+\((\d+)\) INFO: <script> \[[^]]*default.cfg:\d+\]: resumed MESSAGE from tester "
                         r"\(call-id %s\)" % re.escape(callid))
        worker = psutil.Process(int(m.group(1)))
        assert " ".join(worker.cmdline()).strip() == "asyncd: Async Task Worker - default"
        m = srv.wait_log(r"\d+\((\d+)\) INFO: <script> .*tkv event: type=1 key=MESSAGE val=from=tester "
                         r"to=test call-id=%s" % re.escape(callid))
        assert " ".join(psutil.Process(int(m.group(1))).cmdline()).strip() == "asyncd: Async Task Worker - tkv"
        # over TCP too: the reply comes back on the connection from the task worker
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as t:
            data, _, callid = build_request("MESSAGE", f"sip:test@127.0.0.1:{srv.port}",
                                            t.getsockname(), body="hello", rport=False)
            t.sendall(data.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP", 1))
            got = b""
            while b"Content-Length: 0\r\n\r\n" not in got:
                chunk = t.recv(65536)
                assert chunk, f"connection closed; got {got!r}"
                got += chunk
        assert got.startswith(b"SIP/2.0 200 OK") and callid.encode() in got
        srv.wait_log(r"resumed MESSAGE from tester \(call-id %s\)" % re.escape(callid))
        # no ZeroMQ context or other thread in the attendant, even with every role running
        assert psutil.Process(srv.pid).num_threads() == 1
        assert srv.stop() == 0 and srv.stop_elapsed < 2.0


def test_stale_shm_of_killed_run_is_removed(run_server):
    dead = 4194000
    while psutil.pid_exists(dead):
        dead -= 1
    stale = f"/dev/shm/asyncd_{dead}_1"
    with open(stale, "wb") as f:
        f.write(b"\0" * 4096)
    rundir = os.path.join(tempfile.gettempdir(), f"asyncd-run-{dead}-x1y2z3")
    os.makedirs(os.path.join(rundir, "sub"), exist_ok=True)
    try:
        with run_server(SL_CFG) as srv:
            assert not os.path.exists(stale)
            assert not os.path.exists(rundir)
            live = [n for n in os.listdir(tempfile.gettempdir()) if n.startswith(f"asyncd-run-{srv.pid}-")]
            assert len(live) == 1
        assert not os.path.exists(os.path.join(tempfile.gettempdir(), live[0]))
    finally:
        if os.path.exists(stale):
            os.unlink(stale)
        shutil.rmtree(rundir, ignore_errors=True)


def test_bind_failure_is_a_clear_startup_error(tmp_path):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    cfg = tmp_path / "t.cfg"
    cfg.write_text(SL_CFG)
    try:
        r = asyncd("-DD", "-E", "-f", str(cfg), "-A", f"LPORT={port}")
    finally:
        s.close()
    assert r.returncode == 255
    assert f"cannot bind udp:127.0.0.1:{port}" in r.stderr


def test_daemonize_detaches_and_stops_on_sigterm(tmp_path):
    port = free_udp_port()
    cfg = tmp_path / "t.cfg"
    cfg.write_text(SL_CFG)
    pidf = tmp_path / "asyncd.pid"
    t0 = time.monotonic()
    r = asyncd("--daemonize", "-P", str(pidf), "-f", str(cfg), "-A", f"LPORT={port}", timeout=20)
    assert r.returncode == 0, r.stderr
    pid = int(pidf.read_text())
    try:
        main = psutil.Process(pid)
        assert main.ppid() != os.getpid() and os.getsid(pid) == pid
        assert len(main.children()) == 2
        from tests.helpers import SipClient
        with SipClient(("127.0.0.1", port)) as c:
            assert c.final("OPTIONS").status == 200
        kids = main.children()
        os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + 3
        while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < end, "daemon did not stop"
            time.sleep(0.02)
        for k in kids:
            assert not psutil.pid_exists(k.pid) or k.status() == psutil.STATUS_ZOMBIE
        assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"asyncd_{pid}_")]
        assert time.monotonic() - t0 < 20
    finally:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
