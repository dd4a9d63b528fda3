"""Case and suite definitions (bench/cases.py, bench/cases/*). (`kamailio -c` on every case
cfg: tests/integration/test_bench_on_kamailio.py.)"""
from pathlib import Path

import pytest

from bench import cases as cm
from bench import sipp
from bench.servers import Server

ALL = cm.load_cases()


def test_the_issue_cases_exist():
    need = {"stateless", "task_route", "task_group_route", "route_1s", "sleep_1s", "ms_route_250",
            "ms_sleep_100", "task_data", "tkv_emit", "relay"}
    assert need <= set(ALL)
    suites = cm.load_suites(cases=ALL)
    assert set(suites["full"]["cases"]) >= need
    for name, s in suites.items():
        assert not s.get("missing"), (name, s["missing"])


STOCK = Path("/etc/kamailio/kamailio.cfg")


@pytest.mark.parametrize("name", sorted(n for n, c in ALL.items() if c.cfg.name != "stock.cfg"))
def test_cfg_runs_unchanged_on_both_servers(name):
    text = ALL[name].cfg.read_text()
    assert "#!ifndef LPORT" in text and "#!define LPORT" in text
    # one transport per case: a TCP listener in a UDP case would add processes to it
    listens = [ln for ln in text.splitlines() if ln.startswith("listen=")]
    assert listens == [f"listen={ALL[name].transport}:127.0.0.1:LPORT"]
    assert 'mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"' in text
    # the readiness probe: every cfg answers OPTIONS sip:ping@ (stateless answers everything)
    assert '$rU == "ping"' in text or ALL[name].cfg.name in ("stateless.cfg", "stateless_tcp.cfg")


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


def test_tcp_cases_listen_on_tcp_with_as_many_readers_as_children():
    tcp_cases = {n: c for n, c in ALL.items() if c.transport == "tcp"}
    assert {"stateless_tcp", "task_route_tcp"} <= set(tcp_cases)
    assert cm.load_suites(cases=ALL)["tcp"]["cases"] == ["stateless_tcp", "task_route_tcp"]
    for c in tcp_cases.values():
        text = c.cfg.read_text()
        assert "tcp_children=2" in text.splitlines() and "children=2" in text.splitlines()
        assert c.sipp["tcp_mode"] == "t1" and c.latency["rates"] == [1000, 3000]
        assert c.servers == ("asyncd", "kamailio")


@pytest.mark.parametrize("udp, tcp", [("stateless", "stateless_tcp"), ("task_route", "task_route_tcp")])
def test_a_tcp_case_is_its_udp_case_over_tcp(udp, tcp):
    """Same routing, memory, latency rate and SIPp ladder; only the transport lines differ."""
    u, t = ALL[udp], ALL[tcp]
    assert u.transport == "udp" and t.transport == "tcp" and u.mem_mb == t.mem_mb
    assert {k: v for k, v in t.sipp.items() if k != "tcp_mode"} == u.sipp
    assert t.latency["rate"] == u.latency["rate"] and t.latency["count"] == u.latency["count"]

    def routing(case):
        text = case.cfg.read_text()
        return text[text.index("mpath="):]
    assert routing(u) == routing(t)


def test_udp_cases_keep_their_load_description():
    assert ALL["stateless"].describe_load() == ("sender 1000/s x 3000; SIPp options_uac.xml steps "
                                                "[5000, 10000, 15000, 20000] x 10 s")
    assert "tcp_mode" not in ALL["stateless"].sipp and "rates" not in ALL["stateless"].latency
    assert ALL["stateless_tcp"].describe_load() == (
        "sender 1000/s and 3000/s, 3 s each over one TCP connection; SIPp options_uac.xml over TCP "
        "(-t t1) steps [5000, 10000, 15000, 20000] x 10 s")


def test_transport_must_be_known_and_tcp_runs_latency_and_sipp_only(tmp_path):
    cfg = tmp_path / "a.cfg"
    guard = "#!ifndef LPORT\n#!define LPORT 1\n#!endif\n"
    cfg.write_text('# bench: transport = "sctp"\n' + guard)
    with pytest.raises(ValueError, match="transport"):
        cm.load_cases(tmp_path)
    cfg.write_text('# bench: transport = "tcp"\n# bench: throughput = {rates = [1]}\n' + guard)
    with pytest.raises(ValueError, match="TCP"):
        cm.load_cases(tmp_path)
    cfg.write_text('# bench: transport = "tcp"\n# bench: sipp = {tcp_mode = "tn"}\n' + guard)
    assert cm.load_cases(tmp_path)["a"].sipp["tcp_mode"] == "tn"


def test_latency_rates_keep_the_run_length():
    lat = ALL["stateless_tcp"].latency
    assert cm.latency_rates(lat) == [1000, 3000]
    assert cm.at_rate(lat, 1000) is lat
    three = cm.at_rate(lat, 3000)
    assert three["rate"] == 3000 and three["count"] == 9000 and lat["count"] == 3000
    assert cm.latency_rates(ALL["stateless"].latency) == [1000]


def test_fixed_rates_replace_the_latency_rates_and_drop_the_search():
    c = ALL["task_route"].with_fixed_rates([1000, 3000])
    assert c.latency["rates"] == [1000, 3000] and c.sipp is None
    assert ALL["task_route"].sipp is not None and "rates" not in ALL["task_route"].latency
    assert ALL["task_route"].with_fixed_rates(None) is ALL["task_route"]
    assert ALL["relay"].with_fixed_rates([1000]) is ALL["relay"]      # no latency phase: as it is


def test_cli_fixed_rates():
    from bench.__main__ import rate_list
    assert rate_list("1000,3000") == [1000, 3000]
    for bad in ("", "x", "1000,-1"):
        with pytest.raises(Exception):
            rate_list(bad)


def test_register_case_saves_10000_distinct_users_on_both_servers():
    c = ALL["register"]
    assert c.servers == ("asyncd", "kamailio") and c.latency is None
    assert c.sipp["scenario"] == "register_uac.xml" and c.sipp["users"] == 10000
    assert c.sipp["uas"] is None and not c.sipp.get("register")
    scenario = (sipp.SCENARIO_DIR / "register_uac.xml").read_text()
    assert "REGISTER sip:" in scenario and "To: <sip:[field0]@" in scenario
    assert "Contact: <sip:[field0]@[field1]>" in scenario
    text = c.cfg.read_text()
    assert 'modparam("usrloc", "db_mode", 0)' in text and 'save("location")' in text
    assert c.for_mode(True).sipp["users"] == 10000


def test_case_args_are_formatted_per_server(tmp_path):
    srv = Server(kind="kamailio", cfg="x.cfg", port=5099, mem_mb=64, workdir=tmp_path,
                 args=("-l", "udp:127.0.0.1:{port}", "-Y", "{run_dir}"))
    cmd = srv.command()
    assert cmd[-4:] == ["-l", "udp:127.0.0.1:5099", "-Y", str(tmp_path / "run-kamailio-5099")]
    assert Server(kind="asyncd", cfg="x.cfg", port=5099, mem_mb=64,
                  workdir=tmp_path).command()[-2:] == ["-A", "LPORT=5099"]


def test_stock_call_runs_the_stock_cfg_as_shipped_with_its_socket_on_the_command_line():
    c = ALL["stock_call"]
    text = c.cfg.read_text()
    assert c.cfg.name == "stock.cfg" and text.startswith("#!KAMAILIO")
    assert 'save("location")' in text and 'lookup("location")' in text and "record_route()" in text
    if STOCK.exists():                  # Debian's kamailio package: the copy is byte for byte
        assert text == STOCK.read_text()
    # no listen line, no LPORT: the socket, the children and the runtime dir are options
    assert not [ln for ln in text.splitlines() if ln.startswith("listen=")]
    assert c.args == ("-l", "udp:127.0.0.1:{port}", "-n", "2", "-Y", "{run_dir}")
    assert c.servers == ("asyncd", "kamailio") and c.mem_mb == 1024


def test_stock_call_registers_every_user_then_calls_them_through_a_record_routing_uas():
    c = ALL["stock_call"]
    s = c.sipp
    assert s["users"] == 10000 and s["register"] == {"scenario": "register_uac.xml", "rate": 1000}
    assert s["scenario"] == "invite_registered_uac.xml" and s["uas"] == "uas_rr.xml"
    uac = (sipp.SCENARIO_DIR / s["scenario"]).read_text()
    assert "INVITE sip:[field0]@[remote_ip]:[remote_port]" in uac
    assert uac.count("[routes]") == 2 and uac.count("[next_url] SIP/2.0") == 2 and 'rrs="true"' in uac
    assert (sipp.SCENARIO_DIR / s["uas"]).read_text().count("[last_Record-Route:]") == 2
    q = c.for_mode(True).sipp
    assert q["users"] == 1000 and q["register"] == {"scenario": "register_uac.xml", "rate": 500}
    assert q["step_s"] == 3 and q["rates"] == [50, 100]


def test_registrar_suite():
    suites = cm.load_suites(cases=ALL)
    assert suites["registrar"]["cases"] == ["register", "stock_call"]
    assert "register" not in suites["full"]["cases"]


def test_registrar_cases_describe_their_users():
    assert ALL["register"].describe_load() == (
        "SIPp register_uac.xml to 10000 users steps [1000, 2000, 4000, 6000, 8000, 10000] x 10 s")
    assert ALL["stock_call"].describe_load() == (
        "SIPp invite_registered_uac.xml to 10000 users registered first at 1000/s "
        "steps [100, 250, 500, 1000, 1500, 2000] x 10 s")


def test_mem_mb_is_one_size_or_one_per_server(tmp_path):
    c = ALL["task_route_default"]
    assert c.mem_mb == {"asyncd": 64, "kamailio": 1024}
    assert (c.mem_for("asyncd"), c.mem_for("kamailio")) == (64, 1024)
    assert c.cfg.name == "task_route.cfg" and "-m 64" in c.title and "-m 1024" in c.title
    assert c.latency["rates"] == [1000, 3000, 6000]
    assert c.sipp == ALL["task_route"].sipp                 # the same SIPp ladder
    assert ALL["task_route"].mem_for("asyncd") == ALL["task_route"].mem_for("kamailio") == 1024
    assert "task_route_default" not in cm.load_suites(cases=ALL)["full"]["cases"]
    # the `# bench:` header form takes the same table
    (tmp_path / "x.cfg").write_text("# bench: mem_mb = {asyncd = 64, kamailio = 512}\n"
                                    "request_route { exit; }\n")
    assert cm.load_cases(tmp_path)["x"].mem_for("kamailio") == 512


@pytest.mark.parametrize("table", ['{asyncd = 64}', '{asyncd = 64, kamailio = 1024, sems = 1}'])
def test_a_mem_mb_table_names_each_server_and_only_servers(tmp_path, table):
    (tmp_path / "x.cfg").write_text(f"# bench: mem_mb = {table}\nrequest_route {{ exit; }}\n")
    with pytest.raises(ValueError, match="mem_mb"):
        cm.load_cases(tmp_path)


def test_list_shows_each_servers_memory(capsys):
    from bench.__main__ import main
    assert main(["list"]) == 0
    assert "-m 64 (asyncd), 1024 (kamailio)" in capsys.readouterr().out
