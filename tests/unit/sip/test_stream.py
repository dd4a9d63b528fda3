"""StreamFramer: SIP over a stream framed by Content-Length (RFC 3261 18.3), CRLF
keepalives (RFC 5626 3.5.1), limits, and the RFC 4475 corpus replayed as a stream.

Most cases go through `every_way`: fed whole, split in two at every offset and
fed byte by byte, the events (and what is left buffered, and eof()) must be the
same, however the bytes arrive.
"""
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from asyncd.sip.stream import BAD, BUF_SIZE, MSG, PING, StreamFramer

CORPUS = Path(__file__).resolve().parents[2] / "corpus" / "rfc4475"
TAGS = sorted(p.stem for p in CORPUS.glob("*.dat"))
assert len(TAGS) == 50
# the messages whose Content-Length does not frame the datagram exactly (MANIFEST.tsv notes)
MISFRAMED = {"baddn", "clerr", "dblreq", "inv2543", "mcl01", "ncl"}
CRLF2 = b"\r\n\r\n"


def data(tag):
    return (CORPUS / (tag + ".dat")).read_bytes()


def msg(body=b"", hdrs=None):
    """A small request; hdrs replaces the Content-Length line (a list of header lines)."""
    if hdrs is None:
        hdrs = [b"Content-Length: %d" % len(body)]
    return b"\r\n".join([b"OPTIONS sip:bob@example.com SIP/2.0",
                         b"Via: SIP/2.0/TCP 192.0.2.1;branch=z9hG4bK1",
                         b"CSeq: 1 OPTIONS"] + hdrs) + CRLF2 + body


def head(m):
    return m[:m.find(CRLF2) + 4]


def run(chunks, **kw):
    """Feed the chunks to one framer: (events, partial, buffered, eof events)."""
    fr = StreamFramer(**kw)
    events = []
    for c in chunks:
        events += fr.feed(c)
        # one unfinished message at most, and never more than the limit
        assert fr.buffered <= fr.max_msg
        assert fr.partial == (fr.buffered > 0)
    for e in events:
        assert e[0] != MSG or type(e[1]) is bytes
    return events, fr.partial, fr.buffered, fr.eof()


def every_way(stream, **kw):
    """run() fed whole; asserts first that every two-piece split and byte-at-a-time agree."""
    whole = run([stream], **kw)
    for i in range(1, len(stream)):
        assert run([stream[:i], stream[i:]], **kw) == whole, "split at %d" % i
    assert run([stream[i:i + 1] for i in range(len(stream))], **kw) == whole, "byte by byte"
    return whole


# -- the RFC 4475 corpus as a stream ---------------------------------------------------------------

@pytest.mark.parametrize("tag", sorted(set(TAGS) - MISFRAMED))
def test_corpus_message_is_one_msg(tag):
    b = data(tag)
    assert every_way(b) == ([(MSG, b)], False, 0, [])


@pytest.mark.parametrize("tag", sorted(MISFRAMED))
def test_corpus_misframed(tag):
    """What the stream rules make of the datagrams whose Content-Length does not frame them."""
    b = data(tag)
    h = head(b)
    got = every_way(b)
    if tag == "baddn":      # no blank line at all: waits for the end of the head
        assert b.find(CRLF2) < 0
        assert got == ([], True, 331, [(BAD, 400, "Incomplete Message", None)])
    elif tag == "clerr":    # CL 9999, body 154: waits for the rest, the peer's close is BAD
        assert len(h) == 344
        assert got == ([], True, 498, [(BAD, 400, "Incomplete Message", h)])
    elif tag == "dblreq":   # REGISTER (CL 0), a CRLF, then the "junk" is a framed INVITE (CL 150)
        assert (len(h), b[300:302]) == (300, b"\r\n")
        invite = b[302:302 + 293 + 150]
        assert invite.startswith(b"INVITE ") and len(head(invite)) == 293
        # ... and what is past the INVITE's 150 body bytes is a head without Content-Length
        assert b[745:] == b"C\r\n\r\n"
        assert got == ([(MSG, h), (MSG, invite), (BAD, 400, "Missing Content-Length", b"C\r\n\r\n")],
                       False, 0, [])
    elif tag == "inv2543":  # RFC 2543 style, no Content-Length: mandatory on a stream
        assert len(h) == 340
        assert got == ([(BAD, 400, "Missing Content-Length", h)], False, 0, [])
    elif tag == "mcl01":    # CL 13 and CL 5
        assert len(h) == 315
        assert got == ([(BAD, 400, "Conflicting Content-Length", h)], False, 0, [])
    elif tag == "ncl":      # CL -999
        assert len(h) == 334
        assert got == ([(BAD, 400, "Bad Content-Length", h)], False, 0, [])
    else:
        pytest.fail("no expectation for " + tag)


def test_corpus_without_cl_accepted():
    """tcp_accept_no_cl: inv2543's head is a message with no body; its SDP then waits for a
    blank line that never comes."""
    b = data("inv2543")
    h = head(b)
    assert every_way(b, accept_no_cl=True) == (
        [(MSG, h)], True, 105, [(BAD, 400, "Incomplete Message", None)])
    dblreq = data("dblreq")
    assert every_way(dblreq, accept_no_cl=True)[0][-1] == (MSG, b"C\r\n\r\n")


@pytest.mark.parametrize("max_msg", [200, 300, 400])
def test_corpus_limits_do_not_depend_on_splitting(max_msg):
    """Whether a head is too large (head None) or head+body is (head given) is decided the same
    way whole and in pieces."""
    for tag in sorted(set(TAGS) - MISFRAMED):
        b = data(tag)
        h = head(b)
        got = every_way(b, max_msg=max_msg)
        if len(h) > max_msg:
            assert got == ([(BAD, 513, "Message Too Large", None)], False, 0, []), tag
        elif len(b) > max_msg:
            assert got == ([(BAD, 513, "Message Too Large", h)], False, 0, []), tag
        else:
            assert got == ([(MSG, b)], False, 0, []), tag


def test_corpus_back_to_back():
    msgs = [data(t) for t in TAGS if t not in MISFRAMED]
    stream = b"".join(msgs)
    assert run([stream]) == ([(MSG, m) for m in msgs], False, 0, [])
    step = 1013     # cuts land everywhere in the messages
    assert run([stream[i:i + step] for i in range(0, len(stream), step)])[0] == [(MSG, m) for m in msgs]


# -- several messages, partial messages --------------------------------------------------------------

def test_two_and_three_messages_in_one_feed():
    a, b, c = msg(b"v=0\r\n"), msg(), msg(b"x" * 30)
    assert every_way(a + b) == ([(MSG, a), (MSG, b)], False, 0, [])
    assert every_way(a + b + c) == ([(MSG, a), (MSG, b), (MSG, c)], False, 0, [])


def test_message_then_partial_second():
    a, b = msg(b"v=0\r\n"), msg(b"body")
    fr = StreamFramer()
    assert fr.feed(a + b[:-2]) == [(MSG, a)]
    assert fr.partial and fr.buffered == len(b) - 2
    assert fr.feed(b[-2:]) == [(MSG, b)]
    assert not fr.partial and fr.buffered == 0
    # a partial head this time
    assert fr.feed(a + b[:10]) == [(MSG, a)]
    assert fr.buffered == 10
    assert fr.feed(b[10:] + a) == [(MSG, b), (MSG, a)]


def test_body_may_hold_a_blank_line_and_anything():
    body = b"\r\n\r\nINVITE x\r\n\r\nl: 5\r\n\x00\xff"
    m = msg(body)
    assert every_way(m + m) == ([(MSG, m), (MSG, m)], False, 0, [])


def test_feed_types_and_empty_feed():
    m = msg(b"abc")
    for conv in (bytes, bytearray, memoryview):
        fr = StreamFramer()
        assert fr.feed(conv(b"")) == []
        assert fr.feed(conv(m[:7])) == []
        assert fr.feed(conv(b"")) == []
        got = fr.feed(conv(m[7:] + m))
        assert got == [(MSG, m), (MSG, m)] and all(type(e[1]) is bytes for e in got)
        assert StreamFramer().feed(conv(m)) == [(MSG, m)]


# -- CRLF keepalives ------------------------------------------------------------------------------

def test_ping_alone_and_split():
    assert every_way(CRLF2) == ([(PING,)], False, 0, [])
    fr = StreamFramer()
    assert fr.feed(b"\r\n") == []
    assert not fr.partial and fr.buffered == 0
    assert fr.feed(b"\r\n") == [(PING,)]
    fr = StreamFramer()
    assert [fr.feed(c) for c in (b"\r", b"\n\r", b"\n")] == [[], [], [(PING,)]]
    assert every_way(CRLF2 * 3) == ([(PING,)] * 3, False, 0, [])
    # a stray CR or LF before or inside: the ping is the CRLFCRLF that ends the run
    m = msg()
    for junk in (b"\r", b"\n", b"\r\n\r"):
        assert every_way(junk + CRLF2 + m) == ([(PING,), (MSG, m)], False, 0, []), junk


def test_single_crlf_pong_is_skipped():
    assert every_way(b"\r\n") == ([], False, 0, [])
    m = msg()
    assert every_way(m + b"\r\n" + m) == ([(MSG, m), (MSG, m)], False, 0, [])
    # an odd CRLF count: the pairs are pings, the last CRLF a pong
    assert every_way(b"\r\n" * 3 + m) == ([(PING,), (MSG, m)], False, 0, [])
    # stray CR or LF alone are skipped too
    assert every_way(b"\n\r" + m + b"\r")[0] == [(MSG, m)]


def test_ping_between_messages():
    a, b = msg(b"v=0\r\n"), msg()
    assert every_way(a + CRLF2 + b) == ([(MSG, a), (PING,), (MSG, b)], False, 0, [])
    assert every_way(a + CRLF2) == ([(MSG, a), (PING,)], False, 0, [])


def test_leading_crlfs_then_message():
    m = msg(b"v=0\r\n")
    assert every_way(b"\r\n" + m) == ([(MSG, m)], False, 0, [])
    # a ping then a message in one segment: both (Kamailio answers the ping, then parses)
    assert every_way(CRLF2 + m) == ([(PING,), (MSG, m)], False, 0, [])
    assert every_way(b"\r\n\r" + m)[0] == [(MSG, m)]


# -- Content-Length ----------------------------------------------------------------------------------

def test_missing_content_length():
    m = msg(hdrs=[b"Subject: no length"])
    fr = StreamFramer()
    assert fr.feed(m + msg()) == [(BAD, 400, "Missing Content-Length", m)]
    assert fr.feed(msg()) == [] and fr.eof() == [] and not fr.partial and fr.buffered == 0
    assert every_way(m) == ([(BAD, 400, "Missing Content-Length", m)], False, 0, [])


def test_missing_content_length_accepted():
    m = msg(hdrs=[b"Subject: no length"])
    a = msg(b"v=0\r\n")
    assert every_way(m + a, accept_no_cl=True) == ([(MSG, m), (MSG, a)], False, 0, [])
    # what follows the head is the next message, not a body
    assert every_way(m + b"v=0\r\n", accept_no_cl=True) == (
        [(MSG, m)], True, 5, [(BAD, 400, "Incomplete Message", None)])


@pytest.mark.parametrize("line", [
    b"l: 4", b"L:4", b"Content-Length : 4", b"content-LENGTH\t:\t4", b"Content-Length:    4   ",
    b"Content-Length:\r\n 4", b"l  :\r\n\t 4 ", b"Content-Length: 0004"])
def test_content_length_forms(line):
    m = msg(b"abcd", hdrs=[line])
    assert every_way(m + m) == ([(MSG, m), (MSG, m)], False, 0, [])


@pytest.mark.parametrize("line", [
    b"X-Content-Length: 4", b"Lx: 4", b"Content-Lengths: 4", b"Subject: a\r\n l: 4", b"Content-Length 4"])
def test_not_a_content_length(line):
    m = msg(b"", hdrs=[line])
    assert every_way(m) == ([(BAD, 400, "Missing Content-Length", m)], False, 0, [])


@pytest.mark.parametrize("value", [b"-999", b"-1", b"+4", b"4a", b"0x4", b"4 4", b"", b"4.0",
                                   b"\xd9\xa4", b"4\r\n 4", b"4\rX"])
def test_bad_content_length(value):
    m = msg(b"abcd", hdrs=[b"Content-Length: " + value])
    h = head(m)
    assert every_way(m) == ([(BAD, 400, "Bad Content-Length", h)], False, 0, [])


def test_duplicate_content_length():
    """Same value twice frames the message (parse_msg answers the duplicate); values that differ
    lose the framing (RFC 4475 3.3.9)."""
    same = msg(b"abcd", hdrs=[b"Content-Length: 4", b"Subject: x", b"l: 004"])
    assert every_way(same) == ([(MSG, same)], False, 0, [])
    diff = msg(b"abcd", hdrs=[b"Content-Length: 4", b"l: 5"])
    assert every_way(diff) == ([(BAD, 400, "Conflicting Content-Length", head(diff))], False, 0, [])
    assert every_way(msg(b"abcd", hdrs=[b"l: 4", b"l: x"]))[0][0][:3] == (BAD, 400, "Bad Content-Length")


def test_huge_content_length():
    m = msg(b"abcd", hdrs=[b"Content-Length: " + b"9" * 5000])
    assert run([m]) == ([(BAD, 513, "Message Too Large", head(m))], False, 0, [])


# -- limits --------------------------------------------------------------------------------------------

def test_head_larger_than_max_msg():
    m = msg(b"", hdrs=[b"Subject: " + b"x" * 500, b"l: 0"])
    assert len(head(m)) > 400
    got = every_way(m + msg(), max_msg=400)
    assert got == ([(BAD, 513, "Message Too Large", None)], False, 0, [])
    fr = StreamFramer(max_msg=400)
    assert fr.feed(m[:399]) == [] and fr.buffered == 399
    assert fr.feed(b"x") == [(BAD, 513, "Message Too Large", None)]
    assert fr.buffered == 0 and not fr.partial
    assert fr.feed(msg()) == [] and fr.feed(CRLF2) == [] and fr.eof() == []


def test_head_without_end_never_buffers_past_the_limit():
    fr = StreamFramer()
    chunk = b"X-Pad: " + b"y" * 1000 + b"\r\n"
    assert fr.feed(b"INVITE sip:a@b SIP/2.0\r\n") == []
    events = []
    for _ in range(BUF_SIZE // len(chunk) + 1):
        events += fr.feed(chunk)
        assert fr.buffered < BUF_SIZE
    assert events == [(BAD, 513, "Message Too Large", None)]


def test_message_larger_than_max_msg_by_content_length():
    h = head(msg(hdrs=[b"Content-Length: 100"]))
    fits = msg(b"z" * (400 - len(h)))
    assert len(fits) == 400
    assert every_way(fits, max_msg=400) == ([(MSG, fits)], False, 0, [])
    over = msg(b"z" * (401 - len(h)))
    assert every_way(over, max_msg=400) == ([(BAD, 513, "Message Too Large", head(over))], False, 0, [])
    # decided on the head: the body is never waited for
    fr = StreamFramer(max_msg=400)
    assert fr.feed(head(over)) == [(BAD, 513, "Message Too Large", head(over))]


# -- end of stream ---------------------------------------------------------------------------------

def test_eof():
    m = msg(b"abcd")
    fr = StreamFramer()
    assert fr.feed(m) == [(MSG, m)] and fr.eof() == []
    assert fr.feed(m) == []     # closed
    fr = StreamFramer()
    fr.feed(m[:-1])
    assert fr.partial
    assert fr.eof() == [(BAD, 400, "Incomplete Message", head(m))]
    assert fr.eof() == [] and fr.feed(b"d") == []
    fr = StreamFramer()
    fr.feed(m[:5])
    assert fr.eof() == [(BAD, 400, "Incomplete Message", None)]
    fr = StreamFramer()
    fr.feed(b"\r\n\r")          # half a ping is no message
    assert not fr.partial and fr.eof() == []


# -- any stream, cut anywhere ----------------------------------------------------------------------

_bodies = st.binary(max_size=60)
_cl_lines = st.sampled_from([b"Content-Length: %d", b"l:%d", b"content-length :\r\n %d", b"L: 0%d"])


@st.composite
def _streams(draw):
    """(stream bytes, expected events): messages separated by CRLF runs."""
    stream, expect = [], []
    for _ in range(draw(st.integers(1, 5))):
        crlfs = draw(st.integers(0, 5))
        stream.append(b"\r\n" * crlfs)
        expect += [(PING,)] * (crlfs // 2)
        body = draw(_bodies)
        m = msg(body, hdrs=[b"Subject: s", draw(_cl_lines) % len(body)])
        stream.append(m)
        expect.append((MSG, m))
    return b"".join(stream), expect


@given(_streams(), st.lists(st.integers(0, 2000), max_size=12),
       st.sampled_from([bytes, bytearray, memoryview]))
@settings(max_examples=300, deadline=None)
def test_any_stream_any_cuts(case, cuts, conv):
    stream, expect = case
    cuts = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [conv(stream[a:b]) for a, b in zip([0] + cuts, cuts + [len(stream)])]
    assert run(chunks) == (expect, False, 0, [])
