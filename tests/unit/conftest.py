"""Fixtures shared by the unit tests."""
import os
import tempfile

import pytest


@pytest.fixture
def rundir():
    """A private run directory for ZeroMQ ipc endpoints, removed afterwards."""
    d = tempfile.mkdtemp(prefix="asyncd-t-")
    yield d
    for f in os.listdir(d):
        os.unlink(os.path.join(d, f))
    os.rmdir(d)
