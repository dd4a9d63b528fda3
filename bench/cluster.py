"""The cluster bench: calls/s of the three-node setup against one node, with the CPU of
each node, and the Redis commands per REGISTER and per call (docs/cluster.md).

Runs in: the bench harness process (`python -m bench.cluster`); Redis, the nodes and
SIPp are child processes, started and stopped by pid (tests/helpers/cluster.py).

Opt-in and separate from `python -m bench run` (whose runner drives one server per
case): a run takes about 4 minutes per server kind (`--quick`: under a minute).

For each server kind ("asyncd", "kamailio") and topology:

- "one": a single proxy node (tests/cluster/proxy.cfg) takes the calls itself;
- "three": the dispatcher node (tests/cluster/dispatcher.cfg) in front of two proxy
  nodes, as in the acceptance tests;

registrations in the same redis-server, a SIPp UAS registered as one user, then:

1. Redis commands (INFO commandstats, after CONFIG RESETSTAT) for one new REGISTER, one
   refresh and `OPS_CALLS` calls (INVITE/ACK/BYE);
2. a stepped search: SIPp calls (tests/sipp/scenarios/cluster_uac.xml) at each rate for
   `step_s`; a step is clean when every call got its 200 and BYE 200 (no error reply,
   no SIPp failure, no retransmission); the search stops at the first unclean step.
   Each step records the CPU of each node (user+system of its process tree over the
   step, in % of one core) and of redis-server.
Results: a markdown table on stdout and results.json in bench/results/<time>-cluster/.
"""
import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.sysstats import ProcessTree, machine_info
from tests.helpers.cluster import KINDS, make_nodes
from tests.helpers.redis_server import run_redis
from tests.helpers.sipp import SippUas, run_sipp

REPO = Path(__file__).resolve().parents[1]
USER = "alice"
OPS_CALLS = 10
RATES = [100, 200, 300, 400, 600, 800, 1000, 1300, 1600]
QUICK_RATES = [50, 100]
# -m of every node: at 800 calls/s Kamailio's tm runs out of a 64 MB shm pool ("new_t(): out
# of mem", the cfg's 500s); 256 MB as the bench's register case
MEM_MB = 256


def register(node, uas, cseq):
    return run_sipp(node.addr, scenario="stock_register", service=USER, calls=1, rate=100, timeout=5,
                    extra=["-key", "cport", str(uas.port), "-key", "ctr", "udp", "-key", "expires",
                           "3600", "-key", "regcseq", str(cseq), "-cid_str", f"reg-{uas.port}@bench"])


def calls(front, n, rate, log_file):
    """n calls to USER through `front` at `rate`; (SippResult, ok count, {error code: count})."""
    r = run_sipp(front.addr, scenario="cluster_uac", service=USER, calls=n, rate=rate,
                 timeout=n / rate + 30, max_outstanding=max(200, rate * 3),
                 extra=["-trace_logs", "-log_file", log_file])
    text = Path(log_file).read_text() if os.path.exists(log_file) else ""
    if os.path.exists(log_file):
        os.unlink(log_file)
    codes = {}
    for c in re.findall(r"^fail \d+ (\d+)", text, re.M):
        codes[c] = codes.get(c, 0) + 1
    return r, len(re.findall(r"^ok ", text, re.M)), codes


def commandstats(client):
    """{command: calls} from INFO commandstats (the bench's own INFO/CONFIG left out)."""
    out = {}
    for name, st in client.info("commandstats").items():
        cmd = name.replace("cmdstat_", "")
        if cmd.split("|")[0] not in ("info", "config"):     # Redis 7: "config|resetstat"
            out[cmd] = st["calls"]
    return out


def redis_ops(redis, registrar, front, uas, workdir):
    """Redis commands for one new REGISTER, one refresh and OPS_CALLS calls."""
    c = redis.client()
    res = {}
    for what, act in (("register_new", lambda: register(registrar, uas, 1)),
                      ("register_refresh", lambda: register(registrar, uas, 2)),
                      (f"calls_{OPS_CALLS}", lambda: calls(front, OPS_CALLS, 20,
                                                           os.path.join(workdir, "ops.log")))):
        c.config_resetstat()
        act()
        time.sleep(0.3)             # the last BYE's transaction and timers settle
        res[what] = commandstats(c)
    return res


def step(front, nodes, redis_pid, rate, step_s, workdir):
    trees = {n.name: ProcessTree(n.pid) for n in nodes}
    trees["redis"] = ProcessTree(redis_pid)
    cpu0 = {k: t.cpu_seconds() for k, t in trees.items()}
    t0 = time.monotonic()
    n = max(1, int(rate * step_s))
    r, ok, err = calls(front, n, rate, os.path.join(workdir, f"step-{rate}.log"))
    wall = time.monotonic() - t0
    cpu = {k: round(100 * (t.cpu_seconds() - cpu0[k]) / wall, 1) for k, t in trees.items()}
    clean = (ok == n and not err and r.failed == 0 and (r.retransmissions or 0) == 0)
    return {"rate": rate, "calls": n, "ok": ok, "error_replies": err, "sipp_failed": r.failed,
            "retransmissions": r.retransmissions, "clean": clean, "wall_s": round(wall, 2),
            "cpu_pct": cpu}


def run_topology(kind, topology, rates, step_s, cooldown_s, log, mem_mb=MEM_MB):
    workdir = tempfile.mkdtemp(prefix=f"bench-cluster-{kind}-{topology}-")
    with run_redis() as redis:
        disp, proxies = make_nodes(kind, redis.url, workdir, proxies=1 if topology == "one" else 2,
                                   mem_mb=mem_mb)
        nodes = proxies if topology == "one" else [disp, *proxies]
        front = proxies[0] if topology == "one" else disp
        uas = SippUas(scenario="cluster_uas.xml")
        try:
            for node in proxies + ([disp] if topology == "three" else []):
                node.start()
            time.sleep(2.5)         # the dispatcher's first probes mark the proxies up
            out = {"topology": topology, "server": kind,
                   "nodes": {n.name: n.port for n in nodes},
                   "redis_ops": redis_ops(redis, proxies[0], front, uas, workdir), "steps": []}
            for rate in rates:
                s = step(front, nodes, redis.pid, rate, step_s, workdir)
                out["steps"].append(s)
                log(f"  {kind} {topology}: {rate}/s -> {s['ok']}/{s['calls']} ok, "
                    f"cpu {s['cpu_pct']}" + ("" if s["clean"] else
                                             f"  (not clean: {s['error_replies']} error replies, SIPp "
                                             f"{s['sipp_failed']} failed, {s['retransmissions']} retrans)"))
                if not s["clean"]:
                    break
                time.sleep(cooldown_s)
            clean = [s for s in out["steps"] if s["clean"]]
            out["max_clean_rate"] = clean[-1]["rate"] if clean else 0
            return out
        finally:
            uas.stop()
            for node in reversed(nodes):
                node.stop()
            shutil.rmtree(workdir, ignore_errors=True)


def markdown(results):
    lines = ["| server | nodes | max clean calls/s | CPU % at that rate (each node, redis) "
             "| CPU ms per call offered |", "|---|---|---:|---|---|"]
    for r in results:
        clean = [s for s in r["steps"] if s["clean"]]
        top = clean[-1] if clean else None
        cpu = ", ".join(f"{k} {v}" for k, v in top["cpu_pct"].items()) if top else "-"
        # % of a core at R calls/s -> ms of CPU per call: pct * 10 / R
        ms = ", ".join(f"{k} {v * 10 / top['rate']:.2f}" for k, v in top["cpu_pct"].items()) if top else "-"
        lines.append(f"| {r['server']} | {r['topology']} | {r['max_clean_rate']} | {cpu} | {ms} |")
    lines += ["", "| server | nodes | Redis commands: new REGISTER / refresh / "
              f"{OPS_CALLS} calls |", "|---|---|---|"]
    for r in results:
        ops = r["redis_ops"]
        cols = [", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "-" for d in ops.values()]
        lines.append(f"| {r['server']} | {r['topology']} | {' / '.join(cols)} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.split("\n")[0])
    ap.add_argument("--server", choices=[*KINDS, "both"], default="both")
    ap.add_argument("--quick", action="store_true", help="two low rates, 2 s steps: a smoke run")
    ap.add_argument("--rates", help="comma-separated call rates (default: %s)" % RATES)
    ap.add_argument("--step-s", type=float, default=None)
    ap.add_argument("--topology", choices=["one", "three", "both"], default="both")
    ap.add_argument("--mem-mb", type=int, default=MEM_MB, help="-m of every node (default %(default)s)")
    ap.add_argument("--out", help="results directory (default bench/results/<UTC time>-cluster)")
    opts = ap.parse_args(argv)
    rates = [int(x) for x in opts.rates.split(",")] if opts.rates else (QUICK_RATES if opts.quick else RATES)
    step_s = opts.step_s or (2.0 if opts.quick else 5.0)
    kinds = KINDS if opts.server == "both" else (opts.server,)
    results = []
    for kind in kinds:
        for topology in (("one", "three") if opts.topology == "both" else (opts.topology,)):
            results.append(run_topology(kind, topology, rates, step_s, 0.5 if opts.quick else 2.0,
                                        lambda m: print(m, file=sys.stderr, flush=True), opts.mem_mb))
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    out = Path(opts.out or REPO / "bench" / "results" / f"{stamp}-cluster")
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(results)
    (out / "results.json").write_text(json.dumps({"machine": machine_info(REPO), "command": sys.argv,
                                                  "rates": rates, "step_s": step_s, "mem_mb": opts.mem_mb,
                                                  "results": results}, indent=1))
    (out / "results.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
