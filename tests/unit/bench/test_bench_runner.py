"""run_case outcomes that start no server: unsupported, time budget. (A start failure and a
full tiny case on Kamailio: tests/integration/test_bench_on_kamailio.py.)"""
from bench import cases as cm
from bench import runner


def opts(tmp_path, budget=60.0, servers=("kamailio",)):
    logs = []
    o = runner.RunOptions(servers=list(servers), quick=True, workdir=tmp_path,
                          budget=runner.Budget(budget), log=logs.append)
    return o, logs


def test_unsupported_server_is_recorded_with_the_case_note(tmp_path):
    case = cm.load_cases()["tkv_emit"]
    o, _ = opts(tmp_path)
    r = runner.run_case(case, "kamailio", o)
    assert r["status"] == "unsupported" and "async_tkv_emit" in r["reason"]


def test_budget_exhausted_skips_without_starting(tmp_path):
    case = cm.load_cases()["stateless"]
    o, logs = opts(tmp_path, budget=-1)
    r = runner.run_case(case, "kamailio", o)
    assert r["status"] == "skipped" and r["reason"] == "time budget" and logs == []
