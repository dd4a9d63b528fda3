"""$sht/$shv shared between the receivers of a real server, the HTable Timer
process in the process table, and no segment left after shutdown.

Runs in: the pytest process, against one real `python -m asyncd`.
"""
import re

from tests.helpers import SipClient

CFG = r'''
#!ifndef LPORT
#!define LPORT 5071
#!endif
debug=2
log_stderror=yes
children=4
listen=udp:127.0.0.1:LPORT
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "htable.so"
modparam("htable", "htable", "cnt=>size=4;initval=0")
modparam("htable", "htable", "seen=>size=6;autoexpire=1")
modparam("pv", "shvset", "total=i:100")
request_route {
    $var(n) = $shtinc(cnt=>hits);
    $sht(seen=>$ci) = $var(n);
    $shv(total) = $shv(total) + 1;
    sl_send_reply("200", "n=$var(n) seen=$sht(seen=>$ci) total=$shv(total) pid=$pp");
    exit;
}
'''


def test_counters_shared_by_all_receivers(run_server):
    with run_server(CFG) as srv:
        assert any("HTable Timer" in t for t in srv.titles()), srv.titles()
        n = 80
        with SipClient(srv.addr) as c:
            for k in range(n):
                c.send("OPTIONS", f"sip:u{k}@127.0.0.1:{srv.port}", callid=f"ht-{k}")
            got = c.collect(5.0, until=lambda rs: len(rs) >= n)
        assert len(got) == n, srv.log()[-3000:]
        vals = []
        for r in got:
            m = re.fullmatch(r"n=(\d+) seen=(\d+) total=(\d+) pid=(\d+)", r.reason)
            assert m, r.reason
            assert m.group(1) == m.group(2)
            vals.append(int(m.group(1)))
        assert sorted(vals) == list(range(1, n + 1))      # atomic across processes
        # sequential requests (any receiver): $shv read-modify-write is not atomic,
        # as in Kamailio, but one at a time each sees the previous one's value
        totals, pids = [], set()
        with SipClient(srv.addr) as c:
            for k in range(8):
                r = c.final("OPTIONS", f"sip:last@127.0.0.1:{srv.port}", callid=f"ht-last-{k}")
                m = re.fullmatch(r"n=(\d+) seen=\d+ total=(\d+) pid=(\d+)", r.reason)
                assert int(m.group(1)) == n + 1 + k
                totals.append(int(m.group(2)))
                pids.add(m.group(3))
        assert totals == list(range(totals[0], totals[0] + 8)) and totals[0] > 100
