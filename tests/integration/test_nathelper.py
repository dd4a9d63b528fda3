"""nathelper on asyncd and Kamailio 5.6.3, same cfg, same messages:
nat_uac_test's answer for each bit, and the Contact / Request-URI / $du a
relayed request carries after fix_nated_contact, add_contact_alias,
set_contact_alias, add_rcv_param and handle_ruri_alias.

Runs in: the pytest process, against one asyncd and one Kamailio on 127.0.0.1.
"""
import re
import time

import pytest

from bench.servers import kamailio_binary
from tests.helpers.kamailio import SKIP_KAMAILIO, run_kamailio
from tests.helpers.server import run_server
from tests.helpers.sipclient import SipClient
from tests.helpers.uas import EchoUas

BITS = (1, 2, 4, 8, 16, 32, 64, 128)
TESTS = "\n".join(
    f'    if (nat_uac_test("{b}")) {{ $var(r) = $var(r) + "{b}."; }}' for b in BITS)
CFG = r'''
debug=2
log_stderror=yes
children=1
listen=udp:127.0.0.1:LPORT
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "textops.so"
loadmodule "nathelper.so"
modparam("nathelper", "received_avp", "$avp(RECEIVED)")
request_route {
    force_rport();
    if ($rU == "test") {
        $var(r) = "r=";
''' + TESTS + r'''
        sl_send_reply("200", "$var(r)");
        exit;
    }
    if ($rU == "reg") {
        fix_nated_register();
        sl_send_reply("200", "rcv=$avp(RECEIVED)");
        exit;
    }
    if ($rU == "fnc") { fix_nated_contact(); }
    if ($rU == "aca") { $var(rc) = add_contact_alias(); append_hf("X-Rc: $var(rc)\r\n"); }
    if ($rU == "sca") { set_contact_alias(); }
    if ($rU == "arp") { add_rcv_param(); }
    if ($rU == "arp1") { add_rcv_param("1"); }
    if ($rU == "hra") {
        $var(rc) = handle_ruri_alias();
        append_hf("X-Rc: $var(rc)\r\n");
        t_relay();
        exit;
    }
    $du = "sip:127.0.0.1:" + $hdr(X-Uas);
    t_relay();
}
'''
SDP = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


def request(c, user, via_host, contact, extra=(), body="", ruri=None, method="INVITE"):
    host, port = c.local
    ruri = ruri or f"sip:{user}@example.com"
    lines = [f"{method} {ruri} SIP/2.0", f"Via: SIP/2.0/UDP {via_host};branch=z9hG4bK{time.monotonic_ns()}",
             "Max-Forwards: 70", f"From: <sip:alice@example.com>;tag=f{time.monotonic_ns()}",
             f"To: <sip:{user}@example.com>", f"Call-ID: nh-{time.monotonic_ns()}@x",
             f"CSeq: 1 {method}", *(f"Contact: {contact}" for _ in [0] if contact), *extra]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    c.send_raw(("\r\n".join(lines) + "\r\n\r\n" + body).encode())
    rs = c.collect(2.0, until=lambda rs: rs[-1].status is not None and rs[-1].status >= 200)
    return rs[-1] if rs else None


def scenarios(port):
    """Everything both servers are asked; the client's port is written CPORT."""
    out = []
    uas = EchoUas()
    try:
        with SipClient(("127.0.0.1", port)) as c:
            cp = c.local[1]
            me = f"127.0.0.1:{cp}"
            for via, contact, body in [
                    ("192.168.1.5:5060", "<sip:u@192.168.1.5:5060>", SDP),
                    (me, f"<sip:u@{me}>", ""),
                    ("client.example.com", "<sip:u@client.example.com>", ""),
                    ("10.1.2.3", "sip:u@100.64.0.1:5080;expires=60", ""),
                    (me, "*", ""),
                    (me, "", "")]:
                r = request(c, "test", via, contact, body=body, method="OPTIONS")
                out.append(("test", via.replace(str(cp), "CPORT"), contact.replace(str(cp), "CPORT"),
                            r.reason if r else None))
            r = request(c, "reg", me, f"<sip:u@{me}>", method="REGISTER")
            out.append(("reg", r.reason.replace(str(cp), "CPORT") if r else None))
            for user, contact in [("fnc", "<sip:u@192.168.1.5:5062;maddr=10.0.0.1;ob>"),
                                  ("aca", "<sip:u@192.168.1.5:5062;ob>"),
                                  ("aca", "sip:u@192.168.1.5"),
                                  ("aca", f"<sip:u@{me};transport=udp>"),
                                  ("sca", "<sip:u@192.168.1.5:5062;ob>"),
                                  ("arp", "<sip:u@192.168.1.5:5062>;expires=30, <sip:v@h>"),
                                  ("arp1", "<sip:u@192.168.1.5:5062>")]:
                n = len(uas.received)
                request(c, user, me, contact, extra=[f"X-Uas: {uas.port}"], method="MESSAGE")
                got = [m for m in uas.received[n:] if m.startswith(b"MESSAGE")]
                out.append((user, contact.replace(str(cp), "CPORT"), _seen(got, cp)))
            n = len(uas.received)
            request(c, "hra", me, f"<sip:u@{me}>", method="MESSAGE",
                    ruri=f"sip:hra@example.com;alias=127.0.0.1~{uas.port}~1;x=y")
            got = [m for m in uas.received[n:] if m.startswith(b"MESSAGE")]
            out.append(("hra", (_seen(got, cp) or "").replace(str(uas.port), "UPORT")))
    finally:
        uas.close()
    return out


def _seen(msgs, cp):
    if not msgs:
        return None
    text = msgs[0].decode()
    first = text.split("\r\n", 1)[0]
    hdrs = [h for h in text.split("\r\n") if re.match(r"(Contact|m|X-Rc):", h, re.I)]
    return " | ".join([first] + hdrs).replace(str(cp), "CPORT")


@pytest.mark.server
def test_nathelper_on_asyncd_matches_the_recorded_kamailio_answers():
    with run_server(CFG) as srv:
        got = scenarios(srv.port)
    assert got == KAMAILIO, srv.log()[-3000:]


@pytest.mark.kamailio
def test_nathelper_on_kamailio():
    try:
        kamailio_binary()
    except Exception:
        pytest.skip(SKIP_KAMAILIO)
    with run_kamailio(CFG.replace("children=1", "children=1\nloadmodule \"ctl.so\"")) as k:
        got = scenarios(k.port)
    assert got == KAMAILIO, k.log()[-3000:]


# what Kamailio 5.6.3 answered (test_nathelper_on_kamailio checks it still does)
KAMAILIO = [
    ('test', '192.168.1.5:5060', '<sip:u@192.168.1.5:5060>', 'r=1.2.4.8.16.128.'),
    ('test', '127.0.0.1:CPORT', '<sip:u@127.0.0.1:CPORT>', 'r='),
    ('test', 'client.example.com', '<sip:u@client.example.com>', 'r=2.16.128.'),
    ('test', '10.1.2.3', 'sip:u@100.64.0.1:5080;expires=60', 'r=1.2.4.16.128.'),
    ('test', '127.0.0.1:CPORT', '*', 'r='),
    ('test', '127.0.0.1:CPORT', '', 'r='),
    ('reg', 'rcv=sip:127.0.0.1:CPORT'),
    ('fnc',
     '<sip:u@192.168.1.5:5062;maddr=10.0.0.1;ob>',
     'MESSAGE sip:fnc@example.com SIP/2.0 | Contact: <sip:u@127.0.0.1:CPORT;ob>'),
    ('aca',
     '<sip:u@192.168.1.5:5062;ob>',
     'MESSAGE sip:aca@example.com SIP/2.0 | Contact: <sip:u@192.168.1.5:5062;alias=127.0.0.1~CPORT~1;ob> | '
     'X-Rc: 1'),
    ('aca',
     'sip:u@192.168.1.5',
     'MESSAGE sip:aca@example.com SIP/2.0 | Contact: <sip:u@192.168.1.5;alias=127.0.0.1~CPORT~1> | X-Rc: '
     '1'),
    ('aca',
     '<sip:u@127.0.0.1:CPORT;transport=udp>',
     'MESSAGE sip:aca@example.com SIP/2.0 | Contact: <sip:u@127.0.0.1:CPORT;transport=udp> | X-Rc: 2'),
    ('sca',
     '<sip:u@192.168.1.5:5062;ob>',
     'MESSAGE sip:sca@example.com SIP/2.0 | Contact: <sip:u@192.168.1.5:5062;ob;alias=127.0.0.1~CPORT~1>'),
    ('arp',
     '<sip:u@192.168.1.5:5062>;expires=30, <sip:v@h>',
     'MESSAGE sip:arp@example.com SIP/2.0 | Contact: '
     '<sip:u@192.168.1.5:5062>;expires=30;received="sip:127.0.0.1:CPORT", '
     '<sip:v@h>;received="sip:127.0.0.1:CPORT"'),
    ('arp1',
     '<sip:u@192.168.1.5:5062>',
     'MESSAGE sip:arp1@example.com SIP/2.0 | Contact: '
     '<sip:u@192.168.1.5:5062;received=sip:127.0.0.1:CPORT>'),
    ('hra', 'MESSAGE sip:hra@example.com;x=y SIP/2.0 | Contact: <sip:u@127.0.0.1:CPORT> | X-Rc: 1')]
