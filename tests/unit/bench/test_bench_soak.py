"""The soak suite (bench/soak.py): its verdict, its registration, reading SIPp mid-run, its report.
(Running it takes half an hour per case: `python -m bench run soak --server asyncd`, never in CI.)"""
import sys
import time

import pytest

from bench import cases as cm
from bench import report, sipp, soak
from bench.__main__ import default_budget, main, soak_overrides


def sample(minute, pss, fds=40, failed=0, processes=9, ok=1000):
    return {"minute": minute, "t_s": 60.0 * (minute or 0), "successful": ok, "failed": failed,
            "retransmissions": 0, "pss_mb": pss, "fds": fds, "processes": processes}


def series(pss, fds=None, failed_at_end=0):
    """Idle sample 0, minutes 1..n, then the end sample (PSS/fds as the last minute)."""
    fds = fds or [40] * len(pss)
    out = [sample(0, 30.0, fds=38, ok=0)]
    out += [sample(k + 1, p, fds=f) for k, (p, f) in enumerate(zip(pss, fds))]
    out.append(sample(None, pss[-1], fds=fds[-1], failed=failed_at_end))
    return out


# --- the drift and the verdict ------------------------------------------------

@pytest.mark.parametrize("values, drift", [
    ([100.0, 103.0, 96.0, 101.0], -4.0),    # the largest deviation wins, with its sign
    ([100.0, 104.0, 97.0], 4.0),
    ([200.0, 200.0], 0.0),
    ([100.0, 106.5], 6.5),
    ([], None),
    ([0.0, 5.0], None),                     # no baseline to divide by
])
def test_pss_drift_is_the_largest_signed_deviation_from_the_first_value(values, drift):
    assert soak.pss_drift_pct(values) == drift


def test_a_steady_run_passes_and_minute_one_is_not_judged():
    # minute 1 is the warm-up (tm table filling, copy-on-write faults): 120 -> 170 MB is allowed
    s = series([120.0, 170.0, 171.0, 174.0, 168.0], fds=[35, 40, 40, 40, 40])
    v = soak.verdict(s)
    assert v["pass"] is True and v["checks"] == {"failed_calls": True, "pss": True, "fds": True}
    assert v["baseline_minute"] == 2 and v["baseline_pss_mb"] == 170.0
    assert v["pss_drift_pct"] == 2.35 and v["pss_min_mb"] == 168.0 and v["pss_max_mb"] == 174.0
    assert (v["fds_min"], v["fds_max"]) == (40, 40)
    assert soak.describe_verdict(v).startswith("PASS: 0 failed calls; PSS +2.35 % from minute 2")


def test_samples_are_minutes_only_at_the_default_interval():
    assert soak.sample_unit(60) == "minute" and soak.sample_unit(15.0) == "sample"
    v = soak.verdict(series([100.0, 100.0, 101.0]))
    assert "PSS +1.00 % from sample 2 (100.0 MB" in soak.describe_verdict(v, "sample")


def test_pss_growth_past_the_limit_fails():
    v = soak.verdict(series([100.0, 100.0, 103.0, 106.0]))
    assert v["pss_drift_pct"] == 6.0 and v["checks"]["pss"] is False and v["pass"] is False
    assert soak.verdict(series([100.0, 100.0, 103.0, 106.0]), limit_pct=10.0)["pass"] is True
    assert soak.verdict(series([100.0, 100.0, 95.0]))["pass"] is True       # exactly -5 %: within


def test_an_fd_more_or_less_fails():
    v = soak.verdict(series([100.0] * 4, fds=[40, 40, 41, 41]))
    assert v["checks"]["fds"] is False and v["pass"] is False
    assert "fds 40..41 (NOT flat)" in soak.describe_verdict(v)


def test_one_failed_call_fails_and_is_counted_from_the_end_sample():
    v = soak.verdict(series([100.0] * 4, failed_at_end=1))
    assert v["failed"] == 1 and v["checks"]["failed_calls"] is False and v["pass"] is False


def test_a_run_that_did_not_complete_fails():
    v = soak.verdict(series([100.0] * 4), completed=False)
    assert v["pass"] is False and "did not complete" in soak.describe_verdict(v)


def test_a_run_without_a_minute_two_is_not_judged_on_pss_and_fds():
    v = soak.verdict([sample(0, 30.0), sample(1, 100.0), sample(None, 300.0, fds=99)])
    assert v["checks"] == {"failed_calls": True, "pss": None, "fds": None}
    assert v["pass"] is None and v["baseline_minute"] is None
    assert soak.describe_verdict(v).startswith("not judged: 0 failed calls; too short")
    failed = soak.verdict([sample(0, 30.0), sample(None, 30.0, failed=3)])
    assert failed["pass"] is False        # a failed call fails a run of any length


# --- registration -------------------------------------------------------------

def test_soak_is_a_suite_of_two_opt_in_asyncd_cases():
    cases = cm.load_cases()
    suites = cm.load_suites(cases=cases)
    assert suites["soak"]["cases"] == ["soak_task_route", "soak_relay"]
    assert not suites["soak"].get("missing")
    task, relay = cases["soak_task_route"], cases["soak_relay"]
    assert task.cfg.name == "task_route.cfg" and task.soak["scenario"] == "options_uac.xml"
    assert relay.cfg.name == "relay.cfg" and relay.soak["uas"] == "uas.xml"
    assert relay.soak["scenario"] == "invite_uac.xml"
    for c in (task, relay):
        assert c.opt_in and c.servers == ("asyncd",) and c.note
        assert c.soak["duration_s"] == 1800 and c.soak["sample_s"] == 60
        assert c.soak["pss_drift_limit_pct"] == 5.0 and "docs/benchmarks.md" in c.soak["rate_source"]
        assert c.sipp is None and c.latency is None and c.throughput is None
    assert task.soak["rate"] == 8500 // 2 and relay.soak["rate"] == 3000 // 2


def test_soak_is_not_in_the_ci_suite_nor_in_full_nor_all():
    suites = cm.load_suites()
    for name in ("quick", "full", "all"):
        assert not {"soak_task_route", "soak_relay"} & set(suites[name]["cases"]), name
    assert "stateless" in suites["all"]["cases"]


def test_command_line_overrides_and_quick_mode():
    args = type("Args", (), {"rate": 100, "duration": 120.0, "sample_s": None})()
    over = soak_overrides(args)
    assert over == {"rate": 100, "duration_s": 120.0, "rate_source": "--rate on the command line"}
    case = cm.load_cases()["soak_relay"]
    c = case.for_mode(False).with_soak(over)
    assert c.soak["rate"] == 100 and c.soak["duration_s"] == 120.0 and c.soak["sample_s"] == 60
    assert c.soak["rate_source"] == "--rate on the command line"
    assert case.soak["rate"] == 1500                         # the loaded case is not modified
    assert cm.load_cases()["stateless"].with_soak(over).soak is None
    q = case.for_mode(True)
    assert q.soak["duration_s"] == 60 and q.soak["sample_s"] == 15 and q.soak["rate"] == 1500


def test_the_default_budget_leaves_room_for_every_soak_a_run_makes():
    cases = cm.resolve_suite("soak")
    assert default_budget(cases, ["asyncd"]) == 840 + 2 * 1800
    assert default_budget(cases, ["kamailio"]) == 840          # asyncd-only cases: not run
    assert default_budget(cm.resolve_suite("quick"), ["asyncd", "kamailio"]) == 840


def test_list_shows_the_soak_suite(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "soak_task_route, soak_relay" in out and "opt-in" in out


# --- SIPp's counters while it runs --------------------------------------------

HEADER = "StartTime;CurrentTime;TotalCallCreated;SuccessfulCall(C);FailedCall(C);Retransmissions(C);\n"


def row(t, ok, failed):
    return f"2026-11-26\t07:00:00\t{1000.0};2026-11-26\t07:00:00\t{1000.0 + t};{ok};{ok};{failed};0;\n"


def test_progress_is_the_last_complete_row(tmp_path):
    p = tmp_path / "uac.csv"
    p.write_text(HEADER + "".join(row(t, t * 100, t // 30) for t in range(1, 91)) + "2026-11-26\t07:0")
    t = sipp.read_stat_progress(p)
    assert (t.successful, t.failed, t.elapsed_s) == (9000, 3, 90.0)
    small = sipp.read_stat_progress(p, window=300)            # the window starts inside a row
    assert (small.successful, small.failed) == (9000, 3)


def test_progress_of_a_file_not_yet_written(tmp_path):
    assert sipp.read_stat_progress(tmp_path / "none.csv").successful == 0
    (tmp_path / "h.csv").write_text(HEADER)
    assert sipp.read_stat_progress(tmp_path / "h.csv").successful == 0
    (tmp_path / "half.csv").write_text(HEADER[:20])
    assert sipp.read_stat_progress(tmp_path / "half.csv").successful == 0


def test_running_does_not_reap_so_finish_still_gets_the_exit_status(tmp_path):
    proc = sipp.SippProcess([sys.executable, "-c", "raise SystemExit(3)"], str(tmp_path / "s.csv"),
                            str(tmp_path / "log"), cwd=str(tmp_path))
    deadline = time.monotonic() + 60
    while proc.running() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not proc.running()
    assert proc.finish(timeout_s=5).returncode == 3


# --- the report -----------------------------------------------------------------

def test_markdown_shows_the_series_and_the_verdict():
    samples = series([120.0, 170.0, 171.0])
    result = {"case": "soak_task_route", "server": "asyncd", "status": "ok", "reason": "",
              "pss_max_mb": 171.0,
              "soak": {"scenario": "options_uac.xml", "uas": None, "rate": 4250, "rate_source": "half",
                       "duration_s": 180, "sample_s": 60, "calls": 765000, "achieved_rate": 4249.9,
                       "sipp_rc": 0, "samples": samples, "verdict": soak.verdict(samples)}}
    doc = {"meta": {"started": "t", "mode": "full", "suite": "soak", "duration_s": 190.0,
                    "machine": {"cpu_count": 2, "cpu_model": "cpu", "memory_gib": 1, "kernel": "k",
                                "python": "3.11", "commit": "abc"}},
           "results": [result], "ratios": []}
    md = report.markdown(doc)
    assert "| minute | t s | calls ok | failed | retrans | PSS MB | PSS own MB | fds | processes |" in md
    assert "| 0 | 0 | 0 | 0 | 0 | 30.0 | – | 38 | 9 |" in md and "| end |" in md
    assert "at 4,250/s for 180 s (rate: half)" in md
    assert "Verdict: PASS: 0 failed calls; PSS +0.59 % from minute 2 (170.0 MB" in md


def test_pss_drift_is_judged_on_own_pages_when_sampled():
    """Total PSS moves with other processes sharing the same files (a
    neighbour server exiting raised it 6.5 MB in a real run): the verdict
    judges the pages the server allocated when the samples have them."""
    def s(minute, total, own):
        return {"minute": minute, "failed": 0, "successful": 1, "retransmissions": 0,
                "pss_mb": total, "pss_own_mb": own, "fds": 50, "processes": 4}
    samples = [s(0, 30.0, 10.0), s(1, 60.0, 40.0), s(2, 70.0, 50.0), s(3, 70.5, 50.2),
               s(None, 77.6, 50.3)]
    v = soak.verdict(samples)
    assert v["pass"] is True and v["pss_judged"] == "anonymous + shared memory"
    assert v["pss_drift_pct"] == 0.6
    assert "PSS (own pages) +0.60 % from minute 2 (50.0 MB" in soak.describe_verdict(v)
    old = [{k: x[k] for k in x if k != "pss_own_mb"} for x in samples]     # recorded before
    v = soak.verdict(old)
    assert v["pass"] is False and v["pss_judged"] == "total" and v["pss_drift_pct"] == 10.86
