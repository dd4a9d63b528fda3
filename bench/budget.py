"""Where a request's CPU goes in the running server: per process, user and
system time, context switches, and (with --spy) per stage of the path.

Runs in: a developer's shell (`python -m bench.budget [--case task_route]
[--rates 1000,3000,6000] [--seconds 10] [--server asyncd|kamailio|both]
[--pairs N] [--spy]`).

The server runs as the bench runs it (bench/servers.py, the case's cfg, -m
as the case says unless --mem is given); SIPp sends the case's scenario at
each rate for --seconds after a one-second warm-up at the same rate. Around
the measured run every process of the server's tree is sampled (psutil:
user and system seconds, voluntary and involuntary context switches), and
the figures are divided by the requests SIPp sent: µs per request, per
process. With --spy (asyncd only), py-spy samples each process at 250 Hz
during the run; samples blocked in a wait (recvfrom, poll, sleep, a lock
wait) are left out and the rest are attributed to the first stage found in
the stack (STAGES), so a process's CPU is split into parse, script, tm,
dispatch, timer arming, reply building and sending.

With --server both, both servers run side by side (the idle one costs next
to nothing) and each rate is measured --pairs times, asyncd then Kamailio,
back to back: on a shared VM the same server's figure drifts by tens of per
cent over minutes, and a pair measured seconds apart shares the drift. The
table gives each run's total, the ratio of the medians and the range of the
pair-by-pair ratios.
"""
import argparse
import collections
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.cases import load_cases
from bench.servers import Server, free_udp_port
from bench.sipp import uac_command

# (stage, substrings of a frame): the first stage whose pattern appears in a
# stack, scanning from the innermost frame outwards, gets the sample
STAGES = (
    ("send", ("ProcState.send", "Socket.send", "Dispatcher._wake")),
    ("timer arm", ("TimerFeed.arm",)),
    ("reply build", ("build_reply", "stable_to_tag", "reply_cell")),
    ("parse", ("parse_msg",)),
    ("dispatch", ("Dispatcher.",)),
    ("tm table", ("TmTable.", "Cell.decode", "Handle.acquire", "Handle.release", "<tm_cell codec>")),
    ("tm", ("t_newtran", "t_continue", "suspend_cell", "rebuild_request", "fake_ctx", "match_request")),
    ("timer", ("TimerLoop.", "on_wait", "on_timer", "sweep")),
    ("script", ("Script._run", "<asyncd-cfg")),
    ("receive", ("Receiver.read",)),
)
# innermost frames that are a wait, not work
BLOCKED = ("Receiver.read (workers/receiver.py", "_slow_acquire", "Poller.poll", "Socket.poll",
           "time.sleep", "Dispatcher.stay_awake (", "run (workers/timer.py")


def _title(p):
    try:
        return " ".join(p.cmdline()).replace("asyncd: ", "")[:48]
    except psutil.Error:
        return "?"


def _snap(procs):
    out = {}
    for p in procs:
        try:
            t, c = p.cpu_times(), p.num_ctx_switches()
            out[p.pid] = (t.user, t.system, c.voluntary, c.involuntary)
        except psutil.Error:
            pass
    return out


def _sipp(port, scenario, rate, n, tmp):
    """SIPp as the bench runs it (bench/sipp.py uac_command), its trace files in tmp."""
    cmd = uac_command(scenario, f"127.0.0.1:{port}", free_udp_port(exclude=(port,)), rate, n,
                      str(Path(tmp) / f"stat-{rate}-{n}.csv"), global_timeout_s=int(n / rate) + 120)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)


def _stage_of(frames):
    for fr in reversed(frames):
        for stage, pats in STAGES:
            if any(p in fr for p in pats):
                return stage
    return "other"


def spy_stages(path):
    """{stage: share of the process's non-blocked samples} from a py-spy raw file."""
    cnt, total = collections.Counter(), 0
    for line in Path(path).read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        stack, n = line.rsplit(" ", 1)
        frames = stack.split(";")
        if any(b in frames[-1] for b in BLOCKED):
            continue
        cnt[_stage_of(frames)] += int(n)
        total += int(n)
    return {k: v / total for k, v in cnt.most_common()} if total else {}


def measure(srv, scenario, rate, seconds, spy, tmp):
    procs = [psutil.Process(srv.pid)] + psutil.Process(srv.pid).children(recursive=True)
    _sipp(srv.port, scenario, rate, rate, tmp).wait()     # warm-up: one second at the rate
    n = int(rate * seconds)
    a = _snap(procs)
    sp = _sipp(srv.port, scenario, rate, n, tmp)
    spies = []
    if spy:
        time.sleep(0.5)
        spies = [(p, Path(tmp) / f"spy-{p.pid}.txt") for p in procs]
        spies = [(p, f, subprocess.Popen(
            ["py-spy", "record", "-p", str(p.pid), "-d", str(max(1, int(seconds - 1))), "-r", "250",
             "-f", "raw", "-o", str(f), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)) for p, f in spies]
    rc = sp.wait()
    b = _snap(procs)
    for _p, _f, s in spies:
        s.wait()
    rows = []
    for p in procs:
        if p.pid not in a or p.pid not in b:
            continue
        d = [(y - x) for x, y in zip(a[p.pid], b[p.pid])]
        stages = {}
        for q, f, _s in spies:
            if q.pid == p.pid and f.exists():
                stages = spy_stages(f)
        rows.append({"pid": p.pid, "process": _title(p), "user_us": d[0] * 1e6 / n,
                     "sys_us": d[1] * 1e6 / n, "vcsw": d[2] / n, "icsw": d[3] / n, "stages": stages})
    return {"rate": rate, "requests": n, "sipp_rc": rc, "rows": rows}


def render(kind, res):
    out = [f"\n{kind} at {res['rate']:,}/s ({res['requests']:,} requests, SIPp rc {res['sipp_rc']}):", "",
           "| process | user µs/req | sys µs/req | voluntary cs/req | involuntary cs/req "
           "| where (py-spy share of CPU) |",
           "|---|---|---|---|---|---|"]
    tu = ts = 0.0
    for r in res["rows"]:
        if r["user_us"] + r["sys_us"] < 0.05 and not r["stages"]:
            continue
        tu, ts = tu + r["user_us"], ts + r["sys_us"]
        where = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["stages"].items() if v >= 0.03)
        out.append(f"| {r['process']} | {r['user_us']:.1f} | {r['sys_us']:.1f} | {r['vcsw']:.2f} | "
                   f"{r['icsw']:.2f} | {where} |")
    out.append(f"| **total** | **{tu:.1f}** | **{ts:.1f}** | | | **{tu + ts:.1f} µs/req** |")
    return "\n".join(out)


def total_us(res):
    """The server tree's CPU per request of one measure() run, µs."""
    return sum(r["user_us"] + r["sys_us"] for r in res["rows"])


def render_pairs(runs):
    """runs: {rate: [(asyncd µs/req, SIPp rc, Kamailio µs/req, SIPp rc), ...]} -> a table."""
    out = ["", "| rate /s | asyncd µs/req, each run | Kamailio µs/req, each run | ratio of the medians "
               "| pair by pair (min–max) |",
           "|---|---|---|---|---|"]

    def cells(vals):
        return " / ".join(f"{v:.0f}" + ("" if rc == 0 else f" (rc {rc})") for v, rc in vals)
    for rate, pairs in runs.items():
        a = [(x[0], x[1]) for x in pairs]
        k = [(x[2], x[3]) for x in pairs]
        ratio = statistics.median(v for v, _ in a) / statistics.median(v for v, _ in k)
        each = [x[0] / x[2] for x in pairs]
        out.append(f"| {rate:,} | {cells(a)} | {cells(k)} | **{ratio:.2f}×** | "
                   f"{min(each):.2f}–{max(each):.2f}× |")
    return "\n".join(out)


def compare(case, rates, seconds, pairs, tmp):
    """Both servers up; per rate, `pairs` runs of asyncd then Kamailio back to back."""
    servers = []
    try:
        for kind in ("asyncd", "kamailio"):
            d = Path(tmp) / kind
            d.mkdir()
            srv = Server(kind=kind, cfg=str(case.cfg), port=free_udp_port(), mem_mb=case.mem_for(kind),
                         workdir=d)
            srv.start()
            servers.append(srv)
        runs = {}
        for rate in rates:
            for i in range(pairs):
                got = []
                for srv in servers:
                    res = measure(srv, case.sipp["scenario"], rate, seconds, False, tmp)
                    got += [total_us(res), res["sipp_rc"]]
                runs.setdefault(rate, []).append(tuple(got))
                print(f"  {rate:,}/s pair {i + 1}: asyncd {got[0]:.0f}, Kamailio {got[2]:.0f} µs/req",
                      flush=True)
        return runs
    finally:
        for srv in servers:
            srv.stop()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.budget", description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", default="task_route")
    ap.add_argument("--server", default="asyncd", choices=("asyncd", "kamailio", "both"))
    ap.add_argument("--pairs", type=int, default=3, help="--server both: runs of each server per rate")
    ap.add_argument("--rates", default="1000,3000,6000")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--mem", type=int, default=None, help="-m for the server (default: the case's)")
    ap.add_argument("--spy", action="store_true", help="split each process's CPU by stage (py-spy, asyncd)")
    a = ap.parse_args(argv)
    case = load_cases()[a.case]
    rates = [int(r) for r in a.rates.split(",")]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=os.path.dirname(__file__)).stdout.strip()
    if a.server == "both":
        print(f"# {a.case} ({case.cfg.name}), asyncd at -m {case.mem_for('asyncd')} beside Kamailio at "
              f"-m {case.mem_for('kamailio')}, {a.pairs} pair(s) of {a.seconds:g} s runs per rate, "
              f"commit {commit}", flush=True)
        with tempfile.TemporaryDirectory(prefix="asyncd-budget-") as tmp:
            print(render_pairs(compare(case, rates, a.seconds, max(1, a.pairs), tmp)))
        return
    mem = a.mem or case.mem_for(a.server)
    if a.spy and not shutil.which("py-spy"):
        sys.exit("--spy needs py-spy (pip install py-spy)")
    with tempfile.TemporaryDirectory(prefix="asyncd-budget-") as tmp:
        srv = Server(kind=a.server, cfg=str(case.cfg), port=free_udp_port(), mem_mb=mem, workdir=Path(tmp))
        srv.start()
        try:
            print(f"# {a.case} ({case.cfg.name}), {a.server} at -m {mem}, commit {commit}")
            for rate in rates:
                print(render(a.server, measure(srv, case.sipp["scenario"], rate, a.seconds,
                                               a.spy and a.server == "asyncd", tmp)), flush=True)
        finally:
            srv.stop()


if __name__ == "__main__":
    main()
