"""Fixtures for the shm tests: a fresh arena per test and fork helpers.

Runs in: the pytest process and the processes it forks (children always
leave through os._exit, so no pytest machinery runs twice).
"""
import os
import pytest

import shm.locks
from shm.arena import ShmArena


@pytest.fixture
def arena():
    a = ShmArena.create(32 << 20)
    yield a
    a.destroy()
    assert not os.path.exists("/dev/shm/" + a.name)


@pytest.fixture
def fast_slice(monkeypatch):
    """Waiters look at a lock's owner every 1 ms instead of every locks.SLICE, so
    a test can kill dozens of holders and recover each quickly."""
    monkeypatch.setattr(shm.locks, "SLICE", 0.001)
