"""Preprocessor, lexer and global parameters."""
import os

import pytest

from asyncd.cfg.compiler import compile_cfg
from asyncd.cfg.lexer import tokenize
from asyncd.cfg.preprocess import preprocess
from asyncd.core.errors import CfgError
from asyncd.core.params import AsyncGroup


def values(text, defines=None):
    return [t.value for t in preprocess(text, "p.cfg", defines)][:-1]


def test_define_is_substituted_as_whole_token_only():
    text = '#!define LPORT 5071\nlisten=udp:127.0.0.1:LPORT\nx="LPORT" LPORTX\n'
    assert values(text) == ["listen", "=", "udp", ":", "127.0.0.1", ":", 5071,
                            "x", "=", "LPORT", "LPORTX"]


def test_command_line_define_wins_when_guarded():
    text = "#!ifndef LPORT\n#!define LPORT 5071\n#!endif\nport=LPORT\n"
    assert values(text)[-1] == 5071
    assert values(text, {"LPORT": "6000"})[-1] == 6000


def test_ifdef_else_nesting_and_skipped_garbage():
    text = ('#!define A\n#!ifdef A\n#!ifdef B\nb=1\n#!else\nab=1\n#!endif\n#!else\n'
            '" unterminated and /* garbage\n#!endif\nz=1\n')
    assert values(text) == ["ab", "=", 1, "z", "=", 1]


def test_trydef_redefine_undef_and_empty_define():
    text = ('#!define A 1\n#!trydef A 2\n#!trydef B 3\n#!redefine A 4\n#!define E\n'
            'a=A b=B e=E E\n#!undef A\n#!ifdef A\nno=1\n#!endif\n')
    assert values(text) == ["a", "=", 4, "b", "=", 3, "e", "="]


def test_markers_and_comment_styles():
    text = ("#!KAMAILIO\n#!SER\n#!ALL\n# a comment\n// another\n/* block\n comment */ x=1 # tail\n"
            "!!define Y 2\ny=Y\n")
    assert values(text) == ["x", "=", 1, "y", "=", 2]


def test_multiline_define_with_continuation():
    text = '#!define R "a" \\\n + "b"\nv=R\n'
    assert values(text) == ["v", "=", "a", "+", "b"]


def test_subst_and_substdef_apply_to_strings():
    text = '#!subst "/HOST/example.com/g"\n#!substdef "!PORT!5080!"\nx="sip:HOST:PORT" y=PORT\n'
    assert values(text) == ["x", "=", "sip:example.com:5080", "y", "=", 5080]


def test_include_and_import(tmp_path):
    (tmp_path / "inc.cfg").write_text("#!define FROM_INC 7\nchildren=FROM_INC\n")
    main = tmp_path / "main.cfg"
    main.write_text('#!include_file "inc.cfg"\nimport_file "missing.cfg"\n'
                    'include_file "inc2.cfg"\n')
    (tmp_path / "inc2.cfg").write_text("debug=3\n")
    s = compile_cfg(str(main))
    assert s.core["children"] == 7 and s.core["debug"] == 3


def test_lexer_tokens_carry_positions():
    toks = tokenize('request_route {\n  $var(x) = "a\\tb";\n}', "f.cfg")
    pv = toks[2]
    assert (pv.kind, pv.value, pv.line, pv.col) == ("PV", "$var(x)", 2, 3)
    s = toks[4]
    assert (s.value, s.line, s.col) == ("a\tb", 2, 13)


def test_global_parameters_table():
    s = compile_cfg(text="""
listen=udp:127.0.0.1:5071
listen=127.0.0.2
listen=udp:[::1]:5072
children=3
debug=-1
log_stderror=yes
log_facility=LOG_LOCAL0
fork=no
auto_aliases=no
alias="example.com"
alias=my-host.example.org
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
memlog=5
tcp_connection_lifetime=3605
disable_tcp=yes
async_usleep=100
async_nonblock=1
async_tkv_gname="tkv"
async_tkv_evcb="core:tkv"
""")
    c = s.core
    assert c["listen"] == [("udp", "127.0.0.1", 5071), (None, "127.0.0.2", 5060), ("udp", "::1", 5072)]
    assert (c["children"], c["debug"], c["log_stderror"], c["fork"], c["auto_aliases"]) == (3, -1, 1, 0, 0)
    assert c["log_facility"] == "LOG_LOCAL0" and c["alias"] == ["example.com", "my-host.example.org"]
    assert c["memlog"] == 5 and c["disable_tcp"] == 1 and c["async_tkv_evcb"] == "core:tkv"
    assert c["async_groups"] == []      # async_usleep/nonblock before any group: no effect


def test_async_groups_follow_kamailio_order_rules():
    s = compile_cfg(text='async_workers=2\nasync_usleep=50\nasync_nonblock=1\n'
                         'async_workers_group="name=abc;workers=4;nonblock=0;usleep=0"\n'
                         'async_workers_group="NAME=xyz;Workers=1;NonBlock=1;usleep=10;foo=bar;"\n')
    assert s.core["async_groups"] == [AsyncGroup("default", 2, 1, 50), AsyncGroup("xyz", 1, 1, 10),
                                      AsyncGroup("abc", 4, 0, 0)]
    s = compile_cfg(text='async_workers_group="name=abc;workers=4"\n')
    assert s.core["async_groups"] == [AsyncGroup("default", 1), AsyncGroup("abc", 4)]
    s = compile_cfg(text='async_workers=3\nasync_workers_group="name=default;workers=9;usleep=7"\n')
    assert s.core["async_groups"] == [AsyncGroup("default", 3, 0, 7)]


@pytest.mark.parametrize("value,msg", [
    ("name=;workers=2", "'name' is mandatory"),
    ("name=x;workers=0", "'workers' must be set"),
    ("name=x;workers=two", "workers must be an integer"),
    ("name=x;workers", "malformed item"),
])
def test_async_group_errors(value, msg):
    with pytest.raises(CfgError) as ei:
        compile_cfg(text=f'children=1\nasync_workers_group="{value}"\n', filename="g.cfg")
    assert msg in ei.value.message and (ei.value.line, ei.value.col) == (2, 1)


def test_modparams_defaults_types_and_multi():
    s = compile_cfg(text='loadmodule "/usr/lib/kamailio/modules/maxfwd.so"\nloadmodule "xlog"\n'
                         'modparam("maxfwd", "max_limit", 20)\n'
                         'modparam("xlog", "log_colors", "L_ERR=cr")\n'
                         'modparam("xlog", "log_colors", "L_WARN=cy")\n')
    assert s.modparams["maxfwd"] == {"max_limit": 20}
    assert s.modparams["xlog"]["log_colors"] == ["L_ERR=cr", "L_WARN=cy"]
    assert s.modparams["xlog"]["prefix"] == "<script>: "


def test_modparam_module_name_is_a_regex_over_the_loaded_modules():
    """modparam("nathelper|registrar", ...) as the stock kamailio.cfg writes it (Kamailio's
    set_mod_param_regex): every loaded match that has the parameter gets it."""
    head = 'loadmodule "sl.so"\nloadmodule "tm.so"\nloadmodule "usrloc.so"\nloadmodule "registrar.so"\n' \
           'loadmodule "nathelper.so"\n'
    s = compile_cfg(text=head + 'modparam("nathelper|registrar", "received_avp", "$avp(RECEIVED)")\n')
    assert s.modparams["nathelper"]["received_avp"] == s.modparams["registrar"]["received_avp"] == "$avp(RECEIVED)"
    s = compile_cfg(text=head + 'modparam("NAT.*", "natping_interval", 30)\n')
    assert s.modparams["nathelper"]["natping_interval"] == 30
    with pytest.raises(CfgError) as ei:
        compile_cfg(text=head + 'modparam("nathelper|registrar", "nope", 1)\n', filename="m.cfg")
    assert "parameter 'nope' not found in any module matching 'nathelper|registrar'" in ei.value.message
    assert (ei.value.line, ei.value.col) == (6, 1)


def test_broken_module_only_breaks_cfgs_that_load_it(tmp_path, monkeypatch):
    import asyncd.modules as pkg
    bad = os.path.join(pkg.__path__[0], "zz_broken_for_test.py")
    with open(bad, "w") as f:
        f.write("raise ImportError('missing dependency')\n")
    try:
        s = compile_cfg(text='loadmodule "xlog.so"\nrequest_route { xlog("ok"); }\n')
        assert s.has_request_route
        with pytest.raises(CfgError) as ei:
            compile_cfg(text='loadmodule "zz_broken_for_test.so"\n')
        assert "cannot load module 'zz_broken_for_test'" in str(ei.value)
        # an unknown pv still gets a clean cfg error even though one module cannot be imported
        with pytest.raises(CfgError):
            compile_cfg(text='loadmodule "xlog.so"\nrequest_route { xlog("$nosuchpv"); }\n')
    finally:
        os.unlink(bad)
