"""run_case outcomes that start no server: unsupported, time budget. (A start failure and a
full tiny case on Kamailio: tests/integration/test_bench_on_kamailio.py.)"""
from bench import cases as cm
from bench import runner, stats


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


class _Srv:
    port = 5099
    transport = "udp"

    class proc:
        @staticmethod
        def poll():
            return None


def test_registration_runs_once_before_the_search_and_a_short_one_stops_it(tmp_path, monkeypatch):
    """stock_call: every user is registered once (Contacts naming the steps' UAS port) before the
    call steps; a registration that is not all 200s ends the search with the reason."""
    calls = []

    def fake_step(srv, tree, cfg, rate, step_s, workdir, tag, uas_port=None):
        calls.append((cfg["scenario"], cfg["uas"], rate, step_s, tag, uas_port))
        ok = cfg["scenario"] != "register_uac.xml" or registered[0]
        n = int(rate * step_s) if ok else 3
        return stats.StepOutcome(rate=rate, clean=ok, data={
            "rate": rate, "calls": int(rate * step_s), "successful": n, "failed": 0,
            "achieved_rate": rate, "retransmissions": 0, "reasons": []})
    monkeypatch.setattr(runner, "_sipp_step", fake_step)
    monkeypatch.setattr(runner.time, "sleep", lambda s: None)
    cfg = cm.load_cases()["stock_call"].for_mode(True).sipp
    o, logs = opts(tmp_path)
    registered = [True]
    out = runner.run_sipp(_Srv(), None, cfg, o, "t")
    assert calls[0][:5] == ("register_uac.xml", None, 500, 2.0, "t-register")
    assert [c[0] for c in calls[1:]] == ["invite_registered_uac.xml"] * 2
    assert {c[5] for c in calls} == {calls[0][5]} and calls[0][5] not in (None, 5099)
    assert out["registration"]["successful"] == 1000 and out["max_clean_rate"] == 100
    calls.clear()
    registered[0] = False
    out = runner.run_sipp(_Srv(), None, cfg, o, "t")
    assert len(calls) == 1 and out["steps"] == [] and out["max_clean_rate"] == 0
    assert out["error"] == "registration: 3/1000 users registered, 0 failed"


def test_each_server_starts_at_its_own_memory(tmp_path, monkeypatch):
    """task_route_default: asyncd at -m 64, Kamailio at -m 1024; each result says which."""
    started = []

    class Fake(runner.Server):
        def start(self):
            started.append((self.kind, self.command()))
            raise runner.ServerStartError("not started in a unit test")

    monkeypatch.setattr(runner, "Server", Fake)
    monkeypatch.setattr(runner, "kamailio_binary", lambda: "/usr/sbin/kamailio")
    case = cm.load_cases()["task_route_default"]
    o, _ = opts(tmp_path, servers=("asyncd", "kamailio"))
    res = [runner.run_case(case, kind, o) for kind in ("asyncd", "kamailio")]
    assert [r["mem_mb"] for r in res] == [64, 1024]
    # "-m MB" follows "-E" in both command lines (asyncd's starts with "python -m asyncd")
    assert [cmd[cmd.index("-E") + 2] for _, cmd in started] == ["64", "1024"]
