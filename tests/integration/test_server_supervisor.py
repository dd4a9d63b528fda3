"""Supervisor policies that no shipped module can trigger on demand: a child that fails
while booting, a module process that ignores SIGTERM, fork order of module processes.

Runs in: the pytest process; the supervisor runs in a subprocess on a stand-in Script
(the real Supervisor, receivers and shm; only the compiled cfg is replaced by a tiny
object with the contract's Script API, docs/contracts.md §2).
"""
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil

from tests.helpers import REPO_ROOT, SipClient, free_udp_port

STANDIN = textwrap.dedent("""
    import os, sys, time
    from asyncd.cfg import compiler
    from asyncd.core.exports import ModuleExports
    from asyncd.core.procs import PROC_TIMER, ROLE_TIMER, Periodic, ProcRow, TimerHandlers
    from asyncd.modules import sl
    from workers.supervisor import Supervisor
    from asyncd.cli import build_parser

    MODE = os.environ["STANDIN_MODE"]

    def child_init(proc, rank):
        if MODE == "bootfail" and rank == 2:
            raise RuntimeError("cannot open the database")

    def stubborn(proc):
        # a job that never returns ignores SIGTERM's request: the supervisor must SIGKILL it in time
        print("stubborn job running", file=sys.stderr, flush=True)
        while True:
            time.sleep(0.05)

    def polite(proc):
        pass

    def crash(proc):
        # a bug that kills the process right after every start (past its boot)
        os._exit(7)

    def timer_row(title, job, count=1):
        return ProcRow(ROLE_TIMER, title, PROC_TIMER, count, TimerHandlers(every=(Periodic(0.02, job),)))

    def procs(script):
        if MODE == "stubborn":
            return [timer_row("stubborn timer", stubborn)]
        if MODE == "crashloop":
            return [timer_row("slow timer", polite), timer_row("crashing timer", crash)]
        return [timer_row("slow timer", polite), timer_row("timer", polite, 2)]

    def request_in(ctx):
        if MODE == "hookraise" and ctx.msg.method == "MESSAGE":
            raise KeyError("broken hook")
        return False

    def reply_in(ctx):
        raise ValueError("broken reply hook")

    hooks = {"request_in": request_in, "reply_in": reply_in} if MODE == "hookraise" else {}
    mod = ModuleExports(name="standin", child_init=child_init, procs=procs, hooks=hooks)

    class Script(compiler.Script):
        # the real Script's lifecycle (init/child_init/destroy of the modules), a stand-in route
        def __init__(self, port):
            super().__init__("standin")
            self.core = {"listen": [("udp", "127.0.0.1", port)], "children": 2, "debug": 1}
            self.modules = [sl.EXPORTS, mod]
        def run_request_route(self, ctx):
            return sl.sl_send_reply(ctx, 200, "standin")

    port = int(sys.argv[1])
    sys.exit(Supervisor(Script(port), build_parser().parse_args(sys.argv[2:])).run())
""")


def start(tmp_path, mode):
    port = free_udp_port()
    prog = tmp_path / "standin.py"
    prog.write_text(STANDIN)
    pidf = tmp_path / "pid"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), STANDIN_MODE=mode)
    logf = open(tmp_path / "log", "wb")
    p = subprocess.Popen([sys.executable, str(prog), str(port), "-E", "-P", str(pidf)],
                         stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return p, port, pidf


def kill_group(p):
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait(5)


def run_until_it_stops(tmp_path, mode, timeout):
    """Start the stand-in in `mode`, wait for it to stop by itself: (rc, port, log)."""
    p, port, _pidf = start(tmp_path, mode)
    try:
        rc = p.wait(timeout)
    finally:
        kill_group(p)
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"asyncd_{p.pid}_")]
    return rc, port, (tmp_path / "log").read_text()


def test_child_failing_at_boot_stops_server_with_clear_message(tmp_path):
    rc, port, log = run_until_it_stops(tmp_path, "bootfail", 10)
    assert rc == 3, log
    assert not (tmp_path / "pid").exists()
    assert "udp receiver child=1 sock=127.0.0.1:%d: failed while booting" % port in log
    assert "cannot open the database" in log
    assert "failed while booting" in log and "stopping asyncd" in log


def test_module_processes_forked_after_receivers_and_killed_if_stubborn(tmp_path):
    p, port, pidf = start(tmp_path, "stubborn")
    try:
        end = time.monotonic() + 10
        while not pidf.exists() and time.monotonic() < end:
            time.sleep(0.02)
        assert pidf.exists(), (tmp_path / "log").read_text()
        kids = psutil.Process(p.pid).children()
        titles = [" ".join(k.cmdline()).strip() for k in sorted(kids, key=lambda k: k.pid)]
        assert titles == [f"asyncd: udp receiver child=0 sock=127.0.0.1:{port}",
                          f"asyncd: udp receiver child=1 sock=127.0.0.1:{port}",
                          "asyncd: stubborn timer"]
        with SipClient(("127.0.0.1", port)) as c:
            assert c.final("OPTIONS").reason == "standin"
        end = time.monotonic() + 5           # the timer process is inside its endless job
        while "stubborn job running" not in (tmp_path / "log").read_text() and time.monotonic() < end:
            time.sleep(0.02)
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        rc = p.wait(5)
        assert rc == 0 and time.monotonic() - t0 < 2.0
        assert "did not stop within" in (tmp_path / "log").read_text()
        for k in kids:
            assert not psutil.pid_exists(k.pid) or k.status() == psutil.STATUS_ZOMBIE
    finally:
        kill_group(p)


def test_flapping_guard_stops_a_child_that_dies_on_every_start(tmp_path):
    """respawn_max=5 within respawn_window=10 s (the defaults): the 6th death
    in the window stops the server with a line naming the process."""
    rc, _port, log = run_until_it_stops(tmp_path, "crashloop", 15)
    assert rc == 1, log
    assert log.count("(crashing timer, rank -1) exited with status 7; respawning it") == 5, log
    assert ("(crashing timer, rank -1) exited with status 7; it died 6 times within 10 s "
            "(respawn_max=5, respawn_window=10): stopping asyncd") in log, log
    assert "(slow timer" not in log       # the healthy process never died


def test_module_proc_order_and_ranks(tmp_path):
    p, port, pidf = start(tmp_path, "polite")
    try:
        end = time.monotonic() + 10
        while not pidf.exists() and time.monotonic() < end:
            time.sleep(0.02)
        kids = sorted(psutil.Process(p.pid).children(), key=lambda k: k.pid)
        assert [" ".join(k.cmdline()).strip() for k in kids][2:] == ["asyncd: slow timer", "asyncd: timer",
                                                             "asyncd: timer"]
        os.kill(p.pid, signal.SIGUSR1)
        time.sleep(0.3)
        log = (tmp_path / "log").read_text()
        assert f"pid {kids[2].pid:7d} rank  -1: slow timer" in log
        p.send_signal(signal.SIGTERM)
        assert p.wait(5) == 0
    finally:
        kill_group(p)


def test_a_raising_module_hook_never_stops_a_receiver(tmp_path):
    p, port, pidf = start(tmp_path, "hookraise")
    try:
        end = time.monotonic() + 10
        while not pidf.exists() and time.monotonic() < end:
            time.sleep(0.02)
        kids = sorted(k.pid for k in psutil.Process(p.pid).children())
        with SipClient(("127.0.0.1", port)) as c:
            for _ in range(20):
                c.send("MESSAGE", body="x")
                c.send_raw(f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK1\r\n"
                           f"From: <sip:a@b>;tag=1\r\nTo: <sip:b@c>\r\nCall-ID: r1\r\nCSeq: 1 MESSAGE\r\n"
                           f"Content-Length: 0\r\n\r\n")
            assert c.recv(0.3) is None
            for _ in range(5):
                assert c.final("OPTIONS").reason == "standin"
        assert sorted(k.pid for k in psutil.Process(p.pid).children()) == kids
        log = (tmp_path / "log").read_text()
        assert "error processing a message from 127.0.0.1" in log and "broken hook" in log
        assert "broken reply hook" in log
        p.send_signal(signal.SIGTERM)
        assert p.wait(5) == 0
    finally:
        kill_group(p)
