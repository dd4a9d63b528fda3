"""Fixtures for the shm tests: a fresh arena per test and fork helpers.

Runs in: the pytest process and the processes it forks (children always
leave through os._exit, so no pytest machinery runs twice).
"""
import os
import pytest

from shm.arena import ShmArena


@pytest.fixture
def arena():
    a = ShmArena.create(32 << 20)
    yield a
    a.destroy()
    assert not os.path.exists("/dev/shm/" + a.name)
