"""RFC 4475 torture corpus replayed through the parser (tests/corpus/rfc4475/).

Each message: parsed or rejected as expected.json says, and expected.json must
agree with the manifest's valid/invalid and expected_proxy_behaviour columns.
"""
import csv
import hashlib
import json
from pathlib import Path

import pytest

from asyncd.sip import (SipParseError, build_reply, build_request_fwd, parse_msg, reply_addr,
                        strip_top_via, unescape, via_line)

CORPUS = Path(__file__).resolve().parents[2] / "corpus" / "rfc4475"
EXPECTED = json.loads((CORPUS / "expected.json").read_text())
EXPECTED.pop("_doc")
with open(CORPUS / "MANIFEST.tsv", newline="", encoding="utf-8") as f:
    MANIFEST = {row["tag"]: row for row in csv.DictReader(f, delimiter="\t")}
SRC = ("192.0.2.200", 5099)


def data(tag):
    return (CORPUS / (tag + ".dat")).read_bytes()


def resolve(msg, path):
    """'vias.1.host' / 'hdr:Name' / 'hdr_count:Name' / 'unescape:path' / 'prefix:path'."""
    if path.startswith("hdr:"):
        return msg.hdr(path[4:])
    if path.startswith("hdr_count:"):
        return msg.hdr_count(path[10:])
    if path.startswith("unescape:"):
        return unescape(resolve(msg, path[9:]))
    if path == "body_len":
        return len(msg.body)
    if path == "via_count":
        return len(msg.vias)
    obj = msg
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def test_corpus_is_byte_exact():
    sums = {}
    for line in (CORPUS / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        sums[name] = digest
    assert len(sums) == 50
    for name, digest in sums.items():
        assert hashlib.sha256((CORPUS / name).read_bytes()).hexdigest() == digest, name
    assert "*.dat binary" in (CORPUS / ".gitattributes").read_text()


def test_expectations_cover_manifest():
    assert set(EXPECTED) == set(MANIFEST)


@pytest.mark.parametrize("tag", sorted(MANIFEST))
def test_expectation_follows_manifest(tag):
    """The expectations themselves follow the manifest's proxy-behaviour column."""
    exp, row = EXPECTED[tag], MANIFEST[tag]
    behaviour = row["expected_proxy_behaviour"].lower()
    if row["valid_or_invalid"] == "valid":
        assert exp["outcome"] == "parse"
        if "416" in behaviour:
            assert exp.get("ruri_code") == 416
    else:
        assert exp["outcome"] in ("reject", "lazy", "tolerate")
        if exp["outcome"] == "tolerate":
            assert any(w in behaviour for w in ("forward", "must not crash", "tolerat"))
        if exp["outcome"] == "reject":
            if "505" in behaviour:
                assert exp["code"] == 505
            if row["message"] == "response" or "drop" in behaviour and "400" not in behaviour:
                assert exp["can_reply"] is False
            else:
                assert "400" in behaviour or "505" in behaviour or "501" in behaviour
        if exp["outcome"] == "lazy":
            assert "400" in behaviour


def check_values(msg, values):
    for path, want in values.items():
        if path.startswith("prefix:"):
            got = resolve(msg, path[7:])
            assert got.startswith(want), (path, got)
        else:
            got = resolve(msg, path)
            assert got == want, (path, got, want)


@pytest.mark.parametrize("tag", sorted(EXPECTED))
def test_replay(tag):
    exp, buf = EXPECTED[tag], data(tag)
    if exp["outcome"] == "reject":
        with pytest.raises(SipParseError) as ei:
            parse_msg(buf, src=SRC)
        e = ei.value
        assert e.code == exp["code"]
        assert exp["reason"] in e.reason
        assert "\r" not in e.reason and "\n" not in e.reason
        assert e.can_reply is exp["can_reply"]
        if e.can_reply:
            # the receiver answers: the reply must be well-formed and go back to the sender
            out = build_reply(e.msg, e.code, e.reason)
            assert out.startswith(("SIP/2.0 %d %s\r\n" % (e.code, e.reason)).encode())
            if all(e.msg.hdr(h) for h in ("from", "to", "call-id")) and "CSeq number" not in e.reason:
                reply = parse_msg(out, src=("127.0.0.1", 5060))
                assert reply.via1.branch == e.msg.via1.branch
                assert reply.to_tag
            else:  # insuf: built from what exists (RFC 4475 3.3.1); scalar02: its CSeq copied
                assert ("\r\nVia: %s;received=%s\r\n" % (e.msg.via1.raw, SRC[0])).encode() in out
            assert reply_addr(e.msg)[0] == SRC[0]
        else:
            assert e.msg is None
        return
    msg = parse_msg(buf, src=SRC)
    check_values(msg, exp.get("values", {}))
    if exp["outcome"] == "lazy":
        with pytest.raises(SipParseError) as ei:
            getattr(msg, exp["attr"])
        assert ei.value.code == exp["code"] and exp["reason"] in ei.value.reason
        with pytest.raises(SipParseError):
            msg.validate()
    elif "ruri_code" in exp:
        with pytest.raises(SipParseError) as ei:
            msg.validate()
        assert ei.value.code == exp["ruri_code"]
    else:
        assert msg.validate()


# -- what a proxy does with some of them ---------------------------------------------------

def forward(tag):
    msg = parse_msg(data(tag), src=SRC)
    out = build_request_fwd(msg, msg.ruri, via_line("198.51.100.1", 5060, "z9hG4bKfwd"))
    return msg, out, parse_msg(out, src=("198.51.100.1", 5060))


def test_wsinv_forward_keeps_unknown_headers_byte_for_byte():
    _, out, fwd = forward("wsinv")
    assert b"NewFangledHeader:   newfangled value\r\n continued newfangled value\r\n" in out
    assert b"UnknownHeaderWithUnusualValue: ;;,,;;,;\r\n" in out
    assert [v.branch for v in fwd.vias] == ["z9hG4bKfwd", "390skdjuw", "z9hG4bK9ikj8", "z9hG4bK30239"]
    assert fwd.vias[1].received == SRC[0]
    assert fwd.body == parse_msg(data("wsinv")).body


def test_intmeth_forward_is_byte_exact_for_odd_bytes():
    raw = data("intmeth")
    _, out, fwd = forward("intmeth")
    for line in raw.split(b"\r\n")[2:-3]:  # every header after the Via, UTF-8 and NUL included
        assert line + b"\r\n" in out
    assert fwd.method == "!interesting-Method0123456789_*+`.%indeed'~"


def test_dblreq_trailing_octets_dropped():
    msg, out, fwd = forward("dblreq")
    assert msg.body == b"" and fwd.body == b""
    assert b"INVITE" not in out and b"Content-Length: 0\r\n\r\n" in out


def test_mpart01_body_byte_exact():
    raw = data("mpart01")
    msg, out, fwd = forward("mpart01")
    assert b"\x00" in msg.body and len(msg.body) == 553
    assert raw.endswith(msg.body) and out.endswith(msg.body) and fwd.body == msg.body


def test_inv2543_body_is_rest_of_datagram():
    raw = data("inv2543")
    msg, out, fwd = forward("inv2543")
    assert msg.body == raw[raw.index(b"\r\n\r\n") + 4:]
    assert fwd.content_length == len(msg.body)


def test_esc_unescape_one_level():
    msg = parse_msg(data("esc01"))
    c = msg.contact
    from asyncd.sip import parse_uri
    u = parse_uri(c.uri)
    assert unescape(u.user) == "caller"
    params = {unescape(k): unescape(v) for k, v in u.params.items()}
    assert params == {"lr": "", "name": "value%41"}
    assert unescape(parse_uri(msg.to.uri).user) == "user"
    nulls = [unescape(parse_uri(c.uri).user) for c in parse_msg(data("escnull")).contacts]
    assert nulls == ["\x00", "\x00\x00"]


def test_responses_relay_strips_only_top_via():
    msg = parse_msg(data("bcast"), src=SRC)
    out = strip_top_via(msg)
    relayed = parse_msg(out)
    assert [v.host for v in relayed.vias] == ["255.255.255.255"]
    assert relayed.body == msg.body and relayed.status == 200
