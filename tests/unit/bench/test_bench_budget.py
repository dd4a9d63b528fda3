"""bench/budget.py: py-spy raw stacks -> a process's CPU split by stage."""
import pytest

from bench.budget import spy_stages

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
