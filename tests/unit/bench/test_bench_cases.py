"""Case and suite definitions (bench/cases.py, bench/cases/*). (`kamailio -c` on every case
cfg: tests/integration/test_bench_on_kamailio.py.)"""
import pytest

from bench import cases as cm

ALL = cm.load_cases()


def test_the_issue_cases_exist():
    need = {"stateless", "task_route", "task_group_route", "route_1s", "sleep_1s", "ms_route_250",
            "ms_sleep_100", "task_data", "tkv_emit", "relay"}
    assert need <= set(ALL)
    suites = cm.load_suites(cases=ALL)
    assert set(suites["full"]["cases"]) >= need
    for name, s in suites.items():
        assert not s.get("missing"), (name, s["missing"])


@pytest.mark.parametrize("name", sorted(ALL))
def test_cfg_runs_unchanged_on_both_servers(name):
    text = ALL[name].cfg.read_text()
    assert "#!ifndef LPORT" in text and "#!define LPORT" in text
    assert "listen=udp:127.0.0.1:LPORT" in text
    assert 'mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"' in text
    # the readiness probe: every cfg answers OPTIONS sip:ping@ (stateless answers everything)
    assert '$rU == "ping"' in text or ALL[name].cfg.name == "stateless.cfg"


def test_kamailio_only_cases_say_why():
    for c in ALL.values():
        if "kamailio" not in c.servers:
            assert c.note, c.name


def test_timer_cases_carry_their_nominal_delay():
    assert ALL["sleep_1s"].latency["nominal_ms"] == 1000
    assert ALL["ms_sleep_100"].latency["nominal_ms"] == 100
    assert ALL["ms_route_250"].kind == "timer" and ALL["stateless"].kind == "load"


def test_quick_mode_overrides_only_what_it_names():
    full = ALL["stateless"]
    q = full.for_mode(True)
    assert q.sipp["step_s"] == 1 and q.sipp["rates"] == [300, 600]
    assert q.sipp["scenario"] == full.sipp["scenario"]
    assert full.sipp["step_s"] == 10                 # the loaded case is not modified
    assert full.for_mode(False) is full


def test_bare_cfg_with_bench_header(tmp_path):
    (tmp_path / "async_x.cfg").write_text(
        "# bench: title = \"x\"\n# bench: latency = {rate = 50, count = 10, nominal_ms = 100}\n"
        "#!ifndef LPORT\n#!define LPORT 5071\n#!endif\nrequest_route { exit; }\n")
    (tmp_path / "async_y.cfg").write_text("request_route { exit; }\n")
    cases = cm.load_cases(tmp_path)
    assert cases["async_x"].latency["nominal_ms"] == 100 and cases["async_x"].kind == "timer"
    assert cases["async_x"].latency["drain_s"] == cm.DEFAULT_LATENCY["drain_s"]
    assert cases["async_y"].latency == cm.DEFAULT_LATENCY and cases["async_y"].sipp is None
    assert cm.load_suites(tmp_path, cases)["all"]["cases"] == ["async_x", "async_y"]


def test_unknown_suite_and_bad_case(tmp_path):
    with pytest.raises(KeyError):
        cm.resolve_suite("no-such-suite")
    (tmp_path / "bad.toml").write_text('cfg = "missing.cfg"\n')
    with pytest.raises(ValueError):
        cm.load_cases(tmp_path)
    assert [c.name for c in cm.resolve_suite("timers")] == ["route_1s", "sleep_1s", "ms_route_250",
                                                            "ms_sleep_100"]


def test_cli_list_and_unknown_suite(capsys):
    from bench.__main__ import main
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "full" in out and "tkv_emit" in out and "asyncd only" in out
    assert main(["run", "no-such-suite", "--server", "asyncd"]) == 2
