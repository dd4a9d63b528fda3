"""dispatcher with `db_url` on db_redis and a real redis-server: the sets
come from rows in Kamailio's layout (hashes `dispatcher:entry::<id>`), the
real kamcmd's dispatcher.list shows them, ds_select_dst() picks them; a row
added is there after dispatcher.reload and after ds_reload(); rows that
cannot be added are skipped (the reload publishes and reports "Reload
Failed", as Kamailio 5.6); Redis stopped: the reload fails fast and the list
in use stays, Redis back: the reload works again; Redis down at startup
stops the startup with Kamailio's log text, and so does a table version
other than 1-4.

Runs in: the pytest process (asyncd and redis-server are real processes).
"""
import re
import shutil
import time

import pytest

from asyncd.modules.db_redis import DEFAULT_SCHEMA_PATH
from tests.helpers.kamailio import kamcmd
from tests.helpers.redis_server import redis_marks, run_redis
from tests.helpers.server import ServerFailed, run_server
from tests.helpers.sipclient import SipClient

pytestmark = redis_marks(kamcmd=True, schemas=True)

CFG = """#!KAMAILIO
listen=udp:127.0.0.1:LPORT
loadmodule "ctl.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "db_redis.so"
loadmodule "dispatcher.so"
modparam("db_redis", "keys", "dispatcher=entry:id")
modparam("db_redis", "cmd_timeout", 500)
modparam("dispatcher", "db_url", "redis://127.0.0.1:RPORT/0")
modparam("dispatcher", "list_file", "/nonexistent/dispatcher.list")
modparam("dispatcher", "reload_delta", 0)
request_route {
    if ($rU == "reload") {
        if (ds_reload()) { sl_send_reply("200", "reloaded"); exit; }
        sl_send_reply("500", "reload failed");
        exit;
    }
    if ($rU == "s1") { $var(ok) = ds_select_dst("1", "4"); }
    else if ($rU == "s4") { $var(ok) = ds_select_dst("4", "0"); }
    else { $var(ok) = ds_select_dst("9", "0"); }
    if ($var(ok) != 1) { sl_send_reply("404", "no destination"); exit; }
    sl_send_reply("200", "du=$du");
}
"""


def put(rc, id_, setid, dst, flags=0, prio=0, attrs=None):
    """A row as Kamailio's db_redis writes it (dispatcher=entry:id)."""
    m = {"id": str(id_), "setid": str(setid), "destination": dst, "flags": str(flags),
         "priority": str(prio), "description": ""}
    if attrs is not None:
        m["attrs"] = attrs
    rc.hset(f"dispatcher:entry::{id_}", mapping=m)


def seed(rc):
    put(rc, 1, 1, "sip:127.0.0.1:5071", attrs="duid=one;weight=50")
    put(rc, 2, 1, "sip:127.0.0.1:5072", prio=5)
    put(rc, 3, 2, "127.0.0.1:5073", flags=8)
    put(rc, 4, 3, "sip:127.0.0.1:5074;transport=tcp", prio=1, attrs="maxload=3")


def sets(ctl):
    """dispatcher.list -> {set id: [(uri, flags, priority)]}."""
    out = kamcmd(ctl, "dispatcher.list").stdout
    res = {}
    for block in out.split("SET: {")[1:]:
        sid = int(re.search(r"ID: (\d+)", block).group(1))
        res[sid] = re.findall(r"URI: (\S+)\s+FLAGS: (\w+)\s+PRIORITY: (\d+)", block)
    return res


def du(c, user):
    r = c.final("OPTIONS", f"sip:{user}@127.0.0.1", timeout=3.0)
    return r.status, r.reason


@pytest.fixture
def node(tmp_path):
    with run_redis() as r:
        rc = r.client()
        seed(rc)
        d = tmp_path / "run"
        d.mkdir()
        with run_server(CFG.replace("RPORT", str(r.port)), args=("-Y", str(d))) as srv:
            yield r, rc, srv, f"unix:{d}/kamailio_ctl"


def test_rows_are_the_sets_and_ds_select_dst_picks_them(node):
    _r, _rc, srv, ctl = node
    assert sets(ctl) == {1: [("sip:127.0.0.1:5072", "AX", "5"), ("sip:127.0.0.1:5071", "AX", "0")],
                         2: [("sip:127.0.0.1:5073", "AP", "0")],
                         3: [("sip:127.0.0.1:5074;transport=tcp", "AX", "1")]}
    out = kamcmd(ctl, "dispatcher.list").stdout
    assert "DUID: one" in out and "WEIGHT: 50" in out and "MAXLOAD: 3" in out
    with SipClient(srv.addr) as c:
        picked = {du(c, "s1") for _ in range(4)}
        assert picked == {(200, "du=sip:127.0.0.1:5071"), (200, "du=sip:127.0.0.1:5072")}
        assert du(c, "s4") == (404, "no destination")


def test_a_row_added_appears_after_reload_and_ds_reload(node):
    _r, rc, srv, ctl = node
    put(rc, 5, 4, "sip:127.0.0.1:5075")
    assert 4 not in sets(ctl)
    assert kamcmd(ctl, "dispatcher.reload").stdout.strip() == "Ok. Dispatcher successfully reloaded."
    assert sets(ctl)[4] == [("sip:127.0.0.1:5075", "AX", "0")]
    with SipClient(srv.addr) as c:
        assert du(c, "s4") == (200, "du=sip:127.0.0.1:5075")
        rc.delete("dispatcher:entry::5")
        put(rc, 6, 4, "sip:127.0.0.1:5076")
        assert du(c, "reload") == (200, "reloaded")
        assert du(c, "s4") == (200, "du=sip:127.0.0.1:5076")


def test_skipped_rows_reload_fails_but_the_rest_is_loaded(node):
    """ds_load_db returns -2 when a row is skipped: dispatcher.reload answers
    "Reload Failed" although the new list is in use (Kamailio 5.6.3 does so)."""
    _r, rc, srv, ctl = node
    put(rc, 7, 4, "sip:127.0.0.1:5077")
    put(rc, 8, 4, "sip:nonexistent.invalid")
    p = kamcmd(ctl, "dispatcher.reload")
    assert "500 - Reload Failed" in p.stdout + p.stderr
    assert sets(ctl)[4] == [("sip:127.0.0.1:5077", "AX", "0")]
    log = open(srv.log_path).read()
    assert "unable to add destination sip:nonexistent.invalid to set 4 -- skipping" in log
    assert "failure while loading one or more dispatcher entries" in log


def test_redis_stopped_reload_fails_fast_list_kept_then_back(node):
    r, rc, srv, ctl = node
    before = sets(ctl)
    r.stop()
    t0 = time.monotonic()
    p = kamcmd(ctl, "dispatcher.reload")
    assert "500 - Reload Failed" in p.stdout + p.stderr
    assert time.monotonic() - t0 < 5.0
    assert sets(ctl) == before
    with SipClient(srv.addr) as c:
        assert du(c, "s1")[0] == 200
        assert du(c, "reload") == (500, "reload failed")
    log = open(srv.log_path).read()
    assert "unable to connect to the database" in log and "Error reloading from db" in log
    r.start()
    rc = r.client()
    seed(rc)
    put(rc, 9, 4, "sip:127.0.0.1:5079")
    assert kamcmd(ctl, "dispatcher.reload").stdout.strip() == "Ok. Dispatcher successfully reloaded."
    assert sets(ctl)[4] == [("sip:127.0.0.1:5079", "AX", "0")]


def test_redis_down_at_startup_stops_it(tmp_path):
    with run_redis() as r:
        port = r.port
    d = tmp_path / "run"
    d.mkdir()
    with pytest.raises(ServerFailed) as e:
        with run_server(CFG.replace("RPORT", str(port)), args=("-Y", str(d)), ready_timeout=15):
            pass
    text = str(e.value)
    assert "unable to connect to the database" in text
    assert "could not initiate a connect to the database" in text


def test_table_version_not_1_to_4_stops_startup(tmp_path):
    """ds_init_db: db_redis answers the version from its schema files."""
    schema = tmp_path / "schema"
    shutil.copytree(DEFAULT_SCHEMA_PATH, schema)
    text = (schema / "dispatcher").read_text().splitlines()[0]
    (schema / "dispatcher").write_text(f"{text}\n5\n")
    cmd = 'modparam("db_redis", "cmd_timeout", 500)'
    cfg = CFG.replace(cmd, f'{cmd}\nmodparam("db_redis", "schema_path", "{schema}")')
    d = tmp_path / "run"
    d.mkdir()
    with run_redis() as r:
        seed(r.client())
        with pytest.raises(ServerFailed) as e:
            with run_server(cfg.replace("RPORT", str(r.port)), args=("-Y", str(d)), ready_timeout=15):
                pass
    assert "invalid table version (found 5 , required 1, 2, 3 or 4)" in str(e.value)
