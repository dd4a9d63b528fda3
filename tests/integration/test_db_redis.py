"""db_redis through the DB API on a real redis-server, in process: rows found
by entry key, type key or table scan with Kamailio's operators; an update
that changes a type's columns moves the row between type keys and index
sets; a delete empties them (Kamailio's Lua script); a version code in
`keys`; Redis gone -> DbError at once, back -> the next call works.

Runs in: the pytest process (redis-server is a real process).
"""
import time
from types import SimpleNamespace

import pytest

from asyncd.modules import db_redis, srdb
from asyncd.modules.srdb import OP_GEQ, OP_GT, OP_LT, OP_NEQ, datetime_val, int_val, str_val
from tests.helpers.redis_server import REDIS_SERVER, SKIP_REDIS, run_redis

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REDIS)


@pytest.fixture
def db(tmp_path):
    (tmp_path / "acc").write_text("id/int,method/string,callid/string,code/int,time/time,\n5\n")
    (tmp_path / "version").write_text("table_name/string,table_version/int,\n1\n")
    mp = {"keys": ["v1:acc=entry:callid&bycode:code,method"], "schema_path": str(tmp_path),
          "connect_timeout": 300, "cmd_timeout": 300}
    script = SimpleNamespace(modules=[SimpleNamespace(name="db_redis")], modparams={"db_redis": mp})
    db_redis.S.tables = None
    with run_redis() as r:
        con = srdb.bind(script, r.url + "/3", "test").connection()
        con.use_table("acc")
        yield r, con, r.client(db=3)
        con.close()
    db_redis.S.tables = None


def _row(callid, code, method="INVITE", t=1700000000):
    return (["callid", "code", "method", "time"],
            [str_val(callid), int_val(code), str_val(method), datetime_val(t)])


def test_keys_sets_and_queries(db):
    r, con, rc = db
    for i, code in enumerate((200, 486, 200)):
        con.insert(*_row(f"c{i}", code, t=1700000000 + i))
    assert rc.hgetall("v1:acc:entry::c0")["code"] == "200"
    assert rc.smembers("v1:acc:bycode::200:INVITE") == {"v1:acc:entry::c0", "v1:acc:entry::c2"}
    assert rc.smembers("v1:acc::index::bycode") == {"v1:acc:bycode::200:INVITE", "v1:acc:bycode::486:INVITE"}
    q = con.query(["code", "method"], None, [int_val(200), str_val("INVITE")], ["callid", "time"])
    assert sorted(q.rows) == [["c0", 1700000000], ["c2", 1700000002]]
    assert q.types == [srdb.STRING, srdb.DATETIME]
    assert con.query(["callid"], None, [str_val("c1")], ["code"]).rows == [[486]]
    assert con.query(["code", "method"], None, [int_val(404), str_val("INVITE")], ["callid"]).rows == []
    scan = con.query(["time", "code"], [OP_GT, OP_NEQ], [datetime_val(1700000000), int_val(486)], ["callid"])
    assert scan.rows == [["c2"]]
    assert len(con.query([], None, [], []).rows) == 3            # every row, every column
    con.use_table("version")
    assert con.query(["table_name"], None, [str_val("acc")], ["table_version"]).rows == [[5]]


def test_update_moves_type_keys_and_delete_empties_them(db):
    r, con, rc = db
    con.insert(*_row("x", 180))
    assert con.update(["callid"], None, [str_val("x")], ["code", "method"],
                      [int_val(200), str_val("INVITE")]) == 1
    assert rc.smembers("v1:acc:bycode::200:INVITE") == {"v1:acc:entry::x"}
    assert not rc.exists("v1:acc:bycode::180:INVITE")
    assert rc.smembers("v1:acc::index::bycode") == {"v1:acc:bycode::200:INVITE"}
    assert con.update(["callid"], None, [str_val("nosuch")], ["code"], [int_val(1)]) == 0
    assert not rc.exists("v1:acc:entry::nosuch")                  # update never inserts
    assert con.delete(["code"], [OP_GEQ], [int_val(100)]) == 1
    assert rc.keys("*") == []


def test_errors_and_reconnect(db):
    r, con, rc = db
    with pytest.raises(srdb.DbError, match="no matching key definition"):
        con.insert(["code"], [int_val(1)])
    con.use_table("nosuch")
    with pytest.raises(srdb.DbError, match="undefined table 'nosuch'") as refused:
        con.query(["a"], None, [int_val(1)], ["b"])
    assert not isinstance(refused.value, srdb.DbUnreachable)
    con.use_table("acc")
    con.insert(*_row("y", 200))
    r.stop()
    t0 = time.monotonic()
    with pytest.raises(srdb.DbUnreachable, match="failed during query"):     # a DbError too
        con.query(["callid"], None, [str_val("y")], ["code"])
    assert time.monotonic() - t0 < 1.0
    r.start()
    assert con.query(["callid"], [OP_LT], [str_val("z")], ["code"]).rows == []    # data went with it
    con.insert(*_row("y", 200))
    assert con.query(["callid"], None, [str_val("y")], ["code"]).rows == [[200]]
