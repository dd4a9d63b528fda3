"""nathelper's NAT pinger on asyncd and Kamailio 5.6.3, same cfg: contacts
registered through the stock cfg's NAT steps (nat_uac_test("19"),
fix_nated_register(), setbflag(FLB_NATB) and, for one user,
setbflag(FLB_NATSIPPING)) get a keepalive every natping_interval (1 s) at
their received address: an OPTIONS with the sipping bflag, else 4 zero
bytes; a contact registered without NAT gets nothing.

Runs in: the pytest process, against one asyncd and one Kamailio on 127.0.0.1.
"""
import re
import tempfile
import time

import pytest

from bench.servers import kamailio_binary
from tests.helpers.kamailio import KAMCMD, SKIP_KAMAILIO, kamcmd, run_kamailio
from tests.helpers.server import run_server
from tests.helpers.sipclient import SipClient

CFG = r'''
debug=2
log_stderror=yes
children=1
listen=udp:127.0.0.1:LPORT
loadmodule "ctl.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "textops.so"
loadmodule "kex.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "nathelper.so"
modparam("usrloc", "nat_bflag", 6)
modparam("nathelper", "natping_interval", 1)
modparam("nathelper", "ping_nated_only", 1)
modparam("nathelper", "sipping_bflag", 7)
modparam("nathelper", "sipping_from", "sip:pinger@kamailio.org")
modparam("nathelper", "received_avp", "$avp(RECEIVED)")
modparam("registrar", "received_avp", "$avp(RECEIVED)")
request_route {
    if (nat_uac_test("19")) {
        force_rport();
        if (is_method("REGISTER")) { fix_nated_register(); }
        setflag(5);
    }
    if (is_method("REGISTER")) {
        if (isflagset(5)) {
            setbflag(6);
            if ($tU == "sipper") { setbflag(7); }
        }
        if (!save("location")) { sl_reply_error(); }
        exit;
    }
    sl_send_reply("404", "Not here");
}
'''
WAIT = 4.0      # the longest wait for a client's first two keepalives (1 s apart)


def register(c, user, nated):
    """REGISTER `user`; a NATed one says Via port 5999 (nat_uac_test 16) and
    a private Contact, so only its received address reaches the socket."""
    host, port = c.local
    via_port = 5999 if nated else port
    contact = f"<sip:{user}@192.168.1.5:5060>" if nated else f"<sip:{user}@{host}:{port}>"
    n = time.monotonic_ns()
    lines = ["REGISTER sip:example.com SIP/2.0",
             f"Via: SIP/2.0/UDP {host}:{via_port};branch=z9hG4bK{n}", "Max-Forwards: 70",
             f"From: <sip:{user}@example.com>;tag=f{n}", f"To: <sip:{user}@example.com>",
             f"Call-ID: np-{n}@x", "CSeq: 1 REGISTER", f"Contact: {contact};expires=60",
             "Content-Length: 0"]
    c.send_raw(("\r\n".join(lines) + "\r\n\r\n").encode())
    rs = c.collect(2.0, until=lambda rs: rs[-1].status is not None and rs[-1].status >= 200)
    assert rs and rs[-1].status == 200, rs


def shape(data, lport):
    """An OPTIONS ping with its varying parts (branch, tags, counters) as patterns."""
    text = data.decode()
    text = re.sub(r"branch=z9hG4bK\d{7}\r", "branch=z9hG4bK<7 digits>\r", text)
    text = re.sub(r";tag=[^\r]+-[0-9a-f]{1,8}-[0-9a-f]{1,8}\r", ";tag=<ruid>-<aorhash>-<n>\r", text)
    text = re.sub(r"Call-ID: [0-9a-f]{1,8}-[0-9a-f]{1,8}-[0-9a-f]{1,8}@", "Call-ID: <id>-<n>-<ticks>@",
                  text)
    return text.replace(str(lport), "LPORT")


def pings(port, ctl):
    """Each registered socket's first two keepalives (at most WAIT s), and the core's
    reply counters once the SIP-pinged client answered a ping."""
    with SipClient(("127.0.0.1", port)) as sipper, SipClient(("127.0.0.1", port)) as udper, \
            SipClient(("127.0.0.1", port)) as plain:
        register(sipper, "sipper", True)
        register(udper, "udper", True)
        register(plain, "plain", False)
        got = {}
        for name, c in (("sipper", sipper), ("udper", udper), ("plain", plain)):
            rs = c.collect(WAIT if name != "plain" else 0.3, until=lambda rs: len(rs) >= 2)
            got[name] = [r.raw for r in rs]
            got[name + "_gap"] = rs[1].t_recv - rs[0].t_recv if len(rs) > 1 else None
            # (the next clients' first keepalives wait in their socket buffers meanwhile)
        # a reply to a ping is absorbed by the pinger's filter, not relayed or logged
        if got["sipper"]:
            req = got["sipper"][0].decode()
            hdrs = [h for h in req.split("\r\n")[1:] if h and not h.startswith("Content-Length")]
            sipper.send_raw(("SIP/2.0 200 OK\r\n" + "\r\n".join(hdrs) + "\r\nContent-Length: 0\r\n\r\n")
                            .encode())
            time.sleep(0.3)
        if KAMCMD:
            out = kamcmd(ctl, "stats.get_statistics", "rcv_replies", "drop_replies").stdout
            got["stats"] = sorted(re.findall(r"(\w+_replies) = (\d+)", out))
    return got


def check(got, port, log=""):
    assert len(got["sipper"]) == 2 and len(got["udper"]) == 2, (got, log[-3000:])
    assert 0.5 < got["sipper_gap"] < 1.8, got     # the first client's were timed as they came
    assert got["plain"] == [], got
    assert all(d == b"\x00\x00\x00\x00" for d in got["udper"]), got
    assert shape(got["sipper"][0], port) == EXPECTED, got["sipper"][0]
    # the 200 to a ping is received, and absorbed by the filter: not a dropped reply
    assert got.get("stats", STATS) == STATS, got


STATS = [("drop_replies", "0"), ("rcv_replies", "1")]


EXPECTED = ("OPTIONS sip:sipper@192.168.1.5:5060 SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 127.0.0.1:LPORT;branch=z9hG4bK<7 digits>\r\n"
            "From: sip:pinger@kamailio.org;tag=<ruid>-<aorhash>-<n>\r\n"
            "To: sip:sipper@192.168.1.5:5060\r\n"
            "Call-ID: <id>-<n>-<ticks>@127.0.0.1\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n")


@pytest.mark.server
def test_natping_on_asyncd():
    with tempfile.TemporaryDirectory(prefix="natping-") as rundir, \
            run_server(CFG, args=("-Y", rundir)) as srv:
        got = pings(srv.port, f"unix:{rundir}/kamailio_ctl")
        titles = srv.titles()
        log = srv.log()
    check(got, srv.port, log)
    assert sum("TIMER NH" in t for t in titles) == 1, titles
    assert "ERROR" not in log, log[-3000:]


@pytest.mark.kamailio
def test_natping_on_kamailio():
    try:
        kamailio_binary()
    except Exception:
        pytest.skip(SKIP_KAMAILIO)
    with run_kamailio(CFG) as k:
        got = pings(k.port, k.ctl)
        log = k.log()
    check(got, k.port, log)
