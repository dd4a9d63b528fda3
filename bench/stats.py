"""Percentiles, summaries and the clean-rate search.

Runs in: the bench harness process (no server, no network here: pure maths
so the search and the numbers can be tested on their own).

Percentiles use linear interpolation between closest ranks (the "inclusive"
definition: numpy's default ``linear`` method, ``statistics.quantiles(...,
method="inclusive")``), so p0 is the minimum and p100 the maximum and a
percentile never lies outside the observed values.
"""
import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

SUMMARY_POINTS = (("min", 0.0), ("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("max", 100.0))


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """p in [0, 100] of an already sorted, non-empty sequence."""
    n = len(sorted_values)
    if n == 0:
        raise ValueError("percentile of no values")
    if not 0.0 <= p <= 100.0 or math.isnan(p):
        raise ValueError(f"percentile {p!r} outside 0..100")
    if n == 1:
        return float(sorted_values[0])
    pos = (n - 1) * p / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    a, b = sorted_values[lo], sorted_values[hi]
    # a + (b - a) * frac loses nothing when a == b and stays inside [a, b].
    return float(a + (b - a) * frac) if frac else float(a)


def summarize(values: Sequence[float], scale: float = 1.0, ndigits: int = 3) -> Optional[dict]:
    """min/p50/p90/p99/max (+count, mean) of values multiplied by scale; None if empty."""
    if not values:
        return None
    s = sorted(values)
    out = {"count": len(s)}
    for name, p in SUMMARY_POINTS:
        out[name] = round(percentile(s, p) * scale, ndigits)
    out["mean"] = round(sum(s) / len(s) * scale, ndigits)
    return out


def cdf_points(values: Sequence[float], max_points: int = 400) -> list:
    """(value, fraction <= value) pairs, thinned to at most max_points, for plots."""
    s = sorted(values)
    n = len(s)
    if n == 0:
        return []
    step = max(1, n // max_points)
    pts = [(s[i], (i + 1) / n) for i in range(0, n, step)]
    if pts[-1][1] != 1.0:
        pts.append((s[-1], 1.0))
    return pts


@dataclass
class StepOutcome:
    """One load step: the target rate, whether it was clean, and its measures."""
    rate: int
    clean: bool
    data: dict = field(default_factory=dict)


@dataclass
class SearchResult:
    steps: list            # every StepOutcome in the order run
    best: Optional[StepOutcome]  # the highest clean step, None if none was clean
    ceiling: Optional[int]  # the lowest rate that failed, None if all were clean

    @property
    def max_clean_rate(self) -> int:
        return self.best.rate if self.best else 0


def round_rate(r: float, quantum: int) -> int:
    return max(quantum, int(round(r / quantum)) * quantum)


def search_clean_rate(rates: Sequence[int], probe: Callable[[int], StepOutcome],
                      refine: int = 0, quantum: int = 100,
                      should_stop: Callable[[], bool] = lambda: False,
                      retry_if: Callable[[StepOutcome], bool] = lambda out: False) -> SearchResult:
    """Step up through rates until one is not clean, then bisect `refine` times.

    A failed step ends the ladder: a higher rate would only fail harder, and
    the server then needs time to drain (Kamailio keeps each transaction for
    its wait timer). Bisection probes the midpoint between the best clean
    rate and the lowest failing one, rounded to `quantum`, and stops when the
    midpoint is no longer strictly between them. `should_stop` lets the
    caller cut the search short (time budget); steps already run still count.
    A step that failed only marginally (`retry_if`, e.g. a handful of
    retransmissions on a machine shared with other work) is run once more,
    and the repeat decides; both runs are kept in `steps`.
    """
    ladder = sorted(set(int(r) for r in rates if r > 0))
    steps = []

    def run(rate):
        out = probe(rate)
        if not out.clean and retry_if(out) and not should_stop():
            steps.append(out)
            out = probe(rate)
            out.data["repeat_of_marginal_failure"] = True
        steps.append(out)
        return out

    best = None
    ceiling = None
    for r in ladder:
        if should_stop():
            break
        out = run(r)
        if out.clean:
            best = out
        else:
            ceiling = r
            break
    lo = best.rate if best else 0
    for _ in range(refine if ceiling is not None else 0):
        if should_stop():
            break
        mid = round_rate((lo + ceiling) / 2, quantum)
        if not lo < mid < ceiling:
            break
        out = run(mid)
        if out.clean:
            best, lo = out, mid
        else:
            ceiling = mid
    return SearchResult(steps=steps, best=best, ceiling=ceiling)


def ratio(a, b, digits: int = 3):
    """a/b to `digits` significant digits (a timer ratio can be 0.005); None when either
    side is missing or b is 0."""
    if a is None or b is None:
        return None
    try:
        if b == 0:
            return None
        return float(f"{float(a) / float(b):.{digits}g}")
    except (TypeError, ValueError):
        return None
