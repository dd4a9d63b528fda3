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
