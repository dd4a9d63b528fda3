"""The overload case (bench/overload.py): counting every answer from SIPp's real statistics
file, the load window and goodput, the verdict, the case and its command line, the report.
(End to end against asyncd in --quick mode: tests/integration/test_bench_quick.py.)"""
from pathlib import Path

import pytest

from bench import cases as cm
from bench import overload, report, runner, sipp
from bench.__main__ import default_budget, overload_overrides

DATA = Path(__file__).parent / "data"


def rows(name):
    return sipp.parse_stat_csv((DATA / name).read_text())


# --- SIPp's counters ---------------------------------------------------------------------

def test_every_call_of_a_real_run_is_counted_by_its_outcome():
    # SIPp 3.6.1: options_answers_uac.xml -m 300 -r 100 -recv_timeout 34000
    # -max_non_invite_retrans 2 -default_behaviors all,-bye against a UDP responder that, by
    # call number n mod 20, answers 0: never, 1: only the retransmission (200), 2: 500,
    # 3-4: 503, 5: 486, 6: 502, else 200 at once.
    a = overload.answers(rows("sipp_overload_answers.csv"))
    assert a["created"] == 300
    assert (a["answer_200"], a["answer_500"], a["answer_503"]) == (210, 15, 30)
    assert a["answer_other"] == 30                   # 486 and 502: unexpected, the call fails
    assert a["unanswered"] == 15                     # retransmitted, then SIPp gave up
    assert a["failed_other"] == 0 and a["open"] == 0
    assert a["answered"] == 285 and a["failed"] == 45
    assert a["retransmissions"] == 15 * 2 + 15      # twice per silent call, once per late 200


def test_a_receive_timeout_is_unanswered_too():
    # sipp options_uac.xml -m 40 -r 20 -recv_timeout 1200 to a port nobody listens on
    a = overload.answers(rows("sipp_options_noserver.csv"))
    assert a["unanswered"] == 40 and a["answered"] == 0 and a["open"] == 0


def test_the_load_window_ends_with_the_last_call_created():
    w = overload.load_window(rows("sipp_overload_answers.csv"), 300)
    # 300 calls at 100/s: the row at ~3.01 s is the first with all 300 created
    assert w["window_s"] == pytest.approx(3.01, abs=0.01) and w["created_in_window"] == 300
    assert w["answer_200_in_window"] == 208          # two late 200s came after it
    s = overload.summarize(rows("sipp_overload_answers.csv"), 300, base=50, offered=100)
    assert s["achieved_send_rate"] == pytest.approx(99.6, abs=0.2)
    assert s["goodput"] == pytest.approx(208 / 3.011, abs=0.2)
    assert s["goodput_ratio"] == pytest.approx(s["goodput"] / 50, abs=0.01)


def _row(t, created, ok):
    return {"StartTime": 100.0, "CurrentTime": 100.0 + t, "TotalCallCreated": created,
            "answer200(C)": ok}


def test_the_window_is_interpolated_inside_a_one_second_row():
    # 1,000 calls at 400/s: the last one is created 0.5 s into the third period
    rs = [_row(1.0, 400, 390), _row(2.0, 800, 780), _row(3.0, 1000, 1000), _row(4.0, 1000, 1000)]
    w = overload.load_window(rs, 1000)
    assert w["window_s"] == 2.5 and w["created_in_window"] == 1000
    assert w["answer_200_in_window"] == 890          # 780 + half of that period's 220
    # SIPp stopped before creating them all: the window is what ran
    assert overload.load_window(rs[:2], 1000) == {"window_s": 2.0, "created_in_window": 800,
                                                  "answer_200_in_window": 780}


# --- PSS and the verdict -------------------------------------------------------------------

def test_pss_growth_compares_the_halves_of_the_load_window():
    flat = [{"t_s": t, "pss_mb": p} for t, p in ((1, 100.0), (3, 110.0), (5, 111.0), (7, 109.0))]
    assert overload.pss_growth(flat, 8.0) == pytest.approx(0.91, abs=0.01)
    rising = flat[:2] + [{"t_s": 5, "pss_mb": 130.0}, {"t_s": 7, "pss_mb": 150.0}]
    assert overload.pss_growth(rising, 8.0) == pytest.approx(36.36, abs=0.01)
    assert overload.pss_growth(flat[:2], 8.0) is None               # nothing in the 2nd half
    assert overload.pss_growth(flat + [{"t_s": 30, "pss_mb": 500.0}], 8.0) < 1   # after the window


def _res(ratio=0.95, unanswered=0, growth=2.0, open_=0):
    return {"goodput_ratio": ratio, "unanswered": unanswered, "failed_other": 0, "open": open_,
            "timed_out": False, "pss_growth_pct": growth}


@pytest.mark.parametrize("res, ok, failed", [
    (_res(), True, []),
    (_res(ratio=0.89), False, ["goodput"]),
    (_res(unanswered=1), False, ["all_answered"]),
    (_res(open_=3), False, ["all_answered"]),
    (_res(growth=12.0), False, ["pss_bounded"]),
    (_res(growth=None), None, []),
    ({**_res(growth=30.0), "pss_judged": False}, None, []),    # a 5 s run: still filling the table
    ({**_res(), "calls": 100, "created": 0}, False, ["all_answered"]),     # SIPp never ran
    (_res(ratio=0.5, growth=None), False, ["goodput"]),
])
def test_verdict(res, ok, failed):
    v = overload.verdict(res, 0.9, 10.0)
    assert v["pass"] is ok
    assert [k for k, x in v["checks"].items() if x is False] == failed


def test_offered_rate_is_factor_times_base_unless_given():
    assert overload.offered_rate({"factor": 2.0, "rate": None}, 6000) == 12000
    assert overload.offered_rate({"factor": 2.0, "rate": 9000}, 6000) == 9000


def test_the_sipp_command_never_throttles_and_sends_nothing_after_an_abort(tmp_path):
    srv = type("S", (), {"port": 5099})()
    cfg = {**cm.DEFAULT_OVERLOAD, "duration_s": 30}
    cmd = overload._sipp_command(srv, cfg, 12000, 360000, str(tmp_path / "s.csv"))
    assert cmd[cmd.index("-l") + 1] == "360000" and cmd[cmd.index("-r") + 1] == "12000"
    assert cmd[cmd.index("-default_behaviors") + 1] == "all,-bye"
    assert cmd[cmd.index("-recv_timeout") + 1] == "34000"      # past SIPp's last retransmission
    assert cmd[cmd.index("-sf") + 1].endswith("options_answers_uac.xml")


def test_the_scenario_counts_200_500_503_and_leaves_the_rest_unexpected():
    text = (sipp.SCENARIO_DIR / "options_answers_uac.xml").read_text()
    for code in overload.CODES:
        assert f'response="{code}"' in text and f'counter="answer{code}"' in text
    assert 'retrans="500"' in text and "OPTIONS sip:[service]@" in text


# --- the case and its command line -----------------------------------------------------------

def test_overload_case_runs_both_servers_at_their_memory_in_its_own_suites():
    c = cm.load_cases()["overload"]
    assert c.cfg.name == "task_route.cfg" and c.servers == ("asyncd", "kamailio")
    assert (c.mem_for("asyncd"), c.mem_for("kamailio")) == (64, 1024)
    assert c.overload["factor"] == 2.0 and c.overload["duration_s"] == 30
    assert c.overload["scenario"] == "options_answers_uac.xml" and c.overload["goodput_target"] == 0.9
    assert c.sipp["rates"] == cm.load_cases()["task_route"].sipp["rates"]
    assert c.overload_base("asyncd") is None and c.latency is None
    suites = cm.load_suites()
    assert "overload" not in suites["full"]["cases"] and "overload" not in suites["quick"]["cases"]
    assert suites["overload"]["cases"] == ["overload"]
    assert suites["perf"]["cases"] == ["task_route_default", "overload"]
    q = c.for_mode(True)
    assert q.overload["duration_s"] == 3 and q.overload["recv_timeout_ms"] == 4000
    assert q.sipp["rates"] == [200, 400] and q.overload["factor"] == 2.0


def test_command_line_gives_the_base_the_rate_and_the_duration():
    args = type("Args", (), {"rate": None, "duration": 5.0, "sample_s": None,
                             "overload_base": 2000})()
    over = overload_overrides(args)
    assert over == {"duration_s": 5.0, "base_rate": 2000}
    case = cm.load_cases()["overload"]
    c = case.with_overload(over)
    assert c.overload_base("kamailio") == 2000 and c.overload["duration_s"] == 5.0
    assert case.overload["duration_s"] == 30                   # the loaded case is not modified
    assert cm.load_cases()["stateless"].with_overload(over).overload is None
    assert overload.offered_rate(c.overload, c.overload_base("asyncd")) == 4000


def test_the_base_is_given_or_the_searchs_maximum():
    case = cm.load_cases()["overload"]
    given = case.with_overload({"base_rate": {"asyncd": 5000, "kamailio": 6000}})
    assert runner.overload_base(given, "kamailio", None)[0] == 6000
    assert runner.overload_base(case, "asyncd", {"max_clean_rate": 6000, "ceiling": 8000}) == (
        6000, "the search's max clean rate")
    base, why = runner.overload_base(case, "asyncd", {"max_clean_rate": 16000, "ceiling": None})
    assert base == 16000 and "floor" in why
    assert runner.overload_base(case, "asyncd", {"max_clean_rate": 0, "ceiling": 2000})[0] is None
    assert runner.overload_base(case, "asyncd", None)[0] is None


def test_an_overload_needs_a_ladder_or_a_base(tmp_path):
    (tmp_path / "x.cfg").write_text("# bench: overload = {factor = 2.0}\nrequest_route { exit; }\n")
    with pytest.raises(ValueError, match="base_rate"):
        cm.load_cases(tmp_path)
    (tmp_path / "x.cfg").write_text("# bench: overload = {base_rate = 100}\nrequest_route { exit; }\n")
    assert cm.load_cases(tmp_path)["x"].overload_base("asyncd") == 100


def test_the_default_budget_leaves_room_for_each_overload_run():
    cases = cm.resolve_suite("overload")
    assert default_budget(cases, ["asyncd", "kamailio"]) == 840 + 2 * (30 + 34 + 6)


# --- the report --------------------------------------------------------------------------------

def _result(server, mem, **over):
    s = overload.summarize(rows("sipp_overload_answers.csv"), 300, base=50, offered=100)
    s.update(base_rate=50, base_source="the search's max clean rate", server_cpu_s=1.5,
             server_cpu_ms_per_req=5.0, udp_drops={"RcvbufErrors": 7}, pss_idle_mb=60.0,
             pss_max_mb=70.0, pss_end_mb=65.0, pss_growth_pct=1.5, timed_out=False, **over)
    s["verdict"] = overload.verdict(s, 0.9, 10.0)
    return {"case": "overload", "server": server, "status": "ok", "mem_mb": mem, "overload": s}


def test_report_has_one_overload_row_per_server_with_every_answer():
    results = [_result("asyncd", 64),
               {"case": "overload", "server": "kamailio", "status": "ok", "mem_mb": 1024,
                "overload": {"error": "no base rate: the clean-rate search found no clean step"}}]
    md = "\n".join(report.overload_markdown(results))
    [a] = [ln for ln in md.splitlines() if ln.startswith("| overload | asyncd (-m 64)")]
    cells = [c.strip() for c in a.split("|")[1:-1]]
    assert cells[2:6] == ["50", "100", "99.6", "69.1"]
    assert cells[6] == "138.2% ✓"
    assert cells[7:13] == ["210", "15", "30", "30", "15", "45"]
    assert cells[14] == "60 / 70 / 65 (+1.5 %)" and cells[15] == "7"
    short = _result("asyncd", 64, pss_judged=False)
    assert "(+1.5 %, too short to judge)" in "\n".join(report.overload_markdown([short]))
    assert cells[16] == "FAIL (all_answered)"
    [k] = [ln for ln in md.splitlines() if ln.startswith("| overload | kamailio (-m 1024)")]
    assert "no clean step" in k and k.count("|") == a.count("|")
    header = md.splitlines()[2]
    assert header.count("|") == a.count("|")
