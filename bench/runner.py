"""Running cases: one server at a time, each phase measured the same way.

Runs in: the bench harness process.

For each (case, server): start the server on the case's cfg, then
1. latency (built-in sender at a fixed rate: latency or timer delay,
   server CPU per request at the same load for both servers; once per
   rate when the case or --fixed-rates gives several),
2. throughput (async_task_data / tkv: everything sent must be delivered,
   as counted by the cfg with $shtinc),
3. the clean-rate search (SIPp steps; clean = every call successful, zero
   failed calls, zero retransmissions, and the target rate reached),
4. a soak (one SIPp load at a fixed rate for a long time, sampled every
   minute: bench/soak.py),
5. an overload run (a multiple of the search's maximum clean rate, or of a
   given base rate, every answer counted: bench/overload.py),
then stop it by pid. PSS of the tree is sampled after each phase and the
maximum kept; UDP drops are /proc/net/snmp deltas around each phase.

A server that cannot start on a cfg (e.g. a function it does not have
yet) is recorded with its log tail, never guessed at. A time budget cuts
the run short: whatever did not run is marked "skipped (time budget)".
"""
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from bench import overload, sender, sender_tcp, sipp, soak, stats
from bench.cases import Case, at_rate, latency_rates
from bench.servers import Server, ServerStartError, free_port, free_udp_port, kamailio_binary
from bench.sysstats import ProcessTree, read_udp_counters, udp_drops_delta

MB = 1024 * 1024
WARMUP_S = 0.5          # latency runs: at least this much warm-up traffic (see run_latency)


class Budget:
    def __init__(self, seconds: float):
        self.t0 = time.monotonic()
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def exceeded(self) -> bool:
        return self.elapsed() > self.seconds


@dataclass
class RunOptions:
    servers: list
    quick: bool
    workdir: Path
    budget: Budget
    step_s: Optional[float] = None
    soak: dict = field(default_factory=dict)    # --rate / --duration / --sample-s for soak cases
    overload: dict = field(default_factory=dict)   # the same and --overload-base, overload cases
    fixed_rates: Optional[list] = None          # --fixed-rates: latency runs at these, no search
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr, flush=True))


class _Meter:
    """CPU, UDP drops and PSS around one phase of load."""

    def __init__(self, tree: ProcessTree):
        self.tree = tree

    def __enter__(self):
        self.udp0 = read_udp_counters()
        self.cpu0 = self.tree.cpu_seconds()
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc):
        self.cpu = round(self.tree.cpu_seconds() - self.cpu0, 3)
        self.wall = round(time.monotonic() - self.t0, 3)
        self.drops = udp_drops_delta(self.udp0, read_udp_counters())
        self.pss = self.tree.pss_bytes()
        return False


def run_latency(srv: Server, tree: ProcessTree, cfg: dict, opts: "RunOptions") -> dict:
    send = sender_tcp.run if srv.transport == "tcp" else sender.run
    # Warm-up, same rate, not counted: every process's first requests pay one-off costs
    # (copy-on-write faults on the pages they touch, first connects, the interpreter
    # specialising the hot code), ~1-3 ms here for either server, which would otherwise
    # be the p99 of a 200-sample run. `warmup` requests, at least half a second of
    # traffic. Its worst latency is kept in the results (warmup_max_ms), not hidden.
    n_warm = int(cfg.get("warmup", 0) or 0)
    if n_warm > 0:
        n_warm = max(n_warm, int(cfg["rate"] * WARMUP_S))
    warm = None
    if n_warm > 0:
        warm = send(srv.port, cfg["rate"], n_warm, user=cfg["user"],
                    drain_s=cfg["drain_s"] + cfg["nominal_ms"] / 1000.0)
    with _Meter(tree) as m:
        res = send(srv.port, cfg["rate"], cfg["count"], user=cfg["user"],
                   drain_s=cfg["drain_s"] + cfg["nominal_ms"] / 1000.0)
    lat = res.latencies_us
    out = {"rate": cfg["rate"], "sent": res.sent, "answered": res.answered,
           "unanswered": res.unanswered, "non_2xx": res.non_2xx, "duplicates": res.duplicates,
           "statuses": res.statuses, "achieved_rate": round(res.achieved_rate, 1),
           "max_send_lag_ms": round(res.max_send_lag_us / 1000, 3),
           "latency_ms": stats.summarize(lat, scale=1e-3),
           "server_cpu_s": m.cpu,
           "server_cpu_ms_per_req": round(m.cpu * 1000 / res.sent, 4) if res.sent else None,
           "udp_drops": m.drops, "pss_mb": round(m.pss / MB, 1)}
    if warm is not None:
        out["warmup"] = warm.sent
        out["warmup_max_ms"] = (round((max(warm.latencies_us) - cfg["nominal_ms"] * 1000) / 1000, 3)
                                if warm.latencies_us else None)
    nominal = cfg["nominal_ms"]
    if nominal:
        out["nominal_ms"] = nominal
        out["delay_error_ms"] = stats.summarize([v - nominal * 1000 for v in lat], scale=1e-3)
        out["abs_delay_error_ms"] = stats.summarize([abs(v - nominal * 1000) for v in lat], scale=1e-3)
        out["early"] = sum(1 for v in lat if v < nominal * 1000)
    out["_raw_ms"] = [v / 1000 for v in lat]
    return out


def run_latency_rates(srv: Server, tree: ProcessTree, cfg: dict, opts: "RunOptions") -> list:
    """run_latency at each rate the phase lists (`rates`, or --fixed-rates), in order."""
    rates = latency_rates(cfg)
    runs = []
    for rate in rates:
        if opts.budget.exceeded() or srv.proc.poll() is not None:
            break
        runs.append(run_latency(srv, tree, at_rate(cfg, rate), opts))
        _log_phase(opts, f"latency at {rate}/s", runs[-1])
    return runs


def run_throughput(srv: Server, tree: ProcessTree, cfg: dict, opts: "RunOptions") -> dict:
    """Step the data rate; a step is clean when every request was answered and every
    datum delivered (the cfg's $shtinc counter) within timeout_s of the last send."""
    if sender.read_counter(srv.port) is None:
        return {"error": "the cfg did not answer the counter query (R-URI user 'count')"}

    def probe(rate):
        base = sender.read_counter(srv.port) or 0
        with _Meter(tree) as m:
            t_start = time.monotonic()
            res = sender.run(srv.port, rate, max(1, int(rate * cfg["step_s"])), user=cfg["user"],
                             drain_s=1.0)
            deliv = sender.wait_delivery(srv.port, base, res.sent, t_start, timeout_s=cfg["timeout_s"])
        reasons = []
        if not deliv.complete:
            reasons.append(f"{deliv.delivered}/{deliv.expected} delivered")
        if res.unanswered:
            reasons.append(f"{res.unanswered} unanswered")
        if res.achieved_rate < 0.9 * rate:
            reasons.append(f"sender reached only {res.achieved_rate:.0f}/s")
        d = {"rate": rate, "sent": res.sent, "answered": res.answered, "non_2xx": res.non_2xx,
             "delivered": deliv.delivered, "expected": deliv.expected, "complete": deliv.complete,
             "seconds": deliv.seconds, "delivered_per_s": round(deliv.rate, 1),
             "achieved_send_rate": round(res.achieved_rate, 1), "server_cpu_s": m.cpu,
             "server_cpu_ms_per_req": round(m.cpu * 1000 / res.sent, 4) if res.sent else None,
             "udp_drops": m.drops, "pss_mb": round(m.pss / MB, 1), "reasons": reasons}
        opts.log(f"    data {rate}/s x {cfg['step_s']:g}s: {d['delivered']}/{d['expected']} delivered in "
                 f"{d['seconds']} s ({d['delivered_per_s']}/s) "
                 f"{'clean' if not reasons else 'NOT clean: ' + ', '.join(reasons)}")
        return stats.StepOutcome(rate=rate, clean=not reasons, data=d)

    res = stats.search_clean_rate(cfg["rates"], probe, refine=int(cfg.get("refine", 0)), quantum=500,
                                  should_stop=lambda: opts.budget.exceeded() or srv.proc.poll() is not None,
                                  retry_if=data_marginal_failure)
    best = res.best.data if res.best else None
    return {"steps": [s.data for s in res.steps], "max_clean_rate": res.max_clean_rate,
            "ceiling": res.ceiling, "at_best": best,
            "delivered_per_s": best["delivered_per_s"] if best else 0,
            "server_cpu_ms_per_req": best["server_cpu_ms_per_req"] if best else None,
            "udp_drops": _sum_drops(s.data["udp_drops"] for s in res.steps),
            "pss_mb": max((s.data["pss_mb"] for s in res.steps), default=0)}


def _sum_drops(items) -> dict:
    total = {}
    for d in items:
        for k, v in d.items():
            total[k] = total.get(k, 0) + v
    return total


def _sipp_step(srv: Server, tree: ProcessTree, cfg: dict, rate: int, step_s: float,
               workdir: Path, tag: str, uas_port: Optional[int] = None) -> stats.StepOutcome:
    calls = max(1, int(rate * step_s))
    uac_port = free_port(srv.transport, exclude={srv.port, uas_port})
    if cfg.get("uas") and uas_port is None:
        uas_port = free_udp_port(exclude={srv.port, uac_port})
    stat = str(workdir / f"{tag}-{rate}-uac.csv")
    # users: a step's calls go to (or register) `users` distinct users, in order; their
    # Contacts name the UAS when there is one (case stock_call), else SIPp itself
    inf = (sipp.users_file(workdir / f"{tag}-{rate}-users.csv", int(cfg["users"]),
                           f"127.0.0.1:{uas_port or uac_port}") if cfg.get("users") else None)
    recv_ms = cfg["recv_timeout_ms"]
    with _Meter(tree) as m:
        uas = None
        if cfg.get("uas"):
            uas_stat = str(workdir / f"{tag}-{rate}-uas.csv")
            uas = sipp.SippProcess(sipp.uas_command(cfg["uas"], uas_port, uas_stat), uas_stat,
                                   str(workdir / f"{tag}-{rate}-uas.log"), cwd=str(workdir))
            time.sleep(0.3)
        if cfg.get("uas") and not cfg.get("register"):
            # the R-URI names the UAS, every request goes to the server (-rsa)
            target, rsa = f"127.0.0.1:{uas_port}", f"127.0.0.1:{srv.port}"
        else:       # the R-URI names the server: its own answer, or lookup() of a registered user
            target, rsa = f"127.0.0.1:{srv.port}", None
        cmd = sipp.uac_command(cfg["scenario"], target, uac_port, rate, calls, stat,
                               service=cfg["service"], rsa=rsa, recv_timeout_ms=recv_ms,
                               global_timeout_s=int(step_s + recv_ms / 1000 + 20),
                               transport=srv.transport, tcp_mode=cfg.get("tcp_mode", "t1"), inf=inf)
        uac = sipp.SippProcess(cmd, stat, str(workdir / f"{tag}-{rate}-uac.log"), cwd=str(workdir))
        run = uac.finish(timeout_s=step_s + recv_ms / 1000 + 30)
        uas_run = uas.stop() if uas else None
    t = run.totals
    retrans = t.retransmissions + (uas_run.totals.retransmissions if uas_run else 0)
    reasons = []
    if t.failed:
        reasons.append(f"{t.failed} failed")
    if uas_run and uas_run.totals.failed:
        reasons.append(f"{uas_run.totals.failed} failed at the UAS")
    if retrans:
        reasons.append(f"{retrans} retransmissions")
    if t.successful < calls:
        reasons.append(f"{t.successful}/{calls} successful")
    if t.achieved_rate < cfg["min_rate_fraction"] * rate:
        reasons.append(f"rate {t.achieved_rate:.0f}/s < {cfg['min_rate_fraction']:.0%} of target")
    if run.timed_out:
        reasons.append("SIPp timed out")
    data = {"rate": rate, "calls": calls, "successful": t.successful, "failed": t.failed,
            "retransmissions": retrans, "uac_retransmissions": t.retransmissions,
            "uas_retransmissions": uas_run.totals.retransmissions if uas_run else None,
            "uas_failed": uas_run.totals.failed if uas_run else None,
            "achieved_rate": round(t.achieved_rate, 1), "elapsed_s": t.elapsed_s,
            "sipp_rc": run.returncode, "sipp_cpu_s": round(run.cpu_s + (uas_run.cpu_s if uas_run else 0), 3),
            "server_cpu_s": m.cpu,
            "server_cpu_ms_per_call": round(m.cpu * 1000 / t.successful, 4) if t.successful else None,
            "udp_drops": m.drops, "pss_mb": round(m.pss / MB, 1), "reasons": reasons}
    return stats.StepOutcome(rate=rate, clean=not reasons, data=data)


def marginal_failure(out: stats.StepOutcome) -> bool:
    """Every call succeeded, at full rate, with at most 0.1 % retransmitted: worth one repeat."""
    d = out.data
    return (not d.get("failed") and not d.get("uas_failed") and d.get("successful") == d.get("calls")
            and d.get("retransmissions", 0) <= max(1, d.get("calls", 0) // 1000)
            and d.get("achieved_rate", 0) >= 0.9 * d.get("rate", 0))


def data_marginal_failure(out: stats.StepOutcome) -> bool:
    """Everything delivered, and the step failed only because the harness's own sender fell
    behind its schedule (the box was busy) or at most 0.1 % of the replies were late."""
    d = out.data
    if not d.get("complete"):
        return False
    return d.get("sent", 0) - d.get("answered", 0) <= max(1, d.get("sent", 0) // 1000)


def register_users(srv: Server, tree: ProcessTree, cfg: dict, uas_port: int, workdir: Path,
                   tag: str) -> dict:
    """Before a call search (`[sipp] register`): REGISTER every one of `users` once, each
    Contact naming the UAS port the call steps will use, so the cfg's lookup() finds them.
    One SIPp run at the registration's own rate; it must be all 200s."""
    reg = cfg["register"]
    users = int(cfg["users"])
    step = {**cfg, "scenario": reg["scenario"], "uas": None}
    out = _sipp_step(srv, tree, step, int(reg["rate"]), users / int(reg["rate"]), workdir,
                     f"{tag}-register", uas_port=uas_port)
    d = out.data
    if d["successful"] != users or d["failed"]:
        d["error"] = f"registration: {d['successful']}/{users} users registered, {d['failed']} failed"
    return d


def run_sipp(srv: Server, tree: ProcessTree, cfg: dict, opts: RunOptions, tag: str) -> dict:
    step_s = opts.step_s or cfg["step_s"]
    registration, uas_port = None, None
    if cfg.get("register"):
        uas_port = free_udp_port(exclude={srv.port})
        registration = register_users(srv, tree, cfg, uas_port, opts.workdir, tag)
        opts.log(f"    registered {registration['successful']}/{cfg['users']} users at "
                 f"{registration['achieved_rate']}/s")
        if "error" in registration:
            return {"scenario": cfg["scenario"], "uas": cfg.get("uas"), "step_s": step_s,
                    "registration": registration, "error": registration["error"], "steps": [],
                    "max_clean_rate": 0, "max_clean_achieved": 0, "ceiling": None,
                    "at_best": None, "cut_short": opts.budget.exceeded()}

    def probe(rate):
        out = _sipp_step(srv, tree, cfg, rate, step_s, opts.workdir, tag, uas_port=uas_port)
        d = out.data
        opts.log(f"    SIPp {rate}/s x {step_s:g}s: {d['successful']} ok, {d['failed']} failed, "
                 f"{d['retransmissions']} retrans, {d['achieved_rate']}/s "
                 f"{'clean' if out.clean else 'NOT clean: ' + ', '.join(d['reasons'])}")
        if srv.proc.poll() is None:
            time.sleep(cfg["cooldown_s"])
        return out

    res = stats.search_clean_rate(cfg["rates"], probe, refine=int(cfg["refine"]),
                                  should_stop=lambda: opts.budget.exceeded() or srv.proc.poll() is not None,
                                  retry_if=marginal_failure)
    return {"scenario": cfg["scenario"], "uas": cfg.get("uas"), "step_s": step_s,
            "steps": [s.data for s in res.steps], "max_clean_rate": res.max_clean_rate,
            "max_clean_achieved": res.best.data["achieved_rate"] if res.best else 0,
            "ceiling": res.ceiling, "at_best": res.best.data if res.best else None,
            "cut_short": opts.budget.exceeded(),
            **({"registration": registration} if registration else {})}


def run_case(case: Case, kind: str, opts: RunOptions) -> dict:
    out = {"case": case.name, "server": kind, "status": "ok", "reason": "",
           "mem_mb": case.mem_for(kind) if kind in case.servers else None}
    if kind not in case.servers:
        out.update(status="unsupported", reason=case.note or f"the case does not run on {kind}")
        return out
    if kind == "kamailio" and not kamailio_binary():
        out.update(status="not installed", reason="kamailio binary not found")
        return out
    if opts.budget.exceeded():
        out.update(status="skipped", reason="time budget")
        return out
    srv = Server(kind=kind, cfg=str(case.cfg), port=free_port(case.transport),
                 mem_mb=case.mem_for(kind),
                 workdir=opts.workdir, transport=case.transport, args=tuple(case.args))
    opts.log(f"  {case.name} on {kind} (port {srv.port})")
    try:
        srv.start()
    except ServerStartError as e:
        out.update(status="start failed", reason=str(e), log_tail=e.log_tail)
        opts.log(f"    start failed: {e}")
        return out
    tree = ProcessTree(srv.pid)
    out.update(start_s=srv.start_s, processes=tree.count(), pss_idle_mb=round(tree.pss_bytes() / MB, 1))
    cpu0 = tree.cpu_seconds()
    pss = []
    try:
        if case.latency and latency_rates(case.latency) != [case.latency["rate"]]:
            # rates of its own: the first is the case's row (ratios, plots), all are in latency_at
            runs = run_latency_rates(srv, tree, case.latency, opts)
            if runs:
                out["latency"], out["latency_at"] = runs[0], runs
                pss += [r["pss_mb"] for r in runs]
        for phase, fn in (("latency", run_latency), ("throughput", run_throughput)):
            cfg = getattr(case, phase)
            if cfg is None or phase in out or opts.budget.exceeded() or srv.proc.poll() is not None:
                continue
            out[phase] = fn(srv, tree, cfg, opts)
            pss.append(out[phase].get("pss_mb", 0))
            if phase == "latency" or "error" in out[phase]:
                _log_phase(opts, phase, out[phase])
        if (case.sipp and not case.overload_base(kind) and not opts.budget.exceeded()
                and srv.proc.poll() is None):
            out["sipp"] = run_sipp(srv, tree, case.sipp, opts, f"{case.name}-{kind}")
            pss += [s["pss_mb"] for s in out["sipp"]["steps"]]
        if case.soak and not opts.budget.exceeded() and srv.proc.poll() is None:
            out["soak"] = soak.run_soak(srv, tree, case.soak, opts, f"{case.name}-{kind}")
            pss.append(out["soak"]["pss_mb"])
        if case.overload and not opts.budget.exceeded() and srv.proc.poll() is None:
            out["overload"] = run_overload_phase(srv, tree, case, kind, out.get("sipp"), opts)
            pss.append(out["overload"].get("pss_max_mb") or 0)
        out["server_cpu_s"] = round(tree.cpu_seconds() - cpu0, 3)
    except Exception as e:  # a harness bug must not lose the other cases' results
        out.update(status="error", reason=f"{type(e).__name__}: {e}",
                   traceback=traceback.format_exc()[-3000:])
        opts.log(f"    harness error: {type(e).__name__}: {e}")
    finally:
        if srv.proc.poll() is not None:
            out.update(status="crashed", reason=f"{kind} exited with {srv.proc.returncode} during the run",
                       log_tail=srv.log_tail())
        out["stop_rc"] = srv.stop()
    out["pss_max_mb"] = max(pss) if pss else out.get("pss_idle_mb")
    if opts.budget.exceeded():
        out["cut_short"] = True
    return out


def overload_base(case: Case, kind: str, search: Optional[dict]) -> tuple:
    """(base rate, where it comes from) for the overload phase; (None, why) when there is none."""
    given = case.overload_base(kind)
    if given:
        return given, "a given base rate (--overload-base or the case's base_rate)"
    best = (search or {}).get("max_clean_rate")
    if not best:
        return None, "the clean-rate search found no clean step" if search else "no clean-rate search ran"
    if (search or {}).get("ceiling") is None:
        return best, "the search's max clean rate (every step clean: a floor)"
    return best, "the search's max clean rate"


def run_overload_phase(srv: Server, tree: ProcessTree, case: Case, kind: str,
                       search: Optional[dict], opts: RunOptions) -> dict:
    base, source = overload_base(case, kind, search)
    if base is None:
        opts.log(f"    overload: not run: {source}")
        return {"error": f"no base rate: {source}"}
    return overload.run_overload(srv, tree, case.overload, opts, f"{case.name}-{kind}", base, source)


def _log_phase(opts: RunOptions, phase: str, d: dict) -> None:
    if "error" in d:
        opts.log(f"    {phase}: {d['error']}")
    elif phase.startswith("latency"):
        lat = d.get("delay_error_ms") or d.get("latency_ms") or {}
        what = "delay error" if "delay_error_ms" in d else "latency"
        opts.log(f"    {phase}: {d['answered']}/{d['sent']} answered; {what} ms p50 {lat.get('p50')} "
                 f"p99 {lat.get('p99')} max {lat.get('max')}; CPU {d['server_cpu_ms_per_req']} ms/req")


def run_cases(cases: list, opts: RunOptions) -> list:
    results = []
    for case in cases:
        c = (case.for_mode(opts.quick).with_soak(opts.soak).with_overload(opts.overload)
             .with_fixed_rates(opts.fixed_rates))
        for kind in opts.servers:
            results.append(run_case(c, kind, opts))
    return results
