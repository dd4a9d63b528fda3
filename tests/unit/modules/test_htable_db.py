"""htable's DB side in process: Kamailio's row pass (ht_db_load_table: arrays
of key_type 1 with their ::size, value types through str2sint, expired rows
skipped, NULL keys and wrong column types refused), `cols` packing with
coldelim/colnull, the table spec checks of dbmode=2, core_case_hash against
values Kamailio computes, and a dbmode=2 table on a real redis-server
(get/set/incr/expiry/items/reset, rows in Kamailio's layout).

Runs in: the pytest process.
"""
import os
import re
import time

import pytest

from asyncd.cfg.compiler import compile_cfg
from asyncd.core.errors import CfgError
from asyncd.modules import db_redis, htable, srdb
from asyncd.modules.db_redis import DEFAULT_SCHEMA_PATH
from asyncd.modules.htable_db import HtDbConf, HtDbFailed, read_table, str2sint
from asyncd.modules.htable_dbt import DbTable
from asyncd.modules.htable_rpc import core_case_hash
from asyncd.modules.srdb import BLOB, DOUBLE, INT, STRING, Result
from shm.arena import ShmArena
from tests.helpers.redis_server import REDIS_SERVER, SKIP_REDIS, run_redis

pytestmark = pytest.mark.unit
MP = {"db_url": "x://", "key_name_column": "key_name", "key_type_column": "key_type",
      "value_type_column": "value_type", "key_value_column": "key_value", "expires_column": "expires",
      "array_size_suffix": "::size", "db_expires": 1}


class FakeCon:
    """A connection that answers one query with fixed rows (and records it)."""

    def __init__(self, types, rows):
        self.res = Result([], types, rows)
        self.asked = None

    def use_table(self, t):
        self.table = t

    def query(self, keys, ops, vals, columns, order=None):
        self.asked = (list(columns), order)
        return self.res


def _conf(**kw):
    return HtDbConf(dict(MP, **kw))


def _spec(**kw):
    return dict({"dbtable": "htable", "autoexpire": 300, "size": 4}, **kw)


def test_str2sint_is_kamailios():
    assert [str2sint(s) for s in ("12", "-7", "+3", "12abc", "abc", "", "99999999999", "-99999999999")] == \
        [12, -7, 3, 12, 0, 0, 2 ** 31 - 1, -2 ** 31]


def test_rows_arrays_types_and_expiry():
    now = int(time.time())
    rows = [["b", 1, 0, "b1", 0], ["x", 0, 1, "5z", now + 50], ["b", 1, 1, "2", 0],
            ["old", 0, 0, "gone", now - 5], ["a", 0, 0, "s", 0], ["c", 1, 0, "c1", 0]]
    con = FakeCon([STRING, INT, INT, STRING, INT], rows)
    out = read_table(_conf(), _spec(), "t", con)
    assert con.asked == (["key_name", "key_type", "value_type", "key_value", "expires"], "key_name")
    # sorted by key name (db_redis ignores ORDER BY), "old" skipped, arrays numbered
    assert out == [("a", "s", 0), ("b[0]", "b1", 0), ("b[1]", 2, 0), ("b::size", 2, 0),
                   ("c[0]", "c1", 0), ("c::size", 1, 0), ("x", 5, now + 50)]


def test_no_expires_column_without_db_expires():
    con = FakeCon([STRING, INT, INT, STRING], [["k", 0, 0, "v"]])
    assert read_table(_conf(db_expires=0), _spec(), "t", con) == [("k", "v", 0)]
    assert con.asked[0] == ["key_name", "key_type", "value_type", "key_value"]


@pytest.mark.parametrize("types, row, text", [
    ([STRING, INT, INT, STRING], [None, 0, 0, "v"], "has NULL key value"),
    ([INT, INT, INT, STRING], [5, 0, 0, "v"], "key type must be string"),
    ([STRING, STRING, INT, STRING], ["k", "0", 0, "v"], "Wrong db type [string] for key_type column"),
    ([STRING, INT, INT, STRING], ["k", 0, 0, None], "null value in row 0"),
    ([STRING, INT, INT, DOUBLE], ["k", 0, 0, 1.5], "Wrong db type [double] for key_value column"),
])
def test_bad_rows_fail_the_load(types, row, text):
    with pytest.raises(HtDbFailed) as e:
        read_table(_conf(db_expires=0), _spec(), "t", FakeCon(types, [row]))
    assert text in str(e.value)


def test_cols_packed_with_coldelim_and_colnull():
    con = FakeCon([STRING, STRING, INT, BLOB], [["k", "v", 3, None], ["j", None, None, b"b"]])
    out = read_table(_conf(), _spec(cols="key_name,key_value,expires,x"), "t", con)
    assert con.asked == (["key_name", "key_value", "expires", "x"], "key_name")
    assert out == [("j", "*,*,b", 0), ("k", "v,3,*", 0)]
    out = read_table(_conf(), _spec(cols="key_name,key_value,expires,x", coldelim="|", colnull=""),
                     "t", con)
    assert out == [("j", "||b", 0), ("k", "v|3|", 0)]


def test_quoted_cols_in_the_spec():
    name, p = htable.parse_table_spec("t=>dbtable=htable;cols='key_name,key_value';size=2")
    assert (name, p["cols"], p["size"], p["dbmode"]) == ("t", "key_name,key_value", 2, 0)


def test_core_case_hash_matches_kamailio():
    # slots Kamailio 5.6.3's htable.dump gives these keys in a size=4 table (16 slots)
    assert {k: core_case_hash(k) & 15 for k in ("n", "s", "neg", "arr::size", "arr[0]")} == \
        {"n": 3, "s": 13, "neg": 13, "arr::size": 2, "arr[0]": 1}
    assert core_case_hash("ABC") == core_case_hash("abc")


HEAD = '''
loadmodule "pv.so"
loadmodule "db_redis.so"
loadmodule "htable.so"
modparam("db_redis", "keys", "htable=entry:key_name")
{params}
request_route {{ $sht(c=>x) = 1; }}
'''


def _init(params):
    db_redis.S.tables = None
    s = compile_cfg(text=HEAD.format(params=params))
    s.shm = ShmArena.create(4 << 20)
    try:
        s.init_modules()
        return s
    finally:
        s.shm.destroy()
        s.destroy_modules()


@pytest.mark.parametrize("params, text", [
    ('modparam("htable", "htable", "c=>dbtable=htable;dbmode=2")', "dbmode=2 needs a dbtable and"),
    ('modparam("htable", "db_url", "redis://127.0.0.1:1/0")\n'
     'modparam("htable", "htable", "c=>dbmode=2")', "c: dbmode=2 needs a dbtable"),
    ('modparam("htable", "db_url", "redis://127.0.0.1:1/0")\n'
     'modparam("htable", "htable", "c=>dbtable=htable;dbmode=2;cols=\'key_name,key_value\'")',
     "cannot be used with cols"),
    ('modparam("htable", "htable", "c=>coldelim=ab")', "coldelim must be one character"),
])
def test_spec_errors(params, text):
    if not os.path.isdir(DEFAULT_SCHEMA_PATH):
        pytest.skip("kamailio-redis-modules' schema files are not installed")
    with pytest.raises(CfgError) as e:
        _init(params)
    assert text in str(e.value)


@pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REDIS)
def test_dbmode2_table_on_redis():
    if not os.path.isdir(DEFAULT_SCHEMA_PATH):
        pytest.skip("kamailio-redis-modules' schema files are not installed")
    with run_redis() as r:
        db_redis.S.tables = None
        params = (f'modparam("htable", "db_url", "redis://127.0.0.1:{r.port}/0")\n'
                  'modparam("htable", "htable", "c=>dbtable=htable;dbmode=2;autoexpire=60;initval=0")')
        s = compile_cfg(text=HEAD.format(params=params))
        s.shm = ShmArena.create(4 << 20)
        try:
            s.init_modules()
            t = htable.S.tables["c"]
            assert isinstance(t, DbTable)
            _exercise(t, r.client())
        finally:
            s.destroy_modules()
            s.shm.destroy()


def _exercise(t, rc):
    assert t.get("k") == 0                                  # initval
    assert t.set("k", "v") and t.get("k") == "v"
    h = rc.hgetall("htable:entry::k")
    assert {f: h[f] for f in ("key_name", "key_type", "value_type", "key_value")} == \
        {"key_name": "k", "key_type": "0", "value_type": "0", "key_value": "v"}
    assert abs(int(h["expires"]) - time.time() - 60) < 3
    assert t.incr("n", 5) == 5 and t.incr("n", -1) == 4 and t.incr("k", 1) is None
    assert rc.hget("htable:entry::n", "value_type") == "1"
    assert 58 <= t.get_expire("n") <= 60
    assert t.set_expire("n", 1000) and 998 <= t.get_expire("n") <= 1000
    assert sorted(t.items()) == [("k", "v"), ("n", 4)]
    assert t.count_match("**", False) == 2
    rc.hset("htable:entry::k", "expires", str(int(time.time()) - 1))      # past: reads initval
    assert t.get("k") == 0 and t.lookup("k") is None
    got = []
    assert t.expire_tick(expired=got) == 1 and got == [("k", "v")]
    assert not rc.exists("htable:entry::k")
    assert t.remove_match(re.compile("^n$"), False) == 1 and t.items() == []
    rc.hset("htable:entry::g", mapping={"key_name": "g", "value_type": "x", "key_value": "v",
                                        "expires": "soon"})
    assert t.get("g") is None and t.items() == []           # the driver refuses the row: $null, no raise
    rc.delete("htable:entry::g")
    t.set("a", 1)
    t.reset()
    assert t.items() == []
    assert t.delete("zz")
    assert srdb.parse_url(t.conf.url).scheme == "redis"
