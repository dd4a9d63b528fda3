"""Kamailio 5.6.3 (usrloc db_mode 3 + its own db_redis) and asyncd on one
redis-server: a binding saved by Kamailio is found by asyncd and the reverse
(an INVITE through either reaches the phone registered through the other),
and the Redis keys, hash fields and values each writes for the same REGISTER
(and for its refresh, db_update_ucontact's path) are the same, apart from
what differs per node (ruid, last_modified, socket, Call-ID, ...);
Kamailio's expiry timer deletes a binding asyncd saved; the usrloc
statistics, ul.dump and ul.db_users answer the same; with Redis stopped both
answer a REGISTER 500 and an INVITE 404, and both work again once it is back.

Runs in: the pytest process (Kamailio, asyncd and redis-server are real processes).
"""
import re
import time

import pytest

from tests.helpers.kamailio import kamailio_binary, kamcmd, run_kamailio
from tests.helpers.redis_server import redis_marks, run_redis
from tests.helpers.server import run_server
from tests.helpers.sipclient import SipClient
from tests.integration.test_usrloc_db_redis import _answer

pytestmark = redis_marks(kamcmd=True, kamailio_module="db_redis")

CFG = """#!KAMAILIO
listen=udp:127.0.0.1:LPORT
loadmodule "ctl.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "db_redis.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "kex.so"
modparam("db_redis", "keys", "location=entry:ruid&usrdom:USRDOM&timer:partition,keepalive")
modparam("usrloc", "use_domain", USE_DOMAIN)
modparam("usrloc", "db_url", "redis://127.0.0.1:RPORT/0")
modparam("usrloc", "db_mode", 3)
modparam("usrloc", "timer_interval", TIMER)
modparam("registrar", "min_expires", 1)
request_route {
  if (method=="REGISTER") { save("location"); exit; }
  if (!lookup("location")) { sl_send_reply("404", "Not Found"); exit; }
  t_relay();
}
"""
# differ per node or per REGISTER (the phones' ports, Call-IDs, the servers' sockets and clocks)
PER_NODE = {"ruid", "last_modified", "socket", "server_id", "callid", "contact", "username",
            "expires"}
HEADERS = ["Contact: <sip:{u}@127.0.0.1:{p}>;q=0.5;expires=300;+sip.instance=\"<urn:uuid:1>\";reg-id=1",
           "User-Agent: phone/1.0", "Allow: INVITE, ACK, BYE, CANCEL"]


def _rows(rc, user):
    """{entry key: hash} of `user`'s rows."""
    return {k: rc.hgetall(k) for k in rc.scan_iter("location:entry::*") if rc.hget(k, "username") == user}


def _ttl(h):
    """expires - last_modified, in seconds (both local-time datetimes), to +-1 s."""
    t = [time.mktime(time.strptime(h[f], "%Y-%m-%d %H:%M:%S")) for f in ("expires", "last_modified")]
    return round((t[0] - t[1]) / 2) * 2


def _shape(rc, user):
    """What one REGISTER wrote, with per-node values masked: the rows, the sets
    that hold their entry keys, and the index sets that hold those."""
    rows = _rows(rc, user)
    masked = sorted(({f: ("*" if f in PER_NODE else v) for f, v in h.items()} | {"expires": _ttl(h)}
                     for h in rows.values()), key=lambda h: sorted(h.items()))
    sets = {}
    for k in rc.scan_iter("location:*"):
        if rc.type(k) == "set":
            members = rc.smembers(k)
            hits = sorted("ENTRY" for m in members if m in rows)
            if hits:
                sets[k.replace("::" + user, "::USER")] = hits
    idx = {k: sorted(m.replace(user, "USER") for m in rc.smembers(k) if user in m or m.endswith("::0:0"))
           for k in rc.scan_iter("location::index::*")}
    return masked, sets, idx


def _register(port, phone, user, cseq=1, callid=None):
    hs = [h.format(u=user, p=phone.local[1]) for h in HEADERS]
    return phone.final("REGISTER", f"sip:{user}@127.0.0.1:{port}", headers=hs, cseq=cseq,
                       callid=callid or f"reg-{user}")


def _rings(caller, port, user, phone):
    """The INVITE through `port` reaches both of the phone's contacts (the
    client's own Contact and the one in HEADERS: two branches)."""
    caller.send("INVITE", f"sip:{user}@127.0.0.1:{port}")
    reqs = [_answer(phone, 486), _answer(phone, 486)]
    rs = caller.collect(3.0, until=lambda rs: rs[-1].status and rs[-1].status >= 200)
    return None not in reqs and rs and rs[-1].status == 486


def _down_answers(port, ctl):
    with SipClient(("127.0.0.1", port)) as c:
        reg = c.final("REGISTER", f"sip:down@127.0.0.1:{port}", timeout=5)
        inv = c.final("INVITE", f"sip:down@127.0.0.1:{port}", timeout=5)
        lk = kamcmd(ctl, "ul.lookup", "location", "down")
        return reg.status, reg.hdr("P-Registrar-Error"), inv.status, lk.stdout + lk.stderr


def _lookup(ctl, user):
    out = kamcmd(ctl, "ul.lookup", "location", user).stdout
    return re.sub(r"(Address|Expires|Call-ID|Socket|Ruid|Last-Keepalive|Last-Modified): .*",
                  r"\1: *", out)


@pytest.mark.parametrize("use_domain, usrdom", [(0, "username"), (1, "username,domain")])
def test_shared_bindings_and_same_keys_as_kamailio(tmp_path, use_domain, usrdom):
    if kamailio_binary() is None:
        pytest.skip("Kamailio is not installed")
    with run_redis() as r:
        cfg = CFG.replace("RPORT", str(r.port)).replace("USE_DOMAIN", str(use_domain))
        cfg = cfg.replace("USRDOM", usrdom)
        # Kamailio's expiry timer runs every second, asyncd's not within the test
        with run_kamailio(cfg.replace("TIMER", "1")) as k, \
                run_server(cfg.replace("TIMER", "60"), args=("-Y", str(tmp_path))) as s, \
                SipClient(("127.0.0.1", k.port)) as p1, SipClient(("127.0.0.1", s.port)) as p2, \
                SipClient(("127.0.0.1", s.port)) as caller:
            ctl = f"unix:{tmp_path}/kamailio_ctl"
            rc = r.client()
            assert _register(k.port, p1, "kam").status == 200
            assert _register(s.port, p2, "asy").status == 200
            theirs, ours = _shape(rc, "kam"), _shape(rc, "asy")
            assert ours == theirs, (_rows(rc, "kam"), _rows(rc, "asy"))
            assert rc.exists("location:usrdom::asy:127.0.0.1" if use_domain else "location:usrdom::asy")
            # each finds the other's binding
            assert _rings(caller, s.port, "kam", p1)
            caller.server = ("127.0.0.1", k.port)
            assert _rings(caller, k.port, "asy", p2)
            for aor in (("kam@127.0.0.1", "asy@127.0.0.1") if use_domain else ("kam", "asy")):
                assert "AoR: " + aor in _lookup(ctl, aor)
                assert _lookup(ctl, aor) == _lookup(k.ctl, aor)
            # a refresh (db_update_ucontact_ruid) writes the same fields, the row keeps its key
            before = set(_rows(rc, "kam")) | set(_rows(rc, "asy"))
            assert _register(k.port, p1, "kam", cseq=2).status == 200
            assert _register(s.port, p2, "asy", cseq=2).status == 200
            assert set(_rows(rc, "kam")) | set(_rows(rc, "asy")) == before
            assert _shape(rc, "asy") == _shape(rc, "kam"), (_rows(rc, "kam"), _rows(rc, "asy"))
            # a binding refreshed by the other node's REGISTER, then removed by it
            assert _register(s.port, p1, "kam", cseq=3, callid="reg-kam").status == 200
            assert set(_rows(rc, "kam")) & before
            rep = p1.final("REGISTER", f"sip:kam@127.0.0.1:{s.port}", cseq=4, callid="reg-kam",
                           headers=[f"Contact: <sip:kam@127.0.0.1:{p1.local[1]}>", "Expires: 0"])
            assert rep.status == 200 and not _rows(rc, "kam")
            assert not [k for k in rc.scan_iter("location:usrdom::kam*")]
            # a binding saved by asyncd expires through Kamailio's timer (db_timer_udomain)
            rep = p2.final("REGISTER", f"sip:short@127.0.0.1:{s.port}", headers=["Expires: 1"])
            assert rep.status == 200 and _rows(rc, "short")
            end = time.monotonic() + 6
            while _rows(rc, "short") and time.monotonic() < end:
                time.sleep(0.2)
            assert not _rows(rc, "short") and not [k for k in rc.scan_iter("location:usrdom::short*")]
            # the RPCs that show memory show nothing in DB_ONLY, on both
            for cmd in (("stats.get_statistics", "usrloc:"), ("ul.dump",), ("ul.db_users", "location")):
                ours_out, theirs_out = kamcmd(ctl, *cmd), kamcmd(k.ctl, *cmd)
                assert (ours_out.stdout, ours_out.stderr) == (theirs_out.stdout, theirs_out.stderr), cmd
            # Redis down: the same answers (500 usrloc_contact_insert failed, lookup 404, ul.lookup)
            r.stop()
            try:
                assert _down_answers(s.port, ctl) == _down_answers(k.port, k.ctl)
            finally:
                r.start()
            assert _register(k.port, p1, "kam", cseq=9).status == 200
            assert _register(s.port, p2, "asy", cseq=9).status == 200
