"""PNG plots: latency CDF per server, delay histograms for the timer cases.

Runs in: the bench harness process. Needs matplotlib (the optional extra
``pip install asyncd[plot]``); without it, plotting is skipped with a note
and the tables and JSON are unaffected.
"""
from pathlib import Path


def available() -> bool:
    try:
        import matplotlib  # noqa: F401  (optional dependency: probed, not required)
        return True
    except ImportError:
        return False


COLORS = {"asyncd": "tab:blue", "kamailio": "tab:orange"}


def make_plots(results: list, out_dir: Path) -> list:
    """One PNG per case that has latency samples; returns the files written."""
    if not available():
        return []
    # optional dependency, imported only when plotting; the backend must be
    # chosen before pyplot is imported
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): optional, see above
    import matplotlib.ticker  # noqa: F401  (for the log axis labels)

    by_case = {}
    for r in results:
        raw = (r.get("latency") or {}).get("_raw_ms")
        if raw:
            by_case.setdefault(r["case"], []).append((r["server"], r["latency"], raw))
    written = []
    for case, entries in by_case.items():
        timer = any("nominal_ms" in lat for _, lat, _ in entries)
        if timer:
            fig = _timer_figure(plt, matplotlib, case, entries)
        else:
            fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
            for server, _, raw in entries:
                _cdf(ax, sorted(raw), server)
            _log_x(ax, matplotlib)
            ax.set_xlabel("latency (ms, log scale)")
            ax.set_ylabel("fraction of requests")
            ax.set_title(f"{case}: latency CDF")
            ax.legend()
        fig.tight_layout()
        path = out_dir / f"{case}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def _cdf(ax, s, server):
    n = len(s)
    ax.plot(s, [(i + 1) / n for i in range(n)], label=server, color=COLORS.get(server))


def _log_x(ax, matplotlib):
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(True, which="both", alpha=0.3)


def _timer_figure(plt, matplotlib, case, entries):
    """Left: when the replies came (histogram, both servers, the asked delay marked).
    Right: CDF of |delay error| on a log axis, where 1 ms and 500 ms both show."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    nominal = entries[0][1]["nominal_ms"]
    lo = min(min(raw) for _, _, raw in entries)
    hi = max(max(raw) for _, _, raw in entries)
    for server, _, raw in entries:
        left.hist(raw, bins=80, range=(lo, hi), alpha=0.6, label=server, color=COLORS.get(server))
        err = sorted(max(abs(v - nominal), 0.001) for v in raw)
        _cdf(right, err, server)
    left.axvline(nominal, color="black", linestyle="--", linewidth=1, label=f"asked {nominal} ms")
    left.set_xlabel("reply time after the request (ms)")
    left.set_yscale("log")
    left.set_ylabel("requests (log scale)")
    left.set_title(f"{case}: when the route resumed")
    left.legend()
    _log_x(right, matplotlib)
    right.set_xlabel("|delay error| (ms, log scale)")
    right.set_ylabel("fraction of requests")
    right.set_title(f"{case}: |resume time - asked delay|")
    right.legend()
    return fig
