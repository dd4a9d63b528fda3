"""onsend_route runs before a request tm relays leaves, with $snd(ip/port/proto/len/buf) of
what is about to be sent; `drop` there stops it and t_relay fails with Kamailio's 477.

Runs in: the pytest process, against a real server on 127.0.0.1 and a UDP socket standing in
for the UAS.
"""
from tests.helpers.async_cfg import cfg, finals, PRE



ONSEND = """request_route {
""" + PRE + """    if ($rU == "relay" || $rU == "nosend") {
        t_relay_to_udp("127.0.0.1", UAS);
        exit;
    }
    sl_send_reply("404", "no");
}
onsend_route {
    xinfo("ONSEND $rU to $snd(ip):$snd(port) $snd(sproto) len=$snd(len) top=$(snd(buf){s.substr,0,8})\\n");
    if ($rU == "nosend") {
        drop;
    }
}
"""


def test_onsend_route_runs_before_the_request_leaves_and_drop_stops_it(run_server, sip_client):
    import socket
    uas = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    uas.bind(("127.0.0.1", 0))
    uas.settimeout(1.0)
    port = uas.getsockname()[1]
    try:
        with run_server(cfg(ONSEND, core="async_workers=1"), defines={"UAS": port}) as s:
            c = sip_client(s.addr)
            c.send("OPTIONS", f"sip:relay@127.0.0.1:{s.port}")
            data, _ = uas.recvfrom(65535)
            assert data.startswith(b"OPTIONS sip:relay@")
            m = s.wait_log(rf"ONSEND relay to 127\.0\.0\.1:{port} udp len=(\d+) top=OPTIONS ")
            assert int(m.group(1)) == len(data)
            # drop in onsend_route: nothing leaves, t_relay fails with E_SEND and the
            # delayed tm reply is Kamailio's 477
            rs = c.request("OPTIONS", f"sip:nosend@127.0.0.1:{s.port}", timeout=2.0)
            fin = finals(rs)
            assert fin and fin[0].status == 477, rs
            assert fin[0].reason == "Unfortunately error on sending to next hop occurred (477/TM)"
            s.wait_log(r"ONSEND nosend to")
            got = []                    # the first OPTIONS is retransmitted (no reply): skip it
            try:
                while True:
                    got.append(uas.recvfrom(65535)[0])
            except socket.timeout:
                pass
            assert not [d for d in got if d.startswith(b"OPTIONS sip:nosend@")], got
            assert got                  # the receiving side works: retransmissions arrived
    finally:
        uas.close()
