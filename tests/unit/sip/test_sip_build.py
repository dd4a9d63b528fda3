"""asyncd.sip.build: replies, reply addresses, forwarding, CANCEL/ACK."""
import pytest

from asyncd.sip import (build_ack, build_cancel, build_reply, build_request_fwd, parse_msg,
                        reply_addr, stable_to_tag, strip_top_via, top_via_received, via_dest,
                        via_line)


def make(via="SIP/2.0/UDP 192.0.2.9:5070;branch=z9hG4bKabc", src=("192.0.2.9", 5070), to="<sip:b@x>",
         extra="", method="INVITE", body=""):
    buf = ("%s sip:b@example.com SIP/2.0\r\nVia: %s\r\nVia: SIP/2.0/UDP 10.1.1.1;branch=z9hG4bK0\r\n"
           "From: \"A\" <sip:a@x>;tag=ft\r\nTo: %s\r\nCall-ID: cid@x\r\nCSeq: 5 %s\r\n"
           "Max-Forwards: 70\r\nRecord-Route: <sip:rr1;lr>\r\nRoute: <sip:r1;lr>\r\n%s"
           "Content-Length: %d\r\n\r\n%s" % (method, via, to, method, extra, len(body), body))
    return parse_msg(buf.encode(), src=src)


def test_reply_copies_and_adds():
    m = make()
    m.reply_lumps.append("X-Lump: 1\r\n")
    out = build_reply(m, 404, "Not Here", extra_headers=["Retry-After: 5"], body=b"hi")
    r = parse_msg(out)
    assert (r.status, r.reason) == (404, "Not Here")
    assert [v.branch for v in r.vias] == ["z9hG4bKabc", "z9hG4bK0"]
    assert r.via1.received is None  # sent-by equals the source address (RFC 3261 18.2.1)
    assert r.from_tag == "ft" and r.callid == "cid@x" and (r.cseq_num, r.cseq_method) == (5, "INVITE")
    assert r.to_tag == stable_to_tag(m) and r.to.uri == "sip:b@x"
    assert r.hdr("X-Lump") == "1" and r.hdr("Retry-After") == "5" and r.hdr("Server").startswith("asyncd (")
    assert r.body == b"hi" and r.content_length == 2
    assert r.hdr("Record-Route") is None  # only 1xx/2xx carry it (RFC 3261 12.1.1)
    assert parse_msg(build_reply(m, 200, "OK")).hdr("Record-Route") == "<sip:rr1;lr>"


def test_reply_to_tag_rules():
    m = make()
    assert parse_msg(build_reply(m, 100, "Trying")).to_tag is None  # RFC 3261 8.2.6.2
    assert parse_msg(build_reply(m, 486, "Busy", to_tag="mine")).to_tag == "mine"
    m2 = make(to="<sip:b@x>;tag=existing")
    assert parse_msg(build_reply(m2, 486, "Busy", to_tag="mine")).to_tag == "existing"
    # an unparseable To is copied, and still gets a tag when it has none
    m3 = make(to="\"broken <sip:b@x>")
    assert b"To: \"broken <sip:b@x>;tag=" in build_reply(m3, 400, "Bad To")
    assert parse_msg(build_reply(m, 200, "OK", server="")).hdr("Server") is None


def test_stable_to_tag():
    a, b = make(), make()
    assert stable_to_tag(a) == stable_to_tag(b)  # a retransmission
    assert stable_to_tag(a) != stable_to_tag(make(via="SIP/2.0/UDP 192.0.2.9:5070;branch=z9hG4bKdef"))
    assert stable_to_tag(a) != stable_to_tag(make(src=("192.0.2.10", 5070)))


@pytest.mark.parametrize("via,src,addr,top", [
    ("SIP/2.0/UDP 192.0.2.9:5070;branch=z9hG4bK1", ("192.0.2.9", 5070), ("192.0.2.9", 5070),
     "SIP/2.0/UDP 192.0.2.9:5070;branch=z9hG4bK1"),
    ("SIP/2.0/UDP host.example.com;branch=z9hG4bK1", ("192.0.2.9", 6000), ("192.0.2.9", 5060),
     "SIP/2.0/UDP host.example.com;branch=z9hG4bK1;received=192.0.2.9"),
    ("SIP/2.0/UDP 10.0.0.1:5070;rport;branch=z9hG4bK1", ("192.0.2.9", 6000), ("192.0.2.9", 6000),
     "SIP/2.0/UDP 10.0.0.1:5070;rport=6000;branch=z9hG4bK1;received=192.0.2.9"),
    ("SIP/2.0/UDP 192.0.2.9:5070;branch=z9hG4bK1;rport", ("192.0.2.9", 6000), ("192.0.2.9", 6000),
     "SIP/2.0/UDP 192.0.2.9:5070;branch=z9hG4bK1;rport=6000;received=192.0.2.9"),
    # maddr is ignored (as Kamailio): no reflection to an address the request names
    ("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1;maddr=224.0.1.75", ("192.0.2.9", 6000),
     ("192.0.2.9", 5060), "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1;maddr=224.0.1.75;received=192.0.2.9"),
    ("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1;rport=7777", ("192.0.2.9", 6000), ("192.0.2.9", 6000),
     "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1;rport=6000;received=192.0.2.9"),
    # a forged received is overwritten with the real source
    ("SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK1;received=203.0.113.66", ("192.0.2.9", 5060),
     ("192.0.2.9", 5060), "SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK1;received=192.0.2.9"),
    ("SIP/2.0/UDP h;received = 203.0.113.66 ;rport= 1;branch=z9hG4bK1", ("192.0.2.9", 5062),
     ("192.0.2.9", 5062), "SIP/2.0/UDP h;received=192.0.2.9 ;rport=5062;branch=z9hG4bK1"),
    ("SIP/2.0/UDP [2001:db8::9]:5070;branch=z9hG4bK1", ("2001:db8::9", 5070), ("2001:db8::9", 5070),
     "SIP/2.0/UDP [2001:db8::9]:5070;branch=z9hG4bK1"),
])
def test_reply_addr_and_received(via, src, addr, top):
    m = make(via=via, src=src)
    assert reply_addr(m) == addr  # RFC 3261 18.2.2, RFC 3581 4
    assert top_via_received(m) == top
    assert parse_msg(build_reply(m, 200, "OK")).vias[0].raw == top


@pytest.mark.parametrize("params", [
    ";rport;branch=z9hG4bK1", ";branch=z9hG4bK1;rport", ";RPORT;branch=z9hG4bK1", ";branch=z9hG4bK1;RPORT",
    ";rport;rport", ";x=1;rport", ";rport;x", "; rport;branch=z9hG4bK1", ";branch=z9hG4bK1 ;rport",
    ";rport=;branch=z9hG4bK1", ";branch=\"a;rport\";rport", ";rportx;branch=z9hG4bK1;rport"])
def test_top_via_shortcuts_give_what_the_substitution_gives(params):
    """The one-format shortcuts for a bare rport equal the regex path (_mark_via)."""
    from asyncd.sip.build import _mark_via
    try:
        m = make(via="SIP/2.0/UDP 10.0.0.1:5070" + params, src=("192.0.2.9", 6000))
    except Exception:
        return  # a Via the parser refuses has nothing to mark
    v = m.via1
    assert top_via_received(m) == _mark_via(v, v.raw, True, "192.0.2.9", 6000)


def test_force_rport():
    m = make(via="SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK1", src=("192.0.2.9", 6000))
    assert reply_addr(m) == ("192.0.2.9", 5070)
    m.force_rport = True
    assert reply_addr(m) == ("192.0.2.9", 6000)
    assert top_via_received(m).endswith(";rport=6000;received=192.0.2.9")


def test_top_via_with_several_values_on_its_line():
    buf = make().buf.replace(b"Via: SIP/2.0/UDP 192.0.2.9:5070;branch=z9hG4bKabc\r\nVia:",
                             b"Via: SIP/2.0/UDP h.example.com;branch=z9hG4bKabc;rport ,")
    m = parse_msg(buf, src=("192.0.2.9", 7000))
    assert top_via_received(m) == ("SIP/2.0/UDP h.example.com;branch=z9hG4bKabc;rport=7000;"
                                   "received=192.0.2.9, SIP/2.0/UDP 10.1.1.1;branch=z9hG4bK0")


def test_via_dest():
    vias = make(via="SIP/2.0/UDP a.example.com:5070;branch=z9hG4bK1;received=192.0.2.1;rport=6001").vias
    assert via_dest(vias[0]) == ("192.0.2.1", 6001)
    assert via_dest(vias[1]) == ("10.1.1.1", 5060)
    v6 = make(via="SIP/2.0/UDP [2001:db8::1]:5072;branch=z9hG4bK1").via1
    assert via_dest(v6) == ("2001:db8::1", 5072)


def test_request_forward():
    m = make(extra="X-Keep:   spaced \r\n folded\r\nX-Drop: 1\r\nP-Gone: 2\r\n", body="v=0\r\n",
             via="SIP/2.0/UDP host.example.com;branch=z9hG4bKabc", src=("192.0.2.9", 5070))
    m.hdr_removes.add("x-drop")
    m.hdr_adds.append("X-Added: yes\r\n")
    out = build_request_fwd(m, "sip:b@192.0.2.50:5080", via_line("192.0.2.1", 5060, "z9hG4bKp1"),
                            drop_hdrs=("P-Gone",), add_hdrs=("X-More: 1",))
    assert out.startswith(b"INVITE sip:b@192.0.2.50:5080 SIP/2.0\r\n"
                          b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKp1\r\n")
    assert b"X-Keep:   spaced \r\n folded\r\n" in out  # byte-for-byte (RFC 4475 3.1.1.1)
    f = parse_msg(out)
    assert [v.branch for v in f.vias] == ["z9hG4bKp1", "z9hG4bKabc", "z9hG4bK0"]
    assert f.vias[1].received == "192.0.2.9"
    assert f.hdr("X-Drop") is None and f.hdr("P-Gone") is None
    assert f.hdr("X-Added") == "yes" and f.hdr("X-More") == "1"
    assert f.max_forwards == 70 and f.body == b"v=0\r\n" and f.content_length == 5
    assert f.hdr_count("Content-Length") == 1
    # a Via line given as a bare value works too
    out2 = build_request_fwd(m, m.ruri, "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKp2")
    assert parse_msg(out2).via1.branch == "z9hG4bKp2"


def test_remove_compact_form_header():
    m = make(extra="s: hello\r\n")
    m.hdr_removes.add("subject")
    assert parse_msg(build_request_fwd(m, m.ruri, via_line("h", None, "z9hG4bK1"))).hdr("s") is None


def test_strip_top_via_for_relay():
    r = parse_msg(build_reply(make(), 180, "Ringing"))
    out = strip_top_via(r)
    relayed = parse_msg(out)
    assert [v.branch for v in relayed.vias] == ["z9hG4bK0"]
    assert relayed.to_tag == r.to_tag and relayed.status == 180
    multi = parse_msg(b"SIP/2.0 200 OK\r\n"
                      b"v: SIP/2.0/UDP p;branch=z9hG4bK1 , SIP/2.0/UDP a;branch=z9hG4bK2\r\n"
                      b"f: <sip:a@x>;tag=1\r\nt: <sip:b@x>;tag=2\r\ni: c\r\nCSeq: 1 BYE\r\nl: 3\r\n\r\nabc")
    relayed = parse_msg(strip_top_via(multi))
    assert [v.branch for v in relayed.vias] == ["z9hG4bK2"] and relayed.body == b"abc"


def test_cancel_and_ack_for_a_branch():
    sent = parse_msg(build_request_fwd(make(), "sip:b@192.0.2.50", via_line("192.0.2.1", 5060, "z9hG4bKbr")))
    c = parse_msg(build_cancel(sent, extra_headers=["Reason: SIP;cause=487"]))
    assert c.method == "CANCEL" and c.ruri == "sip:b@192.0.2.50"  # RFC 3261 9.1
    assert [v.branch for v in c.vias] == ["z9hG4bKbr"]
    assert (c.cseq_num, c.cseq_method) == (5, "CANCEL") and c.callid == "cid@x"
    assert c.from_tag == "ft" and c.to_tag is None and [r.uri for r in c.routes] == ["sip:r1;lr"]
    assert c.max_forwards == 70 and c.body == b"" and c.hdr("Reason") == "SIP;cause=487"
    reply = parse_msg(build_reply(sent, 486, "Busy Here", to_tag="tt"))
    a = parse_msg(build_ack(sent, reply))
    assert a.method == "ACK" and a.ruri == "sip:b@192.0.2.50"  # RFC 3261 17.1.1.3
    assert [v.branch for v in a.vias] == ["z9hG4bKbr"] and a.to_tag == "tt"
    assert (a.cseq_num, a.cseq_method) == (5, "ACK") and [r.uri for r in a.routes] == ["sip:r1;lr"]
    assert parse_msg(build_ack(sent, "<sip:b@x>;tag=zz")).to_tag == "zz"
    assert parse_msg(build_ack(sent, None)).to_tag is None


def test_via_line():
    assert via_line("192.0.2.1", 5060, "z9hG4bK1") == "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n"
    assert via_line("h", None, "z9hG4bK1", transport="tcp", rport=True, params=("i=1",)) == \
        "Via: SIP/2.0/TCP h;branch=z9hG4bK1;rport;i=1\r\n"


def test_str_bodies_are_encoded():
    m = make()
    r = parse_msg(build_reply(m, 200, "OK", body="h\u00e9"))
    assert r.body == "h\u00e9".encode() and r.content_length == 3
    m.body = "v=1"
    f = parse_msg(build_request_fwd(m, m.ruri, via_line("h", 5060, "z9hG4bK9")))
    assert f.body == b"v=1" and f.content_length == 3


def test_extra_headers_on_the_one_format_path_give_the_general_paths_bytes():
    buf = ("OPTIONS sip:b@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9:5070;branch=z9hG4bKone\r\n"
           "From: <sip:a@x>;tag=ft\r\nTo: <sip:b@x>\r\nCall-ID: c1@x\r\nCSeq: 1 OPTIONS\r\n"
           "Content-Length: 0\r\n\r\n").encode()
    fast = build_reply(parse_msg(buf, src=("192.0.2.9", 5070)), 503, "Service Unavailable", to_tag="t1",
                       extra_headers=("Retry-After: 5",))
    m = parse_msg(buf, src=("192.0.2.9", 5070))
    m._vias1 = None                      # the general path (it copies the Via line as received)
    assert fast == build_reply(m, 503, "Service Unavailable", to_tag="t1", extra_headers=("Retry-After: 5",))
    assert b"\r\nCSeq: 1 OPTIONS\r\nRetry-After: 5\r\nServer: " in fast


def test_kept_extra_header_text_follows_the_server_line_and_takes_lists():
    from asyncd.sip.build import server_line, set_server_header
    buf = ("OPTIONS sip:b@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9:5070;branch=z9hG4bKk\r\n"
           "From: <sip:a@x>;tag=ft\r\nTo: <sip:b@x>\r\nCall-ID: k1@x\r\nCSeq: 1 OPTIONS\r\n"
           "Content-Length: 0\r\n\r\n").encode()
    hdrs = ("Retry-After: 5",)
    was = server_line()
    try:
        first = build_reply(parse_msg(buf, src=("192.0.2.9", 5070)), 503, "Busy", extra_headers=hdrs)
        set_server_header("Server: other")
        again = build_reply(parse_msg(buf, src=("192.0.2.9", 5070)), 503, "Busy", extra_headers=hdrs)
        listed = build_reply(parse_msg(buf, src=("192.0.2.9", 5070)), 503, "Busy",
                             extra_headers=["Retry-After: 7"])
    finally:
        set_server_header(was)
    assert (was + "\r\n").encode() in first and b"Retry-After: 5\r\n" in first
    assert b"\r\nRetry-After: 5\r\nServer: other\r\nContent-Length: 0\r\n\r\n" in again
    assert b"\r\nRetry-After: 7\r\nServer: other\r\n" in listed


def test_local_to_tag_keeps_the_requests_tag_and_parses_no_to_without_one():
    from asyncd.sip.build import local_to_tag
    assert local_to_tag(make(to="<sip:b@x>;TAG=inv")) == "inv"
    m = make(to="\"broken <sip:b@x>")     # no tag in it: not parsed, so nothing raises
    assert local_to_tag(m) == stable_to_tag(m)
