"""Property tests: the preprocessor, lexer, parser and compiler raise nothing
but CfgError on arbitrary text."""
from hypothesis import given, settings, strategies as st, HealthCheck

from asyncd.cfg.compiler import compile_cfg
from asyncd.cfg.parser import parse_tokens
from asyncd.cfg.preprocess import preprocess
from asyncd.core.errors import CfgError

FRAGMENTS = ["request_route", "route", "[", "]", "{", "}", "(", ")", ";", "if", "else", "switch",
             "case", "default", ":", "while", "break", "exit", "drop", "return", "$var(x)",
             "$(ru{s.len})", "$hdr(To)[1]", "$", "=", "==", "!=", "=~", "&&", "||", "!", "+", "-",
             "\"str $fU\"", "'q'", "1", "0x1f", "127.0.0.1", "xlog", "is_method", "\"INVITE\"",
             "#!define A 1\n", "#!ifdef A\n", "#!else\n", "#!endif\n", "/*", "*/", "//", "#",
             "\n", " ", ",", "loadmodule \"xlog.so\"\n", "modparam(\"xlog\",\"prefix\",\"x\")\n",
             "listen=udp:127.0.0.1:5060\n", "event_route[core:tkv]", "failure_route[F]", "A", "{s.int}",
             "async_workers_group=\"name=a;workers=1\"\n", "\\", "\"", "(((", ")))"]

cfgish = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)


def _check(text):
    try:
        compile_cfg(text=text, filename="h.cfg")
    except CfgError as e:
        assert str(e).startswith("h.cfg:") or str(e).startswith("<")
        assert "\n" not in str(e).split(": ", 1)[0]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_arbitrary_text_only_cfg_errors(text):
    _check(text)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfgish)
def test_cfg_like_text_only_cfg_errors(text):
    _check(text)


@settings(max_examples=200, deadline=None)
@given(cfgish)
def test_parser_alone_only_cfg_errors(text):
    try:
        parse_tokens(preprocess(text, "p.cfg"))
    except CfgError:
        pass


def test_nesting_beyond_python_limits_is_a_cfg_error():
    import pytest
    text = ('loadmodule "xlog.so"\nrequest_route {\n' + "while (1) {\n" * 25 + 'xlog("x");\n'
            + "}\n" * 25 + "}\n")
    with pytest.raises(CfgError) as ei:
        compile_cfg(text=text, filename="n.cfg")
    assert ei.value.file == "n.cfg" and ei.value.line > 2
    with pytest.raises(CfgError):
        compile_cfg(text="request_route {" + "(" * 5000 + "}", filename="n.cfg")


# -- generated valid programs: they compile, and running them never raises -----------
def _exprs(with_route):
    leaves = ["1", "0", "-3", "0x10", '"abc"', '""', "$var(a)", "$var(b)", "$rm", "$rU",
              "$null", "$(fU{s.len})", "$hdr(X-Multi)[1]", "$avp(x)", "$cs",
              'is_method("INVITE")', "has_totag()"] + (["route(SUB)"] if with_route else [])
    return st.recursive(
        st.sampled_from(leaves),
        lambda inner: st.one_of(
            st.tuples(inner, st.sampled_from(["+", "-", "*", "==", "!=", "<", ">=", "&&", "||",
                                              "|", "&", "=~", "%", "/"]), inner)
            .map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            inner.map(lambda e: f"!{e}"),
            inner.map(lambda e: f"strlen({e})")),
        max_leaves=6)


def _stmts(with_route):
    ex = _exprs(with_route)
    simple = [ex.map(lambda e: f"$var(a) = {e};"), ex.map(lambda e: f"$avp(x) = {e};"),
              st.just('xlog("L_DBG", "a=$var(a) ru=$ru\\n");'),
              st.just('append_hf("X-A: $var(a)\\r\\n");'),
              st.just("break;"), st.just("$var(b) = $var(b) + 1;")]
    if with_route:
        simple.append(st.just("route(SUB);"))
    return st.recursive(
        st.one_of(*simple),
        lambda inner: st.one_of(
            st.tuples(ex, st.lists(inner, max_size=3), st.lists(inner, max_size=2))
            .map(lambda t: f"if ({t[0]}) {{ {' '.join(t[1])} }} else {{ {' '.join(t[2])} }}"),
            st.tuples(ex, st.lists(inner, max_size=3))
            .map(lambda t: f"while ({t[0]}) {{ {' '.join(t[1])} }}"),
            st.tuples(ex, st.lists(inner, max_size=2), st.lists(inner, max_size=2))
            .map(lambda t: f"switch ({t[0]}) {{ case 1: {' '.join(t[1])} case \"abc\": "
                           f"{' '.join(t[2])} default: $var(b) = 2; }}")),
        max_leaves=8)


MAIN_STMTS, SUB_STMTS = _stmts(True), _stmts(False)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(MAIN_STMTS, max_size=6), st.lists(SUB_STMTS, max_size=3))
def test_generated_programs_compile_and_run(main, sub):
    from cfg_helpers import Runner, make_msg
    from asyncd.core import log
    # Nested whiles multiply (100^3 iterations of a route call is minutes of
    # work for one example): a small max_while_loops keeps every example short
    # while still running each loop body and hitting the loop limit.
    text = ("max_while_loops=3\n"
            "request_route {\n" + "\n".join(main) + "\n}\n"
            "route[SUB] {\n" + "\n".join(sub) + "\nreturn 1;\n}\n")
    r = Runner(text)
    old = log.state.level
    log.state.level = -10      # silence: runtime errors are logged, never raised
    try:
        ctx, rc = r.run(make_msg())
    finally:
        log.state.level = old
    assert isinstance(rc, int)
