"""HTTP/1.x requests on the SIP stream path: framing (StreamFramer with and
without tcp_accept_no_cl, pipelining, chunked refused), parse_msg marking them
`http` (Kamailio's parse_fline HTTP flag), and asyncd.sip.http replies.
"""
import pytest
from hypothesis import given, settings, strategies as st

from asyncd.sip import SipParseError, parse_msg
from asyncd.sip.http import build_http_reply, wants_close
from asyncd.sip.stream import BAD, MSG, StreamFramer

GET = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: test\r\nAccept: */*\r\n\r\n"
POST = b"POST /rpc HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"


def test_get_without_content_length_needs_tcp_accept_no_cl():
    ev = StreamFramer().feed(GET)
    assert ev[0][0] == BAD and ev[0][1] == 400 and ev[0][2] == "Missing Content-Length"
    assert StreamFramer(accept_no_cl=True).feed(GET) == [(MSG, GET)]


def test_post_with_content_length_and_pipelined_requests_byte_by_byte():
    stream = POST + GET + POST
    f = StreamFramer(accept_no_cl=True)
    got = []
    for i in range(len(stream)):
        got += f.feed(stream[i:i + 1])
    assert got == [(MSG, POST), (MSG, GET), (MSG, POST)]
    assert not f.partial


def test_chunked_body_is_refused_with_501():
    req = b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    ev = StreamFramer(accept_no_cl=True).feed(req)
    assert ev[0][:3] == (BAD, 501, "Not Implemented")
    assert parse_msg(ev[0][3]).http


def test_parse_msg_marks_http_requests():
    m = parse_msg(GET)
    assert m.http and m.is_request and m.method == "GET" and m.ruri == "/metrics"
    assert m.version == "HTTP/1.1" and m.hdr("host") == "127.0.0.1" and m.body == b""
    m = parse_msg(POST)
    assert m.http and m.method == "POST" and m.body == b"hello"
    m = parse_msg(b"get /x?a=1 http/1.0\r\n\r\n")
    assert m.http and m.version == "http/1.0" and m.ruri == "/x?a=1"


def test_sip_requests_are_not_http_and_other_versions_still_fail():
    sip = (b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bK1\r\n"
           b"From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n"
           b"Content-Length: 0\r\n\r\n")
    assert not parse_msg(sip).http
    with pytest.raises(SipParseError):
        parse_msg(b"GET / HTTP/2.0\r\n\r\n")
    with pytest.raises(SipParseError):
        parse_msg(b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nabc")


def test_reply_shape_and_connection_rules():
    r = build_http_reply("HTTP/1.0", 404, "Not Found", "text/html", "<b>x</b>", ["X-A: 1"])
    head, body = r.split(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.0 404 Not Found"
    assert lines[1:3] == [b"X-A: 1", b"Content-Type: text/html"]
    assert lines[-1] == b"Content-Length: 8" and body == b"<b>x</b>"
    assert b"Content-Type" not in build_http_reply("HTTP/1.1", 200, "OK", "", b"")
    assert wants_close(parse_msg(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"))
    assert wants_close(parse_msg(b"GET / HTTP/1.0\r\n\r\n"))
    assert not wants_close(parse_msg(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"))
    assert not wants_close(parse_msg(GET))


@settings(max_examples=200, deadline=None)
@given(path=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40),
       body=st.binary(max_size=60), junk=st.binary(max_size=80), cut=st.integers(0, 400))
def test_http_requests_frame_and_parse_however_they_arrive(path, body, junk, cut):
    req = b"POST " + path.encode() + b" HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body)
    stream = req + body + GET
    f = StreamFramer(accept_no_cl=True)
    got = f.feed(stream[:cut]) + f.feed(stream[cut:])
    assert got == [(MSG, req + body), (MSG, GET)]
    m = parse_msg(got[0][1])
    assert m.http and m.ruri == path and m.body == body
    try:                     # anything after an HTTP request line: parsed or SipParseError only
        parse_msg(b"GET /x HTTP/1.1\r\n" + junk)
    except SipParseError:
        pass
