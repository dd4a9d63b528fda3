"""Kamailio 5.6.3 (htable + its own db_redis) and asyncd on one redis-server,
the same cfg: both load the same rows into the same table (htable.dump
through the real kamcmd: slots, names, values, types), htable.store writes
the same Redis hashes from each, and each loads what the other stored.

Runs in: the pytest process (Kamailio, asyncd and redis-server are real processes).
"""
import re
import time

import pytest

from tests.helpers.kamailio import kamailio_binary, kamcmd, run_kamailio
from tests.helpers.redis_server import redis_marks, run_redis
from tests.helpers.server import run_server

pytestmark = redis_marks(kamcmd=True, kamailio_module="db_redis")

CFG = """#!KAMAILIO
listen=udp:127.0.0.1:LPORT
loadmodule "ctl.so"
loadmodule "sl.so"
loadmodule "db_redis.so"
loadmodule "htable.so"
modparam("db_redis", "keys", "htable=entry:key_name")
modparam("htable", "db_url", "redis://127.0.0.1:RPORT/0")
modparam("htable", "db_expires", 1)
modparam("htable", "htable", "a=>size=4;autoexpire=300;dbtable=htable;dbmode=1")
request_route { sl_send_reply("200", "ok"); }
"""


def _seed(rc, now):
    rows = [("arr", 1, 0, "v1", 0), ("n", 0, 1, "12abc", now + 100), ("old", 0, 1, "1", now - 100),
            ("s", 0, 0, "a string", now + 200), ("neg", 0, 1, "-42", 0)]
    for key, kt, vt, val, ex in rows:
        rc.hset(f"htable:entry::{key}", mapping={"key_name": key, "key_type": str(kt), "value_type": str(vt),
                                                 "key_value": val, "expires": str(ex)})


def _dump(ctl):
    """htable.dump a -> sorted (entry, name, value, type)."""
    out = kamcmd(ctl, "htable.dump", "a").stdout
    items = []
    for block in re.split(r"\n\{\n\tentry: ", "\n" + out)[1:]:
        entry = int(block.split("\n")[0])
        for name, value, typ in re.findall(r"name: (.*)\n\t+value: (.*)\n\t+type: (\w+)", block):
            items.append((entry, name, value, typ))
    return sorted(items)


def _ops_and_store(ctl):
    assert "Ok" in kamcmd(ctl, "htable.seti", "a", "new", "7").stdout
    assert "Ok" in kamcmd(ctl, "htable.sets", "a", "str2", "hello world").stdout
    assert kamcmd(ctl, "htable.store", "a").stdout.strip() == "Ok. Htable successfully stored to DB."


def _hashes(rc):
    """{entry key: hash}; expires as the seconds left, rounded to 5 s."""
    out = {}
    for k in rc.scan_iter("htable*"):
        h = dict(rc.hgetall(k))
        ex = int(h.get("expires") or 0)
        if ex:
            h["expires"] = round((ex - time.time()) / 5) * 5
        out[k] = h
    return out


def _sets(rc):
    return sorted(k for k in rc.scan_iter("*") if rc.type(k) != "hash")


def test_same_load_same_store_each_loads_the_other(tmp_path):
    if kamailio_binary() is None:
        pytest.skip("Kamailio is not installed")
    with run_redis() as r:
        rc = r.client()
        cfg = CFG.replace("RPORT", str(r.port))
        now = int(time.time())
        _seed(rc, now)
        with run_kamailio(cfg) as k:
            kam_loaded = _dump(k.ctl)
            _ops_and_store(k.ctl)
            kam_stored = _dump(k.ctl)
            kam_hashes, kam_sets = _hashes(rc), _sets(rc)
        rc.flushdb()
        _seed(rc, now)
        d = tmp_path / "run"
        d.mkdir()
        ctl = f"unix:{d}/kamailio_ctl"
        with run_server(cfg, args=("-Y", str(d))):
            assert _dump(ctl) == kam_loaded
            _ops_and_store(ctl)
            assert _dump(ctl) == kam_stored
            assert _hashes(rc) == kam_hashes
            assert _sets(rc) == kam_sets
        # Kamailio loads what asyncd stored (and wrote back at shutdown)
        with run_kamailio(cfg) as k:
            assert _dump(k.ctl) == kam_stored
        # asyncd loads what Kamailio wrote back at its shutdown
        with run_server(cfg, args=("-Y", str(d))):
            assert _dump(ctl) == kam_stored


def test_kamailio_node_reads_and_writes_a_dbmode2_table(tmp_path):
    """asyncd's dbmode=2 rows are Kamailio's: a Kamailio node with the same
    table (dbmode 0) gets asyncd's value and expiry with htable.reload, and
    what it stores with htable.store is what asyncd reads next."""
    if kamailio_binary() is None:
        pytest.skip("Kamailio is not installed")
    with run_redis() as r:
        base = CFG.replace("RPORT", str(r.port))
        kcfg = base.replace("dbtable=htable;dbmode=1", "dbtable=htable")
        acfg = base.replace("dbtable=htable;dbmode=1", "dbtable=htable;dbmode=2")
        d = tmp_path / "run"
        d.mkdir()
        ctl = f"unix:{d}/kamailio_ctl"
        with run_server(acfg, args=("-Y", str(d))), run_kamailio(kcfg) as k:
            assert "Ok" in kamcmd(ctl, "htable.sets", "a", "k", "from asyncd").stdout
            assert "Ok" in kamcmd(ctl, "htable.seti", "a", "n", "41").stdout
            assert kamcmd(k.ctl, "htable.reload", "a").stdout.strip() == "Ok. Htable reloaded."
            out = kamcmd(k.ctl, "htable.get", "a", "k").stdout
            assert "value: from asyncd" in out and "flags: 2" in out
            left = time.mktime(time.strptime(out.split("expire: ")[1].split("\n")[0].strip(),
                                             "%Y-%m-%d %H:%M:%S")) - time.time()
            assert 290 <= left <= 301
            assert "value: 41" in kamcmd(k.ctl, "htable.get", "a", "n").stdout
            kamcmd(k.ctl, "htable.seti", "a", "n", "42")
            kamcmd(k.ctl, "htable.sets", "a", "kam", "from kamailio")
            assert "Ok" in kamcmd(k.ctl, "htable.store", "a").stdout
            assert "value: 42" in kamcmd(ctl, "htable.get", "a", "n").stdout
            assert "value: from kamailio" in kamcmd(ctl, "htable.get", "a", "kam").stdout
            assert _dump(ctl) == _dump(k.ctl)
