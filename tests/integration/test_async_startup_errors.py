"""Startup checks of the ASYNC module (docs/kamailio-async.md §2, §10.1-10.2, §10.5): every invalid
literal, unknown route/group, missing timer/worker, mode=1 misuse and
`async_sleep` last in its block stops the cfg with `file:line:col: message`.

Runs in: the pytest process (compiles in-process; fixups run at compile time,
exactly what `asyncd -c` and a real start do first).
"""
import pytest

from asyncd.core.errors import CfgError
from tests.helpers.async_cfg import PRE, cfg, line_of

pytestmark = pytest.mark.unit      # compiles in-process


def _compile(compile_cfg_text, text):
    return compile_cfg_text(text, filename="test.cfg")


def _fails(compile_cfg_text, text, needle, *words):
    with pytest.raises(CfgError) as ei:
        _compile(compile_cfg_text, text)
    msg = str(ei.value)
    line = line_of(text, needle)
    assert msg.startswith(f"test.cfg:{line}:"), msg
    for w in words:
        assert w in msg, msg
    return msg


def _req(call, extra="", core="async_workers=2", params='modparam("async", "ms_timer", 10)\n'):
    body = ("request_route {\n" + PRE + f"    {call};\n    exit;\n}}\n"
            "route[R] {\n    send_reply(\"200\", \"OK\");\n}\n" + extra)
    return cfg(body, core=core, params=params)


def test_valid_calls_compile(compile_cfg_text):
    for call in ('async_route("R", "100")', 'async_route("R", 1)', 'async_ms_route("R", "30000")',
                 'async_task_route("R")', 'async_task_group_route("R", "")',
                 'async_task_data("R", "d $fU")', 'async_route("$var(r)", "$var(s)")',
                 'async_ms_sleep("$var(d)")', 'async_route("0", "1")'):
        _compile(compile_cfg_text, _req(call))


@pytest.mark.parametrize("call,words", [
    ('async_sleep("soon")', ("soon", "not an integer")),
    ('async_sleep("0")', ("out of range", "1..100")),
    ('async_sleep("101")', ("out of range",)),
    ('async_route("R", "-3")', ("out of range",)),
    ('async_ms_sleep("30001")', ("out of range", "1..30000")),
    ('async_ms_route("R", "0")', ("out of range",)),
    ('async_ms_sleep("2.5")', ("not an integer",)),
    ('async_sleep("1$var(x)")', ("integer or a single variable",)),
])
def test_bad_literal_delay(compile_cfg_text, call, words):
    _fails(compile_cfg_text, _req(call), call.split("(")[0] + "(", *words)


@pytest.mark.parametrize("call", ['async_route("NOPE", "1")', 'async_ms_route("NOPE", "5")',
                                  'async_task_route("NOPE")', 'async_task_data("NOPE", "x")',
                                  'async_task_group_data("NOPE", "default", "x")'])
def test_unknown_route(compile_cfg_text, call):
    _fails(compile_cfg_text, _req(call), call.split("(")[0] + "(", "NOPE")


@pytest.mark.parametrize("call", ['async_task_group_route("R", "nogroup")',
                                  'async_task_group_data("R", "nogroup", "x")'])
def test_unknown_group(compile_cfg_text, call):
    _fails(compile_cfg_text, _req(call), call.split("(")[0] + "(", "nogroup")


def test_group_names_are_case_sensitive(compile_cfg_text):
    text = _req('async_task_group_route("R", "ABC")', core='async_workers_group="name=abc;workers=1"')
    _fails(compile_cfg_text, text, "async_task_group_route(", "ABC")


def test_ms_functions_need_ms_timer(compile_cfg_text):
    text = _req('async_ms_sleep("10")', params="")
    _fails(compile_cfg_text, text, "async_ms_sleep(", "ms_timer")


def test_ms_functions_need_core_workers(compile_cfg_text):
    text = _req('async_ms_route("R", "10")', core="")
    _fails(compile_cfg_text, text, "async_ms_route(", "async_workers")


def test_task_functions_need_core_workers(compile_cfg_text):
    _fails(compile_cfg_text, _req('async_task_route("R")', core=""), "async_task_route(",
           "async task framework was not initialized")


def test_seconds_functions_need_timer_workers(compile_cfg_text):
    text = _req('async_route("R", "1")', params='modparam("async", "workers", 0)\n')
    _fails(compile_cfg_text, text, "async_route(", "workers")


@pytest.mark.parametrize("call", ['async_route("R", "1")', 'async_sleep("1")',
                                  'async_task_route("R")', 'async_ms_sleep("5")'])
def test_suspending_functions_refused_in_mode_1(compile_cfg_text, call):
    text = _req(call, params='modparam("async", "ms_timer", 10)\nmodparam("async", "mode", 1)\n')
    _fails(compile_cfg_text, text, call.split("(")[0] + "(", "mode")


def test_data_and_tkv_allowed_in_mode_1(compile_cfg_text):
    text = cfg("request_route {\n" + '    async_task_data("R", "x");\n'
               '    async_tkv_emit(1, "k", "v");\n    exit;\n}\nroute[R] {\n    exit;\n}\n'
               'event_route[core:tkv] {\n    exit;\n}\n',
               core='async_workers_group="name=tkv;workers=1"',
               params='modparam("async", "mode", 1)\n', mods=("sl", "pv", "xlog", "async"))
    _compile(compile_cfg_text, text)


@pytest.mark.parametrize("func", ["async_sleep", "async_ms_sleep"])
def test_sleep_as_last_action_of_its_block(compile_cfg_text, func):
    text = cfg("request_route {\n" + PRE + '    if ($rU == "x") {\n'
               f'        {func}("1");\n    }}\n    exit;\n}}\n',
               params='modparam("async", "ms_timer", 10)\n')
    _fails(compile_cfg_text, text, f"{func}(", "last action")


def test_async_task_route_with_two_arguments_suggests_group_function(compile_cfg_text):
    _fails(compile_cfg_text, _req('async_task_route("R", "abc")',
                                  core='async_workers_group="name=abc;workers=1"'),
           "async_task_route(", "async_task_group_route")


def test_async_task_data_with_three_arguments_suggests_group_function(compile_cfg_text):
    _fails(compile_cfg_text, _req('async_task_data("R", "abc", "x")',
                                  core='async_workers_group="name=abc;workers=1"'),
           "async_task_data(", "async_task_group_data")


def test_route_name_too_long(compile_cfg_text):
    name = "R" * 63
    text = _req(f'async_task_route("{name}")', extra=f"route[{name}] {{\n    exit;\n}}\n")
    _fails(compile_cfg_text, text, "async_task_route(", "too long")
    ok = "R" * 62
    _compile(compile_cfg_text, _req(f'async_task_route("{ok}")',
                                    extra=f"route[{ok}] {{\n    exit;\n}}\n"))


def test_suspending_functions_not_in_onreply_or_branch_route(compile_cfg_text):
    for kind in ("onreply_route[OR]", "branch_route[BR]"):
        text = _req('async_task_data("R", "x")',
                    extra=f'{kind} {{\n    async_task_route("R");\n}}\n')
        with pytest.raises(CfgError) as ei:
            _compile(compile_cfg_text, text)
        assert f"test.cfg:{line_of(text, 'async_task_route(')}:" in str(ei.value)


def test_suspending_allowed_in_failure_route_data_anywhere(compile_cfg_text):
    text = _req('t_on_failure("F")', extra='failure_route[F] {\n    async_route("R", "1");\n}\n'
                'onreply_route[OR] {\n    async_task_data("R", "reply");\n}\n')
    _compile(compile_cfg_text, text)


def test_tkv_emit_needs_tkv_configured(compile_cfg_text):
    _fails(compile_cfg_text, _req('async_tkv_emit("1", "k", "v")'), "async_tkv_emit(", "async_tkv_gname")


def test_tkv_core_parameters_are_honoured(compile_cfg_text):
    text = _req('async_tkv_emit("1", "k", "v")', extra="event_route[my:ev] {\n    exit;\n}\n",
                core='async_workers=1\nasync_workers_group="name=ev;workers=1"\n'
                     'async_tkv_gname="ev"\nasync_tkv_evcb="my:ev"')
    _compile(compile_cfg_text, text)


@pytest.mark.parametrize("pv,ok", [("$async(data)", True), ("$async(gname)", True),
                                   ("$async(abcd)", True), ("$async(dat)", False),
                                   ("$async(groupname)", False), ("$atkv(key)", True),
                                   ("$atkv(val)", True), ("$atkv(type)", True),
                                   ("$atkv(gname)", True), ("$atkv(xy)", False)])
def test_pv_name_parsing_follows_kamailio_lengths(compile_cfg_text, pv, ok):
    text = _req(f'xinfo("{pv}\\n")')
    if ok:
        _compile(compile_cfg_text, text)
    else:
        with pytest.raises(CfgError):
            _compile(compile_cfg_text, text)
