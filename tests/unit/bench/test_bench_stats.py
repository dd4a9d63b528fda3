"""Percentile maths, summaries and the clean-rate search (bench/stats.py)."""
import statistics

import pytest
from hypothesis import given, settings, strategies as st

from bench import stats
from bench.stats import StepOutcome, percentile, search_clean_rate, summarize


def test_percentile_known_values():
    s = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert percentile(s, 0) == 1
    assert percentile(s, 100) == 10
    assert percentile(s, 50) == 5.5
    assert percentile(s, 90) == pytest.approx(9.1)
    assert percentile([7], 99) == 7
    assert percentile([1, 3], 25) == 1.5


def test_percentile_rejects_bad_input():
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1, 2], 101)
    with pytest.raises(ValueError):
        percentile([1, 2], float("nan"))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=-10**6, max_value=10**6), min_size=2, max_size=300),
       st.integers(min_value=1, max_value=99))
def test_percentile_matches_statistics_inclusive(values, p):
    s = sorted(values)
    expected = statistics.quantiles(s, n=100, method="inclusive")[p - 1]
    assert percentile(s, p) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert s[0] <= percentile(s, p) <= s[-1]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=200))
def test_summary_is_ordered(values):
    out = summarize(values)
    assert out["count"] == len(values)
    assert out["min"] <= out["p50"] <= out["p90"] <= out["p99"] <= out["max"]
    assert out["min"] == round(min(values), 3) and out["max"] == round(max(values), 3)


def test_summarize_scales_and_handles_empty():
    assert summarize([]) is None
    out = summarize([1000, 2000, 3000], scale=1e-3)
    assert (out["min"], out["p50"], out["max"], out["mean"]) == (1.0, 2.0, 3.0, 2.0)


def test_cdf_points_end_at_one_and_are_thinned():
    pts = stats.cdf_points(list(range(10000)), max_points=100)
    assert len(pts) <= 102
    assert pts[-1] == (9999, 1.0)
    assert all(a[1] < b[1] for a, b in zip(pts, pts[1:]))


def _threshold_probe(threshold, calls):
    def probe(rate):
        calls.append(rate)
        return StepOutcome(rate=rate, clean=rate <= threshold, data={"rate": rate})
    return probe


def test_search_stops_at_first_unclean_step():
    calls = []
    res = search_clean_rate([1000, 2000, 5000, 10000], _threshold_probe(3000, calls))
    assert calls == [1000, 2000, 5000]          # never tries 10000 once 5000 failed
    assert res.max_clean_rate == 2000 and res.ceiling == 5000


def test_search_refines_between_clean_and_failing():
    calls = []
    res = search_clean_rate([1000, 2000, 5000, 10000], _threshold_probe(3000, calls),
                            refine=2, quantum=100)
    assert calls == [1000, 2000, 5000, 3500, 2800]
    assert res.max_clean_rate == 2800 and res.ceiling == 3500


def test_search_all_clean_and_none_clean():
    res = search_clean_rate([300, 100, 200], _threshold_probe(10**9, []), refine=3)
    assert [s.rate for s in res.steps] == [100, 200, 300]   # sorted, no refinement without a failure
    assert res.max_clean_rate == 300 and res.ceiling is None
    res = search_clean_rate([100, 200], _threshold_probe(40, []), refine=1, quantum=10)
    assert res.best is None and res.max_clean_rate == 0 and res.ceiling == 50
    assert [s.rate for s in res.steps] == [100, 50]          # bisects down from zero
    res = search_clean_rate([100, 200], _threshold_probe(50, []), refine=1, quantum=10)
    assert res.max_clean_rate == 50 and res.ceiling == 100


def test_search_honours_should_stop():
    calls = []
    res = search_clean_rate([1, 2, 3, 4], _threshold_probe(10, calls), should_stop=lambda: len(calls) >= 2)
    assert calls == [1, 2] and res.max_clean_rate == 2


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=50000), min_size=1, max_size=8),
       st.integers(min_value=0, max_value=60000), st.integers(min_value=0, max_value=4))
def test_search_brackets_a_monotone_threshold(rates, threshold, refine):
    res = search_clean_rate(rates, _threshold_probe(threshold, []), refine=refine, quantum=100)
    assert res.max_clean_rate <= threshold
    if res.ceiling is not None:
        assert res.ceiling > threshold
        assert res.max_clean_rate < res.ceiling
    else:
        assert res.max_clean_rate == max(rates)


def test_ratio():
    assert stats.ratio(3, 2) == 1.5
    assert stats.ratio(0.745, 131.0) == 0.00569          # significant digits, not decimals
    assert stats.ratio(17500, 12500) == 1.4
    assert stats.ratio(1, 0) is None
    assert stats.ratio(None, 2) is None


def test_a_marginal_failure_is_repeated_once_and_the_repeat_decides():
    calls = []
    flaky = {2000: [False, True], 5000: [False, False]}     # first try, repeat

    def probe(rate):
        calls.append(rate)
        seq = flaky.get(rate)
        clean = seq.pop(0) if seq else rate < 5000
        return StepOutcome(rate=rate, clean=clean, data={"rate": rate, "marginal": True})
    res = search_clean_rate([1000, 2000, 5000], probe, retry_if=lambda o: o.data["marginal"])
    assert calls == [1000, 2000, 2000, 5000, 5000]
    assert res.max_clean_rate == 2000 and res.ceiling == 5000
    assert res.best.data["repeat_of_marginal_failure"] is True
    assert [s.clean for s in res.steps] == [True, False, True, False, False]
    calls.clear()
    res = search_clean_rate([1000, 5000], _threshold_probe(1000, calls), retry_if=lambda o: False)
    assert calls == [1000, 5000]                            # no repeat unless asked
