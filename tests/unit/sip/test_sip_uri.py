"""parse_uri: SIP/SIPS/TEL URIs (RFC 3261 19.1, 25.1)."""
import pytest

from asyncd.sip import SipParseError, SipUri, parse_uri, unescape


@pytest.mark.parametrize("text,fields", [
    ("sip:alice@atlanta.com", ("sip", "alice", None, "atlanta.com", None, {}, {})),
    ("SIP:alice:secretword@atlanta.com;transport=tcp",
     ("sip", "alice", "secretword", "atlanta.com", None, {"transport": "tcp"}, {})),
    ("sips:alice@atlanta.com?subject=project%20x&priority=urgent",
     ("sips", "alice", None, "atlanta.com", None, {}, {"subject": "project%20x", "priority": "urgent"})),
    ("sip:+1-212-555-1212:1234@gateway.com;user=phone",
     ("sip", "+1-212-555-1212", "1234", "gateway.com", None, {"user": "phone"}, {})),
    ("sips:1212@gateway.com", ("sips", "1212", None, "gateway.com", None, {}, {})),
    ("sip:alice@192.0.2.4:5070", ("sip", "alice", None, "192.0.2.4", 5070, {}, {})),
    ("sip:atlanta.com;method=REGISTER?to=alice%40atlanta.com",
     ("sip", None, None, "atlanta.com", None, {"method": "REGISTER"}, {"to": "alice%40atlanta.com"})),
    ("sip:alice;day=tuesday@atlanta.com", ("sip", "alice;day=tuesday", None, "atlanta.com", None, {}, {})),
    ("sip:[2001:db8::10]", ("sip", None, None, "[2001:db8::10]", None, {}, {})),
    ("sip:bob@[2001:db8::10]:5061;transport=tls;lr",
     ("sip", "bob", None, "[2001:db8::10]", 5061, {"transport": "tls", "lr": ""}, {})),
    ("sip:p1.example.com;lr", ("sip", None, None, "p1.example.com", None, {"lr": ""}, {})),
    ("sip:host.example.com.:0", ("sip", None, None, "host.example.com.", 0, {}, {})),
    ("tel:+358-555-1234567;postd=pp22", ("tel", "+358-555-1234567", None, None, None, {"postd": "pp22"}, {})),
])
def test_valid(text, fields):
    u = parse_uri(text)
    assert (u.scheme, u.user, u.password, u.host, u.port, u.params, u.headers) == fields
    assert str(u) == text


@pytest.mark.parametrize("text", [
    "", "sip", "sip:", "1sip:x@y", "sip:a@", "sip:a b@host", "sip:a@ho st", "sip:a@host:port",
    "sip:a@host:70000", "sip:a@[2001:db8::1", "sip:a@[2001:db8::1]x", "sip:a@host;", "sip:a@host; lr",
    "sip:a@host;p=a b", "sip:a@host?x", "sip:a@host?x=1&", "sip:a%zz@host", "sip:a@host<", "tel:",
    "sip:a@host:", "sip:a@-", "sip:a@host..com",
])
def test_invalid(text):
    with pytest.raises(SipParseError) as ei:
        parse_uri(text)
    assert ei.value.code == 400


def test_unsupported_scheme_is_416():
    for text in ("nobodyKnowsThisScheme:totallyopaquecontent", "soap.beep://192.0.2.103:3002",
                 "http://www.example.com", "mailto:a@b.c"):
        with pytest.raises(SipParseError) as ei:
            parse_uri(text)
        assert ei.value.code == 416


def test_bytes_and_helpers():
    u = parse_uri(b"sip:bob@example.com:5080;transport=UDP")
    assert u.transport == "udp" and u.hostport == "example.com:5080"
    assert parse_uri("sip:example.com").transport is None


def test_build_from_fields():
    u = SipUri(user="bob", host="example.com", port=5070, params={"transport": "tcp", "lr": ""},
               headers={"Subject": "x"})
    assert str(u) == "sip:bob@example.com:5070;transport=tcp;lr?Subject=x"
    u = parse_uri("sip:alice:pw@atlanta.com;maddr=239.255.255.1")
    u.host = "biloxi.com"
    assert u.build() == "sip:alice:pw@biloxi.com;maddr=239.255.255.1"
    assert parse_uri(u.build()).host == "biloxi.com"
    assert SipUri(scheme="tel", user="+1234").build() == "tel:+1234"


def test_unescape_one_level():
    assert unescape("%75se%72") == "user"
    assert unescape("v%61lue%25%34%31") == "value%41"
    assert unescape("%00-%00") == "\x00-\x00"
    assert unescape("plain") == "plain"
    assert unescape("%zz%4") == "%zz%4"
