"""db_redis's schema files, `keys` modparam, value encoding and key building,
as Kamailio 5.6's redis_table.c / redis_dbase.c do them (the layout a
Kamailio node on the same Redis reads).

Runs in: the pytest process.
"""
import os
import time
from types import SimpleNamespace

import pytest

from asyncd.core.errors import CfgError
from asyncd.modules import db_redis, srdb
from asyncd.modules.db_redis import DEFAULT_SCHEMA_PATH
from asyncd.modules.db_redis_schema import (find_key, load_schema, matches, parse_keys,
                                            parse_schema_file, row_type_keys, str2val, type_keys,
                                            val2str)
from asyncd.modules.srdb import (OP_EQ, OP_GT, OP_LT, OP_NEQ, Val, bitmap_val, datetime_val,
                                 double_val, int_val, str_val)

pytestmark = pytest.mark.unit

LOC = ("id/int,ruid/string,username/string,domain/string,expires/time,q/double,cseq/int,"
       "partition/int,keepalive/int,\n9\n")


def _tables(keys="location=entry:ruid&usrdom:username,domain&timer:partition,keepalive"):
    return parse_keys(keys, {"location": parse_schema_file("location", LOC)})


def test_schema_file_and_package_schemas():
    t = parse_schema_file("location", LOC)
    assert t.version == 9 and t.columns["expires"] == srdb.DATETIME and t.columns["q"] == srdb.DOUBLE
    assert parse_schema_file("x", "a/bigint,b/ubigint,c/blob,d/uint,\n2\n").columns == {
        "a": srdb.BIGINT, "b": srdb.UBIGINT, "c": srdb.BLOB, "d": srdb.UINT}
    with pytest.raises(ValueError, match="duplicate column"):
        parse_schema_file("x", "a/int,a/int,\n1\n")
    with pytest.raises(ValueError, match="Invalid schema column type"):
        parse_schema_file("x", "a/zzz,\n1\n")
    if os.path.isdir(DEFAULT_SCHEMA_PATH):      # the Debian package's schemas
        tables = load_schema(DEFAULT_SCHEMA_PATH)
        assert tables["location"].version == 9 and tables["version"].columns["table_version"] == srdb.INT


def test_keys_param():
    t = _tables()["location"]
    assert t.entry == ["ruid"] and t.types == [("usrdom", ["username", "domain"]),
                                               ("timer", ["partition", "keepalive"])]
    t = _tables("v3:location=entry:ruid")["location"]
    assert t.version_code == "v3:" and t.key_prefix("entry") == "v3:location:entry"
    with pytest.raises(ValueError, match="No table schema found for table 'nosuch'"):
        _tables("nosuch=entry:id")
    with pytest.raises(ValueError, match="expecting <table>=<definition>"):
        _tables("location")


def test_values_as_kamailio_writes_them():
    assert val2str(int_val(-1)) == "-1" and val2str(int_val(0xFFFFFFFF)) == "-1"
    assert val2str(bitmap_val(-1)) == "4294967295"
    assert val2str(Val(srdb.BIGINT, 42)) == "0000000042"
    assert val2str(double_val(-1)) == "-1.000000" and val2str(double_val(0.5)) == "0.500000"
    t = 1700000000
    assert val2str(datetime_val(t)) == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
    assert val2str(str_val(None)) is None and val2str(str_val("")) == ""
    with pytest.raises(srdb.DbError):
        val2str(Val(srdb.BLOB, b"x"))
    assert str2val(srdb.DATETIME, val2str(datetime_val(t))) == t
    assert str2val(srdb.INT, "") == 0 and str2val(srdb.INT, "-5") == -5 and str2val(srdb.INT, None) is None
    assert str2val(srdb.DOUBLE, "-1.000000") == -1.0 and str2val(srdb.STRING, "") == ""
    with pytest.raises(srdb.DbError):
        str2val(srdb.INT, "12abc")


def test_compare_column():
    assert matches(int_val(5), OP_GT, "7") and not matches(int_val(5), OP_EQ, "7")
    assert matches(int_val(4), "&", "6") and not matches(int_val(1), "&", "6")
    assert matches(str_val("bob"), OP_EQ, "bob") and not matches(str_val("bob"), OP_EQ, "bobby")
    now = int(time.time())
    assert matches(datetime_val(now + 1), OP_LT, val2str(datetime_val(now)))
    assert matches(datetime_val(0), OP_NEQ, val2str(datetime_val(now)))
    assert matches(str_val(None), OP_EQ, None) and not matches(str_val("x"), OP_EQ, None)


def test_entry_and_type_keys():
    t = _tables()["location"]
    ks = ["username", "domain", "ruid", "partition", "keepalive"]
    vs = [str_val("bob"), str_val("example.com"), str_val("uloc-1"), int_val(0), int_val(0)]
    assert find_key(t, "entry", t.entry, ks, None, vs) == "location:entry::uloc-1"
    assert type_keys(t, ks, vs) == [("usrdom", "location:usrdom::bob:example.com"),
                                    ("timer", "location:timer::0:0")]
    # a NULL or a non-= condition ahead of the key column stops the search (find_query_key)
    assert find_key(t, "entry", t.entry, ["domain", "ruid"], None, [str_val(None), str_val("r")]) is None
    assert find_key(t, "entry", t.entry, ["ruid"], [OP_NEQ], [str_val("r")]) is None
    assert type_keys(t, ["username"], [str_val("bob")]) == []        # domain missing: no usrdom key
    assert t.index_set("timer") == "location::index::timer"
    raw = {"username": "bob", "domain": "example.com", "partition": "0", "keepalive": "1"}
    assert row_type_keys(t, raw) == [("usrdom", "location:usrdom::bob:example.com"),
                                     ("timer", "location:timer::0:1")]
    assert find_key(t, "entry", [], [], None, []) == "location:entry"
    assert find_key(t, "timer", ["expires"], ["expires"], [OP_LT], [datetime_val(1)]) is None
    assert find_key(t, "entry", t.entry, ["ruid"], [OP_EQ], [str_val("a:b")]) == "location:entry::a:b"


def test_missing_schema_directory_is_a_startup_error_that_says_where_they_come_from(tmp_path):
    """db_redis_mod.c mod_init refuses a schema_path it cannot open; asyncd's message
    also names where Kamailio's schema files come from."""
    script = SimpleNamespace(modparams={"db_redis": {"schema_path": str(tmp_path / "none")}})
    with pytest.raises(CfgError, match="Failed to open schema directory .*kamailio-redis-modules"):
        db_redis.mod_init(script)
