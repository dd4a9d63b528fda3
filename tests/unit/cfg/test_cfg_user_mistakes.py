"""The mistakes Kamailio users make when they bring a cfg, and what asyncd
tells them (acceptance part): one `file:line:col: message` line each, with a
hint when a close name exists. Also Script.route_is_empty and the
transformations added for stock cfgs.

Runs in: the pytest process (compiler in-process; one `asyncd -c` subprocess).
"""
import subprocess
import sys
from pathlib import Path

import pytest

from asyncd.cfg.compiler import compile_cfg
from asyncd.core.errors import CfgError
from cfg_helpers import Runner, make_msg

HEAD = ('listen=udp:127.0.0.1:5099\nloadmodule "sl.so"\nloadmodule "tm.so"\n'
        'loadmodule "xlog.so"\nloadmodule "textops.so"\n')     # 5 lines


def _err(body):
    with pytest.raises(CfgError) as ei:
        compile_cfg(text=HEAD + body, filename="user.cfg")
    return str(ei.value)


@pytest.mark.parametrize("body, where, text", [
    ('request_route {\n    sl_send_replly("200", "OK");\n}\n', "user.cfg:7:5",
     "unknown function 'sl_send_replly' (did you mean 'sl_send_reply'"),
    ('request_route {\n    t_relya();\n}\n', "user.cfg:7:5", "(did you mean 't_relay' or 't_reply'?)"),
    ('request_route {\n    sl_send_reply("200");\n}\n', "user.cfg:7:5",
     "sl_send_reply() takes 2 argument(s), got 1"),
    ('request_route {\n    record_route();\n}\n', "user.cfg:7:5",
     "exported by module 'rr', which is not loaded (loadmodule \"rr.so\")"),
    ('modparam("rr", "append_fromtag", 0)\nrequest_route {\n exit;\n}\n', "user.cfg:6:1",
     "modparam for module 'rr', which is not loaded"),
    ('modparam("tm", "fr_timeout", 1)\nrequest_route {\n exit;\n}\n', "user.cfg:6:1",
     "module 'tm' has no parameter 'fr_timeout' (did you mean 'fr_timer'?)"),
    ('modparam("tm", "fr_timer", "30")\nrequest_route {\n exit;\n}\n', "user.cfg:6:28",
     "value must be an integer"),
    ('childern=4\nrequest_route {\n exit;\n}\n', "user.cfg:6:1",
     "unknown core parameter 'childern' (did you mean 'children'?)"),
    ('loadmodule "carrierroute.so"\nrequest_route {\n exit;\n}\n', "user.cfg:6:12",
     "unknown module 'carrierroute'"),
    ('request_route {\n    route(RELAY);\n}\n', "user.cfg:7:5", "no route[RELAY] block is defined"),
    ('request_route {\n    route(RELAX);\n}\nroute[RELAY] {\n exit;\n}\n', "user.cfg:7:5",
     "no route[RELAX] block is defined (did you mean route(RELAY)?)"),
    ('request_route {\n    t_on_failure("MISSING");\n}\n', "user.cfg:7:18", "no such route block 'MISSING'"),
    ('request_route {\n    $var(x) = 1\n    exit;\n}\n', "user.cfg:7:16", "missing ';'"),
    ('request_route {\n    xlog("$(ru{s.foo})");\n}\n', "user.cfg:7", "unknown transformation {s.foo}"),
    ('request_route {\n    if ($rm = "INVITE") { exit; }\n}\n', "user.cfg:7:13",
     "'=' assigns; use '==' to compare in a condition"),
    ('request_route {\n    $rm = "BYE";\n}\n', "user.cfg:7:5", "read-only pseudo-variable"),
    ('#!ifdef WITH_X\nrequest_route {\n exit;\n}\n', "user.cfg:6:1", "missing #!endif"),
])
def test_user_mistake_messages(body, where, text):
    msg = _err(body)
    assert msg.startswith(where + ":") or msg.startswith(where), msg
    assert text in msg, msg


def test_unknown_module_lists_the_modules_we_have():
    msg = _err('loadmodule "carrierroute.so"\nrequest_route {\n exit;\n}\n')
    assert "asyncd has: " in msg and "tm" in msg and "htable" in msg and "usrloc" in msg
    assert "tm_api" not in msg and "pv_shm" not in msg        # helpers are not modules
    assert "registrar_save" not in msg and "usrloc_rpc" not in msg


def test_no_hint_when_nothing_is_close():
    msg = _err('request_route {\n    frobnicate();\n}\n')
    assert msg.endswith("unknown function 'frobnicate'"), msg


def test_check_command_prints_one_line_and_exits_255(tmp_path):
    cfg = tmp_path / "k.cfg"
    cfg.write_text(HEAD + 'request_route {\n    sl_send_replly("200", "OK");\n}\n')
    root = Path(__file__).resolve().parents[3]
    p = subprocess.run([sys.executable, "-m", "asyncd", "-c", "-f", str(cfg)], capture_output=True,
                       text=True, cwd=root, timeout=30)
    assert p.returncode == 255
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"{cfg}:7:5: unknown function 'sl_send_replly'" in lines[0], p.stderr


def test_route_is_empty():
    s = compile_cfg(text='loadmodule "sl.so"\nrequest_route { route(A); route(B); route(C); }\n'
                         'route[A] { }\nroute[B] {\n # only a comment\n ;\n}\nroute[C] { exit; }\n')
    assert s.route_is_empty("A") and s.route_is_empty("B")
    assert not s.route_is_empty("C")
    assert not s.route_is_empty("NOPE") and not s.has_route("NOPE")


def test_rr_append_fromtag_modparam():
    r = Runner('loadmodule "rr.so"\nmodparam("rr", "append_fromtag", 0)\nmodparam("rr", "enable_full_lr", 1)\n'
               'request_route { record_route(); }\n')
    from asyncd.modules import rr
    try:
        rr.mod_init(r.script)
        ctx, _ = r.run()
    finally:
        rr.S.configure(rr.EXPORTS.param_defaults())
    assert ctx.msg.hdr_adds == ["Record-Route: <sip:127.0.0.1:5060;lr>\r\n"]
    r2 = Runner('loadmodule "rr.so"\nrequest_route { record_route(); }\n')
    ctx, _ = r2.run()
    assert ctx.msg.hdr_adds == ["Record-Route: <sip:127.0.0.1:5060;lr;ftag=1928301774>\r\n"]


@pytest.mark.parametrize("tr, value, want", [
    ("{s.count,,}", "a,b,c", "2"),
    ("{s.select,1,,}", "a,b,c", "b"),
    ("{s.select,-1,;}", "a;b;c", "c"),
    ("{s.rm,-}", "0-800-123", "0800123"),
    ("{s.escape.common}", "it's", "it\\'s"),
    ("{s.unescape.common}", "it\\'s", "it's"),
])
def test_transformations_for_stock_cfgs(tr, value, want):
    r = Runner('request_route { $var(v) = "' + value.replace("\\", "\\\\") + '"; '
               '$var(out) = $(var(v)' + tr + '); }\n')
    ctx, _ = r.run()
    assert str(r.proc.vars["out"]) == want


def test_stock_keywords_and_dsturi():
    r = Runner('loadmodule "kex.so"\nrequest_route {\n'
               ' if (proto==UDP && af==INET && !(proto==TCP) && af!=INET6) { $var(k) = 1; }\n'
               ' if (!isdsturiset()) { setdsturi("sip:10.0.0.9:5070"); }\n'
               ' if (isdsturiset()) { $var(du) = $du; resetdsturi(); }\n'
               ' if (!isduriset()) { $var(reset) = 1; }\n}\n')
    ctx, _ = r.run()
    assert r.proc.vars["k"] == 1 and r.proc.vars["du"] == "sip:10.0.0.9:5070"
    assert r.proc.vars["reset"] == 1 and ctx.msg.dst_uri is None


def test_kex_functions_need_kex_as_in_kamailio():
    msg = _err('request_route {\n    if (isdsturiset()) { exit; }\n}\n')
    assert "exported by module 'kex', which is not loaded" in msg, msg
    r = Runner('loadmodule "kex.so"\nrequest_route { pv_printf("$var(p)", "u=$rU"); '
               'if (is_myself("sip:127.0.0.1:5060")) { $var(me) = 1; } }\n')
    r.script.core["listen"] = [("udp", "127.0.0.1", 5060)]
    ctx, _ = r.run()
    assert r.proc.vars["p"] == "u=bob"
