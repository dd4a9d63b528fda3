"""Fixtures for the cfg compiler tests (helpers in cfg_helpers.py)."""
import pytest

from cfg_helpers import Runner


@pytest.fixture
def runner():
    return Runner


@pytest.fixture
def logs():
    """Captures asyncd.core.log output as a list of lines."""
    import io
    from asyncd.core import log
    buf = io.StringIO()
    old = (log.state.out, log.state.level, log.state.stderr)
    log.state.out, log.state.level, log.state.stderr = buf, 3, True

    class L:
        @property
        def lines(self):
            return buf.getvalue().splitlines()
    yield L()
    log.state.out, log.state.level, log.state.stderr = old
