"""bench/budget.py: py-spy raw stacks -> a process's CPU split by stage; the paired comparison's table."""
import pytest

from bench.budget import render_pairs, spy_stages, total_us

pytestmark = pytest.mark.unit

LOOP = "main (x.py:1);Receiver.loop (workers/receiver.py:108)"
R1 = "main (x.py:1);R1 (<asyncd-cfg-1>:39);Dispatcher.push (asyncd/ipc/dispatch.py:272)"
RAW = "\n".join([
    LOOP + ";Receiver.read (workers/receiver.py:82) 50",
    LOOP + ";Receiver.handle (workers/receiver.py:132);parse_msg (asyncd/sip/msg.py:580) 30",
    "main (x.py:1);R1 (<asyncd-cfg-1>:39);t_newtran (asyncd/modules/tm/newtran.py:98)"
    ";TmTable.insert (shm/tm_table.py:216) 20",
    R1 + ";Dispatcher._wake (asyncd/ipc/dispatch.py:240);Socket.send (zmq/sugar/socket.py:713) 10",
    R1 + ";LockSet.acquire (shm/locks.py:117);LockSet._slow_acquire (shm/locks.py:155) 40",
    LOOP + " 40",
]) + "\n"


def test_waits_are_left_out_and_each_sample_goes_to_its_innermost_stage(tmp_path):
    f = tmp_path / "spy.txt"
    f.write_text(RAW)
    st = spy_stages(f)
    # 100 samples of work: the recvfrom and the lock wait are not work
    assert st == {"other": 0.4, "parse": 0.3, "tm table": 0.2, "send": 0.1}


def test_an_empty_or_all_waiting_profile_has_no_stages(tmp_path):
    f = tmp_path / "spy.txt"
    f.write_text(RAW.splitlines()[0] + "\n")
    assert spy_stages(f) == {}


def test_a_runs_total_is_every_process_user_and_system_time():
    res = {"rows": [{"user_us": 40.0, "sys_us": 2.5}, {"user_us": 10.0, "sys_us": 0.5}]}
    assert total_us(res) == 53.0


def test_the_paired_table_gives_each_run_the_ratio_of_medians_and_the_pair_by_pair_range():
    table = render_pairs({1000: [(300.0, 0, 100.0, 0), (200.0, 0, 160.0, 0), (260.0, 1, 130.0, 0)],
                          6000: [(180.0, 0, 90.0, 0)]})
    rows = [line for line in table.splitlines() if line.startswith("| 1,000") or line.startswith("| 6,000")]
    # medians 260 / 130: 2.00x; pairs 3.00, 1.25, 2.00
    assert rows[0] == "| 1,000 | 300 / 200 / 260 (rc 1) | 100 / 160 / 130 | **2.00×** | 1.25–3.00× |"
    assert rows[1] == "| 6,000 | 180 | 90 | **2.00×** | 2.00–2.00× |"
