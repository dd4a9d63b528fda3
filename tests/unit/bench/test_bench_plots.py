"""PNG plots (bench/plots.py): a CDF per latency case, a histogram per timer case."""
import pytest

from bench import plots


def test_without_matplotlib_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "available", lambda: False)
    results = [{"case": "c", "server": "asyncd", "latency": {"_raw_ms": [1.0]}}]
    assert plots.make_plots(results, tmp_path) == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not plots.available(), reason="matplotlib not installed (extra 'plot')")
def test_one_png_per_case_with_samples(tmp_path):
    results = [
        {"case": "lat", "server": "asyncd", "latency": {"_raw_ms": [0.1, 0.2, 0.3, 5.0]}},
        {"case": "lat", "server": "kamailio", "latency": {"_raw_ms": [0.05, 0.1, 0.2]}},
        {"case": "timer", "server": "asyncd",
         "latency": {"nominal_ms": 100, "_raw_ms": [100.5, 101.0, 102.0]}},
        {"case": "timer", "server": "kamailio", "latency": {"nominal_ms": 100, "_raw_ms": [100.2, 109.0]}},
        {"case": "nolat", "server": "asyncd", "status": "start failed"},
    ]
    files = plots.make_plots(results, tmp_path)
    assert sorted(p.name for p in files) == ["lat.png", "timer.png"]
    for p in files:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
