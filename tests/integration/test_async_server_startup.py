"""The ASYNC module on the real server at startup: its processes carry Kamailio's titles
(docs/kamailio-async.md §1.1), timer processes exist only when a timer is configured, and mode 0 without tm
refuses to start (docs/kamailio-async.md §3).

Runs in: the pytest process; every test starts the real `python -m asyncd`.
"""
import pytest

from tests.helpers import run_server
from tests.helpers.async_cfg import PRE, cfg


def test_process_titles_follow_kamailio():
    text = cfg("request_route {\n" + PRE + "    sl_send_reply(\"200\", \"OK\");\n}\n",
               core='async_workers=2\nasync_workers_group="name=g1;workers=1"\n'
                    'async_workers_group="name=g2;workers=1;nonblock=1"',
               params='modparam("async", "workers", 2)\nmodparam("async", "ms_timer", 10)\n')
    with run_server(text) as srv:
        titles = [t.replace("asyncd: ", "", 1) for t in srv.titles()]
        workers = [t for t in titles if t.startswith("Async Task Worker - ")]
        # later groups are inserted right after the head "default" (docs/kamailio-async.md §4.2)
        assert workers == ["Async Task Worker - default"] * 2 + \
            ["Async Task Worker - g2", "Async Task Worker - g1"]
        assert titles.count("ASYNC MOD TIMER") == 2
        assert titles.count("ASYNC MOD MS TIMER") == 1
        assert titles.index("ASYNC MOD TIMER") > titles.index("Async Task Worker - g1")
        # no ZeroMQ context (it starts an I/O thread) in the main process: contexts are
        # made after fork, per process (contracts §7)
        assert srv.processes()[0].num_threads() == 1
        for p in srv.processes()[1:]:
            assert p.num_threads() >= 2        # each child made its own context


def test_no_timer_processes_without_workers_or_ms_timer():
    text = cfg("request_route {\n" + PRE + "    sl_send_reply(\"200\", \"OK\");\n}\n",
               core="async_workers=1", params='modparam("async", "workers", 0)\n')
    with run_server(text) as srv:
        titles = " | ".join(srv.titles())
        assert "ASYNC MOD TIMER" not in titles and "ASYNC MOD MS TIMER" not in titles
        assert titles.count("Async Task Worker - default") == 1


def test_mode_0_needs_tm_loaded(run_server):
    # docs/kamailio-async.md §3: mode 0 binds tm at init; without tm the server refuses to start
    from tests.helpers import ServerFailed
    text = cfg("request_route {\n    async_task_data(\"R\", \"x\");\n    exit;\n}\n"
               "route[R] {\n    exit;\n}\n", core="async_workers=1",
               mods=("sl", "pv", "xlog", "async"))
    with pytest.raises(ServerFailed) as ei:
        with run_server(text):
            pass
    assert "tm module must be loaded" in str(ei.value)
