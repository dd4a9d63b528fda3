"""A suspending or data function of the ASYNC module naming an existing but empty
`route[X] {}` returns -1 at once with "empty action lists" and the cfg file:line, before any
transaction exists (docs/kamailio-async.md §2.1, Kamailio's route_lookup finding a NULL action list); a
non-empty route still resumes.

Runs in: the pytest process, against one real server.
"""
import re

import pytest

from tests.helpers.async_cfg import cfg, line_of, PRE, server_fixture

BODY = """request_route {
""" + PRE + """    $var(v) = $hdr(X-V);
    if ($rU == "route") { async_route("EMPTY", "1"); }
    if ($rU == "msroute") { async_ms_route("EMPTY", "20"); }
    if ($rU == "task") { async_task_route("EMPTY"); }
    if ($rU == "group") { async_task_group_route("EMPTY", "default"); }
    if ($rU == "data") { async_task_data("EMPTY", "x"); }
    if ($rU == "var") { async_task_route("$var(v)"); }
    send_reply("200", "after rc=$rc");
    exit;
}
route[EMPTY] {
    # nothing here
    ;
}
route[R] {
    send_reply("200", "resumed");
    exit;
}
"""
TEXT = cfg(BODY, params='modparam("async", "ms_timer", 10)\n', core="async_workers=1")


srv = server_fixture(TEXT)


@pytest.mark.parametrize("user,needle", [
    ("route", 'async_route("EMPTY", "1")'),
    ("msroute", 'async_ms_route("EMPTY", "20")'),
    ("task", 'async_task_route("EMPTY")'),
    ("group", 'async_task_group_route("EMPTY", "default")'),
    ("data", 'async_task_data("EMPTY", "x")'),
    ("var", 'async_task_route("$var(v)")'),
])
def test_empty_route_is_refused_at_once_and_nothing_is_suspended(srv, sip_client, user, needle):
    c = sip_client(srv.addr)
    ruri = f"sip:{user}@127.0.0.1:{srv.port}"
    data, _, _ = c.send("OPTIONS", ruri, headers=("X-V: EMPTY",))
    rs = c.collect(2.0, until=lambda rs: rs and rs[-1].status and rs[-1].status >= 200)
    assert rs and rs[-1].status == 200 and rs[-1].reason == "after rc=-1", rs
    assert rs[-1].elapsed < 0.2
    line = line_of(TEXT, needle)
    srv.wait_log(rf"ERROR: <async> \[[^\]]*test\.cfg:{line}\]: .*empty action lists.*\[EMPTY\]")
    # no transaction was created: a retransmission is not absorbed by tm but
    # runs the script again (a suspended T would swallow it silently)
    c.send_raw(data)
    again = c.collect(1.0, until=lambda rs: rs and rs[-1].status and rs[-1].status >= 200)
    assert again and again[-1].reason == "after rc=-1", again
    assert not c.collect(0.3)


def test_a_non_empty_route_still_resumes(srv, sip_client):
    c = sip_client(srv.addr)
    rs = c.request("OPTIONS", f"sip:var@127.0.0.1:{srv.port}", headers=("X-V: R",))
    assert rs[-1].reason == "resumed", rs
    assert not re.search(r"empty action lists \[R\]", srv.log())
