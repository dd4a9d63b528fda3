"""Overload runs: offer a multiple of a server's maximum clean rate, count every answer.

Runs in: the bench harness process (the server and SIPp are child processes).

Issue 16 asks that past the ceiling "goodput stays at >= 90 % of the max
clean rate, every request answered, memory bounded". A case with an
``[overload]`` table runs, on one server instance:

1. the base: that server's maximum clean rate, from the case's own SIPp
   ladder (``[sipp]``, the usual search), unless ``--overload-base R`` or
   the case's ``base_rate`` gives it (then there is no search);
2. after ``cooldown_s`` (longer than the 5 s a completed transaction
   waits in the tm table), SIPp ``options_answers_uac.xml`` at ``factor``
   times the base (or ``rate``: ``--rate``) for ``duration_s``, with
   ``-l`` as large as the run (SIPp never throttles its offer because
   calls are open) and ``-default_behaviors all,-bye`` (an aborted call
   sends nothing more);
3. PSS of the server's tree every ``sample_s`` during the load, and once
   after SIPp exited.

What the SIPp counters mean here (``-trace_stat``, last row):

- ``answer200``, ``answer500``, ``answer503`` (the scenario's counters):
  calls that got that final answer; any other final answer is an
  unexpected message (``FailedUnexpectedMessage``): "other";
- unanswered: ``FailedMaxUDPRetrans`` (SIPp retransmitted per RFC 3261
  timer E, 500 ms doubling to T2 = 4 s, 9 times for a non-INVITE, and gave
  up at ~31.5 s, about timer F's 32 s) plus ``FailedTimeoutOnRecv`` (the
  receive timeout, ``recv_timeout_ms``; the quick mode's 4 s);
- failed otherwise: the rest of ``FailedCall`` (e.g. SIPp could not
  send); still open: created calls with no outcome when SIPp stopped.

The load window is from SIPp's start to the moment its last call was
created (interpolated between its one-second rows). **Goodput** is the 200
answers received in that window per second of it; a 200 that came after
the window (a late answer to a retransmission) counts as answered but not
in the goodput. **Achieved send rate** is calls created per second of the
window.
"""
import time
from typing import Optional

from bench import sipp
from bench.servers import Server, free_udp_port
from bench.sysstats import ProcessTree, read_udp_counters, udp_drops_delta

MB = 1024 * 1024
POLL_S = 0.2
CODES = ("200", "500", "503")
# -trace_err writes every unexpected answer in full: ring it as the soak does (bench/soak.py)
SIPP_EXTRA = ["-default_behaviors", "all,-bye", "-ringbuffer_files", "1",
              "-ringbuffer_size", "20000000"]


# --- reading SIPp's counters (pure: tests/unit/bench/test_bench_overload.py) -----------

def _cum(row: dict, name: str) -> int:
    v = row.get(name + "(C)")
    return v if isinstance(v, int) else 0


def answers(rows: list) -> dict:
    """The outcome of every call of a run of options_answers_uac.xml, from its last row."""
    last = rows[-1] if rows else {}
    created = last.get("TotalCallCreated") or 0
    out = {f"answer_{c}": _cum(last, f"answer{c}") for c in CODES}
    out["answer_other"] = _cum(last, "FailedUnexpectedMessage")
    out["unanswered"] = _cum(last, "FailedMaxUDPRetrans") + _cum(last, "FailedTimeoutOnRecv")
    failed = _cum(last, "FailedCall")
    out["failed_other"] = failed - out["answer_other"] - out["unanswered"]
    answered = sum(out[f"answer_{c}"] for c in CODES) + out["answer_other"]
    out.update(created=created, answered=answered, failed=failed,
               open=created - answered - out["unanswered"] - out["failed_other"],
               retransmissions=_cum(last, "Retransmissions"),
               dead_msgs=_cum(last, "DeadCallMsgs"))
    return out


def load_window(rows: list, calls: int) -> dict:
    """The load window (start to the last call created) and the 200s received in it.

    SIPp writes a row a second; the last call falls inside the period of the first row
    that has them all. Its time is the start of that period plus the calls still to
    create at the pace SIPp kept so far; the 200s at that time are interpolated."""
    pts = [(0.0, 0, 0)]
    for r in rows:
        start, now = r.get("StartTime"), r.get("CurrentTime")
        if isinstance(start, float) and isinstance(now, float):
            pts.append((now - start, r.get("TotalCallCreated") or 0, _cum(r, "answer200")))
    t_end, created, ok = pts[-1]
    for (t0, c0, a0), (t1, c1, a1) in zip(pts, pts[1:]):
        if c1 >= calls:
            pace = c0 / t0 if t0 > 0 and c0 > 0 else (c1 - c0) / (t1 - t0) if t1 > t0 else 0
            t_end = min(t1, t0 + (calls - c0) / pace) if pace > 0 else t1
            created = calls
            ok = a0 + (a1 - a0) * ((t_end - t0) / (t1 - t0) if t1 > t0 else 1.0)
            break
    return {"window_s": round(t_end, 3), "created_in_window": created,
            "answer_200_in_window": int(round(ok))}


def pss_growth(samples: list, window_s: float) -> Optional[float]:
    """Max PSS in the second half of the load window over the max in the first half, in %
    (None: no sample in one of the halves)."""
    half = window_s / 2
    first = [s["pss_mb"] for s in samples if s.get("t_s") is not None and 0 < s["t_s"] < half]
    second = [s["pss_mb"] for s in samples if s.get("t_s") is not None and half <= s["t_s"] <= window_s]
    if not first or not second or not max(first):
        return None
    return round((max(second) - max(first)) * 100.0 / max(first), 2)


def verdict(res: dict, target: float, pss_limit_pct: float) -> dict:
    """Goodput >= target x the base, every call answered, PSS bounded; pass when all three.
    PSS is not judged (None) when the run was too short (res["pss_judged"] false)."""
    growth = res.get("pss_growth_pct") if res.get("pss_judged", True) else None
    checks = {"goodput": res["goodput_ratio"] is not None and res["goodput_ratio"] >= target,
              "all_answered": (res["unanswered"] == 0 and res["failed_other"] == 0
                               and res["open"] == 0 and not res.get("timed_out")
                               and res.get("created", 0) >= res.get("calls", 0)),
              "pss_bounded": None if growth is None else growth <= pss_limit_pct}
    ok = None if None in checks.values() else all(checks.values())
    if False in checks.values():
        ok = False
    return {"checks": checks, "pass": ok, "goodput_target": target, "pss_limit_pct": pss_limit_pct}


def summarize(rows: list, calls: int, base: int, offered: int) -> dict:
    """answers() and load_window() of one run, the rates, goodput and its ratio to the base."""
    out = answers(rows)
    out.update(load_window(rows, calls))
    w = out["window_s"]
    out["achieved_send_rate"] = round(out["created_in_window"] / w, 1) if w > 0 else 0.0
    out["goodput"] = round(out["answer_200_in_window"] / w, 1) if w > 0 else 0.0
    out["goodput_ratio"] = round(out["goodput"] / base, 3) if base else None
    out["offered_rate"] = offered
    return out


# --- running ----------------------------------------------------------------------------

def offered_rate(cfg: dict, base: int) -> int:
    """What the run offers: `rate` when given (--rate), else factor x the base."""
    return int(cfg["rate"]) if cfg.get("rate") else int(round(base * float(cfg["factor"])))


def _sipp_command(srv: Server, cfg: dict, rate: int, calls: int, stat: str) -> list:
    recv_ms = int(cfg["recv_timeout_ms"])
    uac_port = free_udp_port(exclude={srv.port})
    cmd = sipp.uac_command(cfg["scenario"], f"127.0.0.1:{srv.port}", uac_port, rate, calls, stat,
                           service=cfg["service"], recv_timeout_ms=recv_ms,
                           global_timeout_s=int(cfg["duration_s"] + recv_ms / 1000 + 20), limit=calls)
    return cmd + SIPP_EXTRA


def _sample(tree: ProcessTree, t_s: Optional[float]) -> dict:
    return {"t_s": None if t_s is None else round(t_s, 2), "pss_mb": round(tree.pss_bytes() / MB, 1)}


def run_overload(srv: Server, tree: ProcessTree, cfg: dict, opts, tag: str, base: int,
                 base_source: str) -> dict:
    """The overload phase of a case on a running server: load, samples, counts, verdict."""
    rate = offered_rate(cfg, base)
    calls = max(1, int(rate * float(cfg["duration_s"])))
    opts.log(f"    overload: {rate}/s for {cfg['duration_s']:g} s ({calls} calls; base {base}/s "
             f"from {base_source})")
    time.sleep(float(cfg["cooldown_s"]))
    idle = _sample(tree, None)
    udp0, cpu0 = read_udp_counters(), tree.cpu_seconds()
    stat = str(opts.workdir / f"{tag}-overload-uac.csv")
    uac = sipp.SippProcess(_sipp_command(srv, cfg, rate, calls, stat), stat,
                           str(opts.workdir / f"{tag}-overload-uac.log"), cwd=str(opts.workdir))
    samples, due = [], uac.t0 + float(cfg["sample_s"])
    while uac.running() and srv.proc.poll() is None:
        if time.monotonic() >= due:
            samples.append(_sample(tree, time.monotonic() - uac.t0))
            due += float(cfg["sample_s"])
        time.sleep(POLL_S)
    alive = srv.proc.poll() is None
    wait_s = cfg["duration_s"] + cfg["recv_timeout_ms"] / 1000 + 30
    run = uac.finish(timeout_s=wait_s) if alive else uac.stop()
    cpu = round(tree.cpu_seconds() - cpu0, 3) if srv.proc.poll() is None else None
    end = _sample(tree, None) if srv.proc.poll() is None else {"pss_mb": None}
    res = summarize(sipp.parse_stat_csv(_read(stat)), calls, base, rate)
    res.update(scenario=cfg["scenario"], base_rate=base, base_source=base_source,
               factor=round(rate / base, 3) if base else None, duration_s=cfg["duration_s"],
               calls=calls, sipp_rc=run.returncode, timed_out=run.timed_out,
               sipp_cpu_s=run.cpu_s, elapsed_s=run.totals.elapsed_s, server_cpu_s=cpu,
               server_cpu_ms_per_req=round(cpu * 1000 / calls, 4) if cpu is not None else None,
               udp_drops=udp_drops_delta(udp0, read_udp_counters()), pss_idle_mb=idle["pss_mb"],
               pss_max_mb=max([s["pss_mb"] for s in samples] + [idle["pss_mb"]]),
               pss_end_mb=end["pss_mb"], samples=samples)
    res["pss_growth_pct"] = pss_growth(samples, res["window_s"])
    # each half at least pss_settle_s (10 s, twice the 5 s a transaction waits in the tm table):
    # in a shorter run the first half is still filling the table, and growth is by design
    res["pss_judged"] = res["window_s"] / 2 >= float(cfg["pss_settle_s"])
    res["verdict"] = verdict(res, float(cfg["goodput_target"]), float(cfg["pss_growth_limit_pct"]))
    opts.log(f"    overload: {describe(res)}")
    return res


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def describe(res: dict) -> str:
    """One line: the verdict, then the figures it is judged on."""
    word = {True: "PASS", False: "FAIL", None: "not judged"}[res["verdict"]["pass"]]
    ratio = res["goodput_ratio"]
    growth = res.get("pss_growth_pct")
    return (f"{word}: offered {res['offered_rate']}/s, sent {res['achieved_send_rate']}/s; goodput "
            f"{res['goodput']}/s = {'–' if ratio is None else f'{ratio:.1%}'} of {res['base_rate']}/s; "
            f"answers 200 {res['answer_200']}, 500 {res['answer_500']}, 503 {res['answer_503']}, "
            f"other {res['answer_other']}; unanswered {res['unanswered']}"
            f"{', failed ' + str(res['failed_other']) if res['failed_other'] else ''}"
            f"{', open ' + str(res['open']) if res['open'] else ''}; "
            f"{res['retransmissions']} retrans; PSS {res['pss_idle_mb']} -> max {res['pss_max_mb']}, "
            f"end {res['pss_end_mb']} MB ({'–' if growth is None else f'{growth:+.1f} %'} 2nd half"
            f"{'' if res.get('pss_judged', True) else ', not judged: too short'})")
