"""The JSON-RPC codec (asyncd/ipc/jsonrpc.py): Kamailio 5.6.3's request
rules, reply shapes and srjson's text, byte for byte where Kamailio's own
replies were recorded; the FIFO stream splitter; hypothesis fuzz of both."""
import json

import pytest
from hypothesis import given, settings, strategies as st

from asyncd.cfg.compiler import compile_cfg
from asyncd.core.rpc import RET_ARRAY, RpcExport, RpcFault, Struct
from asyncd.ipc.jsonrpc import FifoSplitter, Pairs, ParseError, dumps, execute, number

CFG = 'loadmodule "jsonrpcs.so"\nrequest_route { exit; }\n'


@pytest.fixture(scope="module")
def script():
    s = compile_cfg(text=CFG)

    def several(call):
        call.add("a")
        call.add({"b": 1})

    def boom(call):
        call.add("lost")
        raise RpcFault(404, "nothing here")

    def dump(call):
        call.add(Struct([("slot", 1), ("slot", 2)]))

    s.rpc.register(RpcExport("t.several", several))
    s.rpc.register(RpcExport("t.none", lambda call: None))
    s.rpc.register(RpcExport("t.none_array", lambda call: None, flags=RET_ARRAY))
    s.rpc.register(RpcExport("t.one_array", lambda call: call.add("x"), flags=RET_ARRAY))
    s.rpc.register(RpcExport("t.boom", boom))
    s.rpc.register(RpcExport("t.zero", lambda call: (_ for _ in ()).throw(RpcFault(0, "zero"))))
    s.rpc.register(RpcExport("t.table", lambda call: (_ for _ in ()).throw(RpcFault(-32602, "mine"))))
    s.rpc.register(RpcExport("t.dump", dump))
    s.rpc.register(RpcExport("t.params", lambda call: call.add(list(call.params)), flags=RET_ARRAY))
    return s


def run(script, req, **kw):
    text = req if isinstance(req, str) else json.dumps(req)
    return execute(script, None, text, "jsonrpc", **kw)


def req(method, *params, **extra):
    r = {"jsonrpc": "2.0", "method": method}
    if params:
        r["params"] = list(params)
    r.update(extra)
    return r


# -- text: recorded from Kamailio 5.6.3 (FIFO and datagram replies) ------------------------
def test_pretty_text_matches_kamailio_for_an_error(script):
    rpl = run(script, req("no.such", id=3))
    assert rpl.body == (b'{\n\t"jsonrpc":\t"2.0",\n\t"error":\t{\n\t\t"code":\t500,\n'
                        b'\t\t"message":\t"Method Not Found"\n\t},\n\t"id":\t3\n}')
    assert (rpl.code, rpl.text) == (500, "Method Not Found")


def test_pretty_text_matches_kamailio_for_arrays_of_structs():
    v = Pairs([("jsonrpc", "2.0"), ("result", [{"IDX": 0, "DSC": "main"}, {"IDX": 1, "DSC": "x"}]),
               ("id", 5)])
    assert dumps(v) == ('{\n\t"jsonrpc":\t"2.0",\n\t"result":\t[{\n\t\t\t"IDX":\t0,\n\t\t\t"DSC":\t"main"\n'
                        '\t\t}, {\n\t\t\t"IDX":\t1,\n\t\t\t"DSC":\t"x"\n\t\t}],\n\t"id":\t5\n}')


def test_empty_result_is_an_empty_object_printed_as_kamailio_does(script):
    rpl = run(script, {"jsonrpc": "1.0", "method": "core.echo", "id": 6})
    assert rpl.body == b'{\n\t"jsonrpc":\t"2.0",\n\t"result":\t{\n\t},\n\t"id":\t6\n}'


def test_unformatted_text():
    assert dumps(Pairs([("a", [1, 2]), ("b", {"c": None})]), pretty=False) == '{"a":[1,2],"b":{"c":null}}'


@pytest.mark.parametrize("value, text", [
    (1, "1"), (-3, "-3"), (0, "0"), (True, "true"), (1.5, "1.500000"), (2.0, "2"),
    (12345678901, "12345678901"), (2 ** 31, "2147483648"), (1e20, "100000000000000000000"),
    (1e-7, "1.000000e-07"), (1234567890.5, "1.234568e+09"), (0.25, "0.250000"),
    (float("inf"), "null"), (10 ** 400, "null"),
])
def test_numbers_print_as_srjson(value, text):
    assert dumps(value) == text
    if not isinstance(value, bool):
        assert number(value) == text


def test_strings_escape_only_quotes_backslash_and_controls():
    assert dumps('é\n"x\\\x01\x7f') == '"é\\n\\"x\\\\\\u0001\x7f"'


# -- request rules ---------------------------------------------------------------------------
def test_result_shapes_follow_ret_array_and_the_number_of_values(script):
    assert run(script, req("t.one_array")).members[1] == ("result", ["x"])
    assert run(script, req("t.none_array")).members[1] == ("result", [])
    assert run(script, req("t.none")).members[1] == ("result", Pairs())
    assert run(script, req("system.methodHelp", "core.echo")).members[1] == \
        ("result", "Returns back its parameters.")
    assert run(script, req("t.several")).members[1] == ("result", ["a", {"b": 1}])


def test_fault_replaces_the_values_and_keeps_code_and_text(script):
    rpl = run(script, req("t.boom", id="x"))
    assert rpl.members == [("jsonrpc", "2.0"), ("error", [("code", 404), ("message", "nothing here")]),
                           ("id", "x")]
    assert (rpl.code, rpl.text) == (404, "nothing here")
    zero = run(script, req("t.zero"))
    assert zero.members[1][1] == [("code", -32000), ("message", "Execution Error")] and zero.code == 500
    assert run(script, req("t.table")).members[1][1] == [("code", -32602), ("message", "Invalid Parameters")]


def test_struct_with_repeated_names_prints_every_member(script):
    body = run(script, req("t.dump"), pretty=False).body
    assert b'"result":{"slot":1,"slot":2}' in body


@pytest.mark.parametrize("rid, out", [
    (7, 7), ("abc", "abc"), (1.5, 1.5), (None, 0), (True, 1), (False, 0), ([1], 0), ({"a": 1}, 0),
])
def test_id_is_copied_as_kamailio_does(script, rid, out):
    assert run(script, req("t.none", id=rid)).members[-1] == ("id", out)


def test_no_id_no_id_member(script):
    assert [k for k, _v in run(script, req("t.none")).members] == ["jsonrpc", "result"]


def test_member_names_any_case_and_the_first_repeat_wins(script):
    rpl = run(script, '{"JSONRPC": "2.0", "Method": "t.params", "PARAMS": [1], "id": 1, "id": 2}')
    assert rpl.members == [("jsonrpc", "2.0"), ("result", [[1]]), ("id", 1)]


def test_params_object_gives_its_values_in_order(script):
    rpl = run(script, '{"jsonrpc": "2.0", "method": "t.params", "params": {"z": "a", "b": {"x": 1}}}')
    assert rpl.members[1] == ("result", [["a", {"x": 1}]])


@pytest.mark.parametrize("params", ['"zz"', "3", "null", "true"])
def test_params_not_array_or_object_runs_nothing(script, params):
    rpl = run(script, '{"jsonrpc": "2.0", "method": "t.one_array", "params": %s}' % params)
    assert rpl.members[1] == ("result", [])


@pytest.mark.parametrize("text", [
    '{"method": "t.one_array", "id": 1}', '{"jsonrpc": "1.0", "method": "t.one_array", "id": 1}',
    '{"jsonrpc": 2.0, "method": "t.one_array", "id": 1}', '{"jsonrpc": "2.0", "method": 5, "id": 1}',
    '{"jsonrpc": "2.0", "id": 1}',
])
def test_bad_version_or_method_gets_the_empty_result(script, text):
    assert run(script, text).members == [("jsonrpc", "2.0"), ("result", Pairs()), ("id", 1)]


def test_a_batch_is_not_an_object(script):
    rpl = run(script, json.dumps([req("t.one_array", id=1)]))
    assert rpl.members == [("jsonrpc", "2.0"), ("result", Pairs())]


def test_trailing_text_is_ignored_and_bad_json_raises_parse_error(script):
    assert run(script, json.dumps(req("t.one_array", id=9)) + " trailing").members[1] == ("result", ["x"])
    for bad in ("", "   ", "{", '{"a":1,,}', "NaN", "[1,", "\x00", "{'a': 1}", "[" * 100000):
        with pytest.raises(ParseError):
            run(script, bad)


def test_fifo_needs_reply_name_after_a_valid_version(script):
    r = execute(script, None, json.dumps(req("t.one_array", reply_name="r1")), "jsonrpc", want_reply_name=True)
    assert r.reply_name == "r1"
    for bad in (req("t.one_array"), req("t.one_array", reply_name=5),
                {"jsonrpc": "1.0", "method": "t.one_array", "reply_name": "r1"}):
        assert execute(script, None, json.dumps(bad), "jsonrpc", want_reply_name=True).reply_name is None


def test_undecodable_bytes_go_back_as_they_came(script):
    raw = b'{"jsonrpc": "2.0", "method": "t.params", "params": ["\xff\xfe"]}'
    assert b'"\xff\xfe"' in execute(script, None, raw, "jsonrpc").body


# -- the FIFO stream ---------------------------------------------------------------------------
def test_splitter_cuts_requests_at_balanced_braces():
    sp = FifoSplitter()
    docs, dropped = sp.feed(b'{"a": "}{"} \n{"b": {"c": 1}}{"x"')
    assert docs == [b'{"a": "}{"}', b'{"b": {"c": 1}}'] and dropped == 0
    assert sp.pending()
    docs, _ = sp.feed(b': "\\"}"}')
    assert docs == [b'{"x": "\\"}"}'] and not sp.pending()


def test_splitter_counts_single_quoted_strings_as_kamailio_does():
    assert FifoSplitter().feed(b"{'}': 1}")[0] == [b"{'}': 1}"]


def test_splitter_drops_a_too_large_request_and_reads_the_next():
    sp = FifoSplitter(limit=64)
    docs, dropped = sp.feed(b'{"a": "' + b"x" * 100 + b'"}{"ok": 1}')
    assert dropped == 1 and docs == [b'{"ok": 1}']
    docs, dropped = sp.feed(b" " * 100 + b'{"ok": 2}')      # junk without a brace: no skipping
    assert dropped == 1 and docs == [b'{"ok": 2}']


def test_splitter_clear_forgets_a_half_request():
    sp = FifoSplitter()
    sp.feed(b'{"half": ')
    sp.clear()
    assert sp.feed(b'{"b": 1}')[0] == [b'{"b": 1}']


# -- fuzz ----------------------------------------------------------------------------------------
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                     max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_any_bytes_give_a_reply_or_parse_error(script, data):
    try:
        rpl = execute(script, None, data, "jsonrpc", want_reply_name=True)
    except ParseError:
        return
    json.loads(rpl.body.decode("utf-8", "replace"))


@settings(max_examples=300, deadline=None)
@given(method=st.sampled_from(["core.echo", "t.params", "t.several", "system.methodHelp", "x"]),
       params=_json, rid=_json, extra=st.dictionaries(st.text(max_size=10), _json, max_size=3))
def test_fuzz_requests_always_get_a_json_reply(script, method, params, rid, extra):
    r = dict(extra)
    r.update({"jsonrpc": "2.0", "method": method, "params": params, "id": rid})
    rpl = execute(script, None, json.dumps(r), "jsonrpc")
    for pretty in (True, False):
        body = execute(script, None, json.dumps(r), "jsonrpc", pretty=pretty).body
        out = json.loads(body)
        assert out["jsonrpc"] == "2.0" and ("result" in out) != ("error" in out)
    assert rpl.code == 200 or rpl.code >= 400


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=60), max_size=8))
def test_fuzz_splitter_never_raises_and_docs_are_balanced(chunks):
    sp = FifoSplitter(limit=128)
    for c in chunks:
        docs, _ = sp.feed(c)
        for d in docs:
            assert d.count(b"{") >= 1 and len(d) < 128
