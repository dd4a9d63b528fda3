"""The bench command line: ``python -m bench run SUITE`` and ``python -m bench list``.

Runs in: the bench harness process.

    python -m bench list
    python -m bench run full --server both            # the full table (about 10-13 min)
    python -m bench run quick --server asyncd --quick # seconds: the CI smoke run
    python -m bench run soak --server asyncd          # opt-in: 2 x 30 min at half the max clean rate
    python -m bench run tcp --server both             # the TCP cases (SIPp -t t1) beside Kamailio
    python -m bench run overload --server both        # 2x each server's max clean rate for 30 s
    python -m bench run overload --server asyncd --overload-base 2000 --duration 5   # a quick look
    python -m bench run stateless --fixed-rates 1000,3000  # latency runs at these rates, no search
    python -m bench report bench/results/<run>/results.json

Each run writes ``results.json`` (machine, Python, commit, Kamailio and
SIPp versions, every measure), ``results.md`` (the tables, also printed)
and, when matplotlib is installed, one PNG per case with latency samples,
into ``--out`` (default ``bench/results/<UTC time>-<suite>``, git-ignored). Traffic goes
to 127.0.0.1 only; every server and SIPp the run starts, it stops.
"""
import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

from bench import cases as cases_mod
from bench import plots, report, runner
from bench.servers import REPO, asyncd_version, kamailio_version
from bench.sipp import sipp_binary, sipp_version
from bench.sysstats import machine_info

DEFAULT_BUDGET_S = 840.0


def cmd_list(args) -> int:
    cases = cases_mod.load_cases()
    suites = cases_mod.load_suites(cases=cases)
    print("Suites:")
    for name, s in suites.items():
        if name in cases and s["cases"] == [name]:
            continue
        extra = f" (missing: {', '.join(s['missing'])})" if s.get("missing") else ""
        print(f"  {name:<14} {', '.join(s['cases'])}{extra}")
        if s.get("description"):
            print(f"  {'':<14} {s['description']}")
    print("\nCases (each is also a suite of one):")
    w = max(len(n) for n in cases) + 1
    for name, c in cases.items():
        servers = ", ".join(c.servers)
        print(f"  {name:<{w}} {c.title}{' (opt-in: not in all)' if c.opt_in else ''}")
        print(f"  {'':<{w}} cfg {c.cfg.name}; servers: {servers}; -m {describe_mem(c)}; "
              f"{c.describe_load()}")
        if c.note:
            print(f"  {'':<{w}} note: {c.note}")
    return 0


def describe_mem(c) -> str:
    """A case's -m: "256" for both servers, or "64 (asyncd), 1024 (kamailio)"."""
    if not isinstance(c.mem_mb, dict):
        return str(c.mem_mb)
    return ", ".join(f"{c.mem_mb[s]} ({s})" for s in c.servers)


def soak_overrides(args) -> dict:
    """The soak settings given on the command line (only those given)."""
    over = {"rate": args.rate, "duration_s": args.duration, "sample_s": args.sample_s}
    if args.rate is not None:      # the case's own source describes its default, not this rate
        over["rate_source"] = "--rate on the command line"
    return {k: v for k, v in over.items() if v is not None}


def overload_overrides(args) -> dict:
    """The overload settings given on the command line: --rate, --duration, --sample-s as for
    soaks, and --overload-base (the base rate instead of a search)."""
    over = {"rate": args.rate, "duration_s": args.duration, "sample_s": args.sample_s,
            "base_rate": args.overload_base}
    return {k: v for k, v in over.items() if v is not None}


def default_budget(cases: list, servers: list) -> float:
    """840 s (a run stays under 15 minutes), plus the length of every soak and overload run it
    will make: each is one long step, and the budget must not skip the second server's."""
    long_runs = 0.0
    for c in cases:
        n = len(set(servers) & set(c.servers))
        if c.soak:
            long_runs += float(c.soak["duration_s"]) * n
        if c.overload:
            o = c.overload
            long_runs += (float(o["duration_s"]) + o["recv_timeout_ms"] / 1000 + o["cooldown_s"]) * n
    return DEFAULT_BUDGET_S + long_runs


def rate_list(text: str) -> list:
    """--fixed-rates 1000,3000 -> [1000, 3000]"""
    try:
        rates = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of calls/s: {text!r}") from None
    if not rates or min(rates) <= 0:
        raise argparse.ArgumentTypeError(f"not a list of calls/s: {text!r}")
    return rates


def cmd_run(args) -> int:
    try:
        selected = cases_mod.resolve_suite(args.suite)
    except KeyError as e:
        print(e.args[0], file=sys.stderr)
        return 2
    servers = ["asyncd", "kamailio"] if args.server == "both" else [args.server]
    started = dt.datetime.now(dt.timezone.utc)
    stamp = f"{started:%Y%m%dT%H%M%SZ}-{args.suite}"
    out = Path(args.out) if args.out else REPO / "bench" / "results" / stamp
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    needs_sipp = any(c.sipp or c.soak or c.overload for c in selected)
    if needs_sipp and not sipp_binary():
        print("note: sipp not found: SIPp clean-rate searches, soaks and overload runs are skipped",
              file=sys.stderr)
        for c in selected:
            c.sipp = c.soak = c.overload = None
    over, over_load = soak_overrides(args), overload_overrides(args)
    effective = [c.for_mode(args.quick).with_soak(over).with_overload(over_load)
                 .with_fixed_rates(args.fixed_rates) for c in selected]
    budget_s = args.budget if args.budget is not None else default_budget(effective, servers)
    opts = runner.RunOptions(servers=servers, quick=args.quick, workdir=work.resolve(),
                             budget=runner.Budget(budget_s), step_s=args.step_s, soak=over,
                             overload=over_load,
                             fixed_rates=args.fixed_rates)
    opts.log(f"bench: suite {args.suite} ({len(selected)} cases) on {', '.join(servers)}"
             f"{' (quick)' if args.quick else ''}; results in {out}")
    t0 = time.monotonic()
    load_before = [round(x, 2) for x in os.getloadavg()]
    results = runner.run_cases(selected, opts)
    meta = {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"), "suite": args.suite,
        "mode": "quick" if args.quick else "full", "servers": servers,
        "duration_s": round(time.monotonic() - t0, 1), "budget_s": budget_s,
        "loadavg_before": load_before, "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "machine": machine_info(REPO), "kamailio_version": kamailio_version(),
        "sipp_version": sipp_version(), "asyncd_version": asyncd_version(),
    }
    doc = {"meta": meta,
           "cases": [{"name": c.name, "title": c.title, "cfg": c.cfg.name, "servers": list(c.servers),
                      "note": c.note, "mem_mb": c.mem_mb, "transport": c.transport,
                      "load": c.describe_load()} for c in effective],
           "results": report.strip_raw(results), "ratios": report.compute_ratios(results)}
    pngs = []
    if not args.no_plots:
        if plots.available():
            pngs = plots.make_plots(results, out)
        else:
            opts.log("note: matplotlib not installed (pip install 'asyncd[plot]'): no plots")
    doc["plots"] = [p.name for p in pngs]
    report.write_json(doc, out / "results.json")
    md = report.markdown(doc)
    (out / "results.md").write_text(md)
    print(md)
    opts.log(f"bench: done in {meta['duration_s']:.0f} s; wrote {out / 'results.json'}, "
             f"{out / 'results.md'}" + (f" and {len(pngs)} plots" if pngs else ""))
    return 0


def cmd_report(args) -> int:
    """Re-render the tables (and ratios) of a results.json, e.g. after a report change."""
    doc = json.loads(Path(args.results).read_text())
    doc["ratios"] = report.compute_ratios(doc["results"])
    print(report.markdown(doc))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description="asyncd benchmark harness "
                                 "(same cfg and load against asyncd and Kamailio)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list suites and cases")
    rp = sub.add_parser("report", help="print the tables of a results.json again")
    rp.add_argument("results")
    r = sub.add_parser("run", help="run a suite (or a single case)")
    r.add_argument("suite")
    r.add_argument("--server", choices=("asyncd", "kamailio", "both"), default="both")
    r.add_argument("--quick", action="store_true", help="seconds-long steps and few requests (CI)")
    r.add_argument("--out", help="output directory (default bench/results/<time>-<suite>)")
    r.add_argument("--budget", type=float, default=None,
                   help="stop starting new steps after this many seconds (default 840: with the "
                        "step in progress, a run stays under 15 minutes; plus the soak durations)")
    r.add_argument("--step-s", type=float, default=None, help="override the SIPp step length (s)")
    r.add_argument("--rate", type=int, default=None,
                   help="soak cases: calls/s (default: each case's own, half its recorded max clean "
                        "rate); overload cases: the rate offered (default: factor x the base rate)")
    r.add_argument("--duration", type=float, default=None,
                   help="soak cases: seconds of load per case (default 1800); overload cases: "
                        "seconds of overload (default 30)")
    r.add_argument("--sample-s", type=float, default=None,
                   help="soak cases: seconds between samples (default 60; the verdict starts at "
                        "the second sample); overload cases: between PSS samples (default 2)")
    r.add_argument("--overload-base", type=int, default=None, metavar="R",
                   help="overload cases: take R calls/s as the max clean rate (both servers) "
                        "instead of searching for it")
    r.add_argument("--fixed-rates", type=rate_list, default=None, metavar="R1,R2,...",
                   help="run each case's latency phase (built-in sender, as long as its own) once "
                        "at each of these rates, and no SIPp clean-rate search: a same-run "
                        "comparison at given loads")
    r.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)
    return {"list": cmd_list, "report": cmd_report, "run": cmd_run}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
