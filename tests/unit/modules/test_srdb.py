"""The DB API (asyncd/modules/srdb.py): db_url parsing as Kamailio's db_id.c,
binding a URL to the loaded driver module by its scheme (the startup error
when the module is not loaded), one connection per process, typed values.

Runs in: the pytest process.
"""
import os
from types import SimpleNamespace

import pytest

from asyncd.core.errors import CfgError
from asyncd.modules import srdb

pytestmark = pytest.mark.unit


def test_parse_url_forms():
    u = srdb.parse_url("redis://127.0.0.1:6379/2")
    assert (u.scheme, u.host, u.port, u.database, u.username, u.password) == (
        "redis", "127.0.0.1", 6379, "2", "", "")
    u = srdb.parse_url("redis://kam:s%40cret@db.example.com:7000/0")
    assert (u.username, u.password, u.host, u.port) == ("kam", "s@cret", "db.example.com", 7000)
    u = srdb.parse_url("redis://:pw@[::1]:6380/1")
    assert (u.host, u.port, u.password, u.database) == ("::1", 6380, "pw", "1")
    assert srdb.parse_url("redis://localhost").port == 0
    assert str(srdb.parse_url("mysql://u:p@h/kamailio")) == "mysql://u:p@h/kamailio"


@pytest.mark.parametrize("bad", ["", "redis", "127.0.0.1:6379", "redis://h:99999/0", "redis://h:x/0"])
def test_parse_url_rejects(bad):
    with pytest.raises(ValueError):
        srdb.parse_url(bad)


class FakeCon(srdb.Connection):
    caps = (srdb.CAP_QUERY,)
    opened = []

    def __init__(self, url):
        super().__init__(url)
        FakeCon.opened.append(os.getpid())

    def query(self, keys=(), ops=None, vals=(), columns=(), order=None):
        assert self.table == "version" and keys == ["table_name"]
        return srdb.Result(["table_version"], [srdb.INT], [[9]] if vals[0].value == "location" else [])


srdb.register_driver("fake", "db_fake", FakeCon, (srdb.CAP_QUERY,))


def _script(*mods):
    return SimpleNamespace(modules=[SimpleNamespace(name=m) for m in mods])


def test_bind_needs_the_driver_module_loaded():
    with pytest.raises(CfgError, match=r'usrloc: no DB driver module loaded for "fake://h/0" '
                                       r'\(module db_fake not found'):
        srdb.bind(_script("tm"), "fake://h/0", "usrloc")
    with pytest.raises(CfgError, match='module db_mysql not found. Missing loadmodule "db_mysql.so"'):
        srdb.bind(_script("db_fake"), "mysql://h/kamailio", "usrloc")
    with pytest.raises(CfgError, match="invalid DB URL"):
        srdb.bind(_script("db_fake"), "nonsense", "usrloc")
    b = srdb.bind(_script("db_fake"), "fake://h/0", "usrloc")
    assert b.has(srdb.CAP_QUERY) and not b.has(srdb.CAP_RAW_QUERY)


def test_one_connection_per_process_and_version_check():
    FakeCon.opened.clear()
    b = srdb.bind(_script("db_fake"), "fake://h/0", "usrloc")
    c = b.connection()
    assert b.connection() is c and FakeCon.opened == [os.getpid()]
    b._pid = -1                     # as seen from a forked child: a fresh connection
    assert b.connection() is not c
    srdb.check_table_version(b.connection(), "location", 9)
    with pytest.raises(srdb.DbError, match="invalid table version"):
        srdb.check_table_version(b.connection(), "location", 8)
    with pytest.raises(srdb.DbError, match="no version for table htable"):
        srdb.check_table_version(b.connection(), "htable", 2)
    with pytest.raises(srdb.DbError, match="Database does not support raw queries"):
        b.connection().raw_query("select 1")


def test_typed_values():
    assert srdb.int_val("7") == srdb.Val(srdb.INT, 7)
    assert srdb.str_val(None).null and not srdb.str_val("").null
    assert srdb.datetime_val(1.9).value == 1
    r = srdb.Result(["a", "b"], [srdb.INT, srdb.STR], [[1, "x"], [None, "y"]])
    assert r.dicts() == [{"a": 1, "b": "x"}, {"a": None, "b": "y"}]
