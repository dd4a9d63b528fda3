"""async.stats and the queue-wait histogram: two task groups served by
forked workers running the real loop (workers/task_worker.py), tasks pushed
through both, and the numbers the RPC method reports match what was sent:
accepted == run, the histogram's count is the tasks run, and a task that
waited behind a slow one lands in a bucket past its wait.

Runs in: the pytest process, plus forked task workers.
"""
import multiprocessing
import os
import time
from types import SimpleNamespace

import pytest

from asyncd.cfg.compiler import compile_cfg
from asyncd.core import log
from asyncd.core.context import ProcState
from asyncd.ipc import async_task, codec
from shm.arena import ShmArena
from workers import task_worker

FORK = multiprocessing.get_context("fork")
KIND = "t-stats"
CFG = '''
async_workers_group="name=fast;workers=2"
async_workers_group="name=slow;workers=1"
loadmodule "tm.so"
loadmodule "async.so"
request_route { exit; }
'''


def _run(proc, item):
    time.sleep(item[1])
    return True


def _worker(group, widx, logfile):
    log.state.out = open(logfile, "a")
    proc = ProcState(None, -2, f"Async Task Worker - {group.name}", "task_worker")
    task_worker.run(proc, SimpleNamespace(handlers=group), widx)


@pytest.fixture
def server(rundir):
    async_task.register_handler(KIND, _run)
    s = compile_cfg(text=CFG)
    s.rundir = rundir
    s.shm = ShmArena.create(16 << 20)
    fw = async_task.init(s)
    s.init_modules()
    procs = []
    for g in fw.groups:
        for i in range(g.workers):
            p = FORK.Process(target=_worker, args=(g, i, os.path.join(rundir, f"{g.name}-{i}.log")))
            p.start()
            procs.append(p)
    time.sleep(0.3)             # the workers bound their endpoints
    yield s, fw
    for p in procs:
        p.kill()
        p.join()
    async_task.HANDLERS.pop(KIND, None)
    s.destroy_modules()
    s.shm.destroy()


def _stats(s):
    return s.rpc.call(s, None, "async.stats", []).values[0]


def _settle(s, want, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = _stats(s)
        if {g["name"]: g["run"] for g in st["groups"]} == want:
            return st
        time.sleep(0.02)
    raise AssertionError(f"tasks did not all run: {_stats(s)}")


def test_async_stats_counts_what_each_group_ran_and_how_long_it_waited(server):
    s, fw = server
    fast, slow = fw.group("fast"), fw.group("slow")
    for _ in range(20):
        assert fast.disp.push(codec.pack([KIND, 0.0])) == 0
    # the slow group has one worker: the second task waits ~0.2 s behind the first
    assert slow.disp.push(codec.pack([KIND, 0.2])) == 0
    assert slow.disp.push(codec.pack([KIND, 0.0])) == 0
    st = _settle(s, {"default": 0, "fast": 20, "slow": 2})
    g = {row["name"]: row for row in st["groups"]}
    assert [row["name"] for row in st["groups"]] == [grp.name for grp in fw.groups]
    assert g["fast"]["workers"] == 2 and g["slow"]["workers"] == 1
    for row, n in ((g["fast"], 20), (g["slow"], 2)):
        assert (row["accepted"], row["rejected"], row["run"], row["pending"]) == (n, 0, n, 0)
        assert row["busy"] == 0 and row["queued"] == 0
        assert row["wait"]["count"] == n and row["wait"]["le_inf"] == n
    wait = g["slow"]["wait"]
    assert wait["le_100ms"] == 1 and wait["le_250ms"] == 2       # one waited ~200 ms
    assert wait["sum_ms"] >= 150
    bounds, cum, total, count = fw.wait_histogram("slow")       # the exporter's API
    assert len(cum) == len(bounds) + 1 and cum[-1] == count == 2 and cum == sorted(cum)
    assert fw.wait_histogram("nope") is None
    # no ASYNC timer processes in this cfg (async workers=1 by default: the seconds feed exists)
    assert [t["name"] for t in st["timers"]] == ["ASYNC MOD TIMER"]
    assert st["timers"][0]["accepted"] == 0
