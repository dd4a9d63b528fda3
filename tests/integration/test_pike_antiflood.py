"""The stock cfg's WITH_ANTIFLOOD flow (pike blocks, the address goes into
the ipban htable, later requests are dropped) on asyncd and on Kamailio
5.6.3: the same requests get answered, the same ones are dropped.

Runs in: the pytest process, against one asyncd and one Kamailio on 127.0.0.1.
"""
import os
import re
import shutil
import tempfile

import pytest

from bench.servers import kamailio_binary
from tests.helpers.kamailio import KAMCMD, SKIP_KAMAILIO, kamcmd, run_kamailio
from tests.helpers.server import run_server
from tests.helpers.sipclient import SipClient

CFG = r'''
debug=2
log_stderror=yes
children=2
listen=udp:127.0.0.1:LPORT
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "htable.so"
loadmodule "pike.so"
loadmodule "ctl.so"
modparam("pike", "sampling_time_unit", 2)
modparam("pike", "reqs_density_per_unit", 16)
modparam("pike", "remove_latency", 4)
modparam("htable", "htable", "ipban=>size=8;autoexpire=300;")
request_route {
    if($sht(ipban=>$si)!=$null) {
        xdbg("request from blocked IP - $rm from $fu (IP:$si:$sp)\n");
        exit;
    }
    if (!pike_check_req()) {
        xlog("L_ALERT","ALERT: pike blocking $rm from $fu (IP:$si:$sp)\n");
        $sht(ipban=>$si) = 1;
        exit;
    }
    sl_send_reply("200", "ok");
}
'''
N = 26


def answered(port):
    got = []
    with SipClient(("127.0.0.1", port)) as c:
        for i in range(N):
            r = c.final("OPTIONS", f"sip:x@127.0.0.1:{port}", timeout=0.15 if i > 18 else 1.0)
            got.append(r is not None and r.status == 200)
    return got


TOP_ARGS = ((), ("ALL",), ("warm",), ("cold",))


def tops(sock):
    """kamcmd pike.top's output per option, the numbers that depend on when
    the unit turned (`expires`, the hits' split between units) masked."""
    if KAMCMD is None:
        return None
    out = []
    for args in TOP_ARGS:
        r = kamcmd(sock, "pike.top", *args)
        out.append(re.sub(r"(expires|leaf_hits_prev|leaf_hits_curr): \d+", r"\1: N", r.stdout + r.stderr))
    return out


def expected():
    return [True] * 21 + [False] * (N - 21)


@pytest.mark.server
def test_pike_blocks_and_ipban_drops_on_asyncd():
    run = tempfile.mkdtemp(prefix="pike-")
    try:
        with run_server(CFG, args=("-Y", os.path.join(run, "run"))) as srv:
            got = answered(srv.port)
            srv.wait_log(r"ALERT: pike blocking OPTIONS from sip:tester@127.0.0.1")
            top = tops(f"unix:{run}/run/kamailio_ctl")
    finally:
        shutil.rmtree(run, ignore_errors=True)
    assert got == expected(), srv.log()[-2000:]
    assert top is None or top == TOPS, top
    assert srv.log().count("PIKE - BLOCKing ip 127.0.0.1") == 1
    assert srv.log().count("ALERT: pike blocking") == 1


@pytest.mark.kamailio
def test_pike_blocks_and_ipban_drops_on_kamailio():
    try:
        kamailio_binary()
    except Exception:
        pytest.skip(SKIP_KAMAILIO)
    with run_kamailio(CFG) as k:
        got = answered(k.port)
        log = k.log()
        top = tops(k.ctl)
    assert got == expected(), log[-2000:]
    assert top is None or top == TOPS, top
    assert log.count("PIKE - BLOCKing ip 127.0.0.1") == 1


# kamcmd pike.top on Kamailio 5.6.3 after the flood (test_..._on_kamailio checks it still is)
TOPS = [
    "{\n\tmax_hits: 16\n\tlist: {\n\t\t{\n\t\t\tip_addr: 127.0.0.1\n\t\t\tleaf_hits_prev: N\n"
    "\t\t\tleaf_hits_curr: N\n\t\t\texpires: N\n\t\t\tstatus: HOT\n\t\t}\n\t}\n\tnumber_of_rows: 1\n}\n",
] * 2 + [
    "{\n\tmax_hits: 16\n\tlist: {\n\t}\n\tnumber_of_rows: 0\n}\n",
    "error: 500 - Bad argument. Select: ALL, HOT or WARM\n",
]
