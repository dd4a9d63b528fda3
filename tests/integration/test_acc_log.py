"""acc's log backend on the real server, line for line against Kamailio
5.6.3 on the same cfg: `transaction answered` for a relayed 200 and for
tm's own 404 (failed_transaction_flag), `call missed` for a relayed 486 to
an INVITE, `request accounted` from acc_log_request(), the stock cfg's
log_extra; nothing for a request without the flags.

Runs in: the pytest process, against one asyncd and one Kamailio on 127.0.0.1.
"""
import re
import socket
import time

import pytest

from bench.servers import kamailio_binary
from tests.helpers.kamailio import SKIP_KAMAILIO, run_kamailio
from tests.helpers.server import run_server
from tests.helpers.sipclient import SipClient
from tests.helpers.uas import EchoUas

CFG = r'''
#!define FLT_ACC 1
#!define FLT_ACCMISSED 2
#!define FLT_ACCFAILED 3
debug=2
log_stderror=yes
children=1
listen=udp:127.0.0.1:LPORT
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "acc.so"
modparam("acc", "early_media", 0)
modparam("acc", "report_ack", 0)
modparam("acc", "report_cancels", 0)
modparam("acc", "detect_direction", 0)
modparam("acc", "log_flag", FLT_ACC)
modparam("acc", "log_missed_flag", FLT_ACCMISSED)
modparam("acc", "log_extra",
    "src_user=$fU;src_domain=$fd;src_ip=$si;"
    "dst_ouser=$tU;dst_user=$rU;dst_domain=$rd")
modparam("acc", "failed_transaction_flag", FLT_ACCFAILED)
request_route {
    if ($rU == "local") {
        setflag(FLT_ACC); setflag(FLT_ACCFAILED);
        t_newtran();
        t_reply("404", "Gone Away");
        exit;
    }
    if ($rU == "log") {
        acc_log_request("202 Custom comment");
        acc_log_request("just text");
        sl_send_reply("200", "ok");
        exit;
    }
    if ($rU == "none") {
        t_newtran();
        t_reply("200", "ok");
        exit;
    }
    setflag(FLT_ACC);
    setflag(FLT_ACCMISSED);
    $du = "sip:127.0.0.1:" + $hdr(X-Uas);
    t_relay();
}
'''


def acc_lines(text):
    out = []
    for m in re.finditer(r"(ACC: [^\n]*)", text):
        out.append(re.sub(r"timestamp=\d+", "timestamp=T", m.group(1)).rstrip())
    return out


def exchange(port):
    uas = EchoUas()
    try:
        with SipClient(("127.0.0.1", port)) as c:
            hdr = [f"X-Uas: {uas.port}"]
            for n, (method, user) in enumerate([("MESSAGE", "200"), ("INVITE", "486"),
                                                ("OPTIONS", "local"), ("OPTIONS", "log"),
                                                ("OPTIONS", "none")]):
                r = c.final(method, f"sip:{user}@example.com", callid=f"acc-{n}", from_tag=f"ft{n}",
                            headers=hdr, timeout=3.0)
                assert r is not None, (method, user)
    finally:
        uas.close()
    time.sleep(0.3)


def wait_lines(get_log, n, timeout=3.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        lines = acc_lines(get_log())
        if len(lines) >= n:
            return lines
        time.sleep(0.05)
    return acc_lines(get_log())


EXPECTED = [
    "ACC: transaction answered: timestamp=T;method=MESSAGE;from_tag=ft0;to_tag=uastag;call_id=acc-0;"
    "code=200;reason=OK;src_user=tester;src_domain=127.0.0.1;src_ip=127.0.0.1;dst_ouser=200;"
    "dst_user=200;dst_domain=example.com",
    "ACC: call missed: timestamp=T;method=INVITE;from_tag=ft1;to_tag=uastag;call_id=acc-1;"
    "code=486;reason=Busy Here;src_user=tester;src_domain=127.0.0.1;src_ip=127.0.0.1;"
    "dst_ouser=486;dst_user=486;dst_domain=example.com",
    "ACC: transaction answered: timestamp=T;method=OPTIONS;from_tag=ft2;to_tag=;call_id=acc-2;"
    "code=404;reason=Not Found;src_user=tester;src_domain=127.0.0.1;src_ip=127.0.0.1;"
    "dst_ouser=local;dst_user=local;dst_domain=example.com",
    "ACC: request accounted: timestamp=T;method=OPTIONS;from_tag=ft3;to_tag=;call_id=acc-3;"
    "code=202;reason=Custom comment;src_user=tester;src_domain=127.0.0.1;src_ip=127.0.0.1;"
    "dst_ouser=log;dst_user=log;dst_domain=example.com",
    "ACC: request accounted: timestamp=T;method=OPTIONS;from_tag=ft3;to_tag=;call_id=acc-3;"
    "code=;reason=just text;src_user=tester;src_domain=127.0.0.1;src_ip=127.0.0.1;"
    "dst_ouser=log;dst_user=log;dst_domain=example.com",
]


@pytest.mark.server
def test_acc_lines_on_asyncd():
    with run_server(CFG) as srv:
        exchange(srv.port)
        lines = wait_lines(srv.log, len(EXPECTED))
    assert lines == EXPECTED, srv.log()[-3000:]


@pytest.mark.kamailio
def test_acc_lines_on_kamailio_are_the_same():
    try:
        kamailio_binary()
    except Exception:
        pytest.skip(SKIP_KAMAILIO)
    text = CFG.replace("children=1", "children=1\nloadmodule \"ctl.so\"")
    with run_kamailio(text) as k:
        exchange(k.port)
        lines = wait_lines(k.log, len(EXPECTED))
    assert lines == EXPECTED, k.log()[-3000:]


def timeout_case(port, get_log):
    """An INVITE whose branch never answers: tm's 408 is the missed call,
    and the line's to_tag is the tag of that 408."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        with SipClient(("127.0.0.1", port)) as c:
            r = c.final("INVITE", "sip:486@example.com", callid="acc-t", from_tag="ftt",
                        headers=[f"X-Uas: {silent.getsockname()[1]}"], timeout=5.0)
    finally:
        silent.close()
    assert r is not None and r.status == 408
    tag = re.search(r";tag=([^;]+)", r.hdr("to")).group(1)
    lines = [ln for ln in wait_lines(get_log, 1) if "call_id=acc-t;" in ln]
    return tag, lines


FR = 'modparam("tm", "fr_timer", 500)\nmodparam("tm", "fr_inv_timer", 500)\nrequest_route {'


@pytest.mark.server
def test_a_timed_out_invite_is_a_missed_call_with_tms_to_tag():
    with run_server(CFG.replace("request_route {", FR, 1)) as srv:
        tag, lines = timeout_case(srv.port, srv.log)
    assert lines == ["ACC: call missed: timestamp=T;method=INVITE;from_tag=ftt;to_tag=%s;call_id=acc-t;"
                     "code=408;reason=Request Timeout;src_user=tester;src_domain=127.0.0.1;"
                     "src_ip=127.0.0.1;dst_ouser=486;dst_user=486;dst_domain=example.com" % tag]


@pytest.mark.kamailio
def test_a_timed_out_invite_on_kamailio():
    try:
        kamailio_binary()
    except Exception:
        pytest.skip(SKIP_KAMAILIO)
    text = CFG.replace("children=1", "children=1\nloadmodule \"ctl.so\"").replace("request_route {", FR, 1)
    with run_kamailio(text) as k:
        tag, lines = timeout_case(k.port, k.log)
    assert lines == ["ACC: call missed: timestamp=T;method=INVITE;from_tag=ftt;to_tag=%s;call_id=acc-t;"
                     "code=408;reason=Request Timeout;src_user=tester;src_domain=127.0.0.1;"
                     "src_ip=127.0.0.1;dst_ouser=486;dst_user=486;dst_domain=example.com" % tag]
