"""Shared pytest fixtures for every part of asyncd.

Runs in: the pytest process.

- `free_udp_port`: a free loopback UDP port (int).
- `run_server`: the context manager tests.helpers.run_server(cfg_text, defines=..., args=...):
  starts `python -m asyncd -DD -E -f CFG -A LPORT=<port>` under setsid, waits until every child is
  up, yields a Server (pid, port, addr, log(), titles(), stop()), then stops it and checks that no
  process and no /dev/shm segment is left.
- `sip_client`: factory `sip_client(addr) -> SipClient`, closed after the test.
- `compile_cfg_text`: `compile_cfg_text(text, defines=None) -> Script` in-process.
- `sipp`: tests.helpers.run_sipp, skipping the test when SIPp is not installed.
"""
import pytest

from tests.helpers import SipClient, free_udp_port as _free_udp_port, run_server as _run_server
from tests.helpers import run_sipp, sipp_path


@pytest.fixture
def free_udp_port():
    return _free_udp_port()


@pytest.fixture
def run_server():
    return _run_server


@pytest.fixture
def sip_client():
    clients = []

    def make(addr, **kw):
        c = SipClient(addr, **kw)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def compile_cfg_text():
    from asyncd.cfg.compiler import compile_cfg

    def do(text, defines=None, filename="test.cfg"):
        return compile_cfg(text=text, defines=defines, filename=filename)

    return do


@pytest.fixture
def sipp():
    if sipp_path() is None:
        pytest.skip("sipp not installed (the README test command installs sip-tester)")
    return run_sipp
