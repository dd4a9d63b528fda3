"""Kamailio 5.6.3 (dispatcher + its own db_redis) and asyncd on the same
Redis rows, the same cfg: the same dispatcher.list through the real kamcmd
(bad rows skipped, a URI without scheme fixed, attrs, ds_db_extra_attrs
columns appended in Kamailio's order, the probing flag), and
after rows are added (one of them bad) the same "Reload Failed" and the
same new sets; with Redis stopped both refuse the reload and keep the list.

Runs in: the pytest process (Kamailio, asyncd and redis-server are real processes).
"""
import re
import shutil

import pytest

from asyncd.modules.db_redis import DEFAULT_SCHEMA_PATH
from tests.helpers.kamailio import kamailio_binary, kamcmd, run_kamailio
from tests.helpers.redis_server import redis_marks, run_redis
from tests.helpers.server import run_server

pytestmark = redis_marks(kamcmd=True, schemas=True, kamailio_module="db_redis")

CFG = """#!KAMAILIO
listen=udp:127.0.0.1:LPORT
loadmodule "ctl.so"
loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "db_redis.so"
loadmodule "dispatcher.so"
modparam("db_redis", "keys", "dispatcher=entry:id")
modparam("db_redis", "schema_path", "SCHEMA")
modparam("dispatcher", "db_url", "redis://127.0.0.1:RPORT/0")
modparam("dispatcher", "ds_db_extra_attrs", "duid=uid;maxload=mx;")
modparam("dispatcher", "reload_delta", 0)
request_route { sl_send_reply("200", "ok"); }
"""

# (id, setid, destination, flags, priority, attrs or None): three sets (any
# insertion order gives the same AVL tree) and no equal priorities in a set,
# so the list does not depend on the order Redis gives the rows in
ROWS = [(1, 1, "sip:127.0.0.1:5071", 0, 0, "duid=a;weight=50;"), (2, 1, "sip:127.0.0.1:5072", 0, 5, ""),
        (3, 2, "127.0.0.1:5073", 8, 0, None), (4, 2, "sip:nonexistent.invalid", 0, 1, ""),
        (5, 3, "sip:127.0.0.1:5074;transport=tcp", 0, 1, "a=1;maxload=4"),
        (6, 3, "sip:127.0.0.1:5075", 16, 2, None)]
# the extra columns (strings: Kamailio reads them with VAL_STRING)
EXTRA = {2: {"uid": "two", "mx": "7"}, 3: {"uid": "", "mx": "1"}, 7: {"mx": "2"}}
ADDED = [(7, 4, "sip:127.0.0.1:5076", 0, 0, "duid=new"), (8, 4, "sip:unknown.invalid", 0, 1, None),
         (9, 1, "sip:127.0.0.1:5077", 2, 9, None)]


def _put(rc, rows):
    for id_, setid, dst, flags, prio, attrs in rows:
        m = {"id": str(id_), "setid": str(setid), "destination": dst, "flags": str(flags),
             "priority": str(prio), "description": f"row {id_}"}
        if attrs is not None:
            m["attrs"] = attrs
        if id_ in EXTRA:
            m.update(EXTRA[id_])
        rc.hset(f"dispatcher:entry::{id_}", mapping=m)


def _schemas(tmp_path):
    """Debian's db_redis schemas, the dispatcher table with two more columns."""
    d = tmp_path / "schema"
    shutil.copytree(DEFAULT_SCHEMA_PATH, d)
    (d / "dispatcher").write_text("id/int,setid/int,destination/string,flags/int,priority/int,"
                                  "attrs/string,description/string,uid/string,mx/string,\n4\n")
    return str(d)


def _by_set(text):
    """dispatcher.list's text -> {SET block's ID: the block}, the order left out."""
    return {re.search(r"ID: (\d+)", b).group(1): b.rstrip("}\t\n ") for b in text.split("SET: {")[1:]}


def _run(ctl, r, rc):
    """-> what the node shows: the list, the reload after ADDED, the list then,
    and with Redis stopped the reload and the list."""
    first = kamcmd(ctl, "dispatcher.list").stdout
    kamcmd(ctl, "dispatcher.set_state", "ip", "1", "sip:127.0.0.1:5071")     # a reload resets it
    _put(rc, ADDED)
    p = kamcmd(ctl, "dispatcher.reload")
    reload1 = (p.stdout + p.stderr).strip()
    second = _by_set(kamcmd(ctl, "dispatcher.list").stdout)
    r.stop()
    p = kamcmd(ctl, "dispatcher.reload")
    reload2 = (p.stdout + p.stderr).strip()
    third = _by_set(kamcmd(ctl, "dispatcher.list").stdout)
    return first, reload1, second, reload2, third


def test_same_rows_same_list_same_reloads(tmp_path):
    if kamailio_binary() is None:
        pytest.skip("Kamailio is not installed")
    with run_redis() as r:
        cfg = CFG.replace("RPORT", str(r.port)).replace("SCHEMA", _schemas(tmp_path))
        _put(r.client(), ROWS)
        with run_kamailio(cfg) as k:
            kam = _run(k.ctl, r, r.client())
        r.start()
        rc = r.client()
        rc.flushdb()
        _put(rc, ROWS)
        d = tmp_path / "run"
        d.mkdir()
        with run_server(cfg, args=("-Y", str(d))):
            ours = _run(f"unix:{d}/kamailio_ctl", r, rc)
    assert "BODY: maxload=7;duid=two" in kam[0] and "BODY: maxload=1" in kam[0]
    assert "NRSETS: 3" in kam[0] and "sip:127.0.0.1:5073" in kam[0] and "nonexistent" not in kam[0]
    assert kam[1] == "error: 500 - Reload Failed"
    assert sorted(kam[2]) == ["1", "2", "3", "4"] and "unknown.invalid" not in kam[2]["4"]
    assert re.search(r"URI: sip:127.0.0.1:5071\s+FLAGS: AX", kam[2]["1"])
    assert kam[3] == "error: 500 - Reload Failed" and kam[4] == kam[2]
    assert ours == kam
