"""Shared registrations: usrloc db_mode 3 on db_redis with a real
redis-server. A REGISTER saved by one asyncd process tree is found by a
second tree on the same cfg (the INVITE reaches the phone through it), an
expired binding's row is deleted by the USRLOC Timer, and a Redis that is
stopped makes save() answer 500 and lookup() fail fast, then works again
when Redis is back without restarting asyncd.

Runs in: the pytest process (the servers and redis-server are real processes).
"""
import os
import signal
import time
from types import SimpleNamespace

import pytest

from asyncd.modules import db_redis, srdb
from asyncd.modules.db_redis import DEFAULT_SCHEMA_PATH
from asyncd.modules.usrloc_db import DbDomain
from shm.usrloc import C_RUID, C_URI, new_contact, new_ruid
from tests.helpers.kamailio import KAMCMD, kamcmd
from tests.helpers.redis_server import redis_marks, run_redis
from tests.helpers.server import run_server
from tests.helpers.sipclient import SipClient

pytestmark = redis_marks(schemas=True)

CFG = """#!KAMAILIO
listen=udp:127.0.0.1:LPORT
loadmodule "ctl.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "db_redis.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "kex.so"
modparam("db_redis", "keys", "location=entry:ruid&usrdom:username&timer:partition,keepalive")
modparam("db_redis", "cmd_timeout", 500)
modparam("usrloc", "db_url", "redis://127.0.0.1:RPORT/0")
modparam("usrloc", "db_mode", 3)
modparam("usrloc", "timer_interval", 1)
modparam("registrar", "min_expires", 1)
request_route {
  if (method=="REGISTER") { save("location"); exit; }
  $var(rc) = lookup("location");
  if ($var(rc) < 0) { sl_send_reply("404", "Not Found rc=$var(rc)"); exit; }
  t_relay();
}
"""


def _answer(phone, code):
    """The phone answers the INVITE it got -> the request (None if none came)."""
    req = phone.recv(3.0)
    while req is not None and req.method == "ACK":
        req = phone.recv(3.0)
    if req is None:
        return None
    lines = [f"SIP/2.0 {code} Busy"]
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        for v in req.hdrs(name):
            lines.append(f"{name}: {v}" + (";tag=ph" if name == "To" else ""))
    phone.send_raw("\r\n".join(lines + ["Content-Length: 0"]) + "\r\n\r\n", req.src)
    return req


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with run_redis() as r:
        cfg = CFG.replace("RPORT", str(r.port))
        da, db = (str(tmp_path_factory.mktemp(n)) for n in ("a", "b"))
        with run_server(cfg, args=("-Y", da)) as a, run_server(cfg, args=("-Y", db)) as b:
            a.ctl, b.ctl = f"unix:{da}/kamailio_ctl", f"unix:{db}/kamailio_ctl"
            yield r, a, b


def test_register_on_a_invite_through_b(cluster):
    r, a, b = cluster
    with SipClient(("127.0.0.1", a.port)) as phone, SipClient(("127.0.0.1", b.port)) as caller:
        assert caller.final("INVITE", f"sip:carol@127.0.0.1:{b.port}").status == 404
        assert phone.final("REGISTER", f"sip:carol@127.0.0.1:{a.port}").status == 200
        rows = [k for k in r.client().scan_iter("location:entry::*")
                if r.client().hget(k, "username") == "carol"]
        assert len(rows) == 1
        assert r.client().smembers("location:usrdom::carol") == set(rows)
        caller.send("INVITE", f"sip:carol@127.0.0.1:{b.port}")
        req = _answer(phone, 486)
        assert req is not None and req.first_line.startswith(f"INVITE sip:tester@127.0.0.1:{phone.local[1]} ")
        rs = caller.collect(3.0, until=lambda rs: rs[-1].status and rs[-1].status >= 200)
        assert rs[-1].status == 486
        # a refresh through B updates the same row (same ruid), a removal through B deletes it
        assert phone.final("REGISTER", f"sip:carol@127.0.0.1:{b.port}", cseq=2).status == 200
        assert [k for k in r.client().scan_iter("location:entry::*")
                if r.client().hget(k, "username") == "carol"] == rows
        assert phone.final("REGISTER", f"sip:carol@127.0.0.1:{b.port}", headers=["Expires: 0"],
                           cseq=3).status == 200
        assert not r.client().exists(rows[0]) and not r.client().exists("location:usrdom::carol")
        assert caller.final("INVITE", f"sip:carol@127.0.0.1:{a.port}").status == 404


@pytest.mark.skipif(KAMCMD is None, reason="kamcmd is not installed")
def test_expiry_deletes_the_row_and_rpcs(cluster):
    r, a, b = cluster
    with SipClient(("127.0.0.1", a.port)) as phone:
        assert phone.final("REGISTER", f"sip:dave@127.0.0.1:{a.port}", headers=["Expires: 2"]).status == 200
        out = kamcmd(b.ctl, "ul.lookup", "location", "dave").stdout
        assert "AoR: dave" in out and "State: CS_SYNC" in out
        dump = kamcmd(b.ctl, "ul.dump").stdout          # DB_ONLY keeps no record in memory
        assert "Domain: location" in dump and "dave" not in dump and "Records: 0" in dump
        res = kamcmd(b.ctl, "ul.db_users", "location")
        assert "Database does not support raw queries" in res.stdout + res.stderr
        end = time.monotonic() + 8
        while time.monotonic() < end and r.client().exists("location:usrdom::dave"):
            time.sleep(0.2)
        assert not r.client().exists("location:usrdom::dave")
        assert not [k for k in r.client().scan_iter("location:entry::*")
                    if r.client().hget(k, "username") == "dave"]
        # ul.add on one node, ul.rm on the other
        assert kamcmd(a.ctl, "ul.add", "location", "erin", "sip:erin@10.0.0.9", 60, 0.5, ".", 0, 0, 0
                      ).returncode == 0
        assert "sip:erin@10.0.0.9" in kamcmd(b.ctl, "ul.lookup", "location", "erin").stdout
        assert kamcmd(b.ctl, "ul.rm", "location", "erin").returncode == 0
        assert "AOR not found" in kamcmd(a.ctl, "ul.lookup", "location", "erin").stdout + \
            kamcmd(a.ctl, "ul.lookup", "location", "erin").stderr


def test_redis_down_then_back(cluster):
    r, a, b = cluster
    with SipClient(("127.0.0.1", a.port)) as phone, SipClient(("127.0.0.1", b.port)) as caller:
        assert phone.final("REGISTER", f"sip:frank@127.0.0.1:{a.port}").status == 200
        r.stop()
        try:
            t0 = time.monotonic()
            rep = phone.final("REGISTER", f"sip:frank@127.0.0.1:{a.port}", cseq=2, timeout=5)
            assert rep is not None and rep.status == 500 and rep.reason == "Server Internal Error"
            assert rep.hdr("P-Registrar-Error") == "usrloc_contact_insert failed"
            rep = caller.final("INVITE", f"sip:frank@127.0.0.1:{b.port}", timeout=5)
            assert rep is not None and rep.status == 404 and "rc=-1" in rep.reason
            assert time.monotonic() - t0 < 4
        finally:
            r.start()
        assert "redis at 127.0.0.1" in a.log() and "failed during" in a.log()
        # back: no restart of asyncd, the next calls reconnect (the data died with the server)
        assert phone.final("REGISTER", f"sip:frank@127.0.0.1:{a.port}", cseq=3).status == 200
        caller.send("INVITE", f"sip:frank@127.0.0.1:{b.port}")
        assert _answer(phone, 486) is not None
        rs = caller.collect(3.0, until=lambda rs: rs[-1].status and rs[-1].status >= 200)
        assert rs[-1].status == 486


def test_redis_hung_is_bounded_by_cmd_timeout(cluster):
    """A Redis that accepts but does not answer (SIGSTOP): each DB call gives
    up after cmd_timeout (500 ms here), save answers 500, nothing hangs."""
    r, a, b = cluster
    with SipClient(("127.0.0.1", a.port)) as phone, SipClient(("127.0.0.1", b.port)) as caller:
        assert phone.final("REGISTER", f"sip:gina@127.0.0.1:{a.port}").status == 200
        os.kill(r.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            rep = phone.final("REGISTER", f"sip:gina@127.0.0.1:{a.port}", cseq=2, timeout=5)
            assert rep is not None and rep.status == 500
            rep = caller.final("INVITE", f"sip:gina@127.0.0.1:{b.port}", timeout=5)
            assert rep is not None and rep.status == 404
            assert time.monotonic() - t0 < 3.5
        finally:
            os.kill(r.pid, signal.SIGCONT)
        assert "TimeoutError" in a.log()
        assert phone.final("REGISTER", f"sip:gina@127.0.0.1:{a.port}", cseq=3).status == 200
        caller.send("INVITE", f"sip:gina@127.0.0.1:{b.port}")
        assert _answer(phone, 486) is not None


def test_records_for_the_pinger_read_every_row(tmp_path):
    """DbDomain.records (nathelper's get_all_ucontacts in db_mode 3) groups
    the table's rows by AOR; a partition keeps only its slots."""
    mp = {"keys": ["location=entry:ruid&usrdom:username,domain"], "schema_path": DEFAULT_SCHEMA_PATH,
          "connect_timeout": 500, "cmd_timeout": 500}
    script = SimpleNamespace(modules=[SimpleNamespace(name="db_redis")], modparams={"db_redis": mp})
    db_redis.S.tables = None
    with run_redis() as r:
        d = DbDomain(srdb.bind(script, r.url + "/0", "usrloc"), "location", 16, use_domain=1)
        now = int(time.time())
        for aor in ("a@x", "b@x", "b@y"):
            for n in range(2):
                c = new_contact(f"sip:{aor}:{5060 + n}", now + 60, ruid=new_ruid(), now=now)
                assert d.update(aor, lambda cs, c=c: (cs + [c], 1)) == 1
        recs = {aor: sorted(c[C_URI] for c in cs) for _slot, aor, cs in d.records()}
        assert recs == {a: [f"sip:{a}:5060", f"sip:{a}:5061"] for a in ("a@x", "b@x", "b@y")}
        parts = [{aor for _s, aor, _c in d.records((i, 2))} for i in (0, 1)]
        assert parts[0] | parts[1] == set(recs) and not parts[0] & parts[1]
        ruid = d.get("b@y")[0][C_RUID]
        assert r.client().hget(f"location:entry::{ruid}", "domain") == "y"
        assert d.delete("b@x") and not d.get("b@x") and len(d.get("b@y")) == 2
    db_redis.S.tables = None
