"""registrar + usrloc on the real server: REGISTER processing (RFC 3261 10.3),
lookup() relaying an INVITE to the registered phones (parallel forking),
expiry on time, and the ul.* RPCs through the real kamcmd; the same flows on
Kamailio 5.6.3 give the same codes, bindings and ul.dump shapes.

Runs in: the pytest process (the servers are real processes).
"""
import re
import time

import pytest

from tests.helpers.kamailio import KAMCMD, SKIP_KAMCMD, kamailio_binary, kamcmd, run_kamailio
from tests.helpers.server import run_server
from tests.helpers.sipclient import SipClient, build_request

CFG = """#!KAMAILIO
listen=udp:127.0.0.1:LPORT
loadmodule "ctl.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "kex.so"
modparam("usrloc", "db_mode", 0)
modparam("usrloc", "timer_interval", 1)
{params}
request_route {{
  if (method=="REGISTER") {{ save("location"); exit; }}
  if (!lookup("location")) {{ sl_send_reply("404", "Not Found"); exit; }}
  t_relay();
}}
"""


def _cfg(*params):
    return CFG.format(params="\n".join(f'modparam("{m}", "{k}", {v})' for m, k, v in params))


def _bindings(reply):
    """{contact uri: expires} of a 200's Contact header."""
    out = {}
    for v in reply.hdrs("Contact"):
        for uri, ex in re.findall(r"<([^>]+)>[^,]*?;expires=(\d+)", v):
            out[uri] = int(ex)
    return out


def _register(c, port, user="bob", headers=(), **kw):
    return c.final("REGISTER", f"sip:{user}@127.0.0.1:{port}", headers=list(headers), **kw)


def _answer(phone, code):
    """The phone's reply to the INVITE it got (To-tag added), -> the request."""
    req = phone.recv(3.0)
    while req is not None and req.method == "ACK":          # the ACK of an earlier call
        req = phone.recv(3.0)
    assert req is not None and req.method == "INVITE", "the phone got no INVITE"
    lines = [f"SIP/2.0 {code} Busy"]
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        for v in req.hdrs(name):
            lines.append(f"{name}: {v}" + (";tag=ph" if name == "To" else ""))
    lines.append("Content-Length: 0")
    phone.send_raw("\r\n".join(lines) + "\r\n\r\n", req.src)
    return req


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    rundir = str(tmp_path_factory.mktemp("reg"))
    with run_server(_cfg(), args=("-Y", rundir)) as s:
        s.ctl = f"unix:{rundir}/kamailio_ctl"
        yield s


def test_register_refresh_remove(srv):
    with SipClient(("127.0.0.1", srv.port)) as c:
        me = f"sip:tester@127.0.0.1:{c.local[1]}"
        r = _register(c, srv.port, "rr", ["Expires: 120"])
        assert r.status == 200 and _bindings(r) == {me: 120}
        r = _register(c, srv.port, "rr", ["Contact: <sip:other@127.0.0.1:5999>;q=0.5;expires=300"])
        assert r.status == 200 and _bindings(r) == {"sip:other@127.0.0.1:5999": 300, me: 3600}
        assert "<sip:other@127.0.0.1:5999>;q=0.5;expires=300" in r.hdr("Contact")
        r = _register(c, srv.port, "rr", ["Expires: 10"])           # raised to min_expires
        assert _bindings(r)[me] == 60
        r = c.final("REGISTER", f"sip:rr@127.0.0.1:{srv.port}", headers=["Expires: 0"])
        assert r.status == 200 and _bindings(r) == {"sip:other@127.0.0.1:5999": 300}
        r = _star(c, srv.port, "rr", "Expires: 0")
        assert r.status == 200 and not r.hdrs("Contact")
        r = _star(c, srv.port, "rr", "Expires: 5")
        assert r.status == 400 and r.hdr("P-Registrar-Error") == "* used in contact and expires is not zero"


def _star(c, port, user, expires):
    return _register_as(c, port, user, "*", [expires])


def _register_as(c, port, user, contact, headers):
    """A REGISTER whose only Contact is `contact` (not the client's own)."""
    data, _b, _c = build_request("REGISTER", f"sip:{user}@127.0.0.1:{port}", c.local, headers=headers)
    data = data.replace(f"Contact: <sip:tester@127.0.0.1:{c.local[1]}>".encode(),
                        f"Contact: {contact}".encode())
    c.send_raw(data)
    rs = c.collect(2.0, until=lambda rs: rs[-1].status and rs[-1].status >= 200)
    c.last_final = (rs[-1].status, rs[-1].hdr("P-Registrar-Error"))
    return rs[-1]


def test_bad_expires_and_cseq(srv):
    with SipClient(("127.0.0.1", srv.port)) as c:
        r = _register(c, srv.port, "bx", ["Expires: soon"])      # not a number: as if absent
        assert r.status == 200 and list(_bindings(r).values()) == [3600]
        r = _register(c, srv.port, "bx", ["Contact: <sip:x@h>;q=1.5"])
        assert r.status == 400 and r.hdr("P-Registrar-Error") == "Invalid q param in contact"
        cid = "fixed-callid@test"
        assert _register(c, srv.port, "bx", callid=cid, cseq=5).status == 200
        r = _register(c, srv.port, "bx", callid=cid, cseq=4)
        assert r.status == 400 and r.hdr("P-Registrar-Error") == "Invalid CSeq number"


def test_lookup_relays_invite_and_forks_in_parallel(srv):
    with SipClient(("127.0.0.1", srv.port)) as p1, SipClient(("127.0.0.1", srv.port)) as p2, \
            SipClient(("127.0.0.1", srv.port)) as caller:
        assert caller.final("INVITE", f"sip:nobody@127.0.0.1:{srv.port}").status == 404
        assert _register(p1, srv.port, "fork").status == 200
        caller.send("INVITE", f"sip:fork@127.0.0.1:{srv.port}")
        req = _answer(p1, 486)
        assert req.first_line.startswith(f"INVITE sip:tester@127.0.0.1:{p1.local[1]} ")
        rs = caller.collect(3.0, until=lambda rs: rs[-1].status and rs[-1].status >= 200)
        assert rs[-1].status == 486
        r = _register(p2, srv.port, "fork")
        assert r.status == 200 and len(_bindings(r)) == 2
        caller.send("INVITE", f"sip:fork@127.0.0.1:{srv.port}")
        _answer(p1, 486)
        _answer(p2, 486)                                # both phones ring: two branches
        rs = caller.collect(3.0, until=lambda rs: rs[-1].status and rs[-1].status >= 200)
        assert rs[-1].status == 486


def test_brief_dump_and_rm(srv):
    with SipClient(("127.0.0.1", srv.port)) as c:
        r = _register(c, srv.port, "ex", ["Expires: 60"])
        assert r.status == 200
        assert "ex" in kamcmd(srv.ctl, "ul.dump", "brief").stdout
        kamcmd(srv.ctl, "ul.rm", "location", "ex")
        assert "AOR not found" in kamcmd(srv.ctl, "ul.lookup", "location", "ex").stdout


@pytest.mark.skipif(KAMCMD is None, reason=SKIP_KAMCMD)
def test_ul_rpcs_with_kamcmd(srv):
    ctl = srv.ctl
    r = kamcmd(ctl, "ul.add", "location", "rpc", "sip:rpc@127.0.0.1:7000", 2, 0.5, ".", 0, 0, 0)
    assert r.returncode == 0 and r.stdout.strip() == "", r
    out = kamcmd(ctl, "ul.lookup", "location", "rpc@any.host").stdout
    assert "Address: sip:rpc@127.0.0.1:7000" in out and "Q: 0.5" in out
    assert "User-Agent: kamailio SIP Router - RPC Server" in out
    dump = kamcmd(ctl, "ul.dump").stdout
    for key in ("Domains:", "Domain: location", "Size: 1024", "AoRs:", "Info:", "AoR: rpc",
                "HashID:", "Contacts:", "Contact:", "Expires:", "Ruid: uloc-", "Stats:",
                "Records:", "Max-Slots:"):
        assert key in dump, key
    time.sleep(3.2)             # expires 2, timer_interval 1: gone at the next tick
    assert "AOR not found in location table" in kamcmd(ctl, "ul.lookup", "location", "rpc").stdout
    assert "AoR: rpc" not in kamcmd(ctl, "ul.dump").stdout
    stats = kamcmd(ctl, "stats.get_statistics", "usrloc:").stdout
    for name in ("registered_users", "location_users", "location_contacts", "location_expires"):
        assert f"usrloc:{name} = " in stats
    assert re.search(r"usrloc:location_expires = [1-9]", stats)
    r = kamcmd(ctl, "ul.rm_contact", "location", "nobody", "sip:x@y")
    assert "404" in r.stdout + r.stderr and "AOR not found" in r.stdout + r.stderr
    r = kamcmd(ctl, "ul.lookup", "nosuch", "x")
    assert "Domain table not found" in r.stdout + r.stderr
    reg = kamcmd(ctl, "stats.get_statistics", "registrar:").stdout
    for name in ("accepted_regs", "rejected_regs", "default_expire", "max_expires", "max_contacts"):
        assert f"registrar:{name} = " in reg


def test_registered_contact_expires_on_time(tmp_path):
    rundir = str(tmp_path)
    with run_server(_cfg(("registrar", "min_expires", 1)), args=("-Y", rundir)) as s, \
            SipClient(("127.0.0.1", s.port)) as c, SipClient(("127.0.0.1", s.port)) as caller:
        r = _register(c, s.port, "short", ["Expires: 2"])
        assert r.status == 200 and list(_bindings(r).values()) == [2]
        time.sleep(3.1)         # expired after 2 s; the 1 s timer has dropped it by now
        assert caller.final("MESSAGE", f"sip:short@127.0.0.1:{s.port}").status == 404
        if KAMCMD:
            assert "AoR: short" not in kamcmd(f"unix:{rundir}/kamailio_ctl", "ul.dump").stdout
            stats = kamcmd(f"unix:{rundir}/kamailio_ctl", "stats.get_statistics", "usrloc:").stdout
            assert "usrloc:location_expires = 1" in stats


def test_min_expires_mode_423_and_max_contacts():
    with run_server(_cfg(("registrar", "min_expires_mode", 1), ("registrar", "max_contacts", 1))) as s, \
            SipClient(("127.0.0.1", s.port)) as c:
        r = _register(c, s.port, "m", ["Expires: 10"])
        assert r.status == 423 and r.hdr("Min-Expires") == "60"
        assert _register(c, s.port, "m").status == 200
        r = _register(c, s.port, "m", ["Contact: <sip:second@127.0.0.1:5999>"])
        assert r.status == 503 and r.hdr("P-Registrar-Error") == "Too many registered contacts"


def _flow(port, ctl):
    """The REGISTER/lookup flow both servers run: codes and binding counts."""
    out = []
    with SipClient(("127.0.0.1", port)) as c, SipClient(("127.0.0.1", port)) as caller:
        def seen(r):
            me = f"sip:tester@127.0.0.1:{c.local[1]}"
            # expires rounded to 10 s: a second boundary between save and reply is no difference
            return r.status, sorted(("me" if u == me else u, (e + 5) // 10 * 10) for u, e in _bindings(r).items())
        out.append(seen(_register(c, port, "same", ["Expires: 100"])))
        out.append(seen(_register(c, port, "same", ["Contact: <sip:two@127.0.0.1:5999>;q=0.7"])))
        out.append(seen(_register(c, port, "same", ["Expires: 0"])))
        out.append(seen(_register(c, port, "same", ["Expires: 30"])))
        out.append(_star(c, port, "same", "Expires: 0").status)
        out.append(caller.final("OPTIONS", f"sip:nobody@127.0.0.1:{port}").status)
        dump = kamcmd(ctl, "ul.dump").stdout
        out.append(sorted(set(re.findall(r"^\s*([A-Za-z-]+):", dump, re.M))))
        out.append(kamcmd(ctl, "ul.lookup", "location", "nobody").stdout.strip())
    return out


@pytest.mark.kamailio
@pytest.mark.skipif(KAMCMD is None, reason=SKIP_KAMCMD)
def test_same_as_kamailio(tmp_path):
    if kamailio_binary() is None:
        pytest.skip("Kamailio is not installed")
    cfg = _cfg()
    with run_kamailio(cfg) as k:
        theirs = _flow(k.port, k.ctl)
    rundir = str(tmp_path)
    with run_server(cfg, args=("-Y", rundir)) as s:
        ours = _flow(s.port, f"unix:{rundir}/kamailio_ctl")
    assert ours == theirs


STOCK_LIKE = """#!KAMAILIO
listen=udp:127.0.0.1:LPORT
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "pv.so"
modparam("registrar", "method_filtering", 1)
modparam("registrar", "max_expires", 3600)
modparam("registrar", "gruu_enabled", 0)
modparam("registrar", "use_path", 1)
modparam("registrar", "path_mode", 0)
modparam("usrloc", "timer_interval", 60)
modparam("usrloc", "timer_procs", 1)
modparam("usrloc", "use_domain", 0)
modparam("registrar", "received_avp", "$avp(RECEIVED)")
modparam("usrloc", "nat_bflag", 6)
request_route {
  if (method=="REGISTER") {
    if ($hdr(X-Received) != $null) { $avp(RECEIVED) = $hdr(X-Received); }
    if (!save("location")) { sl_reply_error(); }
    exit;
  }
  if (!lookup("location")) {
    $var(rc) = $rc;
    t_newtran();
    switch ($var(rc)) {
      case -1:
      case -3:
        send_reply("404", "Not Found");
        exit;
      case -2:
        send_reply("405", "Method Not Allowed");
        exit;
    }
  }
  t_relay();
}
"""


def test_stock_cfg_lookup_codes_received_and_path():
    with run_server(STOCK_LIKE) as s, SipClient(("127.0.0.1", s.port)) as phone, \
            SipClient(("127.0.0.1", s.port)) as caller:
        here = f"sip:127.0.0.1:{phone.local[1]}"
        r = _register_as(phone, s.port, "nat", "<sip:nat@10.9.9.9:5060>",
                         ["Allow: INVITE, ACK", f"X-Received: {here}", "Expires: 7200"])
        assert r.status == 200
        assert f'<sip:nat@10.9.9.9:5060>;expires=3600;received="{here}"' in r.hdr("Contact")
        assert caller.final("MESSAGE", f"sip:nat@127.0.0.1:{s.port}").status == 405
        assert caller.final("INVITE", f"sip:none@127.0.0.1:{s.port}").status == 404
        caller.send("INVITE", f"sip:nat@127.0.0.1:{s.port}")
        req = _answer(phone, 486)            # sent to `received`, R-URI the registered contact
        assert req.first_line.startswith("INVITE sip:nat@10.9.9.9:5060 ")
        r = _register_as(phone, s.port, "pp", "<sip:pp@10.8.8.8>",
                         ["Path: <sip:edge@127.0.0.1:%d;lr>" % phone.local[1]])
        assert r.status == 200
        caller.send("INVITE", f"sip:pp@127.0.0.1:{s.port}")
        req = _answer(phone, 486)            # the Path hop gets it, with a Route header
        assert req.first_line.startswith("INVITE sip:pp@10.8.8.8 ")
        assert req.hdr("Route") == "<sip:edge@127.0.0.1:%d;lr>" % phone.local[1]


def _stock_flow(port):
    with SipClient(("127.0.0.1", port)) as phone, SipClient(("127.0.0.1", port)) as caller:
        r = _register_as(phone, port, "nat", "<sip:nat@10.9.9.9:5060>;q=0.2",
                         ["Allow: INVITE, ACK", "X-Received: sip:10.1.1.1:5060", "Expires: 7200"])
        return [r.status, r.hdr("Contact"),
                caller.final("MESSAGE", f"sip:nat@127.0.0.1:{port}").status,
                caller.final("MESSAGE", f"sip:none@127.0.0.1:{port}").status,
                _all_codes(phone, port, "<sip:x@h>;q=2", []),
                _all_codes(phone, port, "<sip:x@h>", ["Expires: -1"])]


def _all_codes(c, port, contact, headers):
    """Every reply to one REGISTER: save()'s error reply, then the stock cfg's
    sl_reply_error() sends its own (Kamailio does the same)."""
    _register_as(c, port, "nat", contact, headers)
    rs = c.collect(0.5)
    return [c.last_final] + [(r.status, r.hdr("P-Registrar-Error")) for r in rs]


@pytest.mark.kamailio
def test_stock_flow_same_as_kamailio():
    if kamailio_binary() is None:
        pytest.skip("Kamailio is not installed")
    with run_kamailio(STOCK_LIKE.replace('loadmodule "tm.so"', 'loadmodule "ctl.so"\nloadmodule "tm.so"')) as k:
        theirs = _stock_flow(k.port)
    with run_server(STOCK_LIKE) as s:
        ours = _stock_flow(s.port)
    assert ours == theirs


_VARYING = re.compile(r"(Ruid|Last-Keepalive|Last-Modified|HashID|Call-ID|Socket|Expires): .*")


def _rpc_flow(port, ctl):
    """ul.* replies after two REGISTERs, the values that vary masked."""
    with SipClient(("127.0.0.1", port)) as c:
        _register_as(c, port, "u1", "<sip:a@10.0.0.1:5060>;q=0.5", ["User-Agent: phone"])
        _register_as(c, port, "u1", "<sip:b@10.0.0.1:5060>", [])
    out = []
    for cmd in [("ul.dump",), ("ul.dump", "brief"), ("ul.lookup", "location", "u1"),
                ("ul.rm_contact", "location", "u1", "sip:zz@h"),
                ("ul.add", "location", "u2", "sip:x@y", 0, 0.5, ".", 0, 0, 0),
                ("ul.lookup", "location", "u2"), ("ul.rm_contact", "location", "u2", "sip:x@y"),
                ("ul.rm", "location", "nobody"), ("ul.flush",), ("ul.db_users", "location")]:
        r = kamcmd(ctl, *cmd)
        out.append(_VARYING.sub(r"\1: X", r.stdout + r.stderr))
    return out


@pytest.mark.kamailio
@pytest.mark.skipif(KAMCMD is None, reason=SKIP_KAMCMD)
def test_ul_rpc_replies_same_as_kamailio(tmp_path):
    if kamailio_binary() is None:
        pytest.skip("Kamailio is not installed")
    with run_kamailio(_cfg()) as k:
        theirs = _rpc_flow(k.port, k.ctl)
    rundir = str(tmp_path)
    with run_server(_cfg(), args=("-Y", rundir)) as s:
        ours = _rpc_flow(s.port, f"unix:{rundir}/kamailio_ctl")
    assert ours == theirs


@pytest.mark.parametrize("contact, headers, code", [
    ("<sip:x@h>;q=abc", [], 400),
    ("<sip:x@h>;q=0.5.1", [], 400),
    ("<" + "sip:" + "a" * 600 + "@h>", [], 400),
    ("<sip:x@h>;expires=abc", [], 200),             # not a number: default_expires
    ("<sip:x@h>", ["Expires: 99999999999999"], 200),
    ("*", ["Expires: 0", "Contact: <sip:y@h>"], 400),
    ("<sip:x@h>", ["Call-ID-Pad: x"], 200),
])
def test_bad_registers_get_replies_and_the_server_lives(srv, contact, headers, code):
    with SipClient(("127.0.0.1", srv.port)) as c:
        r = _register_as(c, srv.port, "bad", contact, headers)
        assert r.status == code
        assert _register(c, srv.port, "bad").status == 200
    assert "Traceback" not in srv.log()


def _order_flow(port):
    """200 Contact lists while q values change (usrloc's insert and
    update_contact_pos orders, quirks included), expires masked."""
    out = []
    with SipClient(("127.0.0.1", port)) as c:
        for contact in ("<sip:a@h>;q=0.9", "<sip:b@h>;q=0.5", "<sip:c@h>;q=0.1", "<sip:c@h>;q=0.95",
                        "<sip:a@h>;q=0.05", "<sip:d@h>", "<sip:e@h>;q=1", "<sip:b@h>"):
            r = _register_as(c, port, "order", contact, [])
            out.append((r.status, re.sub(r"expires=\d+", "", r.hdr("Contact") or "")))
    return out


@pytest.mark.kamailio
def test_contact_order_same_as_kamailio():
    if kamailio_binary() is None:
        pytest.skip("Kamailio is not installed")
    with run_kamailio(_cfg()) as k:
        theirs = _order_flow(k.port)
    with run_server(_cfg()) as s:
        ours = _order_flow(s.port)
    assert ours == theirs
