"""Soak runs: one SIPp load at a fixed rate for a long time, sampled every minute.

Runs in: the bench harness process (the server and SIPp are child processes).

Issue 12 asks for half an hour of load at half the maximum clean rate,
reporting failed calls, PSS and open fds every minute, and judged by "0
failed calls, PSS within ±5 % from minute 2 to the end, fd count flat".
A case with a ``[soak]`` table runs this instead of a clean-rate search:
SIPp (and, for a relay case, a SIPp UAS behind the server) for
``duration_s`` at ``rate``, and every ``sample_s`` one sample of

- calls so far: SIPp's cumulative counters from its ``-trace_stat`` CSV
  (written every second), UAC and UAS failures added up;
- PSS summed over the server's process tree (shared memory counts once);
- open fds summed over the tree (``/proc/<pid>/fd``), and the process count.

Sample 0 is the idle server just before the load, the last one ("end")
is taken once SIPp has exited, with its final counters. Minute 1 is left
out of the verdict: the tm table and the task queues fill during it
(a transaction stays ~5 s after its reply) and the processes' first
requests fault in their copy-on-write pages, so PSS rises by design.
"""
import time
from typing import Optional

from bench import sipp
from bench.servers import Server, free_udp_port
from bench.sysstats import ProcessTree, read_udp_counters, udp_drops_delta

MB = 1024 * 1024
BASELINE_SAMPLE = 2         # "from minute 2 to the end" (issue 12)
POLL_S = 0.5                # how often the sampler looks at SIPp and the server between samples
# SIPp's -trace_err file rotates at 20 MB and keeps one old file: in the first smoke run a
# minute of failing calls wrote 65 MB of errors, half an hour of them would fill a disk.
SIPP_LOG_RING = ["-ringbuffer_files", "1", "-ringbuffer_size", "20000000"]


# --- the verdict (pure: tests/unit/bench/test_bench_soak.py) ----------------

def pss_drift_pct(values: list) -> Optional[float]:
    """The largest deviation from values[0], signed, in % of values[0]."""
    if not values or not values[0]:
        return None
    base = values[0]
    worst = max(values, key=lambda v: abs(v - base))
    return round((worst - base) * 100.0 / base, 2)


def verdict(samples: list, limit_pct: float = 5.0, completed: bool = True) -> dict:
    """Failed calls, PSS drift and fd spread from the minute-2 sample to the end.

    ``samples`` are the series run_soak records: dicts with ``minute`` (None for
    the end sample), ``failed``, ``pss_mb``, ``fds``, ``processes``. The PSS and fd
    checks are None (not judged) when the run was too short to have a minute 2.
    Passing needs all three checks and a run that completed its duration.
    """
    last = samples[-1] if samples else {}
    # "minute" is the sample number: the minute at the default 60 s interval
    window = [s for s in samples if s.get("minute") is None or s["minute"] >= BASELINE_SAMPLE]
    if not window or window[0].get("minute") != BASELINE_SAMPLE:
        window = []
    out = {"failed": last.get("failed", 0), "successful": last.get("successful", 0),
           "retransmissions": last.get("retransmissions", 0), "completed": completed,
           "baseline_minute": BASELINE_SAMPLE if window else None, "pss_limit_pct": limit_pct}
    checks = {"failed_calls": out["failed"] == 0, "pss": None, "fds": None}
    if window:
        # judged on the pages asyncd allocates (sysstats.ProcessTree.pss_own_bytes) when
        # sampled: total PSS also moves with the other processes sharing its files
        key = "pss_own_mb" if all("pss_own_mb" in s for s in window) else "pss_mb"
        out["pss_judged"] = "anonymous + shared memory" if key == "pss_own_mb" else "total"
        pss = [s[key] for s in window]
        fds = [s["fds"] for s in window]
        procs = [s["processes"] for s in window]
        out.update(baseline_pss_mb=pss[0], pss_drift_pct=pss_drift_pct(pss),
                   pss_min_mb=min(pss), pss_max_mb=max(pss), fds_min=min(fds), fds_max=max(fds),
                   processes_min=min(procs), processes_max=max(procs))
        checks["pss"] = out["pss_drift_pct"] is not None and abs(out["pss_drift_pct"]) <= limit_pct
        checks["fds"] = out["fds_min"] == out["fds_max"]
    out["checks"] = checks
    if not completed or False in checks.values():
        out["pass"] = False
    elif None in checks.values():
        out["pass"] = None
    else:
        out["pass"] = True
    return out


def describe_verdict(v: dict, unit: str = "minute") -> str:
    """One line: PASS / FAIL / not judged, then the figures."""
    bits = [f"{v['failed']} failed calls"]
    if v.get("baseline_minute") is not None:
        what = " (own pages)" if v.get("pss_judged") == "anonymous + shared memory" else ""
        bits.append(f"PSS{what} {v['pss_drift_pct']:+.2f} % from {unit} {v['baseline_minute']} "
                    f"({v['baseline_pss_mb']} MB; limit ±{v['pss_limit_pct']:g} %)")
        bits.append(f"fds {v['fds_min']}..{v['fds_max']}"
                    + (" (flat)" if v["fds_min"] == v["fds_max"] else " (NOT flat)"))
    else:
        bits.append(f"too short for a {unit}-2 baseline: PSS and fds not judged")
    if not v.get("completed", True):
        bits.append("the run did not complete")
    word = {True: "PASS", False: "FAIL", None: "not judged"}[v["pass"]]
    return f"{word}: " + "; ".join(bits)


# --- running ----------------------------------------------------------------

class _Load:
    """The SIPp UAC (and UAS for a relay case) of one soak, and their counters so far."""

    def __init__(self, srv: Server, cfg: dict, workdir, tag: str):
        self.calls = max(1, int(cfg["rate"] * cfg["duration_s"]))
        uac_port = free_udp_port(exclude={srv.port})
        self.uac_stat = str(workdir / f"{tag}-soak-uac.csv")
        self.uas_stat = None
        self.uas = None
        target, rsa = f"127.0.0.1:{srv.port}", None
        if cfg.get("uas"):
            uas_port = free_udp_port(exclude={srv.port, uac_port})
            self.uas_stat = str(workdir / f"{tag}-soak-uas.csv")
            self.uas = sipp.SippProcess(sipp.uas_command(cfg["uas"], uas_port, self.uas_stat)
                                        + SIPP_LOG_RING,
                                        self.uas_stat, str(workdir / f"{tag}-soak-uas.log"),
                                        cwd=str(workdir))
            time.sleep(0.3)
            target, rsa = f"127.0.0.1:{uas_port}", f"127.0.0.1:{srv.port}"
        recv_s = cfg["recv_timeout_ms"] / 1000
        self.timeout_s = cfg["duration_s"] + recv_s + 60
        cmd = sipp.uac_command(cfg["scenario"], target, uac_port, cfg["rate"], self.calls,
                               self.uac_stat, service=cfg["service"], rsa=rsa,
                               recv_timeout_ms=cfg["recv_timeout_ms"],
                               global_timeout_s=int(self.timeout_s)) + SIPP_LOG_RING
        self.uac = sipp.SippProcess(cmd, self.uac_stat, str(workdir / f"{tag}-soak-uac.log"),
                                    cwd=str(workdir))
        self.t0 = self.uac.t0

    def progress(self) -> dict:
        uac = sipp.read_stat_progress(self.uac_stat)
        uas = sipp.read_stat_progress(self.uas_stat) if self.uas_stat else None
        return _counters(uac, uas)

    def finish(self, server_alive: bool):
        """Reap SIPp: wait for the UAC to end its calls, or stop it now if the server died."""
        if server_alive:
            run = self.uac.finish(timeout_s=max(5.0, self.t0 + self.timeout_s + 10 - time.monotonic()))
        else:
            run = self.uac.stop()
        uas_run = self.uas.stop() if self.uas else None
        return run, uas_run


def _counters(uac: sipp.SippTotals, uas: Optional[sipp.SippTotals]) -> dict:
    return {"successful": uac.successful, "failed": uac.failed + (uas.failed if uas else 0),
            "retransmissions": uac.retransmissions + (uas.retransmissions if uas else 0)}


def take_sample(tree: ProcessTree, minute: Optional[int], t_s: float, counters: dict) -> dict:
    return {"minute": minute, "t_s": round(t_s, 1), **counters,
            "pss_mb": round(tree.pss_bytes() / MB, 2), "pss_own_mb": round(tree.pss_own_bytes() / MB, 2),
            "fds": tree.fd_count(),
            "processes": tree.count()}


def sample_unit(sample_s: float) -> str:
    """What a sample number counts: minutes at the default interval, else samples."""
    return "minute" if float(sample_s) == 60.0 else "sample"


def _log_sample(opts, s: dict, unit: str) -> None:
    at = "end" if s["minute"] is None else f"{unit} {s['minute']}"
    opts.log(f"    soak {at} ({s['t_s']:g} s): {s['successful']:,} calls ok, {s['failed']} failed, "
             f"{s['retransmissions']} retrans; PSS {s['pss_mb']:.1f} MB "
             f"(own {s.get('pss_own_mb', 0):.1f}); {s['fds']} fds; "
             f"{s['processes']} processes")


def run_soak(srv: Server, tree: ProcessTree, cfg: dict, opts, tag: str) -> dict:
    """The soak phase of a case: load for duration_s, a sample every sample_s, the verdict."""
    every = float(cfg["sample_s"])
    unit = sample_unit(every)
    opts.log(f"    soak: {cfg['rate']}/s for {cfg['duration_s']} s, a sample every {every:g} s"
             + (f" (rate: {cfg['rate_source']})" if cfg.get("rate_source") else ""))
    zero = {"successful": 0, "failed": 0, "retransmissions": 0}
    samples = [take_sample(tree, 0, 0.0, zero)]
    _log_sample(opts, samples[0], unit)
    udp0, cpu0 = read_udp_counters(), tree.cpu_seconds()
    load = _Load(srv, cfg, opts.workdir, tag)
    k = 1
    while load.uac.running() and srv.proc.poll() is None:
        due = load.t0 + k * every
        if time.monotonic() < due:
            time.sleep(min(POLL_S, due - time.monotonic()))
            continue
        samples.append(take_sample(tree, k, time.monotonic() - load.t0, load.progress()))
        _log_sample(opts, samples[-1], unit)
        k += 1
    run, uas_run = load.finish(srv.proc.poll() is None)
    alive = srv.proc.poll() is None
    final = _counters(run.totals, uas_run.totals if uas_run else None)
    if alive:
        samples.append(take_sample(tree, None, time.monotonic() - load.t0, final))
        _log_sample(opts, samples[-1], unit)
    completed = alive and not run.timed_out and run.totals.created >= load.calls
    v = verdict(samples, cfg["pss_drift_limit_pct"], completed=completed)
    opts.log(f"    soak verdict: {describe_verdict(v, unit)}")
    return {"scenario": cfg["scenario"], "uas": cfg.get("uas"), "rate": cfg["rate"],
            "rate_source": cfg.get("rate_source", ""), "duration_s": cfg["duration_s"],
            "sample_s": every, "calls": load.calls, "achieved_rate": round(run.totals.achieved_rate, 1),
            "elapsed_s": run.totals.elapsed_s, "sipp_rc": run.returncode, "timed_out": run.timed_out,
            "uas_rc": uas_run.returncode if uas_run else None,
            "uac_failed": run.totals.failed, "uas_failed": uas_run.totals.failed if uas_run else None,
            "sipp_cpu_s": round(run.cpu_s + (uas_run.cpu_s if uas_run else 0), 3),
            "server_cpu_s": round(tree.cpu_seconds() - cpu0, 3) if alive else None,
            "udp_drops": udp_drops_delta(udp0, read_udp_counters()),
            "pss_mb": max(s["pss_mb"] for s in samples), "samples": samples, "verdict": v}
