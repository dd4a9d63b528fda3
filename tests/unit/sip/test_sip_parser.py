"""parse_msg / SipMsg: framing, first line, header index, lazy headers."""
import pytest

from asyncd.sip import SipParseError, faked_request, parse_msg

INVITE = (
    "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    "Via: SIP/2.0/UDP pc33.atlanta.example.com:5070;branch=z9hG4bK776asdhds;rport\r\n"
    "Max-Forwards: 70\r\n"
    "To: Bob <sip:bob@biloxi.example.com>\r\n"
    "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    "Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    "CSeq: 314159 INVITE\r\n"
    "Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length: 4\r\n"
    "\r\n"
    "v=0\n")


def req(*, first="INVITE sip:bob@biloxi.example.com SIP/2.0", drop=(), add=(), body="v=0\n",
        replace=None):
    lines = INVITE.split("\r\n\r\n")[0].split("\r\n")[1:]
    lines = [ln for ln in lines if ln.split(":")[0] not in drop]
    if replace:
        lines = [replace.get(ln.split(":")[0], ln) for ln in lines]
    return ("\r\n".join([first] + lines + list(add)) + "\r\n\r\n" + body).encode()


def test_typical_invite():
    m = parse_msg(INVITE.encode(), src=("192.0.2.9", 5070), dst=("192.0.2.1", 5060), sock=2)
    assert m.is_request and m.method == "INVITE" and m.ruri == "sip:bob@biloxi.example.com"
    assert m.version == "SIP/2.0" and m.status is None
    assert (m.src, m.dst, m.sock, m.proto) == (("192.0.2.9", 5070), ("192.0.2.1", 5060), 2, "udp")
    assert m.via1.transport == "UDP" and m.via1.host == "pc33.atlanta.example.com"
    assert m.via1.port == 5070 and m.via1.branch == "z9hG4bK776asdhds" and m.via1.rport == ""
    assert m.via1.received is None and m.via2 is None and len(m.vias) == 1
    assert m.callid == "a84b4c76e66710@pc33.atlanta.example.com"
    assert (m.cseq_num, m.cseq_method) == (314159, "INVITE")
    assert m.from_tag == "1928301774" and m.to_tag is None
    assert m.from_.display == "Alice" and m.to.uri == "sip:bob@biloxi.example.com"
    assert m.max_forwards == 70 and m.content_length == 4 and m.body == b"v=0\n"
    assert m.contact.uri == "sip:alice@pc33.atlanta.example.com"
    assert m.parsed_ruri.user == "bob" and m.parsed_ruri.host == "biloxi.example.com"
    assert m.cur_uri == m.ruri
    m.new_uri = "sip:carol@example.com"
    assert m.cur_uri == "sip:carol@example.com"
    assert m.hdr_adds == [] and m.hdr_removes == set() and m.reply_lumps == [] and m.flags == 0
    assert m.headers[0] == ("Via", m.via1.raw)
    assert m.id != parse_msg(INVITE.encode()).id


def test_buffer_types():
    for buf in (bytearray(INVITE.encode()), memoryview(INVITE.encode())):
        m = parse_msg(buf)
        assert type(m.buf) is bytes and m.body == b"v=0\n" and m.callid


def test_header_access_case_and_compact_forms():
    buf = ("OPTIONS sip:x@example.com SIP/2.0\r\n"
           "v: SIP/2.0/UDP a.example.com;branch=z9hG4bK1\r\n"
           "f: <sip:a@example.com>;tag=1\r\nt: <sip:x@example.com>\r\n"
           "i: cid1\r\nCSEQ: 1 OPTIONS\r\nm: <sip:a@10.0.0.1>\r\nl: 0\r\n"
           "k: timer\r\ns: hello\r\nc: text/plain\r\ne: gzip\r\no: presence\r\n"
           "x: 1800\r\nr: <sip:r@example.com>\r\nb: <sip:b@example.com>\r\nu: dialog\r\n"
           "X-Custom: 1\r\nx-custom: 2\r\n\r\n").encode()
    m = parse_msg(buf)
    assert m.callid == "cid1" and m.from_tag == "1" and m.cseq_num == 1
    assert m.hdr("Via") == m.hdr("v") == "SIP/2.0/UDP a.example.com;branch=z9hG4bK1"
    for long, val in [("Supported", "timer"), ("Subject", "hello"), ("Content-Type", "text/plain"),
                      ("Content-Encoding", "gzip"), ("Event", "presence"),
                      ("Session-Expires", "1800"), ("Refer-To", "<sip:r@example.com>"),
                      ("Referred-By", "<sip:b@example.com>"), ("Allow-Events", "dialog"),
                      ("contact", "<sip:a@10.0.0.1>"), ("CONTENT-LENGTH", "0")]:
        assert m.hdr(long) == val, long
    assert m.hdrs("x-CUSTOM") == ["1", "2"] and m.hdr_count("X-Custom") == 2
    assert m.hdr("Nope") is None and m.hdrs("Nope") == [] and m.hdr_count("nope") == 0
    assert [n for n, _ in m.headers][:3] == ["v", "f", "t"]


def test_folded_lines_and_lws_everywhere():
    buf = ("INVITE sip:b@example.com SIP/2.0\r\n"
           "Via: SIP/2.0/UDP\r\n  h1.example.com;\r\n\tbranch=z9hG4bKa ,"
           " SIP / 2.0 / TCP [2001:db8::9]:5070\r\n"
           " ;branch=z9hG4bKb;received=2001:db8::10;rport=5071\r\n"
           "To :\r\n <sip:b@example.com>\r\nFrom: \"A\" <sip:a@example.com>\r\n ;tag=x\r\n"
           "Call-ID: c\r\nCSeq: 7\r\n INVITE\r\nX-Long: one\r\n two\r\n\r\n").encode()
    m = parse_msg(buf)
    assert [v.host for v in m.vias] == ["h1.example.com", "[2001:db8::9]"]
    v2 = m.via2
    assert v2.transport == "TCP" and v2.port == 5070 and v2.branch == "z9hG4bKb"
    assert v2.received == "2001:db8::10" and v2.rport == "5071"
    assert m.to.uri == "sip:b@example.com" and m.from_tag == "x" and m.cseq_num == 7
    assert m.hdr("X-Long") == "one two"
    # the raw (folded) text is what a forwarded copy carries
    assert dict(m.raw_headers)["x-long"] == "X-Long: one\r\n two"


def test_multiple_via_lines_and_values():
    buf = req(add=["Via: SIP/2.0/UDP b.example.com;branch=z9hG4bK2, SIP/2.0/TCP c.example.com:5062",
                   "v: SIP/2.0/SCTP d.example.com;branch=z9hG4bK4"])
    m = parse_msg(buf)
    assert [(v.transport, v.host, v.port) for v in m.vias] == [
        ("UDP", "pc33.atlanta.example.com", 5070), ("UDP", "b.example.com", None),
        ("TCP", "c.example.com", 5062), ("SCTP", "d.example.com", None)]
    assert m.via2.host == "b.example.com" and m.hdr_count("via") == 3


def test_via_params():
    buf = req(replace={"Via": "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKx;received=10.0.0.2;"
                              "maddr=224.0.1.75;ttl=16;X-Flag;Q=\"a;b,c\""})
    v = parse_msg(buf).via1
    assert v.params == {"branch": "z9hG4bKx", "received": "10.0.0.2", "maddr": "224.0.1.75",
                        "ttl": "16", "x-flag": "", "q": "\"a;b,c\""}
    assert v.rport is None and v.maddr == "224.0.1.75" and v.sent_by == "10.0.0.1:5060"


@pytest.mark.parametrize("via", [
    "SIP/2.0/UDP", "SIP/2.0/UDP host;;branch=z9hG4bK1", "SIP/2.0/UDP host;branch=z9hG4bK1,",
    "SIP/2.0 host", "SIP/2.0/UDP host:99999", "SIP/2.0/UDP ho st", "XYZ/2.0/UDP host",
    "SIP/2.0/UDP host;branch=a b"])
def test_bad_top_via_rejected_without_reply(via):
    with pytest.raises(SipParseError) as ei:
        parse_msg(req(replace={"Via": "Via: " + via}))
    assert "Via" in ei.value.reason and ei.value.can_reply is False and ei.value.msg is None


@pytest.mark.parametrize("via", [
    "SIP/2.0/UDP 10.9.9.9:5062;;branch=z9hG4bK1", "SIP/2.0/UDP 10.9.9.9:5062;branch=a b",
    "SIP/2.0/UDP 10.9.9.9:5062;branch=", "SIP/2.0/UDP 10.9.9.9:5062;branch=z9hG4bK1,"])
def test_bad_via_after_a_good_one_from_the_same_sent_by(via):
    """A sent-by seen before (the fast path remembers it) still has its parameters checked."""
    m = parse_msg(req(replace={"Via": "Via: SIP/2.0/udp 10.9.9.9:5062;branch=z9hG4bK0;rport"}))
    assert (m.via1.transport, m.via1.host, m.via1.port, m.via1.rport) == ("UDP", "10.9.9.9", 5062, "")
    m = parse_msg(req(replace={"Via": "Via: SIP/2.0/udp 10.9.9.9:5062;Branch=z9hG4bK2;RPORT=7"}))
    assert (m.via1.transport, m.via1.params) == ("UDP", {"branch": "z9hG4bK2", "rport": "7"})
    with pytest.raises(SipParseError) as ei:
        parse_msg(req(replace={"Via": "Via: " + via.replace("UDP", "udp")}))
    assert "Via" in ei.value.reason and ei.value.can_reply is False


def test_bad_second_via_is_lazy():
    m = parse_msg(req(add=["Via: SIP/2.0/UDP ;;"]))
    assert m.via1.branch == "z9hG4bK776asdhds"
    with pytest.raises(SipParseError):
        m.vias
    with pytest.raises(SipParseError):
        m.validate()


def test_content_length_framing():
    assert parse_msg(req(body="v=0\nEXTRA")).body == b"v=0\n"  # trailing octets dropped
    m = parse_msg(req(drop=("Content-Length",), body="abc"))
    assert m.body == b"abc" and m.content_length is None
    for cl, reason in [("5", "mis-match"), ("-1", "Bad Content-Length"), ("x", "Bad Content-Length"),
                       ("99999999999", "Bad Content-Length")]:
        with pytest.raises(SipParseError) as ei:
            parse_msg(req(replace={"Content-Length": "Content-Length: " + cl}))
        assert reason in ei.value.reason and ei.value.can_reply and ei.value.code == 400
    with pytest.raises(SipParseError) as ei:
        parse_msg(req(add=["l: 4"]))
    assert "Multiple" in ei.value.reason


@pytest.mark.parametrize("name", ["Call-ID", "From", "To", "CSeq", "Max-Forwards"])
def test_duplicate_single_value_headers(name):
    buf = req(add=["%s: %s" % (name, dict(h.split(": ", 1) for h in INVITE.split("\r\n")[1:10])[name])])
    with pytest.raises(SipParseError) as ei:
        parse_msg(buf)
    assert ei.value.reason == "Multiple %s headers" % name and ei.value.can_reply


@pytest.mark.parametrize("name", ["Via", "From", "To", "Call-ID", "CSeq"])
def test_missing_mandatory_header(name):
    with pytest.raises(SipParseError) as ei:
        parse_msg(req(drop=(name,)))
    assert "Missing" in ei.value.reason
    assert ei.value.can_reply is (name != "Via")


@pytest.mark.parametrize("first,code,reason", [
    ("INVITE  sip:bob@example.com SIP/2.0", 400, "Request-Line"),
    ("INVITE sip:bob@example.com SIP/2.0 ", 400, "Request-Line"),
    ("INVITE sip:bob@example.com", 400, "Request-Line"),
    ("INVITE <sip:bob@example.com> SIP/2.0", 400, "Request-URI"),
    ("INVITE sip:bob@example.com SIP/3.0", 505, "Version"),
    ("INV(ITE sip:bob@example.com SIP/2.0", 400, "Request-Line"),
    ("INVITE sip:bob@example.com?Subject=x SIP/2.0", 400, "headers not allowed"),
])
def test_bad_request_line(first, code, reason):
    with pytest.raises(SipParseError) as ei:
        parse_msg(req(first=first))
    e = ei.value
    assert e.code == code and reason in e.reason
    if first.startswith("INVITE"):
        assert e.can_reply and e.msg is not None and e.msg.via1.branch == "z9hG4bK776asdhds"


def test_http_version_is_a_non_sip_request():
    # Kamailio's parse_first_line flags HTTP/1.x as not SIP (src/core/parser/parse_fline.c):
    # the non-SIP hooks (xhttp) get it, never the SIP routes
    m = parse_msg(req(first="INVITE sip:bob@example.com HTTP/1.1"))
    assert m.http and m.version == "HTTP/1.1"


def test_lowercase_version_accepted():
    assert parse_msg(req(first="INVITE sip:bob@example.com sip/2.0")).ruri == "sip:bob@example.com"


def test_cseq_checks():
    with pytest.raises(SipParseError) as ei:
        parse_msg(req(replace={"CSeq": "CSeq: 1 BYE"}))
    assert "does not match" in ei.value.reason
    for bad in ("CSeq: 4294967296 INVITE", "CSeq: INVITE", "CSeq: 1 INVITE x", "CSeq: -1 INVITE"):
        with pytest.raises(SipParseError):
            parse_msg(req(replace={"CSeq": bad}))
    assert parse_msg(req(replace={"CSeq": "CSeq: 4294967295 INVITE"})).cseq_num == 4294967295


def test_ack_never_gets_a_400():
    buf = req(first="ACK sip:bob@example.com SIP/2.0", replace={"CSeq": "CSeq: 1 ACK",
                                                                 "Content-Length": "l: 99"})
    with pytest.raises(SipParseError) as ei:
        parse_msg(buf)
    assert ei.value.can_reply is False and ei.value.msg is None


def test_replies():
    buf = ("SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP p.example.com;branch=z9hG4bK1\r\n"
           "Via: SIP/2.0/UDP a.example.com;branch=z9hG4bK0;received=192.0.2.4;rport=5999\r\n"
           "From: <sip:a@example.com>;tag=f\r\nTo: <sip:b@example.com>;tag=t\r\nCall-ID: c\r\n"
           "CSeq: 2 INVITE\r\nContent-Length: 0\r\n\r\n").encode()
    m = parse_msg(buf)
    assert not m.is_request and (m.status, m.reason) == (180, "Ringing") and m.method is None
    assert m.cseq_method == "INVITE" and m.to_tag == "t" and m.via2.received == "192.0.2.4"
    assert m.first_line == "SIP/2.0 180 Ringing"
    assert parse_msg(buf.replace(b"180 Ringing", b"200 ")).reason == ""
    for bad in (b"SIP/2.0 1800 Ringing", b"SIP/2.0 099 X", b"SIP/2.0 7xx X", b"SIP/3.0 180 R"):
        with pytest.raises(SipParseError) as ei:
            parse_msg(buf.replace(b"SIP/2.0 180 Ringing", bad))
        assert ei.value.can_reply is False


def test_line_ends_and_keepalives():
    lf = INVITE.replace("\r\n", "\n").encode()
    m = parse_msg(lf)
    assert m.callid == "a84b4c76e66710@pc33.atlanta.example.com" and m.body == b"v=0\n"
    m = parse_msg(b"\r\n\r\n" + INVITE.encode())
    assert m.method == "INVITE" and m.body == b"v=0\n"
    for junk in (b"\r\n\r\n", b"", b"\x00" * 40, b"hello world\r\n\r\n"):
        with pytest.raises(SipParseError) as ei:
            parse_msg(junk)
        assert ei.value.can_reply is False
    # no empty line at all: a datagram's end ends the headers only after a full line
    head = INVITE.encode().split(b"\r\n\r\n")[0].replace(b"Content-Length: 4", b"l: 0")
    assert parse_msg(head + b"\r\n").callid
    with pytest.raises(SipParseError) as ei:
        parse_msg(head[:-3])
    assert "end of headers" in ei.value.reason


def test_bad_header_lines():
    for line in ("No colon here", "Bad Name: x", ": empty", "Na(me: x"):
        with pytest.raises(SipParseError) as ei:
            parse_msg(req(add=[line]))
        assert ei.value.code == 400 and ei.value.can_reply


def test_lazy_errors_surface_on_access():
    m = parse_msg(req(replace={"To": "To: \"Bob <sip:bob@biloxi.example.com>",
                               "Max-Forwards": "Max-Forwards: lots",
                               "Contact": "Contact: <sip:a@b>;;"}))
    for attr in ("to", "to_tag", "max_forwards", "contact", "contacts"):
        with pytest.raises(SipParseError):
            getattr(m, attr)
    assert m.from_tag == "1928301774"


def test_name_addr_forms():
    m = parse_msg(req(replace={
        "To": "To: sip:bob@example.com;tag=abc",
        "From": "From: \"Al \\\"Q\\\" <x>\" <sip:al@example.com;transport=udp>;tag=9;Foo=\"b;r\"",
        "Contact": "Contact: *"},
        add=["Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>", "Route: <sip:p3;lr>",
             "Record-Route: <sip:rr.example.com;lr;ftag=9>"]))
    assert m.to.uri == "sip:bob@example.com" and m.to_tag == "abc" and m.to.display == ""
    assert m.from_.display == "\"Al \\\"Q\\\" <x>\"" and m.from_.uri == "sip:al@example.com;transport=udp"
    assert m.from_.params == {"tag": "9", "foo": "\"b;r\""}
    assert m.contact.uri == "*"
    assert [r.uri for r in m.routes] == ["sip:p1.example.com;lr", "sip:p2.example.com;lr", "sip:p3;lr"]
    assert m.record_routes[0].params == {}
    assert m.validate()


def test_multiple_contacts_with_commas_in_quotes():
    m = parse_msg(req(replace={"Contact": "Contact: \"a, b\" <sip:a@x>;q=0.5, <sip:b@y>;expires=60"}))
    assert [(c.uri, c.params) for c in m.contacts] == [("sip:a@x", {"q": "0.5"}),
                                                        ("sip:b@y", {"expires": "60"})]


def test_utf8_and_binary_are_lossless():
    m = parse_msg(req(add=["Subject: caf\u00e9"]))
    assert m.hdr("subject") == "caf\u00e9"
    raw = req(add=["X-Bin: a-b"]).replace(b"a-b", b"a\xffb")
    m = parse_msg(raw)
    assert m.hdr("X-Bin").encode("utf-8", "surrogateescape") == b"a\xffb"


def test_faked_request():
    f = faked_request()
    assert f.method == "OPTIONS" and f.ruri == "sip:you@kamailio.org"
    assert f.src == ("127.0.0.1", 5060) and f.from_tag == "123" and f.body == b""
    f.hdr_adds.append("X: 1\r\n")
    assert faked_request().hdr_adds == []  # a fresh message each time


def test_name_addr_without_params_is_a_fresh_object_each_time():
    """parse_nameaddr remembers plain values (a To without tag); callers still own what they get."""
    from asyncd.sip.hdrs import parse_nameaddr
    a = parse_nameaddr("Bob <sip:bob@biloxi.example.com>", "To")
    a.params["tag"] = "x"
    a.tag = "x"
    b = parse_nameaddr("Bob <sip:bob@biloxi.example.com>", "To")
    assert b is not a
    assert (b.display, b.uri, b.params, b.tag) == ("Bob", "sip:bob@biloxi.example.com", {}, None)
    m = parse_msg(req())
    assert m.to_tag is None and m.to.uri == "sip:bob@biloxi.example.com"
    assert m.to.raw == "Bob <sip:bob@biloxi.example.com>"


def test_hot_path_caches_stay_small():
    """What the wire repeats is remembered, but never more than a few hundred short entries."""
    from asyncd.sip import hdrs, msg
    long_user = "u" * 2000
    for i in range(1500):
        user = "%d%s" % (i, long_user if i % 2 else "")
        via = "Via: SIP/2.0/UDP h%d%s:5060;branch=z9hG4bK%d" % (i, "x" * (i % 300), i)
        parse_msg(req(first="INVITE sip:%s@biloxi.example.com SIP/2.0" % user,
                      replace={"CSeq": "CSeq: %d INVITE" % (i + 1), "Via": via,
                               "To": "To: <sip:%s@b>" % user})).to
    caches = ((msg._reqlines, 1024, 256), (hdrs._cseq_cache, 512, 64), (hdrs._sentby, 256, 128),
              (hdrs._na_plain, 512, 256))
    for cache, count, size in caches:
        assert 0 < len(cache) <= count and max(map(len, cache)) <= size
