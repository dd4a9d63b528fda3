"""t_is_set() tells which of failure_route, branch_route and onreply_route the script has
armed for the transaction, before and after t_on_failure/t_on_branch/t_on_reply.

Runs in: the pytest process, against one real server on 127.0.0.1.
"""

from tests.helpers.async_cfg import cfg, finals, PRE, server_fixture

BODY = """request_route {
""" + PRE + """    if ($rU == "isset") {
        $var(r) = "";
        if (t_is_set("failure_route")) { $var(r) = $var(r) + "F"; }
        if (t_is_set("branch_route")) { $var(r) = $var(r) + "B"; }
        if (t_is_set("onreply_route")) { $var(r) = $var(r) + "R"; }
        t_on_failure("FAIL");
        if (t_is_set("failure_route")) { $var(r) = $var(r) + "f"; }
        t_on_branch("BR");
        if (t_is_set("branch_route")) { $var(r) = $var(r) + "b"; }
        t_newtran();
        t_on_reply("RPL");
        if (t_is_set("onreply_route")) { $var(r) = $var(r) + "r"; }
        t_reply("200", "set=$var(r)");
        exit;
    }
    sl_send_reply("404", "no");
}
failure_route[FAIL] { exit; }
branch_route[BR] { ; }
onreply_route[RPL] { ; }
"""
TEXT = cfg(BODY, params='modparam("tm", "wt_timer", 300)\n', core="async_workers=1")


srv = server_fixture(TEXT)



def test_t_is_set(srv, sip_client):
    c = sip_client(srv.addr)
    rs = c.request("OPTIONS", f"sip:isset@127.0.0.1:{srv.port}", timeout=2.0)
    assert finals(rs)[0].reason == "set=fbr", rs
