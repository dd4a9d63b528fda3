"""xhttp_prom: /metrics scraped from a real asyncd (the cfg shape of Kamailio's
xhttp_prom documentation: prom_check_uri() then prom_dispatch()), user metrics
moved by SIP requests, and the same cfg on Kamailio 5.6.3 scraped and compared.

Runs in: the pytest process; asyncd and Kamailio are subprocesses.
"""
import http.client
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.kamailio import SKIP_KAMAILIO, run_kamailio
from bench.servers import kamailio_binary

CFG = r"""
#!ifndef LPORT
#!define LPORT 5060
#!endif
debug=2
children=1
tcp_children=1
listen=udp:127.0.0.1:LPORT
listen=tcp:127.0.0.1:LPORT
tcp_accept_no_cl=yes
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "xhttp.so"
loadmodule "xhttp_prom.so"
#!ifndef ASYNCD
loadmodule "ctl.so"
#!endif
modparam("xhttp_prom", "xhttp_prom_stats", "all")
modparam("xhttp_prom", "prom_counter", "name=cnt01; label=m1:m2;")
modparam("xhttp_prom", "prom_counter", "name=cnt02;")
modparam("xhttp_prom", "prom_gauge", "name=gg01; label=g1:g2:g3;")
modparam("xhttp_prom", "prom_histogram", "name=hh01; label=h1:h2; buckets=0.1:1.0:5.5")
modparam("xhttp_prom", "prom_histogram", "name=hh02;")
request_route {
    prom_counter_inc("cnt01", "5", "$rm", "b");
    prom_counter_inc("cnt02", "2");
    prom_gauge_set("gg01", "-2.5", "x", "y", "z");
    prom_histogram_observe("hh01", "0.5", "p", "q");
    prom_histogram_observe("hh02", "7");
    sl_send_reply("200", "OK");
}
event_route[xhttp:request] {
    if (prom_check_uri()) {
        prom_dispatch();
        exit;
    }
    xhttp_reply("404", "Not Found", "text/html", "<html><body>Wrong URL $hu</body></html>");
}
"""


def _scrape(port, path="/metrics"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read().decode()
    finally:
        conn.close()


def _samples(text):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def _user_lines(text):
    """The user-metric lines without their timestamps."""
    part = text.split("\n\n# Kamailio", 1)[0]
    return [re.sub(r" \d+$", "", ln) for ln in part.splitlines()]


def _stat_names(text):
    part = text.split("# Kamailio whole internal statistics\n", 1)
    return {ln.split()[0] for ln in part[1].splitlines() if ln.strip()} if len(part) > 1 else set()


def _send_options(sip_client, addr, n):
    c = sip_client(addr)
    for _ in range(n):
        r = c.final("OPTIONS", timeout=3.0)
        assert r is not None and r.status == 200


def test_scrape_moves_with_sip_requests(run_server, sip_client):
    with run_server(CFG, defines={"ASYNCD": 1}) as srv:
        status, hdrs, text = _scrape(srv.port)
        assert status == 200 and hdrs["Content-Type"] == "text/plain; version=0.0.4"
        assert text.startswith("# User defined metrics\n")
        assert "\n# Kamailio whole internal statistics\n" in text
        assert not any(k[0].startswith("kamailio_cnt") for k in _samples(text))
        _send_options(sip_client, srv.addr, 3)
        s = _samples(_scrape(srv.port)[2])
        assert s[("kamailio_cnt01", (("m1", "OPTIONS"), ("m2", "b")))] == 15
        assert s[("kamailio_cnt02", ())] == 6
        assert s[("kamailio_gg01", (("g1", "x"), ("g2", "y"), ("g3", "z")))] == -2.5
        hh01 = (("h1", "p"), ("h2", "q"))
        assert s[("kamailio_hh01_bucket", hh01 + (("le", "0.100000"),))] == 0
        assert s[("kamailio_hh01_bucket", hh01 + (("le", "1.000000"),))] == 3
        assert s[("kamailio_hh01_bucket", hh01 + (("le", "+Inf"),))] == 3
        assert s[("kamailio_hh01_sum", hh01)] == 1.5 and s[("kamailio_hh01_count", hh01)] == 3
        assert s[("kamailio_hh02_bucket", (("le", "10.000000"),))] == 3
        assert s[("kamailio_hh02_bucket", (("le", "5.000000"),))] == 0
        assert s[("kamailio_hh02_sum", ())] == 21.0
        status, _h, body = _scrape(srv.port, "/other")
        assert status == 404 and body == "<html><body>Wrong URL /other</body></html>"


@pytest.mark.kamailio
def test_same_cfg_same_metrics_as_kamailio(run_server, sip_client):
    if kamailio_binary() is None:
        pytest.skip(SKIP_KAMAILIO)
    texts, hdrs = {}, {}
    with run_kamailio(CFG) as k:
        _send_options(sip_client, ("127.0.0.1", k.port), 2)
        status, hdrs["k"], texts["k"] = _scrape(k.port)
        assert status == 200
    with run_server(CFG, defines={"ASYNCD": 1}) as srv:
        _send_options(sip_client, srv.addr, 2)
        status, hdrs["a"], texts["a"] = _scrape(srv.port)
        assert status == 200
    assert hdrs["a"]["Content-Type"] == hdrs["k"]["Content-Type"]
    # the user metrics: the same lines (names, label names and values, value formats)
    assert _user_lines(texts["a"]) == _user_lines(texts["k"])
    fam = {w: {f.name: f.type for f in text_string_to_metric_families(t)} for w, t in texts.items()}
    user = {n for n in fam["k"] if re.match(r"kamailio_(cnt|gg|hh)", n)}
    assert user and user <= set(fam["a"])
    assert all(fam["a"][n] == fam["k"][n] for n in user)         # no TYPE lines: both untyped
    assert "# TYPE" not in texts["a"] and "# TYPE" not in texts["k"]
    # the statistics: kamailio_<group>_<name>; for a group both have, asyncd's names are Kamailio's
    names = {w: _stat_names(t) for w, t in texts.items()}
    groups = {w: {n.split("_")[1] for n in ns} for w, ns in names.items()}
    for g in groups["a"] & groups["k"]:
        ours = {n for n in names["a"] if n.split("_")[1] == g}
        theirs = {n for n in names["k"] if n.split("_")[1] == g}
        assert ours <= theirs, f"group {g}: {sorted(ours - theirs)} not in Kamailio"
    assert all(re.match(r"kamailio_[a-z0-9]+_[A-Za-z0-9_]+$", n) for n in names["a"])
