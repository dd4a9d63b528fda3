"""The ctl module with the real kamcmd: asyncd's BINRPC sockets (unix, udp,
tcp) answer Kamailio's operator tool; the socket file's permissions are
Kamailio's; bad input costs the sender only (the same `ctl handler` pid
answers afterwards); a killed ctl handler is respawned.

Runs in: the pytest process; asyncd runs as a subprocess (run_server).
"""
import os
import pwd
import re
import signal
import socket
import stat
import tempfile
import time

import pytest

from asyncd.ipc import binrpc
from bench.servers import free_tcp_port, free_udp_port
from tests.helpers import run_server
from tests.helpers.kamailio import KAMCMD, SKIP_KAMCMD, kamcmd

pytestmark = pytest.mark.skipif(KAMCMD is None, reason=SKIP_KAMCMD)

BASE = """
debug=2
listen=udp:127.0.0.1:LPORT
children=2
loadmodule "sl.so"
loadmodule "ctl.so"
{params}
request_route {{ sl_send_reply("404", "Not here"); }}
"""


def _cfg(*params):
    return BASE.format(params="\n".join(f'modparam("ctl", "{k}", {v})' for k, v in params))


@pytest.fixture(scope="module")
def srv():
    """One server with a unix, a udp and a tcp ctl socket, stream_timeout 2 s."""
    d = tempfile.mkdtemp(prefix="ctl-")
    os.chmod(d, 0o755)
    sock = os.path.join(d, "kamailio_ctl")
    udp, tcp = free_udp_port(), free_tcp_port()
    cfg = _cfg(("binrpc", f'"unix:{sock}"'), ("binrpc", f'"udp:127.0.0.1:{udp}"'),
               ("binrpc", f'"tcp:127.0.0.1:{tcp}"'), ("stream_timeout", 2))
    with run_server(cfg) as s:
        s.ctl = f"unix:{sock}"
        s.ctl_udp = f"udp:127.0.0.1:{udp}"
        s.ctl_tcp = f"tcp:127.0.0.1:{tcp}"
        s.ctl_path = sock
        yield s
    assert not os.path.exists(sock), "the unix socket file outlived the server"
    os.rmdir(d)


def _ok(r):
    assert r.returncode == 0 and not r.stdout.startswith("error:"), (r.stdout, r.stderr)
    return r.stdout


def _handler_pid(s):
    (p,) = s.find("ctl handler")
    return p.pid


# -- the methods, as kamcmd prints them ---------------------------------------------------
def test_kamcmd_ps_and_psx_list_every_process(srv):
    pids = {p.pid for p in srv.processes()}
    ps = _ok(kamcmd(srv.ctl, "ps")).splitlines()
    assert {int(line.split("\t")[0]) for line in ps} == pids
    assert any(line.endswith("\tctl handler") for line in ps)
    assert ps[0].endswith("\tmain process - attendant")
    psx = _ok(kamcmd(srv.ctl, "core.psx"))
    assert psx.count("{") == len(pids)
    assert re.search(r"\tIDX: 0\n\tPID: %d\n\tDSC: main process - attendant\n" % srv.pid, psx)


def test_kamcmd_uptime_version_shmmem_echo_listmethods(srv):
    up = _ok(kamcmd(srv.ctl, "core.uptime"))
    assert re.fullmatch(r"\{\n\tnow: .+\n\tup_since: .+\n\tuptime: \d+\n\}\n", up)
    assert _ok(kamcmd(srv.ctl, "core.version")).startswith("asyncd ")
    shm = _ok(kamcmd(srv.ctl, "core.shmmem"))
    assert [line.split(":")[0].strip() for line in shm.splitlines()[1:-1]] == \
        ["total", "free", "used", "real_used", "max_used", "fragments"]
    assert _ok(kamcmd(srv.ctl, "core.echo", "abc", "s:12")) == "abc\n12\n"
    methods = _ok(kamcmd(srv.ctl, "system.listMethods")).split()
    assert {"core.psx", "core.uptime", "ctl.listen", "system.methodHelp"} <= set(methods)


def test_udp_and_tcp_sockets_answer(srv):
    for sock in (srv.ctl_udp, srv.ctl_tcp):
        assert "uptime:" in _ok(kamcmd(sock, "core.uptime"))
        assert "ctl handler" in _ok(kamcmd(sock, "ps"))


def test_faults_are_kamailios(srv):
    assert kamcmd(srv.ctl, "no.such").stdout == "error: 500 - command no.such not found\n"
    assert kamcmd(srv.ctl, "core.printi", "abc").stdout == \
        "error: 400 - error at parameter 0: expected integer type but record doesn't match type\n"
    assert kamcmd(srv.ctl, "system.methodHelp").stdout == "error: 400 - Method Name Expected\n"


# -- permissions --------------------------------------------------------------------------
def test_unix_socket_is_0600_by_default(srv):
    assert stat.S_IMODE(os.stat(srv.ctl_path).st_mode) == 0o600


def _can_connect_as_nobody(path):
    """Fork, drop to `nobody`, try to connect: -> True when it could."""
    nobody = pwd.getpwnam("nobody")
    pid = os.fork()
    if pid == 0:
        code = 2
        try:
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            code = 0
        except PermissionError:
            code = 1
        finally:
            os._exit(code)
    _pid, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 1), f"the probe failed ({code})"
    return code == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to the nobody user")
def test_another_user_cannot_connect(srv):
    assert not _can_connect_as_nobody(srv.ctl_path)


def test_default_socket_in_run_dir_mode_modparam_and_stale_file():
    """No binrpc modparam: unix:<-Y dir>/kamailio_ctl; the run dir is made
    0700 when missing; `mode` sets the socket's permissions; a stale socket
    file from a killed run is replaced."""
    base = tempfile.mkdtemp(prefix="ctl-")
    run = os.path.join(base, "run")
    with run_server(_cfg(("mode", "0666")), args=("-Y", run), check_clean=False) as s:
        path = os.path.join(run, "kamailio_ctl")
        assert stat.S_IMODE(os.stat(run).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666
        assert "ctl handler" in _ok(kamcmd(f"unix:{path}", "ps"))
        s.kill_group()              # killed: the socket file stays behind
        s.proc.wait(5)
        s.returncode = -9           # its shm segment: the next server's startup removes it
    assert os.path.exists(path)
    os.chmod(run, 0o755)
    with run_server(_cfg(), args=("-Y", run)):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        if os.geteuid() == 0:
            assert not _can_connect_as_nobody(path)
        assert "uptime" in _ok(kamcmd(f"unix:{path}", "core.uptime"))
    assert not os.path.exists(path)
    os.rmdir(run)
    os.rmdir(base)


def test_unusable_socket_address_is_a_startup_error():
    with pytest.raises(AssertionError, match=r"cannot open control socket tcp:192\.0\.2\.1:2049"):
        with run_server(_cfg(("binrpc", '"tcp:192.0.2.1:2049"')), ready_timeout=10):
            pass


# -- bad input ----------------------------------------------------------------------------
def _conn(srv):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(srv.ctl_path)
    return s


def _read_all(s):
    out = b""
    while True:
        try:
            data = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            return out
        if not data:
            return out
        out += data


def test_garbage_gets_a_fault_then_the_connection_closes(srv):
    s = _conn(srv)
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    (pkt,) = binrpc.StreamParser().feed(_read_all(s))
    assert pkt.type == binrpc.FAULT and pkt.fault() == (400, "bad request: corrupted packet")
    s.close()


def test_huge_declared_length_closes_the_connection(srv):
    s = _conn(srv)
    s.sendall(binrpc.build_header(binrpc.REQ, 0x7FFFFFFF, 5) + b"\x31ab\0")
    assert _read_all(s) == b""
    s.close()


def test_truncated_packet_then_eof_and_a_stalled_half_packet(srv):
    req = binrpc.encode_request("core.uptime", [], 3)
    s = _conn(srv)
    s.sendall(req[:-3])
    s.close()                                    # half a packet, then EOF: nothing to answer
    stalled = _conn(srv)
    stalled.sendall(req[:5])
    t0 = time.monotonic()
    assert "uptime" in _ok(kamcmd(srv.ctl, "core.uptime"))     # the loop is not held up
    assert _read_all(stalled) == b""             # closed after stream_timeout (2 s)
    assert 1.5 < time.monotonic() - t0 < 6
    stalled.close()


def test_requests_split_and_batched_on_one_connection(srv):
    s = _conn(srv)
    data = b"".join(binrpc.encode_request("core.echo", [f"n{i}"], i + 1) for i in range(5))
    for i in range(0, len(data), 3):
        s.sendall(data[i:i + 3])
    parser = binrpc.StreamParser()
    got = []
    while len(got) < 5:
        got += parser.feed(s.recv(4096))
    assert [(p.cookie, p.values()) for p in got] == [(i + 1, [f"n{i}"]) for i in range(5)]
    s.close()


def test_client_gone_mid_reply_and_client_not_reading(srv):
    pid = _handler_pid(srv)
    s = _conn(srv)
    s.sendall(binrpc.encode_request("core.psa", [], 1) * 50)
    s.close()                                    # gone before the replies
    lazy = _conn(srv)
    lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    lazy.sendall(binrpc.encode_request("core.psa", [], 1) * 3000)   # ~2 MB of replies, never read
    t0 = time.monotonic()
    assert "uptime" in _ok(kamcmd(srv.ctl, "core.uptime", timeout=15))
    assert time.monotonic() - t0 < 10
    lazy.close()
    assert _handler_pid(srv) == pid


def test_wrong_types_unknown_method_and_bad_method_record_keep_the_handler(srv):
    pid = _handler_pid(srv)
    s = _conn(srv)
    s.sendall(binrpc.encode_packet(binrpc.REQ, bytes([0x10, 5]), 9))   # an int where the method goes
    (pkt,) = binrpc.StreamParser().feed(s.recv(4096))
    assert pkt.fault() == (400, "bad request method: record doesn't match type")
    s.sendall(binrpc.encode_packet(binrpc.REPL, b"", 10))               # a reply is not a request
    (pkt,) = binrpc.StreamParser().feed(s.recv(4096))
    assert pkt.fault() == (400, "bad request: corrupted packet")
    s.close()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(5)
    host, port = srv.ctl_udp[4:].rsplit(":", 1)
    u.sendto(b"\xa1\x00\x40", (host, int(port)))                       # a runt: dropped
    u.sendto(binrpc.encode_request("core.uptime", [], 77), (host, int(port)))
    (pkt,) = binrpc.StreamParser().feed(u.recv(65535))
    assert pkt.cookie == 77 and "uptime" in pkt.values()[0]
    u.close()
    assert "uptime" in _ok(kamcmd(srv.ctl, "core.uptime"))
    assert _handler_pid(srv) == pid


def test_killed_ctl_handler_is_respawned(srv):
    pid = _handler_pid(srv)
    os.kill(pid, signal.SIGKILL)
    srv.wait_log(r"respawned ctl handler", timeout=5)
    end = time.monotonic() + 5
    while time.monotonic() < end:
        r = kamcmd(srv.ctl, "core.uptime")
        if r.returncode == 0 and "uptime" in r.stdout:
            break
        time.sleep(0.1)
    assert "uptime" in _ok(kamcmd(srv.ctl, "core.uptime"))
    assert _handler_pid(srv) != pid
    assert "ctl handler" in _ok(kamcmd(srv.ctl_tcp, "ps"))
