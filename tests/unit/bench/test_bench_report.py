"""Tables, JSON and same-run ratios (bench/report.py)."""
import json

from bench import report


def _res(case, server, rate=None, p50=None, delay=None, pss=10.0, cpu=0.05, status="ok", thr=None):
    r = {"case": case, "server": server, "status": status, "reason": "", "pss_max_mb": pss}
    if rate is not None:
        r["sipp"] = {"steps": [{"rate": rate, "udp_drops": {"RcvbufErrors": 1}},
                               {"rate": rate * 2, "udp_drops": {"RcvbufErrors": 500}}],
                     "max_clean_rate": rate, "ceiling": rate * 2,
                     "at_best": {"sipp_cpu_s": 1.5, "server_cpu_ms_per_call": cpu,
                                 "udp_drops": {"RcvbufErrors": 1}}}
    if p50 is not None or delay is not None:
        lat = {"server_cpu_ms_per_req": cpu, "unanswered": 0, "_raw_ms": [1.0, 2.0],
               "udp_drops": {"RcvbufErrors": 2}}
        if delay is not None:
            lat["nominal_ms"] = 100
            lat["delay_error_ms"] = {"min": 0.1, "p50": delay, "p90": delay, "p99": delay, "max": delay * 2}
            lat["abs_delay_error_ms"] = {k: abs(v) for k, v in lat["delay_error_ms"].items()}
        else:
            lat["latency_ms"] = {"min": 0.1, "p50": p50, "p90": p50, "p99": p50 * 2, "max": p50 * 3}
        r["latency"] = lat
    if thr is not None:
        r["throughput"] = {"steps": [{"rate": thr, "reasons": []},
                                     {"rate": thr * 2, "reasons": ["5/10 delivered"]}],
                           "max_clean_rate": thr, "ceiling": thr * 2, "delivered_per_s": thr * 0.99,
                           "server_cpu_ms_per_req": cpu}
    return r


RESULTS = [
    _res("stateless", "asyncd", rate=6000, p50=0.2, pss=40.0, cpu=0.1),
    _res("stateless", "kamailio", rate=15000, p50=0.1, pss=8.0, cpu=0.05),
    _res("sleep", "asyncd", delay=1.0),
    _res("sleep", "kamailio", delay=-5.0),      # Kamailio's seconds timer resumes early
    _res("tkv", "asyncd", thr=3000.0),
    {"case": "tkv", "server": "kamailio", "status": "unsupported", "reason": "no tkv in 5.6"},
    {"case": "data", "server": "asyncd", "status": "start failed", "reason": "exited | 255"},
    _res("data", "kamailio", thr=4000.0),
]


def test_ratios_are_asyncd_over_kamailio_and_only_when_both_ran():
    rows = {r["case"]: r for r in report.compute_ratios(RESULTS)}
    assert set(rows) == {"stateless", "sleep"}
    st = rows["stateless"]
    assert st["max_clean_rate"] == 0.4 and st["latency_p50_ms"] == 2.0
    assert st["pss_max_mb"] == 5.0 and st["cpu_ms_per_req"] == 2.0
    assert rows["sleep"]["abs_delay_err_p50_ms"] == 0.2 and "latency_p50_ms" not in rows["sleep"]
    assert rows["sleep"]["abs_delay_err_max_ms"] == 0.2


def test_markdown_has_every_result_and_the_ratio_table():
    doc = {"meta": {"started": "t", "mode": "full", "suite": "s", "duration_s": 1.0,
                    "machine": {"cpu_count": 2, "cpu_model": "cpu", "memory_gib": 1, "kernel": "k",
                                "python": "3.11", "commit": "abc"},
                    "kamailio_version": "5.6.3", "sipp_version": "SIPp v3.6.1"},
           "results": report.strip_raw(RESULTS), "ratios": report.compute_ratios(RESULTS)}
    md = report.markdown(doc)
    lines = md.splitlines()
    rows = [ln for ln in lines if ln.startswith("| ") and not ln.startswith("| case")]
    assert len(rows) == len(RESULTS) + 2            # results + ratio rows
    assert "6,000 (fails at 12,000)" in md
    assert "unsupported: no tkv in 5.6" in md
    assert "start failed: exited / 255" in md       # a '|' in a reason must not break the table
    assert "3,000/s all delivered (fails at 6,000: 5/10 delivered)" in md
    ratio_hdr = next(ln for ln in lines if ln.startswith("| case | max clean"))
    assert "abs delay error p50 ms" in ratio_hdr
    stateless = [ln for ln in lines if ln.startswith("| stateless | asyncd")][0]
    assert stateless.count("|") == 11
    assert "| 3 |" in stateless      # UDP drops: 2 (latency) + 1 (best SIPp step), not the failing step's
    assert "|delay" not in md        # a '|' inside a header cell would split the column


def test_raw_samples_stay_out_of_the_json(tmp_path):
    doc = {"results": report.strip_raw(RESULTS)}
    report.write_json(doc, tmp_path / "r.json")
    text = (tmp_path / "r.json").read_text()
    assert "_raw_ms" not in text
    assert json.loads(text)["results"][0]["latency"]["latency_ms"]["p50"] == 0.2
    assert "_raw_ms" in RESULTS[0]["latency"]       # the plots still have them


def test_marginal_failure_rule():
    from bench.runner import marginal_failure
    from bench.stats import StepOutcome
    base = {"rate": 1000, "calls": 10000, "successful": 10000, "failed": 0, "retransmissions": 3,
            "achieved_rate": 995.0, "uas_failed": None}
    assert marginal_failure(StepOutcome(1000, False, dict(base)))
    assert not marginal_failure(StepOutcome(1000, False, dict(base, retransmissions=11)))
    assert not marginal_failure(StepOutcome(1000, False, dict(base, failed=1)))
    assert not marginal_failure(StepOutcome(1000, False, dict(base, uas_failed=2)))
    assert not marginal_failure(StepOutcome(1000, False, dict(base, successful=9990)))
    assert not marginal_failure(StepOutcome(1000, False, dict(base, achieved_rate=700.0)))


def test_a_search_without_ceiling_makes_the_ratio_a_bound():
    a = _res("t", "asyncd", rate=6000)
    k = _res("t", "kamailio", rate=12000)
    k["sipp"]["ceiling"] = None                       # Kamailio clean up to the top of the ladder
    [row] = report.compute_ratios([a, k])
    assert row["max_clean_rate"] == 0.5 and row["bounds"] == {"max_clean_rate": "≤"}
    doc = {"meta": {"started": "t", "mode": "full", "suite": "s", "duration_s": 1.0,
                    "machine": {"cpu_count": 2, "cpu_model": "cpu", "memory_gib": 1, "kernel": "k",
                                "python": "3.11", "commit": "abc"}},
           "results": [a, k], "ratios": [row]}
    assert "| t | ≤0.5 |" in report.markdown(doc)
    a["sipp"]["ceiling"] = None                       # both open: a plain ratio of two floors
    assert "bounds" not in report.compute_ratios([a, k])[0]


def test_data_marginal_failure_rule():
    from bench.runner import data_marginal_failure
    from bench.stats import StepOutcome
    base = {"rate": 2000, "sent": 6000, "answered": 6000, "complete": True,
            "reasons": ["sender reached only 1658/s"]}
    assert data_marginal_failure(StepOutcome(2000, False, dict(base)))
    assert data_marginal_failure(StepOutcome(2000, False, dict(base, answered=5995)))
    assert not data_marginal_failure(StepOutcome(2000, False, dict(base, answered=5990)))
    assert not data_marginal_failure(StepOutcome(2000, False, dict(base, complete=False)))


def test_latency_runs_at_several_rates_get_their_own_table():
    a = _res("t_tcp", "asyncd", rate=6000, p50=0.3)
    k = _res("t_tcp", "kamailio", rate=12000, p50=0.1)
    for r, cpu in ((a, 0.3), (k, 0.05)):
        three = dict(r["latency"], rate=3000, sent=9000, answered=9000, pss_mb=30.0,
                     server_cpu_ms_per_req=cpu)
        r["latency"].update(rate=1000, sent=3000, answered=3000, pss_mb=20.0)
        r["latency_at"] = [r["latency"], three]
    doc = {"meta": {"started": "t", "mode": "full", "suite": "s", "duration_s": 1.0,
                    "machine": {"cpu_count": 2, "cpu_model": "cpu", "memory_gib": 1, "kernel": "k",
                                "python": "3.11", "commit": "abc"}},
           "results": report.strip_raw([a, k]), "ratios": report.compute_ratios([a, k])}
    md = report.markdown(doc)
    assert "Latency runs at fixed rates" in md
    assert "| t_tcp | asyncd | 3,000 | 9,000/9,000 | 0.1 / 0.3 / 0.3 / 0.6 / 0.9 | 0.3 | 30 |" in md
    assert "| t_tcp | kamailio | 1,000 | 3,000/3,000 |" in md
    assert "_raw_ms" not in json.dumps(doc["results"])
    assert "_raw_ms" in a["latency_at"][1]                # the plots' copy keeps them


def test_a_run_without_several_rates_has_no_fixed_rate_table():
    doc = {"meta": {"started": "t", "mode": "full", "suite": "s", "duration_s": 1.0,
                    "machine": {"cpu_count": 2, "cpu_model": "cpu", "memory_gib": 1, "kernel": "k",
                                "python": "3.11", "commit": "abc"}},
           "results": report.strip_raw(RESULTS), "ratios": report.compute_ratios(RESULTS)}
    assert "fixed rates" not in report.markdown(doc)


def test_a_search_stopped_before_its_first_step_says_why():
    err = "registration: 3/1000 users registered, 0 failed"
    assert report._rate_cell({"sipp": {"error": err, "steps": []}}) == err
    assert report._rate_cell({"sipp": {"steps": []}}) == "not run"


def test_each_row_says_which_memory_its_server_ran_at():
    res = [dict(_res("t", "asyncd", rate=6000, p50=0.2), mem_mb=64),
           dict(_res("t", "kamailio", rate=6000, p50=0.2), mem_mb=1024),
           _res("old", "asyncd", rate=100)]       # a results.json from before: the name alone
    doc = {"meta": {"started": "t", "mode": "full", "suite": "s", "duration_s": 1.0,
                    "machine": {"cpu_count": 2, "cpu_model": "cpu", "memory_gib": 1, "kernel": "k",
                                "python": "3.11", "commit": "abc"}},
           "results": res, "ratios": report.compute_ratios(res)}
    md = report.markdown(doc)
    assert "| t | asyncd (-m 64) | ok |" in md and "| t | kamailio (-m 1024) | ok |" in md
    assert "| old | asyncd | ok |" in md
