"""The runtime cfg framework (asyncd/core/cfg_groups.py): a change made in
one process is applied by every other at its next update() (Kamailio's
cfg_update() per message), `debug` becomes the process's log level, bad
values are refused and change nothing.

Runs in: the pytest process and the processes it forks.
"""
import os

import pytest

from asyncd.core import log
from asyncd.core.cfg_groups import CfgError, CfgGroups, CfgVar, core_vars
from shm.arena import ShmArena


@pytest.fixture
def groups():
    arena = ShmArena.create(1 << 20)
    g = CfgGroups()
    g.declare("core", core_vars({"debug": 1}))
    g.declare("tm", [CfgVar("fr_timer", int, "timer", 30000, lo=1, hi=100000),
                     CfgVar("note", str, "a text", "x")])
    saved = log.state.level
    g.allocate(arena)
    yield g
    log.state.level = saved
    arena.destroy()


def _child(g, rd, wr):
    """Until the pipe closes: on each request byte, update() as a loop does
    before a message, then report the log level and tm.note."""
    while os.read(rd, 1):
        g.update()
        os.write(wr, f"{log.state.level}|{g.get('tm', 'note')}\n".encode())
    os._exit(0)


def _ask(rd, wr):
    os.write(wr, b"?")
    return os.read(rd, 256).decode().strip().split("|")


def test_a_change_in_one_process_is_applied_in_another_at_its_next_update(groups):
    to_child, from_parent = os.pipe()
    to_parent, from_child = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(from_parent)
        os.close(to_parent)
        _child(groups, to_child, from_child)
    os.close(to_child)
    os.close(from_child)
    try:
        level, note = _ask(to_parent, from_parent)
        assert (int(level), note) == (log.state.level, "x")
        groups.set_now("core", "debug", 3)          # the "RPC process": this one
        groups.set_now("tm", "note", "changed")
        assert log.state.level == 3                   # applied here at once
        level, note = _ask(to_parent, from_parent)
        assert (level, note) == ("3", "changed")      # and there at its next message
    finally:
        os.close(from_parent)
        os.close(to_parent)
        os.waitpid(pid, 0)


def test_bad_values_are_refused_and_change_nothing(groups):
    before = groups.current("tm", "fr_timer")
    for group, name, value in (("tm", "fr_timer", 0), ("tm", "fr_timer", 100001),
                               ("core", "nope", 1), ("nope", "debug", 1),
                               ("tm", "fr_timer", "abc"), ("core", "log_facility", "LOCAL9")):
        with pytest.raises(CfgError):
            groups.set_now(group, name, value)
    assert groups.current("tm", "fr_timer") == before
    groups.set_now("tm", "fr_timer", "500")            # a numeric string converts, as Kamailio's
    assert groups.current("tm", "fr_timer") == 500


def test_delayed_changes_apply_only_on_commit(groups):
    groups.set_delayed("core", "memlog", 2)
    assert groups.diff() == [("core", "memlog", 0, 2)]
    assert groups.current("core", "memlog") == 0
    groups.commit()
    assert groups.current("core", "memlog") == 2 and groups.diff() == []
    groups.set_delayed("core", "memlog", 5)
    groups.rollback()
    assert groups.current("core", "memlog") == 2


def test_update_without_a_change_reads_one_word():
    g = CfgGroups()
    g.declare("core", core_vars({}))
    g.update()                                         # before allocate: a no-op
    assert g.get("core", "debug") == 0
