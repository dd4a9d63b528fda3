"""Property test: generated valid requests (any spelling the grammar allows) parse
back to the values they were generated from, and survive build/forward."""
from hypothesis import HealthCheck, given, settings, strategies as st

from asyncd.sip import build_reply, build_request_fwd, parse_msg, parse_uri, via_line

TOKEN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
token = st.text(TOKEN, min_size=1, max_size=12)
label = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
domain = st.lists(label, min_size=1, max_size=4).map(".".join)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: "%d.%d.%d.%d" % t)
ipv6 = st.lists(st.integers(0, 0xffff), min_size=8, max_size=8).map(
    lambda g: "[%s]" % ":".join("%x" % x for x in g))
host = st.one_of(domain, ipv4, ipv6)
port = st.one_of(st.none(), st.integers(1, 65535))
user = st.from_regex(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/]{1,10}", fullmatch=True)
sws = st.sampled_from(["", " ", "  ", "\t", " \r\n ", "\r\n\t"])  # LWS incl. folding
lws = st.sampled_from([" ", "  ", "\t", " \r\n "])


def name(long, compact=None):
    forms = [long, long.lower(), long.upper()] + ([compact] if compact else [])
    return st.sampled_from(forms).flatmap(lambda n: st.sampled_from([n + ":", n + " :", n + "\t:"]))


@st.composite
def via(draw):
    h, p, br = draw(host), draw(port), "z9hG4bK" + draw(token)
    rport = draw(st.booleans())
    text = "SIP%s/%s2.0%s/%sUDP%s%s" % (draw(sws), draw(sws), draw(sws), draw(sws), draw(lws), h)
    if p is not None:
        text += "%s:%s%d" % (draw(sws), draw(sws), p)
    text += "%s;%sbranch%s=%s%s" % (draw(sws), draw(sws), draw(sws), draw(sws), br)
    if rport:
        text += "%s;%srport" % (draw(sws), draw(sws))
    return text, (h, p, br, "" if rport else None)


@st.composite
def nameaddr(draw):
    u = "sip:%s@%s" % (draw(user), draw(domain))
    tag = draw(st.one_of(st.none(), token))
    disp = draw(st.sampled_from(["", "Alice", "\"A \\\"q\\\" , ;\"", "Bob Smith"]))
    text = ("%s%s<%s>" % (disp, draw(st.sampled_from(["", " "])) if disp else "", u)) if disp or \
        draw(st.booleans()) else u
    if not text.startswith(("<", "\"", "A", "B")) and not disp:
        text = "<%s>" % u if ";" in u or "?" in u or "," in u else text
    if tag is not None:
        text += "%s;%stag%s=%s%s" % (draw(sws), draw(sws), draw(sws), draw(sws), tag)
    return text, (u, tag)


@st.composite
def request(draw):
    method = draw(st.sampled_from(["INVITE", "OPTIONS", "BYE", "MESSAGE"]) | token)
    ruri_user, ruri_host, ruri_port = draw(user), draw(host), draw(port)
    ruri = "sip:%s@%s%s" % (ruri_user, ruri_host, "" if ruri_port is None else ":%d" % ruri_port)
    vias = draw(st.lists(via(), min_size=1, max_size=4))
    per_line = draw(st.integers(1, 3))
    f, t = draw(nameaddr()), draw(nameaddr())
    callid = draw(token) + "@" + draw(domain)
    cseq = draw(st.integers(0, 2 ** 32 - 1))
    mf = draw(st.one_of(st.none(), st.integers(0, 255)))
    body = draw(st.binary(max_size=60))
    extra = draw(st.lists(st.tuples(st.from_regex(r"X-[A-Za-z]{1,8}", fullmatch=True), token), max_size=3))
    lines = []
    for i in range(0, len(vias), per_line):
        lines.append(draw(name("Via", "v")) + draw(sws) + (draw(sws) + "," + draw(sws)).join(
            v[0] for v in vias[i:i + per_line]))
    lines.append(draw(name("From", "f")) + draw(sws) + f[0])
    lines.append(draw(name("To", "t")) + draw(sws) + t[0])
    lines.append(draw(name("Call-ID", "i")) + draw(sws) + callid)
    lines.append(draw(name("CSeq")) + draw(sws) + "%d%s%s" % (cseq, draw(lws), method))
    if mf is not None:
        lines.append(draw(name("Max-Forwards")) + " %d" % mf)
    lines += ["%s: %s" % kv for kv in extra]
    lines.append(draw(name("Content-Length", "l")) + " %d" % len(body))
    nvia = (len(vias) + per_line - 1) // per_line
    order = draw(st.permutations(range(len(lines))))
    slots = sorted(i for i, j in enumerate(order) if j < nvia)  # Via lines keep their order
    shuffled = [lines[j] for j in order]
    for k, i in enumerate(slots):
        shuffled[i] = lines[k]
    lines = shuffled
    buf = ("%s %s SIP/2.0\r\n" % (method, ruri) + "\r\n".join(lines) + "\r\n\r\n").encode() + body
    want = dict(method=method, ruri=(ruri_user, ruri_host, ruri_port), vias=[v[1] for v in vias],
                from_=f[1], to=t[1], callid=callid, cseq=cseq, mf=mf, body=body, extra=extra)
    return buf, want


def check(m, want):
    assert m.method == want["method"]
    u = m.parsed_ruri
    assert (u.user, u.host, u.port) == want["ruri"]
    assert [(v.host, v.port, v.branch, v.rport) for v in m.vias] == want["vias"]
    assert (m.from_.uri, m.from_tag) == want["from_"]
    assert (m.to.uri, m.to_tag) == want["to"]
    assert m.callid == want["callid"] and m.cseq_num == want["cseq"] and m.cseq_method == want["method"]
    assert m.max_forwards == want["mf"] and m.body == want["body"]
    for k, v in want["extra"]:
        assert v in m.hdrs(k)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request())
def test_generated_requests_parse_back(case):
    buf, want = case
    m = parse_msg(buf, src=("192.0.2.77", 5099))
    check(m, want)
    assert m.validate()
    # forwarded: same values below our Via
    fwd = parse_msg(build_request_fwd(m, m.ruri, via_line("192.0.2.1", 5060, "z9hG4bKf")))
    assert fwd.vias[0].branch == "z9hG4bKf"
    assert [v.branch for v in fwd.vias[1:]] == [v[2] for v in want["vias"]]
    assert fwd.body == want["body"] and fwd.callid == want["callid"]
    # a reply: the Vias and the dialog identifiers come back
    if want["method"] != "ACK":
        r = parse_msg(build_reply(m, 486, "Busy Here"))
        assert [v.branch for v in r.vias] == [v[2] for v in want["vias"]]
        assert r.from_tag == want["from_"][1] and r.cseq_num == want["cseq"]
        assert r.to_tag == (want["to"][1] or r.to_tag) and r.to_tag
    assert parse_uri(m.ruri).host == want["ruri"][1]
