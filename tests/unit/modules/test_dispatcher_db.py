"""dispatcher's DB load (asyncd/modules/dispatcher_db.py) on an in-memory DB
connection: the table version decides the columns read, the rows become the
same list a list file with the same lines gives, ds_db_extra_attrs, bad rows
skipped (counted) or failing the load with ds_load_mode=1, DB failures.

Runs in: the pytest process.
"""
import pytest

from asyncd.core.errors import CfgError
from asyncd.modules import srdb
from asyncd.modules.dispatcher_db import DsDb, DsDbFailed, parse_extra_attrs
from asyncd.modules.dispatcher_list import load_file

pytestmark = pytest.mark.unit

MP = {"db_url": "mem://x/0", "table_name": "dispatcher", "setid_col": "setid",
      "destination_col": "destination", "flags_col": "flags", "priority_col": "priority",
      "attrs_col": "attrs", "ds_db_extra_attrs": "", "ds_load_mode": 0, "ds_attrs_none": 0}


class MemCon(srdb.Connection):
    """Rows as dicts; `version` answered from `versions`; `fail` raises it on query."""

    def __init__(self, rows, versions, fail=None):
        super().__init__(srdb.parse_url("mem://x/0"))
        self.rows, self.versions, self.fail, self.queries = rows, versions, fail, []

    def query(self, keys=(), ops=None, vals=(), columns=(), order=None):
        if self.fail is not None:
            raise self.fail
        self.queries.append((self.table, list(columns)))
        if self.table == "version":
            v = self.versions.get(vals[0].value)
            return srdb.Result(columns, [srdb.INT], [] if v is None else [[v]])
        return srdb.Result(columns, [srdb.STRING] * len(columns),
                           [[r.get(c) for c in columns] for r in self.rows])


class Binding:
    def __init__(self, con):
        self.con, self.closed = con, 0

    def connection(self):
        return self.con

    def close(self):
        self.closed += 1


def db_on(rows, version=4, fail=None, **mp):
    db = DsDb({**MP, **mp})
    db.binding = Binding(MemCon(rows, {"dispatcher": version}, fail))
    return db


ROWS = [{"setid": 1, "destination": "sip:127.0.0.1:5071", "flags": 0, "priority": 0, "attrs": "duid=a"},
        {"setid": 1, "destination": "sip:127.0.0.1:5072", "flags": 0, "priority": 5, "attrs": None},
        {"setid": 2, "destination": "127.0.0.1:5073", "flags": 8, "priority": 0, "attrs": ""},
        {"setid": 3, "destination": "sip:127.0.0.1:5074", "flags": "2", "priority": "1x", "attrs": "a=1;"}]


def _shape(lst):
    return [(s.id, [(d.uri, d.flags, d.priority, d.body, d.duid) for d in s.dests]) for s in lst.order]


def test_rows_give_the_list_a_file_with_the_same_lines_gives(tmp_path):
    f = tmp_path / "dispatcher.list"
    f.write_text("1 sip:127.0.0.1:5071 0 0 duid=a\n1 sip:127.0.0.1:5072 0 5\n2 127.0.0.1:5073 8 0\n"
                 "3 sip:127.0.0.1:5074 2 1 a=1;\n")
    db = db_on(ROWS)
    lst = db.init_load()
    assert _shape(lst) == _shape(load_file(str(f)))
    assert _shape(lst)[0] == (1, [("sip:127.0.0.1:5072", 0, 5, None, None),
                                  ("sip:127.0.0.1:5071", 0, 0, "duid=a", "a")])
    assert db.binding.closed == 1       # ds_disconnect_db after the load


@pytest.mark.parametrize("version,cols", [
    (1, ["setid", "destination"]), (2, ["setid", "destination", "flags"]),
    (3, ["setid", "destination", "flags", "priority"]),
    (4, ["setid", "destination", "flags", "priority", "attrs"])])
def test_table_version_decides_the_columns(version, cols):
    db = db_on(ROWS, version=version)
    lst = db.init_load()
    assert db.binding.con.queries[-1] == ("dispatcher", cols)
    d = lst.sets[3].dests[0]
    assert (d.flags, d.priority, d.body) == ((2 if version >= 2 else 0), (1 if version >= 3 else 0),
                                             ("a=1" if version == 4 else None))


@pytest.mark.parametrize("version", [0, 5])
def test_other_table_versions_stop_the_load(version):
    text = rf"invalid table version \(found {version} , required 1, 2, 3 or 4\)"
    with pytest.raises(DsDbFailed, match=text):
        db_on(ROWS, version=version).init_load()


def test_custom_column_names():
    rows = [{"gid": 7, "dst": "sip:127.0.0.1:5080", "fl": 0, "pr": 3, "at": "duid=x"}]
    db = db_on(rows, setid_col="gid", destination_col="dst", flags_col="fl", priority_col="pr",
               attrs_col="at")
    assert _shape(db.init_load()) == [(7, [("sip:127.0.0.1:5080", 0, 3, "duid=x", "x")])]


def test_extra_attrs_are_appended_as_name_value():
    # last first, as Kamailio's parse_params lists them
    assert parse_extra_attrs("socket=sock;duid=uid;") == [("duid", "uid"), ("socket", "sock")]
    assert parse_extra_attrs("ab") == []
    with pytest.raises(CfgError, match="invalid db extra attrs"):
        parse_extra_attrs("a=;b=c")
    rows = [{"setid": 1, "destination": "sip:127.0.0.1:5071", "attrs": "weight=10", "uid": "u1", "mx": "2"},
            {"setid": 1, "destination": "sip:127.0.0.1:5072", "attrs": None, "uid": None, "mx": "5"}]
    db = db_on(rows, ds_db_extra_attrs="duid=uid;maxload=mx")
    lst = db.init_load()
    assert db.binding.con.queries[-1][1][5:] == ["mx", "uid"]
    bodies = {d.uri: (d.body, d.duid, d.maxload) for d in lst.sets[1].dests}
    assert bodies == {"sip:127.0.0.1:5071": ("weight=10;maxload=2;duid=u1", "u1", 2),
                      "sip:127.0.0.1:5072": ("maxload=5", None, 5)}


def test_bad_rows_are_skipped_and_counted_or_fail_with_load_mode_1():
    rows = ROWS + [{"setid": 4, "destination": None}, {"setid": 4, "destination": "sip:[bad"}]
    lst, skipped = db_on(rows).reload()
    assert skipped == 2 and sorted(lst.sets) == [1, 2, 3]
    lst = db_on(rows).init_load()                   # startup: only a warning
    assert sorted(lst.sets) == [1, 2, 3]
    with pytest.raises(DsDbFailed, match="unable to add destination"):
        db_on(rows, ds_load_mode=1).reload()


def test_empty_table_is_an_empty_list():
    lst, skipped = db_on([]).reload()
    assert (lst.order, skipped) == ([], 0)


def test_db_failures():
    db = db_on(ROWS, fail=srdb.DbUnreachable("refused"))
    with pytest.raises(DsDbFailed, match="unable to connect to the database: refused"):
        db.reload()
    assert db.binding.closed == 1
    with pytest.raises(DsDbFailed, match="error while querying database"):
        db_on(ROWS, fail=srdb.DbError("bad")).reload()
    with pytest.raises(DsDbFailed, match="failed to query table version"):
        db_on(ROWS, fail=srdb.DbError("bad")).init_load()
