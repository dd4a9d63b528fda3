"""A resumed ASYNC route whose t_relay() fails gets tm_error's reply, not the generic 500
(docs/kamailio-tm.md §3 step 9).

Runs in: the pytest process, against one real server.
"""

from tests.helpers.async_cfg import cfg, PRE, server_fixture

BODY = """request_route {
""" + PRE + """    if ($rU == "relaybad") { async_task_route("RELAYBAD"); }
    send_reply("200", "after rc=$rc");
    exit;
}
route[RELAYBAD] {
    $du = "sip:nowhere.invalid:5060";
    t_relay();
    exit;
}
"""
TEXT = cfg(BODY, params='modparam("async", "ms_timer", 10)\n', core="async_workers=1")


srv = server_fixture(TEXT)


def test_resumed_route_whose_relay_fails_answers_with_that_error(srv, sip_client):
    """docs/kamailio-tm.md §3 step 9: the automatic reply after a resumed route carries
    tm_error ("478 Unresolvable destination (478/TM)" as Kamailio), not 500."""
    c = sip_client(srv.addr)
    rs = c.request("OPTIONS", f"sip:relaybad@127.0.0.1:{srv.port}", timeout=2.0)
    assert rs and (rs[-1].status, rs[-1].reason) == (478, "Unresolvable destination (478/TM)"), rs
    assert not c.collect(0.3)
