"""The runtime directory and socket owners (asyncd/core/runtime.py): made
0700 once when missing, as Kamailio's main.c; user2uid / group2gid as
src/core/ut.c."""
import os
import stat
from types import SimpleNamespace

import pytest

from asyncd.core.runtime import group2gid, run_dir, user2uid


def test_run_dir_is_made_0700_once(tmp_path):
    d = tmp_path / "run"
    script = SimpleNamespace(core={"run_dir": str(d)})
    assert run_dir(script) == str(d) and stat.S_IMODE(os.stat(d).st_mode) == 0o700
    os.chmod(d, 0o755)
    assert run_dir(script) == str(d) and stat.S_IMODE(os.stat(d).st_mode) == 0o755   # left alone
    with pytest.raises(OSError, match="failed to create runtime dir"):
        run_dir(SimpleNamespace(core={"run_dir": str(tmp_path / "no" / "such")}))


def test_user_and_group_by_name_or_number():
    assert user2uid(None) == (-1, -1) and user2uid("") == (-1, -1) and group2gid("") == -1
    assert user2uid("0") == (0, -1) and user2uid(65534) == (65534, -1)
    assert user2uid("root") == (0, 0) and group2gid("root") == 0 and group2gid("7") == 7
    with pytest.raises(KeyError):
        user2uid("no-such-user-here")
    with pytest.raises(KeyError):
        group2gid("no-such-group-here")
