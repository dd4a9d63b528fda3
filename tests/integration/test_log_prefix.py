"""The core parameter log_prefix: a format with variables, evaluated for each
message a receiver handles and put after the level on every line logged for
it, as Kamailio's log_prefix_set() (the stock kamailio.cfg sets
`log_prefix="{$mt $hdr(CSeq) $ci} "`).

Runs in: the pytest process; asyncd is a subprocess.
"""
CFG = r"""
debug=2
children=1
log_prefix="{$mt $hdr(CSeq) $ci} "
listen=udp:127.0.0.1:LPORT
loadmodule "sl.so"
loadmodule "xlog.so"
loadmodule "pv.so"
request_route {
    xlog("L_NOTICE", "hello $rm\n");
    sl_send_reply("404", "Nope");
    exit;
}
"""


def test_each_message_logs_with_its_own_prefix_and_nothing_else_does(run_server, sip_client):
    with run_server(CFG) as srv:
        c = sip_client(srv.addr)
        for i in (1, 2):
            assert c.final("OPTIONS", f"sip:a@127.0.0.1:{srv.port}", callid=f"lp-{i}@x").status == 404
        srv.wait_log(r"NOTICE: \{1 1 OPTIONS lp-2@x\} <script> \[[^]]+\]: hello OPTIONS")
        assert "NOTICE: {1 1 OPTIONS lp-1@x} <script>" in srv.log()
        srv.stop()
        # lines not logged for a message (the attendant's) carry no prefix
        assert "NOTICE: <core>" in srv.log() and "{1 1 OPTIONS lp-2@x} <core>" not in srv.log()
