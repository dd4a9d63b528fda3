"""The tcp main process's loop object (workers/tcp_main.py), in process, without its loop.

Runs in: the pytest process.
"""
import types

import pytest

from asyncd.ipc.tcp import TcpConf, TcpPlan
from workers import tcp_main


@pytest.fixture
def tm():
    plan = TcpPlan(TcpConf({}), 1)
    yield tcp_main.TcpMain(None, plan)
    plan.close()


def test_rate_limited_warnings_once_a_second_per_key_and_bounded(tm, monkeypatch):
    """A flood of refused addresses and full queues (one key each) logs each once, and the
    keys do not pile up: those older than a second go each time the dict doubles."""
    now = [1000.0]
    monkeypatch.setattr(tcp_main, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    logged = []
    monkeypatch.setattr(tcp_main.log, "warn", lambda mod, text: logged.append(text))
    for _ in range(5):
        tm.warn_limited("max", "over tcp_max_connections")
        now[0] += 0.3
    assert len(logged) == 2                 # at 0 s and 1.2 s
    for i in range(100_000):
        now[0] += 0.001
        tm.warn_limited(("wq", i), f"queue of connection {i} full")
    assert len(logged) == 2 + 100_000
    assert len(tm._warned) <= 2 * tcp_main.WARN_KEYS     # 1,000 a second: pruned at 2x that
    # 5,000 keys within a second all stay (each is still rate-limiting), and a second later
    # they go
    for i in range(5_000):
        now[0] += 0.0001
        tm.warn_limited(("ip", i), f"too many connections from {i}")
    assert len(tm._warned) >= 5_000
    for i in range(20_000):
        now[0] += 0.01
        tm.warn_limited(("wq", -i), "full")
    assert len(tm._warned) <= tcp_main.WARN_KEYS
