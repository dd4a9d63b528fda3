"""PNG plots: latency CDF per server, delay histograms for the timer cases.

Runs in: the bench harness process. Needs matplotlib (the optional extra
``pip install asyncd[plot]``); without it, plotting is skipped with a note
and the tables and JSON are unaffected.
"""
from pathlib import Path


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        return False


COLORS = {"asyncd": "tab:blue", "kamailio": "tab:orange"}


def make_plots(results: list, out_dir: Path) -> list:
    """One PNG per case that has latency samples; returns the files written."""
    if not available():
        return []
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (for the log axis labels)

    by_case = {}
    for r in results:
        raw = (r.get("latency") or {}).get("_raw_ms")
        if raw:
            by_case.setdefault(r["case"], []).append((r["server"], r["latency"], raw))
    written = []
    for case, entries in by_case.items():
        timer = any("nominal_ms" in lat for _, lat, _ in entries)
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        if timer:
            nominal = entries[0][1]["nominal_ms"]
            lo = min(min(raw) for _, _, raw in entries)
            hi = max(max(raw) for _, _, raw in entries)
            bins = 60
            for server, _, raw in entries:
                ax.hist(raw, bins=bins, range=(lo, hi), alpha=0.6, label=server,
                        color=COLORS.get(server))
            ax.axvline(nominal, color="black", linestyle="--", linewidth=1, label=f"asked {nominal} ms")
            ax.set_xlabel("resume delay (ms) = reply time after the request")
            ax.set_ylabel("requests")
            ax.set_title(f"{case}: delay histogram")
        else:
            for server, _, raw in entries:
                s = sorted(raw)
                n = len(s)
                ax.plot(s, [(i + 1) / n for i in range(n)], label=server, color=COLORS.get(server))
            ax.set_xscale("log")
            fmt = matplotlib.ticker.FormatStrFormatter("%g")
            ax.xaxis.set_major_formatter(fmt)
            ax.xaxis.set_minor_formatter(fmt)
            ax.set_xlabel("latency (ms, log scale)")
            ax.set_ylabel("fraction of requests")
            ax.set_title(f"{case}: latency CDF")
            ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"{case}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
