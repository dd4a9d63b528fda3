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
- `silent_udp_port` (module scope): a bound loopback UDP port that never answers (a next hop
  whose branches end by tm's fr timer).

Markers (registered in pyproject.toml) are applied here, by folder, in
`pytest_collection_modifyitems`; see its docstring.
"""
import socket
from pathlib import Path

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


@pytest.fixture(scope="module")
def silent_udp_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    yield s.getsockname()[1]
    s.close()


TESTS_DIR = Path(__file__).resolve().parent
KINDS = {"unit", "server", "sipp", "kamailio"}
STARTS = {"server", "sipp", "kamailio"}         # what a unit test never starts
# what the top folder says of a test that does not say it itself (STYLE.md, Tests)
FOLDER_KINDS = {"integration": ("server",), "acceptance": ("server",), "sipp": ("sipp", "server")}
# fixtures that start something, wherever the test lives
FIXTURE_KINDS = {"run_server": "server", "sipp": "sipp"}


def pytest_collection_modifyitems(config, items):
    """Mark every test `unit`, `server`, `sipp` and/or `kamailio`, so `-m unit` is a fast subset.

    - tests/unit: `unit`, unless the test is `slow` (unit is the quick in-process subset; the
      10 s htable soak is only `slow`). Nothing there may start a server, SIPp or Kamailio.
    - tests/integration, tests/acceptance: `server`; tests/sipp: `sipp` and `server`; unless the
      test (or its module's pytestmark) is marked `unit` (in-process, living beside the server
      tests) or `kamailio` (runs Kamailio, not asyncd). Explicit `server`/`sipp` add to these.
    - Anywhere: asking for the `run_server` / `sipp` fixture makes a test `server` / `sipp`.
    A `unit` test that is also slow, server, sipp or kamailio is a collection error.
    """
    for item in items:
        slow = item.get_closest_marker("slow") is not None
        explicit = {m.name for m in item.iter_markers()} & KINDS
        kinds = set(explicit)
        folder = _top_folder(item.path)
        if folder == "unit":
            if not slow:
                kinds.add("unit")
        elif not explicit & {"unit", "kamailio"}:
            kinds.update(FOLDER_KINDS.get(folder, ()))
        kinds.update(k for f, k in FIXTURE_KINDS.items() if f in getattr(item, "fixturenames", ()))
        if (kinds & STARTS and (folder == "unit" or "unit" in kinds)) or ("unit" in kinds and slow):
            raise pytest.UsageError(
                f"{item.nodeid}: a unit test (tests/unit or marked unit) that is also "
                f"{', '.join(sorted(kinds & STARTS) + (['slow'] if slow else []))}; unit tests are "
                "quick and run in the pytest process: one that starts a server, SIPp or Kamailio "
                "goes to tests/integration")
        for k in sorted(kinds - explicit):
            item.add_marker(k)


def _top_folder(path):
    try:
        return Path(path).resolve().relative_to(TESTS_DIR).parts[0]
    except (ValueError, IndexError):
        return None
