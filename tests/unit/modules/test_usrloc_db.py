"""usrloc db_mode 3 in process: the startup errors (driver module not loaded,
unsupported modparams, a table version that is not Kamailio's 9), and the
contact <-> row mapping of usrloc_db.py (db_insert_ucontact's columns, the
NULLs of db_update_ucontact_ruid, dbrow2info's reading back). No Redis is
contacted here: db_redis answers the version query from its schema files.

Runs in: the pytest process.
"""
import os

import pytest

from asyncd.cfg.compiler import compile_cfg
from asyncd.core.errors import CfgError
from asyncd.modules import db_redis, usrloc
from asyncd.modules.db_redis import DEFAULT_SCHEMA_PATH
from asyncd.modules.usrloc_db import LOAD_COLUMNS, insert_row, row_contact, update_row
from shm.arena import ShmArena
from shm.usrloc import new_contact

pytestmark = pytest.mark.unit

HEAD = '''
loadmodule "pv.so"
loadmodule "sl.so"
{dbmod}
loadmodule "usrloc.so"
loadmodule "registrar.so"
modparam("usrloc", "db_mode", 3)
modparam("usrloc", "db_url", "redis://127.0.0.1:1/0")
{params}
request_route {{ if (method == "REGISTER") {{ save("location"); exit; }} lookup("location"); }}
'''
KEYS = 'modparam("db_redis", "keys", "location=entry:ruid&usrdom:username,domain")'


def _init(dbmod='loadmodule "db_redis.so"', params=KEYS):
    db_redis.S.tables = None
    s = compile_cfg(text=HEAD.format(dbmod=dbmod, params=params))
    s.shm = ShmArena.create(4 << 20)
    try:
        s.init_modules()
        return s
    finally:
        s.shm.destroy()
        s.destroy_modules()


def test_db_mode_3_starts_on_db_redis():
    if not os.path.isdir(DEFAULT_SCHEMA_PATH):
        pytest.skip("kamailio-redis-modules' schema files are not installed")
    _init()
    assert usrloc.S.db_mode == 3


@pytest.mark.parametrize("dbmod, params, text", [
    ("", "", 'usrloc: no DB driver module loaded for "redis://127.0.0.1:1/0" (module db_redis not found'),
    ('loadmodule "db_redis.so"', "", "db_redis: Failed to parse empty 'keys' mod-param"),
    ('loadmodule "db_redis.so"', KEYS + '\nmodparam("usrloc", "expires_type", 1)',
     "usrloc: expires_type 1 is not supported"),
    ('loadmodule "db_redis.so"', KEYS + '\nmodparam("db_redis", "schema_path", "{bad}")',
     "invalid table version for location: found 8, expected 9"),
])
def test_startup_errors(tmp_path, dbmod, params, text):
    (tmp_path / "location").write_text("ruid/string,username/string,\n8\n")
    (tmp_path / "version").write_text("table_name/string,table_version/int,\n1\n")
    with pytest.raises(CfgError) as e:
        _init(dbmod, params.replace("{bad}", str(tmp_path)))
    assert text in str(e.value)


def test_rows_as_kamailio_writes_them():
    c = new_contact("sip:bob@10.0.0.1", 1700000060, 500, "cid", 7, 0, 4, "", "sip:1.2.3.4:5060",
                    "phone", "udp:127.0.0.1:5060", "", 0, "uloc-1", -1, -1, now=1700000000)
    keys, vals = insert_row(c, "bob", None)
    assert keys == ["username", "contact", "expires", "q", "callid", "cseq", "flags", "cflags",
                    "user_agent", "received", "socket", "last_modified", "ruid", "reg_id",
                    "server_id", "connection_id", "keepalive", "partition"]      # no path/methods/instance
    assert dict(zip(keys, vals))["q"].value == 0.5
    assert insert_row(c, "bob", "example.com")[0][-1] == "domain"
    ukeys, uvals = update_row(c)
    nulls = {k for k, v in zip(ukeys, uvals) if v.null}
    assert nulls == {"path", "methods", "instance"} and "partition" not in ukeys
    row = [dict(zip(keys, [v.value for v in vals])).get(col) for col in LOAD_COLUMNS]
    assert row_contact(row) == c
    row[LOAD_COLUMNS.index("methods")] = 4294967295          # stored ALL_METHODS reads as -1
    row[LOAD_COLUMNS.index("q")] = -1.0
    back = row_contact(row)
    assert back[15] == -1 and back[2] == -1
