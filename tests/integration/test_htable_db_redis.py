"""htables on a DB (db_redis on a real redis-server): a table with `dbtable`
loaded at startup in Kamailio's row layout (arrays, value types, expires),
written back at shutdown with dbmode=1, htable.reload / htable.store through
the real kamcmd (and their faults, Redis stopped included), a DB that is down
at startup stopping it; and asyncd's dbmode=2: two process trees sharing one
table through Redis, expiry through the expires column, Redis stopped (reads
$null and writes failing fast) and back (works again without a restart).

Runs in: the pytest process (the servers and redis-server are real processes).
"""
import os
import shutil
import signal
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
loadmodule "xlog.so"
loadmodule "db_redis.so"
loadmodule "htable.so"
modparam("db_redis", "keys", "htable=entry:key_name;htable_c=entry:key_name")
modparam("db_redis", "schema_path", "SCHEMA")
modparam("db_redis", "cmd_timeout", 500)
modparam("htable", "db_url", "redis://127.0.0.1:RPORT/0")
modparam("htable", "db_expires", 1)
modparam("htable", "timer_interval", 1)
modparam("htable", "htable", "a=>size=4;autoexpire=300;dbtable=htable;dbmode=1")
modparam("htable", "htable", "c=>size=4;autoexpire=EXPIRE;dbtable=htable_c;dbmode=2")
modparam("htable", "htable", "m=>size=4")
request_route {
  if ($rU == "set") { $sht(c=>$hdr(X-K)) = $hdr(X-V); sl_send_reply("200", "set"); exit; }
  if ($rU == "seti") { $sht(c=>$hdr(X-K)) = $(hdr(X-V){s.int}); sl_send_reply("200", "set"); exit; }
  if ($rU == "inc") { $var(n) = $shtinc(c=>$hdr(X-K)); sl_send_reply("200", "n=$var(n)"); exit; }
  if ($rU == "del") { sht_rm("c", "$hdr(X-K)"); sl_send_reply("200", "deleted"); exit; }
  if ($rU == "ex") { sl_send_reply("200", "ex=$shtex(c=>$hdr(X-K))"); exit; }
  if ($rU == "cnt") { sl_send_reply("200", "cn=$shtcn(c=>**)"); exit; }
  if ($rU == "get") {
    if ($sht(c=>$hdr(X-K)) == $null) { sl_send_reply("404", "null"); exit; }
    sl_send_reply("200", "v=$sht(c=>$hdr(X-K))"); exit;
  }
  sl_send_reply("200", "a=$sht(a=>$rU)");
}
"""


def schema_dir(tmp):
    """Kamailio's schema files plus htable_c, a second table of htable's columns."""
    d = tmp / "schema"
    if not d.exists():
        shutil.copytree(DEFAULT_SCHEMA_PATH, d)
        shutil.copy(d / "htable", d / "htable_c")
    return str(d)


def _cfg(r, tmp, expire=0):
    return CFG.replace("RPORT", str(r.port)).replace("EXPIRE", str(expire)).replace("SCHEMA", schema_dir(tmp))


def _ctl(tmp, name):
    d = tmp / name
    d.mkdir()
    return d, f"unix:{d}/kamailio_ctl"


def _row(rc, table, key, ktype, vtype, value, expires=0):
    row = {"key_name": key, "key_type": str(ktype), "value_type": str(vtype), "key_value": value,
           "expires": str(expires)}
    rc.hset(f"{table}:entry::{key}", mapping=row)


def _req(c, port, what, key="", value=None):
    hs = [f"X-K: {key}"] + ([f"X-V: {value}"] if value is not None else [])
    r = c.final("MESSAGE", f"sip:{what}@127.0.0.1:{port}", headers=hs, timeout=5.0)
    assert r is not None, f"no reply to {what} {key}"
    return r


def _get(ctl, table, key):
    return kamcmd(ctl, "htable.get", table, key).stdout


def test_load_at_startup_then_write_back_at_shutdown(tmp_path):
    with run_redis() as r:
        rc = r.client()
        now = int(time.time())
        _row(rc, "htable", "arr", 1, 0, "v1")
        _row(rc, "htable", "n", 0, 1, "12abc", now + 100)        # str2sint: 12
        _row(rc, "htable", "old", 0, 1, "1", now - 100)          # expired: not loaded
        _row(rc, "htable", "s", 0, 0, "str")
        d, ctl = _ctl(tmp_path, "one")
        with run_server(_cfg(r, tmp_path), args=("-Y", str(d))) as s, SipClient(("127.0.0.1", s.port)) as c:
            assert "value: v1" in _get(ctl, "a", "arr[0]")
            assert "value: 1" in _get(ctl, "a", "arr::size")
            out = _get(ctl, "a", "n")
            assert "value: 12" in out and "flags: 0" in out
            assert "doesn't exist" in _get(ctl, "a", "old")
            assert _req(c, s.port, "s").reason == "a=str"
            left = time.mktime(time.strptime(out.split("expire: ")[1].split("\n")[0].strip(),
                                             "%Y-%m-%d %H:%M:%S")) - time.time()
            assert 95 <= left <= 101, out                     # the row's expires, not autoexpire
            assert "Ok" in kamcmd(ctl, "htable.seti", "a", "new", "7").stdout
        # mod_destroy wrote every live item back: Kamailio's columns, expires absolute
        h = rc.hgetall("htable:entry::new")
        assert {k: h[k] for k in ("key_type", "value_type", "key_value")} == \
            {"key_type": "0", "value_type": "1", "key_value": "7"}
        assert abs(int(h["expires"]) - (time.time() + 300)) < 5
        assert rc.hget("htable:entry::arr[0]", "key_value") == "v1"
        assert int(rc.hget("htable:entry::n", "expires")) - (now + 100) in (0, 1)
        # a second run loads what the first wrote
        rc.delete("htable:entry::arr")
        d2, ctl2 = _ctl(tmp_path, "two")
        with run_server(_cfg(r, tmp_path), args=("-Y", str(d2))):
            assert "value: 7" in _get(ctl2, "a", "new")
            assert "value: v1" in _get(ctl2, "a", "arr[0]")
            assert "value: 12" in _get(ctl2, "a", "n")


def test_empty_table_is_not_written_back(tmp_path):
    """Kamailio's ht_db_load_table leaves dbload 0 when the DB table had no
    rows, and ht_db_sync_tables then skips the table at shutdown."""
    with run_redis() as r:
        rc = r.client()
        d, ctl = _ctl(tmp_path, "one")
        with run_server(_cfg(r, tmp_path), args=("-Y", str(d))):
            kamcmd(ctl, "htable.sets", "a", "k", "v")
        assert rc.keys("htable:*") == []


def test_reload_and_store_rpc(tmp_path):
    with run_redis() as r:
        rc = r.client()
        _row(rc, "htable", "x", 0, 0, "one")
        d, ctl = _ctl(tmp_path, "one")
        with run_server(_cfg(r, tmp_path), args=("-Y", str(d))) as s:
            assert "value: one" in _get(ctl, "a", "x")
            _row(rc, "htable", "x", 0, 0, "two")
            _row(rc, "htable", "y", 0, 1, "5")
            kamcmd(ctl, "htable.sets", "a", "mem", "only")
            assert kamcmd(ctl, "htable.reload", "a").stdout.strip() == "Ok. Htable reloaded."
            assert "value: two" in _get(ctl, "a", "x") and "value: 5" in _get(ctl, "a", "y")
            assert "doesn't exist" in _get(ctl, "a", "mem")         # replaced by the DB's content
            kamcmd(ctl, "htable.seti", "a", "z", "9")
            assert kamcmd(ctl, "htable.store", "a").stdout.strip() == "Ok. Htable successfully stored to DB."
            assert rc.hget("htable:entry::z", "key_value") == "9"
            assert rc.hget("htable:entry::z", "value_type") == "1"
            # Kamailio's faults
            assert "500 - No such htable" in kamcmd(ctl, "htable.reload", "zz").stdout
            assert "500 - No database htable" in kamcmd(ctl, "htable.store", "m").stdout
            assert "500 - No htable name given" in kamcmd(ctl, "htable.reload").stdout
            r.stop()
            t0 = time.monotonic()
            assert "500 - Failed to open htable db connection" in kamcmd(ctl, "htable.reload", "a").stdout
            assert "500 - Failed to open htable db connection" in kamcmd(ctl, "htable.store", "a").stdout
            assert time.monotonic() - t0 < 3
            assert "value: two" in _get(ctl, "a", "x")              # a failed reload keeps the table
            r.start()
            assert kamcmd(ctl, "htable.reload", "a").stdout.strip() == "Ok. Htable reloaded."
            assert "ERROR" in s.log()


def test_no_db_url_and_db_down_at_startup(tmp_path):
    cfg = CFG.replace('modparam("htable", "db_url", "redis://127.0.0.1:RPORT/0")\n', "")
    cfg = cfg.replace(";dbtable=htable_c;dbmode=2", "")
    d, ctl = _ctl(tmp_path, "one")
    cfg = cfg.replace("EXPIRE", "0").replace("SCHEMA", schema_dir(tmp_path))
    with run_server(cfg, args=("-Y", str(d))):
        assert "500 - No htable db_url" in kamcmd(ctl, "htable.reload", "a").stdout
    with run_redis() as r:
        r.stop()
        with pytest.raises(ServerFailed) as e:
            with run_server(_cfg(r, tmp_path), args=("-Y", str(tmp_path))):
                pass
        assert "failed to load the htables" in str(e.value)


def test_dbmode2_shared_by_two_trees(tmp_path):
    with run_redis() as r:
        rc = r.client()
        cfg = _cfg(r, tmp_path, expire=2)
        da, ctla = _ctl(tmp_path, "a")
        db, ctlb = _ctl(tmp_path, "b")
        with run_server(cfg, args=("-Y", str(da))) as a, run_server(cfg, args=("-Y", str(db))) as b, \
                SipClient(("127.0.0.1", a.port)) as ca, SipClient(("127.0.0.1", b.port)) as cb:
            assert _req(cb, b.port, "get", "k").status == 404
            _req(ca, a.port, "set", "k", "hello")
            assert _req(cb, b.port, "get", "k").reason == "v=hello"
            assert rc.hget("htable_c:entry::k", "key_value") == "hello"
            _req(cb, b.port, "seti", "n", "5")
            assert _req(ca, a.port, "inc", "n").reason == "n=6"
            assert _req(cb, b.port, "inc", "n").reason == "n=7"
            assert "value: 7" in _get(ctla, "c", "n")
            assert _req(ca, a.port, "cnt").reason == "cn=2"
            assert _req(cb, b.port, "ex", "k").reason in ("ex=1", "ex=2")
            _req(cb, b.port, "del", "k")
            assert _req(ca, a.port, "get", "k").status == 404
            # autoexpire=2: the row reads $null on both nodes once past, and a timer deletes it
            _req(ca, a.port, "set", "e", "x")
            time.sleep(2.5)
            assert _req(cb, b.port, "get", "e").status == 404
            assert _req(ca, a.port, "get", "e").status == 404
            end = time.monotonic() + 5
            while rc.exists("htable_c:entry::e") and time.monotonic() < end:
                time.sleep(0.2)
            assert not rc.exists("htable_c:entry::e")


def test_dbmode2_redis_down_and_back(tmp_path):
    with run_redis() as r:
        d, _ctlp = _ctl(tmp_path, "a")
        with run_server(_cfg(r, tmp_path), args=("-Y", str(d))) as s, SipClient(("127.0.0.1", s.port)) as c:
            _req(c, s.port, "set", "k", "v1")
            os.kill(r.pid, signal.SIGSTOP)          # hung: each call gives up after cmd_timeout (500 ms)
            try:
                t0 = time.monotonic()
                assert _req(c, s.port, "get", "k").status == 404
                assert 0.4 < time.monotonic() - t0 < 2.5
            finally:
                os.kill(r.pid, signal.SIGCONT)
            assert _req(c, s.port, "get", "k").reason == "v=v1"
            r.stop()
            t0 = time.monotonic()
            assert _req(c, s.port, "get", "k").status == 404            # $null
            assert _req(c, s.port, "set", "k", "v2").reason == "set"
            assert time.monotonic() - t0 < 3
            s.wait_log("key \\[k\\] not written to db table htable_c", timeout=5)
            r.start()
            _req(c, s.port, "set", "k", "v3")
            assert _req(c, s.port, "get", "k").reason == "v=v3"


def test_dbmode2_only_starts_without_redis(tmp_path):
    """Nothing to load at startup for a dbmode=2 table: a Redis that is down
    does not stop asyncd, the table works once Redis is up."""
    with run_redis() as r:
        cfg = _cfg(r, tmp_path).replace(';dbtable=htable;dbmode=1"', '"')
        r.stop()
        with run_server(cfg, args=("-Y", str(tmp_path))) as s, SipClient(("127.0.0.1", s.port)) as c:
            assert _req(c, s.port, "get", "k").status == 404
            r.start()
            _req(c, s.port, "set", "k", "v")
            assert _req(c, s.port, "get", "k").reason == "v=v"


def test_write_back_with_redis_down_does_not_hang_the_shutdown(tmp_path):
    with run_redis() as r:
        _row(r.client(), "htable", "x", 0, 0, "one")
        d, ctl = _ctl(tmp_path, "one")
        with run_server(_cfg(r, tmp_path), args=("-Y", str(d))) as s:
            assert "value: one" in _get(ctl, "a", "x")
            r.stop()
            t0 = time.monotonic()
            assert s.stop(timeout=5) == 0
            assert time.monotonic() - t0 < 4
        assert "failed syncing hash table [a] to db" in s.final_log
        r.start()
        assert r.client().hget("htable:entry::x", "key_value") is None     # Redis restarted empty
