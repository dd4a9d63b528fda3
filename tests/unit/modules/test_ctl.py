"""The ctl module's pure parts (asyncd/modules/ctl.py): Kamailio's socket
names (ctrl_socks.c parse_listen_id), the scan fault wording
(binrpc_run.c rpc_scan), one request served in process, mod_init's
sockets and mod_destroy's cleanup."""
import grp
import os
import pwd
import stat
import tempfile

import pytest

from asyncd.cfg.compiler import compile_cfg
from asyncd.core.context import ProcState
from asyncd.ipc import binrpc
from asyncd.modules import ctl


@pytest.mark.parametrize("spec,kind,addr", [
    ("unix:/run/x/ctl", "unixs", "/run/x/ctl"),
    ("unixs:/tmp/a", "unixs", "/tmp/a"),
    ("/tmp/bare", "unixs", "/tmp/bare"),
    ("unixd:/tmp/d", "unixd", "/tmp/d"),
    ("udp:127.0.0.1:2046", "udp", ("127.0.0.1", 2046)),
    ("tcp:127.0.0.1", "tcp", ("127.0.0.1", 2049)),
    ("tcp:3012", "tcp", ("*", 3012)),
    ("tcp:[::1]:2048", "tcp", ("::1", 2048)),
    ("127.0.0.1:2050", "udp", ("127.0.0.1", 2050)),
])
def test_socket_names_are_kamailios(spec, kind, addr):
    cs = ctl.parse_socket(spec)
    assert (cs.kind, cs.addr) == (kind, addr)


@pytest.mark.parametrize("spec", ["udp:1.2.3.4:99999", "tcp:[::1", "unix:", "udp:host:nosuchservice"])
def test_bad_socket_names(spec):
    with pytest.raises(ValueError):
        ctl.parse_socket(spec)


def test_scan_fault_wording():
    f = ctl.scan_fault(0, "int", "abc")
    assert (f.code, f.text) == (400, "error at parameter 0: expected integer type but "
                                     "record doesn't match type")
    f = ctl.scan_fault(2, "string", None)
    assert f.text == "error at parameter 2: expected string type but end of packet encountered"


def _script(extra=""):
    return compile_cfg(text='loadmodule "ctl.so"\n' + extra + 'request_route { exit; }\n')


def _serve(script, method, params=()):
    proc = ProcState(script, -2, "ctl handler", "rpc")
    req = binrpc.StreamParser().feed(binrpc.encode_request(method, list(params), 42))[0]
    (pkt,) = binrpc.StreamParser().feed(ctl.serve(proc, req))
    assert pkt.cookie == 42
    return pkt


def test_serve_a_request_a_fault_and_an_unknown_method():
    s = _script()
    assert _serve(s, "core.echo", ["x", 3]).values() == ["x", "3"]
    assert _serve(s, "no.such").fault() == (500, "command no.such not found")
    assert _serve(s, "core.printi", ["z"]).fault()[0] == 400


def test_mod_init_binds_with_mode_and_mod_destroy_removes_the_file():
    d = tempfile.mkdtemp(prefix="ctlu-")
    path = os.path.join(d, "run", "kamailio_ctl")
    s = _script('modparam("ctl", "mode", 0640)\n')
    s.core["run_dir"] = os.path.join(d, "run")
    ctl.mod_init(s)
    try:
        assert [c.kind for c in ctl.S.sockets] == ["unixs"]
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        assert [r.title for r in ctl.procs(s)] == ["ctl handler"]
    finally:
        ctl.mod_destroy(s)
    assert not os.path.exists(path)
    os.rmdir(os.path.dirname(path))
    os.rmdir(d)


def test_a_path_that_is_not_a_socket_is_a_startup_error():
    with tempfile.NamedTemporaryFile() as f:
        s = _script(f'modparam("ctl", "binrpc", "unix:{f.name}")\n')
        with pytest.raises(RuntimeError, match="exists and is not a socket"):
            ctl.mod_init(s)
        assert os.path.exists(f.name)


def test_a_bad_parameter_record_is_a_bad_request_unless_the_method_is_unknown():
    s = _script()
    proc = ProcState(s, -2, "ctl handler", "rpc")
    for method, want in (("core.echo", (400, "bad request: record doesn't match type")),
                         ("no.such", (500, "command no.such not found"))):
        body = binrpc.encode_request(method, [], 1)[4:] + bytes([0x0F])
        req = binrpc.Packet(binrpc.REQ, 5, body)
        (pkt,) = binrpc.StreamParser().feed(ctl.serve(proc, req))
        assert pkt.fault() == want


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_user_and_group_own_the_socket_file():
    d = tempfile.mkdtemp(prefix="ctlu-")
    path = os.path.join(d, "c.sock")
    group = grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name
    s = _script(f'modparam("ctl", "binrpc", "{path}")\nmodparam("ctl", "user", "nobody")\n'
                f'modparam("ctl", "group", "{group}")\n')
    ctl.mod_init(s)
    try:
        st = os.stat(path)
        assert (st.st_uid, st.st_gid) == (pwd.getpwnam("nobody").pw_uid, pwd.getpwnam("nobody").pw_gid)
    finally:
        ctl.mod_destroy(s)
    os.rmdir(d)


def test_binrpc_max_body_size_turns_a_long_reply_into_kamailios_fault():
    s = _script()
    old = ctl.S.max_body
    ctl.S.max_body = 64
    try:
        pkt = _serve(s, "system.listMethods")
    finally:
        ctl.S.max_body = old
    assert pkt.fault() == (500, "Internal server error processing 's': buffer too small (overflow) (-2)")
