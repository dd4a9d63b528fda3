"""The BINRPC codec (asyncd/ipc/binrpc.py): Kamailio's ctl wire format, round
trips, streams split and batched any way, Kamailio's size limits, malformed
input, and a packet the real kamcmd sends (with our reply printed by it)."""
import os
import socket
import subprocess
import tempfile

import pytest
from hypothesis import given, settings, strategies as st

from asyncd.core.rpc import Struct
from asyncd.ipc import binrpc as b
from tests.helpers.kamailio import KAMCMD, SKIP_KAMCMD

# -- values -----------------------------------------------------------------------------
ints = st.integers(-(1 << 31), (1 << 31) - 1)
floats = st.integers(-(1 << 40), 1 << 40).map(lambda k: k / 8)     # exact in fixed point /1000
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1,
                max_size=12)
scalars = ints | floats | texts | st.binary(max_size=40)


def _compound(children):
    return (st.dictionaries(names, children, min_size=1, max_size=5)
            | st.lists(children, min_size=1, max_size=5)
            | st.lists(st.tuples(st.sampled_from(["slot", "item"]), children), min_size=2, max_size=5)
            .map(lambda pairs: Struct(pairs + [(pairs[0][0], pairs[0][1])])))


values = st.recursive(scalars, _compound, max_leaves=20)


def _norm(v):
    """A dict and a Struct with unique names decode alike."""
    if isinstance(v, Struct):
        names_ = [n for n, _x in v]
        if len(set(names_)) == len(names_):
            return {n: _norm(x) for n, x in v}
        return ("struct", [(n, _norm(x)) for n, x in v])
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    return v


@settings(max_examples=100, deadline=None)
@given(st.lists(values, max_size=6), st.integers(0, (1 << 32) - 1))
def test_reply_round_trips(vals, cookie):
    data, dropped = b.encode_reply(vals, cookie, 1 << 20, 1 << 20)
    assert dropped == 0
    (pkt,) = b.StreamParser(limit=1 << 24).feed(data)
    assert (pkt.type, pkt.cookie) == (b.REPL, cookie)
    assert _norm(pkt.values()) == _norm(vals)


@settings(max_examples=200, deadline=None)
@given(names, st.lists(scalars, max_size=8), st.integers(0, (1 << 32) - 1))
def test_request_round_trips(method, params, cookie):
    (pkt,) = b.StreamParser().feed(b.encode_request(method, params, cookie))
    assert pkt.type == b.REQ and pkt.cookie == cookie
    assert pkt.request() == (method, params)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_the_codec_error(data):
    for fn in (b.decode_body, b.decode_request, b.parse_datagram):
        try:
            fn(data)
        except b.BinrpcError:
            pass
    try:
        for pkt in b.StreamParser().feed(data):
            pkt.values()
    except b.BinrpcError:
        pass


@settings(max_examples=80, deadline=None)
@given(st.lists(values, min_size=1, max_size=4), st.data())
def test_truncated_packets_never_raise_anything_else(vals, data):
    pkt, _ = b.encode_reply(vals, 7, 1 << 20, 1 << 20)
    cut = data.draw(st.integers(0, len(pkt) - 1))
    body = pkt[b.parse_header(pkt)[2]:][:cut]
    with pytest.raises(b.BinrpcError):
        b.parse_datagram(pkt[:cut])
    try:
        b.decode_body(body)
    except b.BinrpcError:
        pass


# -- the wire format, byte for byte -----------------------------------------------------
def test_header_uses_as_few_bytes_as_the_values_need():
    assert b.build_header(b.REQ, 5, 0x12) == bytes([0xA1, 0x00, 5, 0x12])
    assert b.build_header(b.REPL, 0x1234, 0x123456) == bytes([0xA1, 0x16, 0x12, 0x34, 0x12, 0x34, 0x56])
    assert b.parse_header(bytes([0xA1, 0x16, 0x12, 0x34, 0x12, 0x34, 0x56])) == (b.REPL, 0x123456, 7, 0x1234)


def test_records_are_kamailios():
    body = b.ReplyEncoder().body([0, 5, -1, "ab", 1.5, {"a": 1}, [7]])
    assert body == (bytes([0x00]) + bytes([0x10, 5]) + bytes([0x40, 0xFF, 0xFF, 0xFF, 0xFF])
                    + bytes([0x31]) + b"ab\0" + bytes([0x22, 0x05, 0xDC])
                    + bytes([0x03, 0x25]) + b"a\0" + bytes([0x10, 1, 0x83])
                    + bytes([0x03, 0x10, 7, 0x83]))
    long = b.ReplyEncoder().body(["x" * 10])
    assert long[:2] == bytes([0x91, 11]) and long[2:] == b"x" * 10 + b"\0"


def test_int_beyond_32_bits_goes_as_a_double_as_kamailios_long_formats():
    assert b.decode_body(b.ReplyEncoder().body([1 << 40])) == [float(1 << 40)]


def test_fault_packet():
    (pkt,) = b.StreamParser().feed(b.encode_fault(500, "command x not found", 9))
    assert pkt.type == b.FAULT and pkt.cookie == 9
    assert pkt.fault() == (500, "command x not found")


# -- streams ----------------------------------------------------------------------------
def test_stream_packets_split_anywhere_and_batched():
    p1 = b.encode_request("core.echo", ["a", 1], 1)
    p2 = b.encode_request("core.psx", [], 2)
    data = p1 + p2 + p1
    for step in (1, 2, 3, 7, len(data)):
        parser = b.StreamParser()
        got = []
        for i in range(0, len(data), step):
            got += parser.feed(data[i:i + step])
        assert [p.cookie for p in got] == [1, 2, 1]
        assert got[1].request() == ("core.psx", [])
        assert parser.pending() == 0


def test_stream_refuses_a_packet_larger_than_kamailios_buffer_at_its_header():
    hdr = b.build_header(b.REQ, 0xFFFFFFF0, 1)
    with pytest.raises(b.BinrpcError) as e:
        b.StreamParser().feed(hdr)
    assert e.value.code == b.E_OVERFLOW


def test_bad_magic_and_type_are_corrupted_packets():
    for data in (b"GET / HTTP/1.0\r\n", bytes([0xA1, 0x20, 0, 0])):
        with pytest.raises(b.BinrpcError) as e:
            b.StreamParser().feed(data)
        assert e.value.code == b.E_BADPKT and str(e.value) == "corrupted packet"


def test_request_without_a_method_string():
    (pkt,) = b.StreamParser().feed(b.encode_packet(b.REQ, bytes([0x10, 5]), 1))
    with pytest.raises(b.BinrpcError) as e:
        pkt.request()
    assert str(e.value) == "record doesn't match type"


def test_unterminated_struct_and_stray_end_tag():
    for body in (bytes([0x03, 0x10, 1]), bytes([0x83]), bytes([0x25]) + b"a\0" + bytes([0x10, 1])):
        with pytest.raises(b.BinrpcError):
            b.decode_body(body)


def test_nesting_is_bounded():
    body = bytes([0x04]) * 10000 + bytes([0x84]) * 10000
    with pytest.raises(b.BinrpcError):
        b.decode_body(body)


# -- limits (binrpc_max_body_size, binrpc_struct_max_body_size) -------------------------
def test_reply_over_max_body_is_kamailios_500_fault():
    data, _ = b.encode_reply(["x" * 100] * 400, 3, max_body=32 * 1024)
    (pkt,) = b.StreamParser().feed(data)
    assert pkt.type == b.FAULT
    assert pkt.fault() == (500, "Internal server error processing 's': buffer too small (overflow) (-2)")


def test_struct_over_struct_max_drops_the_members_that_do_not_fit():
    big = {f"k{i}": "v" * 100 for i in range(200)}
    data, dropped = b.encode_reply([big], 3, max_body=32 * 1024, struct_max=8 * 1024)
    (pkt,) = b.StreamParser().feed(data)
    got = pkt.values()[0]
    assert pkt.type == b.REPL and 0 < len(got) < 200 and dropped == 200 - len(got)
    assert all(got[k] == "v" * 100 for k in got)


# -- kamcmd arguments -------------------------------------------------------------------
@pytest.mark.parametrize("text,value", [("12", 12), ("-3", -3), ("1.5", 1.5), ("abc", "abc"),
                                        ("s:12", "12"), ("1e3", 1000.0), ("", "")])
def test_kamcmd_arg_types(text, value):
    got = b.kamcmd_arg(text)
    assert got == value and type(got) is type(value)


# -- the real kamcmd --------------------------------------------------------------------
@pytest.mark.skipif(KAMCMD is None, reason=SKIP_KAMCMD)
def test_decodes_a_real_kamcmd_request_and_kamcmd_prints_our_reply():
    d = tempfile.mkdtemp(prefix="binrpc-")
    path = os.path.join(d, "ctl")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    srv.settimeout(10)
    cmd = [KAMCMD, "-s", f"unix:{path}", "core.echo", "a", "5", "s:7", "1.5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        conn, _ = srv.accept()
        conn.settimeout(10)
        parser = b.StreamParser()
        pkts = []
        while not pkts:
            pkts = parser.feed(conn.recv(4096))
        pkt = pkts[0]
        assert pkt.type == b.REQ
        assert pkt.request() == ("core.echo", ["a", 5, "7", 1.5])
        reply, _ = b.encode_reply([{"IDX": 0, "DSC": "main"}, "x", 3, [1, 2]], pkt.cookie)
        conn.sendall(reply)
        out, err = proc.communicate(timeout=10)
        conn.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        srv.close()
        os.unlink(path)
        os.rmdir(d)
    assert out == "{\n\tIDX: 0\n\tDSC: main\n}\nx\n3\n{\n\t1\n\t2\n}\n", err
