"""Reading SIPp -trace_stat files recorded from real runs (bench/sipp.py)."""
from pathlib import Path

import pytest

from bench import sipp

DATA = Path(__file__).parent / "data"


def test_clean_run_totals():
    # sipp options_uac.xml -m 6000 -r 2000 against kamailio 5.6.3 (stateless.cfg)
    t = sipp.read_stat_file(DATA / "sipp_options_clean.csv")
    assert (t.created, t.successful, t.failed, t.retransmissions) == (6000, 6000, 0, 0)
    assert t.target_rate == 2000
    assert t.elapsed_s == pytest.approx(3.003, abs=0.01)
    assert t.achieved_rate == pytest.approx(1998, abs=5)
    assert sum(t.per_second) == 6000


def test_run_without_a_server_counts_failures_and_retransmissions():
    # sipp options_uac.xml -m 40 -r 20 -recv_timeout 1200 to a port nobody listens on
    t = sipp.read_stat_file(DATA / "sipp_options_noserver.csv")
    assert t.successful == 0
    assert t.failed == 40
    assert t.retransmissions == 40
    assert t.timeouts_on_recv == 40
    assert t.achieved_rate == 0


def test_every_row_has_every_column():
    text = (DATA / "sipp_options_clean.csv").read_text()
    rows = sipp.parse_stat_csv(text)
    assert len(rows) == 5
    header = [h for h in text.splitlines()[0].split(";") if h]
    assert all(set(header) <= set(r) for r in rows)
    assert isinstance(rows[-1]["StartTime"], float)         # date \t time \t epoch -> epoch
    assert rows[-1]["ResponseTime1(C)"] == 0.0              # HH:MM:SS:uuuuuu -> seconds


@pytest.mark.parametrize("text, value", [
    ("00:01:02", 62), ("00:00:01:250000", 1.25), ("17", 17), ("2004.01", 2004.01), ("", None),
    ("2026-11-26\t04:19:54.263399\t1795666794.263399", 1795666794.263399), ("abc", "abc")])
def test_value_formats(text, value):
    assert sipp._parse_value(text) == value


def test_empty_and_truncated_files():
    assert sipp.totals_from_rows(sipp.parse_stat_csv("")).successful == 0
    head = (DATA / "sipp_options_clean.csv").read_text().splitlines()[0]
    assert sipp.parse_stat_csv(head + "\n") == []
    t = sipp.totals_from_rows(sipp.parse_stat_csv(head + "\n1;2;3\n"))   # short row: no crash
    assert t.successful == 0


def test_uac_command_has_the_load_and_statistics_flags():
    cmd = sipp.uac_command("options_uac.xml", "127.0.0.1:5071", 6000, 500, 5000, "/tmp/s.csv",
                           rsa="127.0.0.1:5080")
    assert cmd[cmd.index("-r") + 1] == "500" and cmd[cmd.index("-m") + 1] == "5000"
    assert cmd[cmd.index("-stf") + 1] == "/tmp/s.csv" and "-trace_stat" in cmd
    assert cmd[cmd.index("-rsa") + 1] == "127.0.0.1:5080"
    assert Path(cmd[cmd.index("-sf") + 1]).exists()
    assert "-nr" not in cmd          # retransmissions are what "clean" counts
    assert "-t" not in cmd           # UDP: SIPp's default transport, the command as it always was


def test_uac_command_over_tcp():
    args = ("options_uac.xml", "127.0.0.1:5071", 6000, 500, 5000, "/tmp/s.csv")
    udp = sipp.uac_command(*args)
    cmd = sipp.uac_command(*args, transport="tcp")
    assert cmd[:len(udp)] == udp and cmd[len(udp):] == ["-t", "t1"]
    assert sipp.uac_command(*args, transport="tcp", tcp_mode="tn")[-2:] == ["-t", "tn"]


def test_uac_command_with_an_injection_file():
    args = ("register_uac.xml", "127.0.0.1:5071", 6000, 500, 5000, "/tmp/s.csv")
    cmd = sipp.uac_command(*args, inf="/tmp/users.csv")
    assert cmd[cmd.index("-inf") + 1] == "/tmp/users.csv"
    assert "-inf" not in sipp.uac_command(*args)


def test_users_file_is_sequential_distinct_users_with_their_contact(tmp_path):
    path = sipp.users_file(tmp_path / "u.csv", 10000, "127.0.0.1:5090")
    lines = Path(path).read_text().splitlines()
    assert lines[0] == "SEQUENTIAL" and len(lines) == 10001
    users = [ln.split(";")[0] for ln in lines[1:]]
    assert len(set(users)) == 10000 and users[0] == "bench00000"
    assert all(ln.split(";")[1] == "127.0.0.1:5090" for ln in lines[1:])
