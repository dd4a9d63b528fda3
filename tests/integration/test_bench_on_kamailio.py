"""The bench harness against the real Kamailio binary: Kamailio accepts every case cfg
(`kamailio -c`), and run_case (bench/runner.py) keeps the log of a server that fails to start
and runs a timer case end to end. Skipped when Kamailio is not installed.

Runs in: the pytest process; Kamailio is a subprocess on a free loopback port.
"""
import shutil
import subprocess

import pytest

from bench import cases as cm
from bench import runner
from bench.servers import kamailio_binary

pytestmark = pytest.mark.kamailio

ALL = cm.load_cases()


def opts(tmp_path, budget=60.0, servers=("kamailio",)):
    logs = []
    o = runner.RunOptions(servers=list(servers), quick=True, workdir=tmp_path,
                          budget=runner.Budget(budget), log=logs.append)
    return o, logs


KAM = shutil.which("kamailio") or shutil.which("/usr/sbin/kamailio")


@pytest.mark.skipif(not KAM, reason="kamailio not installed")
@pytest.mark.parametrize("name", sorted(n for n, c in ALL.items() if "kamailio" in c.servers))
def test_kamailio_accepts_the_cfg(name):
    r = subprocess.run([KAM, "-c", "-f", str(ALL[name].cfg), "-A", "LPORT=5999"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.skipif(not kamailio_binary(), reason="kamailio not installed")
def test_start_failure_keeps_the_log(tmp_path):
    bad = tmp_path / "bad.cfg"
    bad.write_text("request_route { not_a_function(); }\n")
    case = cm.Case(name="bad", title="bad", cfg=bad, servers=("asyncd", "kamailio"),
                   latency=dict(cm.DEFAULT_LATENCY))
    o, _ = opts(tmp_path)
    r = runner.run_case(case, "kamailio", o)
    assert r["status"] == "start failed" and r["log_tail"]


@pytest.mark.skipif(not kamailio_binary(), reason="kamailio not installed")
def test_timer_case_end_to_end_on_kamailio(tmp_path):
    case = cm.load_cases()["ms_sleep_100"].for_mode(True)
    case.latency.update(rate=100, count=30, drain_s=1.0)
    o, logs = opts(tmp_path)
    r = runner.run_case(case, "kamailio", o)
    assert r["status"] == "ok", r
    lat = r["latency"]
    assert lat["answered"] == 30 and lat["nominal_ms"] == 100
    assert lat["delay_error_ms"]["min"] >= -1.0 and lat["early"] == 0    # ms timer never early
    assert lat["delay_error_ms"]["max"] < 100
    assert len(lat["_raw_ms"]) == 30 and r["pss_max_mb"] > 0 and r["stop_rc"] is not None
    assert any("latency:" in line for line in logs)
