"""Micro benchmark of the async task path, in one process: CPU µs per request
for the receiver side (parse, request_route, t_newtran, t_suspend, dispatch)
and the worker side (t_continue, the resumed route, send_reply), on the
bench case `task_route.cfg` (`async_task_route("RESUME")` → `send_reply`).

Runs in: a developer's shell (`python -m bench.micro_async [--n N] [--profile
receiver|worker]`).

The server's real objects are used: the compiled cfg, the shm arena, tm,
the async framework and its dispatcher, the receiver's `handle()`. Only the
processes are folded into one: the task worker is marked "awake", so the
receiver leaves each frame in the group's shm ring (the path under load,
asyncd.ipc.dispatch) and the benchmark claims it and runs it as the worker
would. Replies go to a stub socket (no syscall), and the tm timer's mailbox
is emptied between batches (no timer process here). What this leaves out:
the UDP receive, the sendto of the reply, context switches and wake-ups.
"""
import argparse
import cProfile
import os
import pstats
import time
from pathlib import Path

from asyncd.cfg.compiler import compile_cfg
from asyncd.cli import build_parser
from asyncd.core import log
from asyncd.core.context import ProcState
from asyncd.ipc import async_task
from asyncd.modules.tm.state import S as tm_state
from workers import supervisor
from workers.receiver import Receiver
from workers.task_worker import _execute

CFG = Path(__file__).resolve().parent / "cases" / "task_route.cfg"


class _StubSock:
    """Stands in for the listening socket: counts what would be sent."""

    def __init__(self, addr):
        self.addr = addr
        self.sent = 0
        self.ok = 0

    def getsockname(self):
        return self.addr

    def sendto(self, data, addr):
        self.sent += 1
        if data.startswith(b"SIP/2.0 200 "):
            self.ok += 1
        return len(data)

    def fileno(self):
        return -1

    def close(self):
        pass


def _request(i, port=5071):
    return (f"OPTIONS sip:bench@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:40000;rport;branch=z9hG4bKmicro-{i}\r\n"
            "Max-Forwards: 70\r\n"
            "From: <sip:bench@127.0.0.1>;tag=micro\r\n"
            "To: <sip:bench@127.0.0.1>\r\n"
            f"Call-ID: micro-{i}@bench\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Contact: <sip:bench@127.0.0.1:40000>\r\n"
            "Content-Length: 0\r\n\r\n").encode()


class Rig:
    """The server's setup (supervisor.setup) without forks or sockets."""

    def __init__(self, mem_mb=64):
        log.configure(level=log.L_ERR, to_stderr=True)
        script = compile_cfg(path=str(CFG), defines={"LPORT": "5071"})
        opts = build_parser().parse_args(["-E", "-m", str(mem_mb), "-f", str(CFG)])
        sup = supervisor.Supervisor(script, opts, [])
        sup.bind_sockets = lambda: None
        sup.sockets.append(_StubSock(("127.0.0.1", 5071)))
        sup.sock_addrs.append(("udp", "127.0.0.1", 5071))
        sup.setup()
        self.sup, self.script = sup, script
        fw = async_task.framework()
        self.group = fw.default
        self.disp = self.group.disp
        self.handlers = async_task.HANDLERS
        self.proc = ProcState(script, 1, "udp receiver child=0 sock=127.0.0.1:5071", "receiver")
        self.proc.pid = os.getpid()
        self.proc.sockets = sup.sockets
        self.proc.index = 1
        self.proc.cnt = script.stats.row(1)     # the statistics row, as _child_boot binds it
        for mod in script.modules:
            if mod.child_init is not None:
                mod.child_init(self.proc, 1)
        self.wproc = self.proc          # one process plays both roles
        self.rcv = Receiver(self.proc, 0)
        self.src = ("127.0.0.1", 40000)
        self.drain_timer()

    def close(self):
        self.proc.cnt.release()         # the arena cannot close while a view of it is exported
        self.sup.cleanup()

    def drain_timer(self):
        """Play the tm timer: empty its mailbox and rings and say "looking now" (steady
        state: new fr/wait timers are due after the timer's next wake-up, so
        arming one is a mailbox write and no ZeroMQ send). The entries are
        retired as skipped at once, so the journal never fills."""
        feed = tm_state.timers
        for slot, _frame, mask in feed.take(0):
            for j in range(mask.bit_length()):
                feed.done(0, slot, j, skipped=True)
        feed.awake(0)
        for ring in tm_state.rings.values():     # wait entries and fr probes (delay rings)
            ring.pop_due(float("inf"), lambda e: True)

    def receive(self, data):
        self.disp.aw[0] = 1         # worker 0 is awake: the frame goes to the ring
        self.rcv.handle(data, self.src)

    def work(self):
        frame = self.disp._doze(0)
        if frame is None:
            raise RuntimeError("the receiver queued nothing")
        skipped = _execute(self.wproc, self.group, frame, self.handlers)
        if self.disp.finish(0, skipped) is not None:
            raise RuntimeError("backlog not empty")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=3000, help="requests per repeat")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", choices=("receiver", "worker"))
    a = ap.parse_args(argv)
    rig = Rig()
    try:
        base = 0
        best_r = best_w = None
        for rep in range(a.repeat):
            reqs = [_request(base + i) for i in range(a.n)]
            base += a.n
            prof = cProfile.Profile() if a.profile else None
            tr = tw = 0.0
            for i, data in enumerate(reqs):
                if prof and a.profile == "receiver":
                    prof.enable()
                t0 = time.process_time_ns()
                rig.receive(data)
                t1 = time.process_time_ns()
                if prof and a.profile == "receiver":
                    prof.disable()
                if prof and a.profile == "worker":
                    prof.enable()
                t2 = time.process_time_ns()
                rig.work()
                t3 = time.process_time_ns()
                if prof and a.profile == "worker":
                    prof.disable()
                tr += t1 - t0
                tw += t3 - t2
                if i % 512 == 511:
                    rig.drain_timer()
            r, w = tr / a.n / 1000, tw / a.n / 1000
            best_r = r if best_r is None else min(best_r, r)
            best_w = w if best_w is None else min(best_w, w)
            if prof:
                pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        sock = rig.sup.sockets[0]
        print(f"async task path, in-process (best of {a.repeat} × {a.n}): receiver {best_r:.1f} µs/req, "
              f"worker {best_w:.1f} µs/req, total {best_r + best_w:.1f} µs/req; "
              f"replies sent {sock.sent} ({sock.ok} × 200)")
        return {"receiver_us": round(best_r, 2), "worker_us": round(best_w, 2),
                "requests": base, "replies": sock.sent, "replies_200": sock.ok}
    finally:
        rig.close()


if __name__ == "__main__":
    main()
