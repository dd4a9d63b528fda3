"""Property tests: parse_msg raises nothing but SipParseError, whatever the bytes.

parse_msg wraps an unexpected exception into SipParseError("Bad message (<type>)")
so that a receiver survives a parser bug; these tests treat that wrapper as a
failure, so a bug shows up here instead of being hidden. Lazy accessors are
exercised too: they may raise SipParseError only.
"""
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from asyncd.sip import (SipParseError, build_reply, build_request_fwd, parse_msg, reply_addr,
                        strip_top_via, via_line)

CORPUS = Path(__file__).resolve().parents[2] / "corpus" / "rfc4475"
MESSAGES = [p.read_bytes() for p in sorted(CORPUS.glob("*.dat"))]
assert len(MESSAGES) == 50

LAZY = ("via1", "via2", "vias", "callid", "cseq_num", "cseq_method", "from_", "to", "from_tag",
        "to_tag", "max_forwards", "contact", "contacts", "routes", "record_routes",
        "content_length", "parsed_ruri", "headers", "raw_headers", "body")


def exercise(buf):
    """Parse and touch everything; only SipParseError may come out."""
    try:
        m = parse_msg(buf, src=("192.0.2.1", 5060))
    except SipParseError as e:
        assert not e.reason.startswith("Bad message ("), repr(e.__cause__)
        assert isinstance(e.reason, str) and "\n" not in e.reason
        if e.can_reply:  # what the receiver then does must work
            build_reply(e.msg, e.code, e.reason)
            reply_addr(e.msg)
        return None
    for name in LAZY:
        try:
            getattr(m, name)
        except SipParseError:
            pass
    m.hdr("via")
    m.hdrs("contact")
    if m.is_request and m.method != "ACK":
        build_reply(m, 200, "OK")
        reply_addr(m)
        build_request_fwd(m, m.ruri, via_line("127.0.0.1", 5060, "z9hG4bKf"))
    elif not m.is_request:
        strip_top_via(m)
    return m


def test_every_truncation_of_every_corpus_message():
    """Replayed in pieces: each prefix of each message (a datagram cut short)."""
    for buf in MESSAGES:
        step = 1 if len(buf) < 1200 else 7
        for n in range(0, len(buf), step):
            exercise(buf[:n])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_arbitrary_bytes(buf):
    exercise(buf)


_pieces = st.sampled_from([b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b";", b",", b"<", b">", b'"',
                           b"\\", b"@", b"%", b"=", b"[", b"]", b"\x00", b"\xff", b"\r\n ",
                           b"Via: ", b"v:", b"CSeq: ", b"l: ", b"Content-Length: -1", b"SIP/2.0",
                           b";rport", b";branch=", b"sip:", b"\r\n\r\n", b"9999999999999"])


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(MESSAGES), st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 12), _pieces),
                                           max_size=6))
def test_mutated_corpus_messages(buf, edits):
    """Splice SIP-significant bytes into real messages (deletions and insertions)."""
    b = bytearray(buf)
    for pos, cut, piece in edits:
        pos %= len(b) + 1
        b[pos:pos + cut] = piece
    exercise(bytes(b))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x2fff), max_size=80))
def test_any_header_value(value):
    """Any text as the value of each core header of a good request."""
    base = ("OPTIONS sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
            "From: <sip:b@example.com>;tag=1\r\nTo: <sip:a@example.com>\r\nCall-ID: c\r\n"
            "CSeq: 1 OPTIONS\r\nContact: <sip:b@h>\r\nRoute: <sip:r;lr>\r\nMax-Forwards: 70\r\n\r\n")
    for hdr in ("Via", "From", "To", "Call-ID", "CSeq", "Contact", "Route", "Max-Forwards"):
        lines = [(hdr + ": " + value) if ln.startswith(hdr + ":") else ln for ln in base.split("\r\n")]
        exercise("\r\n".join(lines).encode("utf-8", "surrogatepass"))


def _worst(n):
    """Inputs that made earlier versions backtrack or concatenate quadratically."""
    def req(via="SIP/2.0/UDP h", frm="<sip:b@x>;tag=1", contact="<sip:c@d>"):
        return ("OPTIONS sip:a@example.com SIP/2.0\r\nVia: " + via + "\r\nFrom: " + frm +
                "\r\nTo: <sip:a@example.com>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContact: " +
                contact + "\r\n\r\n").encode()
    return [req(via="SIP/2.0/UDP " + "a" * n + "!"), req(via="SIP/2.0/UDP h" + ";a" * (n // 2) + ";"),
            req(contact="<sip:c@d>" + "\r\n x" * (n // 4)), req(frm="a " * (n // 2) + "( <sip:b@x>"),
            req(contact=",".join(['"x" <sip:a@b>'] * (n // 14)))]


def test_cost_is_linear_in_size():
    import time

    def cost(buf):
        runs = []
        for _ in range(3):
            t = time.perf_counter()
            exercise(buf)
            runs.append(time.perf_counter() - t)
        return min(runs)
    for small, big in zip(_worst(4000), _worst(64000)):  # 16x the bytes
        cs, cb = cost(small), cost(big)
        assert cb < 64 * cs + 0.002, (big[:60], cs, cb)  # quadratic would be ~256x


_na_text = st.lists(st.sampled_from(['"', "\\", "<", ">", ";", "=", " ", "\t", ":", "@", "sip", "tag",
                                     "Bob", "a", "1", "x.y", ",", "*", "%", "\x0b", "\u00e9"]),
                    max_size=25).map("".join)


@settings(max_examples=1000, deadline=None)
@given(st.one_of(_na_text, st.builds(lambda d, u, p: d + "<sip:" + u + ">" + p, _na_text, _na_text,
                                     _na_text)))
def test_name_addr_fast_path_agrees_with_full_parser(text):
    """The regex fast path for name-addr is only a shortcut: same result as the full parser."""
    from asyncd.sip import hdrs
    m = hdrs._NA_FAST_RE.match(text)
    if m is None or ":" not in m.group(3):
        return
    fast = hdrs.parse_nameaddr(text, "To")
    full = hdrs._parse_nameaddr(text, "To")
    assert (fast.display, fast.uri, fast.params, fast.tag) == (full.display, full.uri, full.params, full.tag)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from(["SIP", "/", "2.0", "UDP", "TCP", " ", ";", "=", ":", "5060", "h.example",
                                 "[2001:db8::1]", "branch", "z9hG4bK", "rport", "received", "1.2.3.4",
                                 "\t", '"', "x"]), max_size=20).map("".join))
def test_via_fast_path_agrees_with_full_parser(text):
    from asyncd.sip import hdrs
    fast = hdrs._via_fast(text)
    if fast is None:
        return
    full = hdrs._via_full(text)
    assert [getattr(fast, a) for a in hdrs.Via.__slots__] == [getattr(full, a) for a in hdrs.Via.__slots__]
