"""A full transaction table (no shm left for another transaction): the
function that needed it returns its error code and the script decides; the
requests after it get 503 with Retry-After from asyncd before the script
runs (RFC 3261 §21.5.4; docs/kamailio-tm.md §7), until a transaction ends.
Both are counted and logged at exit; the transactions in the table are
untouched.

Runs in: the pytest process; asyncd runs as a subprocess (run_server).
"""
from tests.helpers import SipClient, run_server
from tests.helpers.async_cfg import PRE, cfg

CFG = cfg("""
modparam("tm", "fr_inv_timer", 60000)
modparam("tm", "fr_timer", 60000)
request_route {
""" + PRE + """
    if (is_method("INVITE")) {
        if (!t_newtran()) {
            sl_send_reply("500", "Script Says Table Full");
            exit;
        }
        t_reply("180", "Ringing");      # stays in the table until fr_inv_timer
        exit;
    }
    sl_send_reply("200", "OK");
}
""", core="")


def test_full_table_function_fails_then_503_with_retry_after():
    # -m 2: room for some hundreds of INVITE transactions, then none
    with run_server(CFG, args=("-m", "2")) as srv, SipClient(srv.addr) as c:
        statuses, retrans = [], None
        for i in range(5000):
            data, _, _ = c.send("INVITE", callid=f"fill-{i}")
            if i == 7:
                retrans = data
            rs = c.collect(1.0, until=lambda rs: rs[-1].status >= 180)
            statuses.append(rs[-1].status if rs else None)
            if statuses[-1] != 180:
                break
        held = len(statuses) - 1
        assert held > 100 and statuses[-1] == 500, (held, statuses[-5:])
        busy = c.final("INVITE", callid="one-too-many")
        assert busy is not None and busy.status == 503 and busy.reason == "Service Unavailable"
        assert busy.hdr("Retry-After") == "5"
        opt = c.final("OPTIONS")            # the script would answer 200: it does not run
        assert opt is not None and opt.status == 503
        c.send_raw(retrans)                 # a held transaction still absorbs its retransmission
        again = c.collect(1.0)
        assert [r.status for r in again] == [180], again
    log = srv.log()
    assert "transaction table full or overloaded: 1 transaction(s) refused (the function returned " \
           "its error code), 2 request(s) answered 503 before the script ran" in log, log[-3000:]
