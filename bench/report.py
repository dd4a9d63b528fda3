"""Results as JSON and as markdown tables, with asyncd/Kamailio ratios.

Runs in: the bench harness process.

Ratios are computed only between results of the same run (same machine,
same minute, same load), never against figures from another run. A ratio
> 1 means asyncd's number is larger: better for rates, worse for
latency, CPU and memory.
"""
import json
from pathlib import Path
from typing import Optional

from bench.soak import describe_verdict, sample_unit
from bench.stats import ratio

# (key, label, getter, higher_is_better)
METRICS = (
    ("max_clean_rate", "max clean rate /s", lambda r: (r.get("sipp") or {}).get("max_clean_rate"), True),
    ("latency_p50_ms", "latency p50 ms", lambda r: _lat(r, "p50"), False),
    ("latency_p99_ms", "latency p99 ms", lambda r: _lat(r, "p99"), False),
    ("abs_delay_err_p50_ms", "abs delay error p50 ms", lambda r: _delay(r, "p50"), False),
    ("abs_delay_err_max_ms", "abs delay error max ms", lambda r: _delay(r, "max"), False),
    ("data_clean_rate", "max clean data rate /s", lambda r: (r.get("throughput") or {}).get("max_clean_rate"),
     True),
    ("cpu_ms_per_req", "server CPU ms/req", lambda r: cpu_per_req(r), False),
    ("pss_max_mb", "PSS MB", lambda r: r.get("pss_max_mb"), False),
)


def _lat(r, p):
    lat = r.get("latency") or {}
    if "delay_error_ms" in lat:
        return None
    return (lat.get("latency_ms") or {}).get(p)


def _delay(r, p):
    """Absolute error: Kamailio's seconds timer resumes early as well as late."""
    return ((r.get("latency") or {}).get("abs_delay_error_ms") or {}).get(p)


def cpu_per_req(r: dict) -> Optional[float]:
    """Server CPU per request at a fixed load that both servers got alike."""
    for part in ("latency", "throughput"):
        v = (r.get(part) or {}).get("server_cpu_ms_per_req")
        if v is not None:
            return v
    best = (r.get("sipp") or {}).get("at_best") or {}
    return best.get("server_cpu_ms_per_call")


def compute_ratios(results: list) -> list:
    by_case = {}
    for r in results:
        by_case.setdefault(r["case"], {})[r["server"]] = r
    rows = []
    for case, servers in by_case.items():
        a, k = servers.get("asyncd"), servers.get("kamailio")
        if not a or not k or a["status"] != "ok" or k["status"] != "ok":
            continue
        row = {"case": case}
        for key, _, get, _ in METRICS:
            v = ratio(get(a), get(k))
            if v is not None:
                row[key] = v
        bounds = {}
        for key, part in (("max_clean_rate", "sipp"), ("data_clean_rate", "throughput")):
            # A search whose every step was clean found a floor, not the maximum.
            a_open = _open_top(a, part)
            k_open = _open_top(k, part)
            if key in row and a_open != k_open:
                bounds[key] = "≥" if a_open else "≤"
        if bounds:
            row["bounds"] = bounds
        rows.append(row)
    return rows


def _open_top(r: dict, part: str) -> bool:
    s = r.get(part) or {}
    return bool(s.get("steps")) and s.get("ceiling") is None and bool(s.get("max_clean_rate"))


def strip_raw(results: list) -> list:
    out = []
    for r in results:
        r2 = dict(r)
        if isinstance(r2.get("latency"), dict):
            r2["latency"] = _no_raw(r2["latency"])
        if r2.get("latency_at"):
            r2["latency_at"] = [_no_raw(x) for x in r2["latency_at"]]
        out.append(r2)
    return out


def _no_raw(d: dict) -> dict:
    return {k: v for k, v in d.items() if not k.startswith("_")}


def write_json(doc: dict, path: Path) -> None:
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")


def _fmt(v, nd=2):
    if v is None:
        return "–"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.{nd}f}".rstrip("0").rstrip(".") if nd else f"{v:.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _fmt_ratio(v) -> str:
    return "–" if v is None else f"{v:.3g}"


def _lat_cell(r: dict) -> str:
    return _lat_text(r.get("latency") or {})


def _lat_text(lat: dict) -> str:
    s = lat.get("delay_error_ms") or lat.get("latency_ms")
    if not s:
        return "–"
    cell = " / ".join(_fmt(s[p], 3) for p in ("min", "p50", "p90", "p99", "max"))
    if lat.get("unanswered"):
        cell += f" ({lat['unanswered']} unanswered)"
    if lat.get("warmup_max_ms") is not None:
        cell += f" (warm-up ×{lat['warmup']}: max {_fmt(lat['warmup_max_ms'], 3)})"
    return cell


def _rate_cell(r: dict) -> str:
    s = r.get("sipp")
    if not s:
        return "–"
    if "error" in s:            # e.g. stock_call's registration before the search
        return s["error"]
    if not s.get("steps"):
        return "not run"
    best = s.get("max_clean_rate") or 0
    ceil = s.get("ceiling")
    cell = _fmt(best) if best else "none clean"
    if (s.get("at_best") or {}).get("repeat_of_marginal_failure"):
        cell += "†"
    if ceil:
        cell += f" (fails at {_fmt(ceil)})"
    else:
        cell += " (all steps clean)"
    return cell


def _thr_cell(r: dict) -> str:
    t = r.get("throughput")
    if not t:
        return "–"
    if "error" in t:
        return t["error"]
    if not t.get("steps"):
        return "not run"
    best = t.get("max_clean_rate") or 0
    cell = f"{_fmt(best)}/s all delivered" if best else "none clean"
    if (t.get("at_best") or {}).get("repeat_of_marginal_failure"):
        cell += "†"
    ceil = t.get("ceiling")
    if ceil:
        failing = next((s for s in t["steps"] if s["rate"] == ceil), {})
        cell += f" (fails at {_fmt(ceil)}: {', '.join(failing.get('reasons', []))})"
    else:
        cell += " (all steps clean)"
    return cell


def server_cell(r: dict) -> str:
    """The server and the shared memory it ran at: "asyncd (-m 64)" (results recorded before
    the per-server -m existed: the name alone)."""
    return f"{r['server']} (-m {r['mem_mb']})" if r.get("mem_mb") else r["server"]


def _status_cell(r: dict) -> str:
    if r["status"] == "ok":
        return "ok" + (" (cut short)" if r.get("cut_short") else "")
    reason = (r.get("reason") or "").replace("|", "/")
    return f"{r['status']}: {reason}" if reason else r["status"]


def markdown(doc: dict) -> str:
    meta = doc["meta"]
    m = meta["machine"]
    lines = [
        f"Run {meta['started']} ({meta['mode']} mode, suite `{meta['suite']}`, {meta['duration_s']:.0f} s) "
        f"on {m['cpu_count']} × {m['cpu_model']}, {m['memory_gib']} GiB, Linux {m['kernel']}; "
        f"Python {m['python']}; commit `{m['commit']}`; Kamailio {meta.get('kamailio_version') or '–'}; "
        f"{(meta.get('sipp_version') or 'SIPp –').rstrip('.')}. Load average (1/5/15 min) "
        f"before {_loads(meta.get('loadavg_before'))}, after {_loads(meta.get('loadavg_after'))}.",
        "",
        "| case | server | status | max clean rate /s "
        "| latency or delay error ms (min / p50 / p90 / p99 / max) "
        "| async data | server CPU ms/req | SIPp CPU s (best step) | PSS MB (max) "
        "| kernel UDP drops (latency run + best steps) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["results"]:
        sipp_cpu = ((r.get("sipp") or {}).get("at_best") or {}).get("sipp_cpu_s")
        drops = _drops(r)
        lines.append(f"| {r['case']} | {server_cell(r)} | {_status_cell(r)} | {_rate_cell(r)} "
                     f"| {_lat_cell(r)} "
                     f"| {_thr_cell(r)} | {_fmt(cpu_per_req(r), 3)} | {_fmt(sipp_cpu)} "
                     f"| {_fmt(r.get('pss_max_mb'), 1)} | {_fmt(drops)} |")
    if any(((r.get(part) or {}).get("at_best") or {}).get("repeat_of_marginal_failure")
           for r in doc["results"] for part in ("sipp", "throughput")):
        lines += ["", "† clean on a repeat: the first run of that step failed only marginally (SIPp: "
                      "≤ 0.1 % retransmissions, no failed call; data: everything delivered but the "
                      "harness's sender fell behind or ≤ 0.1 % replies late), so it was run once more."]
    if doc.get("ratios"):
        keys = [(k, label) for k, label, _, _ in METRICS if any(k in row for row in doc["ratios"])]
        lines += ["", "Ratios asyncd / Kamailio, same run (rates: higher is better for asyncd; "
                  "latency, delay error, CPU, PSS: lower is better; ≤/≥: one server was clean "
                  "at every step, so its maximum is only a floor):", "",
                  "| case | " + " | ".join(label for _, label in keys) + " |",
                  "|---|" + "---|" * len(keys)]
        for row in doc["ratios"]:
            b = row.get("bounds", {})
            cells = [b.get(k, "") + _fmt_ratio(row.get(k)) if k in row else "–" for k, _ in keys]
            lines.append(f"| {row['case']} | " + " | ".join(cells) + " |")
    if any(r.get("latency_at") for r in doc["results"]):
        lines += [""] + fixed_rate_markdown(doc["results"])
    for r in doc["results"]:
        if r.get("soak"):
            lines += [""] + soak_markdown(r)
    if any(r.get("overload") for r in doc["results"]):
        lines += [""] + overload_markdown(doc["results"])
    return "\n".join(lines) + "\n"


def overload_markdown(results: list) -> list:
    """One row per overload run (bench/overload.py): offer, goodput, every answer, PSS, verdict."""
    lines = ["Overload (SIPp OPTIONS at a multiple of the server's max clean rate; goodput: 200s "
             "received while the load was offered, per second; unanswered: no final answer after "
             "SIPp's retransmissions; PSS: before the load / max during it / after SIPp ended, and "
             "the 2nd half's max against the 1st half's):", "",
             "| case | server | max clean rate /s (base) | offered /s | sent /s | goodput /s "
             "| goodput / max clean | 200 | 500 | 503 | other | unanswered | retrans "
             "| server CPU s (ms/req) | PSS MB | UDP drops | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        o = r.get("overload")
        if not o:
            continue
        if "error" in o:
            lines.append(f"| {r['case']} | {server_cell(r)} | {o['error']} |" + " – |" * 14)
            continue
        lines.append(_overload_row(r, o))
    return lines


def _overload_row(r: dict, o: dict) -> str:
    v = o["verdict"]
    checks = v["checks"]
    word = {True: "PASS", False: "FAIL", None: "not judged"}[v["pass"]]
    failed = [k for k, ok in checks.items() if ok is False]
    verdict = word + (f" ({', '.join(failed)})" if failed else "")
    ratio = "–" if o["goodput_ratio"] is None else f"{o['goodput_ratio']:.1%}"
    ratio += " ✓" if checks["goodput"] else " ✗"
    unanswered = _fmt(o["unanswered"]) + "".join(
        f" (+{_fmt(o[k])} {k.replace('_other', '')})" for k in ("failed_other", "open") if o[k])
    source = o["base_source"]
    given = " (given)" if not source.startswith("the search") else " (floor)" if "floor" in source else ""
    growth = "–" if o.get("pss_growth_pct") is None else f"{o['pss_growth_pct']:+.1f} %"
    if not o.get("pss_judged", True):
        growth += ", too short to judge"
    cpu = f"{_fmt(o['server_cpu_s'])} ({_fmt(o['server_cpu_ms_per_req'], 3)})"
    pss = f"{_fmt(o['pss_idle_mb'], 1)} / {_fmt(o['pss_max_mb'], 1)} / {_fmt(o['pss_end_mb'], 1)} ({growth})"
    drops = (o.get("udp_drops") or {}).get("RcvbufErrors")
    return (f"| {r['case']} | {server_cell(r)} | {_fmt(o['base_rate'])}{given} | {_fmt(o['offered_rate'])} "
            f"| {_fmt(o['achieved_send_rate'])} | {_fmt(o['goodput'])} | {ratio} "
            f"| {_fmt(o['answer_200'])} | {_fmt(o['answer_500'])} | {_fmt(o['answer_503'])} "
            f"| {_fmt(o['answer_other'])} | {unanswered} | {_fmt(o['retransmissions'])} | {cpu} "
            f"| {pss} | {_fmt(drops)} | {verdict} |")


def fixed_rate_markdown(results: list) -> list:
    """One row per latency run of the cases that ran at several rates (`latency_at`)."""
    lines = ["Latency runs at fixed rates (built-in sender, after its warm-up; server CPU "
             "and PSS of that run):", "",
             "| case | server | rate /s | answered | latency ms (min / p50 / p90 / p99 / max) "
             "| server CPU ms/req | PSS MB |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        for x in r.get("latency_at") or ():
            lines.append(f"| {r['case']} | {server_cell(r)} | {_fmt(x['rate'])} "
                         f"| {_fmt(x['answered'])}/{_fmt(x['sent'])} | {_lat_text(x)} "
                         f"| {_fmt(x['server_cpu_ms_per_req'], 3)} | {_fmt(x['pss_mb'], 1)} |")
    return lines


def soak_markdown(r: dict) -> list:
    """A soak's samples as a table, and its verdict (bench/soak.py)."""
    s = r["soak"]
    uas = f" to a SIPp UAS ({s['uas']})" if s.get("uas") else ""
    source = f" (rate: {s['rate_source']})" if s.get("rate_source") else ""
    unit = sample_unit(s["sample_s"])
    lines = [f"Soak `{r['case']}` on {server_cell(r)}: SIPp {s['scenario']}{uas} at {_fmt(s['rate'])}/s "
             f"for {_fmt(s['duration_s'])} s{source}; achieved {_fmt(s['achieved_rate'])}/s, "
             f"{_fmt(s['calls'])} calls, SIPp exit {s['sipp_rc']}; a sample every {_fmt(s['sample_s'])} s "
             "(0: idle, before the load; end: after SIPp exited).", "",
             f"| {unit} | t s | calls ok | failed | retrans | PSS MB | PSS own MB | fds | processes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for x in s["samples"]:
        at = "end" if x["minute"] is None else str(x["minute"])
        lines.append(f"| {at} | {_fmt(x['t_s'], 1)} | {_fmt(x['successful'])} | {_fmt(x['failed'])} "
                     f"| {_fmt(x['retransmissions'])} | {x['pss_mb']:.1f} "
                     f"| {_own(x)} | {x['fds']} | {x['processes']} |")
    lines += ["", f"Verdict: {describe_verdict(s['verdict'], unit)}"]
    return lines


def _loads(v) -> str:
    return "/".join(f"{x:g}" for x in v) if v else "–"


def _drops(r: dict) -> Optional[int]:
    """Receive-buffer drops under the loads the table reports: the latency run and the
    best clean step of each search (the JSON keeps every step's, failing ones too)."""
    parts = [(r.get("latency") or {}).get("udp_drops")]
    for part in ("sipp", "throughput"):
        parts.append(((r.get(part) or {}).get("at_best") or {}).get("udp_drops"))
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    return sum(p.get("RcvbufErrors", 0) for p in parts)


def _own(sample):
    """A soak sample's own-pages PSS (samples recorded before it existed: –)."""
    v = sample.get("pss_own_mb")
    return "–" if v is None else f"{v:.1f}"
