"""Starting, probing and stopping a server by pid (bench/servers.py), on Kamailio."""
import shutil

import psutil
import pytest

from bench import servers
from bench.cases import CASES_DIR

pytestmark = pytest.mark.skipif(not servers.kamailio_binary(), reason="kamailio not installed")


@pytest.mark.unit          # builds command lines only
def test_commands_are_the_same_for_both_servers():
    a = servers.server_command("asyncd", "x.cfg", 5080, 64)
    k = servers.server_command("kamailio", "x.cfg", 5080, 64)
    assert a[1:3] == ["-m", "asyncd"]
    for cmd in (a, k):
        i = cmd.index("-DD")
        assert cmd[i:i + 4] == ["-DD", "-E", "-m", "64"]
        assert cmd[cmd.index("-f") + 1] == "x.cfg" and cmd[-2:] == ["-A", "LPORT=5080"]
    assert k[k.index("-M") + 1] == "16" and "-M" not in a


@pytest.mark.kamailio
def test_start_probe_and_stop_by_pid(tmp_path):
    srv = servers.Server("kamailio", str(CASES_DIR / "stateless.cfg"), servers.free_udp_port(), 64, tmp_path)
    srv.start(timeout_s=20)
    try:
        tree = psutil.Process(srv.pid).children(recursive=True)
        assert len(tree) >= 2                      # receivers and the rest were forked
        assert srv.start_s is not None and srv.start_s < 20
        reply = servers.query(srv.port, "anyone")
        assert reply.startswith(b"SIP/2.0 200 OK")
    finally:
        rc = srv.stop()
    assert rc is not None
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree)
    assert srv.log_path.exists()
    assert srv.stop() == rc                        # stopping twice is harmless


@pytest.mark.kamailio
def test_a_cfg_the_server_refuses_is_reported_with_its_log(tmp_path):
    bad = tmp_path / "bad.cfg"
    bad.write_text("listen=udp:127.0.0.1:5999\nrequest_route { no_such_function(); }\n")
    srv = servers.Server("kamailio", str(bad), servers.free_udp_port(), 64, tmp_path)
    with pytest.raises(servers.ServerStartError) as ei:
        srv.start(timeout_s=20)
    assert "exited" in str(ei.value)
    assert "no_such_function" in ei.value.log_tail or "error" in ei.value.log_tail.lower()


@pytest.mark.kamailio
def test_versions():
    assert "5." in servers.kamailio_version()
    assert shutil.which("kamailio") or servers.kamailio_binary() == "/usr/sbin/kamailio"


@pytest.mark.kamailio
def test_a_cfg_that_answers_late_is_still_seen_ready(tmp_path):
    # ms_sleep_100.cfg without its "ping" shortcut and with 500 ms: every probe is
    # answered 0.5 s late, later than the 0.3 s between probes
    text = (CASES_DIR / "ms_sleep_100.cfg").read_text()
    text = text.replace('async_ms_sleep("100")', 'async_ms_sleep("500")')
    start = text.index('    if ($rU == "ping")')
    end = text.index("}", start) + 2
    cfg = tmp_path / "late.cfg"
    cfg.write_text(text[:start] + text[end:])
    assert '"ping"' not in cfg.read_text() and '"500"' in cfg.read_text()
    srv = servers.Server("kamailio", str(cfg), servers.free_udp_port(), 64, tmp_path)
    srv.start(timeout_s=20)
    try:
        assert srv.start_s >= 0.5
        assert servers.query(srv.port, "x", timeout=0.2) is None     # too late for one probe
        assert servers.query(srv.port, "x", timeout=1.0).startswith(b"SIP/2.0 200")
    finally:
        srv.stop()
