"""jsonrpcs on the real server: JSON-RPC over the FIFO and the datagram
socket in `-Y` (by hand, and with the real kamctl), permissions, bad input
that must cost only that request, a killed `JSONRPCS FIFO` respawned, and the
same requests against Kamailio 5.6.3 for the reply shapes."""
import contextlib
import itertools
import json
import os
import select
import signal
import socket
import subprocess
import tempfile
import time

import psutil
import pytest

from tests.helpers.kamailio import KAMCTL, SKIP_KAMAILIO, run_kamailio
from tests.helpers.server import run_server
from tests.helpers.sipclient import SipClient
from bench.servers import kamailio_binary

CFG = """
debug=2
children=1
listen=udp:127.0.0.1:LPORT
loadmodule "jsonrpcs.so"
loadmodule "kex.so"
loadmodule "sl.so"
request_route {
    jsonrpc_exec('{"jsonrpc": "2.0", "method": "$rU", "params": ["$rm"], "id": 1}');
    sl_send_reply("200", "$jsonrpl(code) $jsonrpl(text)");
    exit;
}
"""
_names = itertools.count()
NOBODY = 65534


def reply_name():
    return f"asyncd_jsonrpcs_test_{os.getpid()}_{next(_names)}"


@contextlib.contextmanager
def reply_fifo(name=None):
    """A reply FIFO in /tmp (jsonrpcs' default fifo_reply_dir), open for reading."""
    name = name or reply_name()
    path = "/tmp/" + name
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    os.mkfifo(path, 0o600)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        yield name, fd
    finally:
        os.close(fd)
        os.unlink(path)


def read_reply(fd, timeout=3.0):
    """Everything the server writes before closing its end (b"" if nothing comes)."""
    out, end, opened = b"", time.monotonic() + timeout, False
    while time.monotonic() < end:
        if not select.select([fd], [], [], 0.05)[0]:
            continue
        data = os.read(fd, 65536)
        if data:
            out, opened = out + data, True
        elif opened:
            return out
        else:
            time.sleep(0.02)        # no writer yet: EOF until the server opens its end
    return out


def fifo_write(rundir, data):
    fd = os.open(os.path.join(rundir, "kamailio_rpc.fifo"), os.O_WRONLY)
    try:
        os.write(fd, data if isinstance(data, bytes) else data.encode())
    finally:
        os.close(fd)


def fifo_call(rundir, req, timeout=3.0):
    """Send one request (a dict gets reply_name added) -> the reply bytes."""
    with reply_fifo() as (name, fd):
        if isinstance(req, dict):
            req = json.dumps(dict(req, reply_name=name))
        else:
            req = req.replace("@REPLY@", name)
        fifo_write(rundir, req)
        return read_reply(fd, timeout)


def dgram_call(rundir, data, timeout=2.0):
    """One datagram from a bound unix socket -> the reply, or None."""
    d = tempfile.mkdtemp(prefix="jrpc-c-")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.bind(os.path.join(d, "c"))
        s.settimeout(timeout)
        if isinstance(data, dict):
            data = json.dumps(data)
        s.sendto(data if isinstance(data, bytes) else data.encode(), os.path.join(rundir, "kamailio_rpc.sock"))
        try:
            return s.recv(70000)
        except socket.timeout:
            return None
    finally:
        s.close()
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(d, "c"))
        os.rmdir(d)


def req(method, *params, rid=1):
    r = {"jsonrpc": "2.0", "method": method, "id": rid}
    if params:
        r["params"] = list(params)
    return r


@pytest.fixture(scope="module")
def srv():
    top = tempfile.mkdtemp(prefix="jsonrpcs-it-")
    os.chmod(top, 0o755)                 # so that `nobody` reaches the FIFO and meets its own mode
    rundir = os.path.join(top, "run")   # made by the module (0700)
    with run_server(CFG, args=("-Y", rundir)) as s:
        s.rundir = rundir
        yield s
    assert not os.path.exists(os.path.join(rundir, "kamailio_rpc.fifo")), "FIFO left behind"
    assert not os.path.exists(os.path.join(rundir, "kamailio_rpc.sock")), "socket left behind"
    os.rmdir(rundir)
    os.rmdir(top)


def pid_of(srv, title):
    procs = [p for p in srv.find(title) if p.pid != srv.pid]
    assert procs, f"no {title} process: {srv.titles()}"
    return procs[0].pid


def test_processes_and_files(srv):
    titles = srv.titles()
    assert "asyncd: JSONRPCS FIFO" in titles and "asyncd: JSONRPCS DATAGRAM" in titles
    assert oct(os.stat(os.path.join(srv.rundir, "kamailio_rpc.fifo")).st_mode) == "0o10660"
    assert oct(os.stat(os.path.join(srv.rundir, "kamailio_rpc.sock")).st_mode) == "0o140660"


def test_fifo_request_reply_by_hand(srv):
    body = fifo_call(srv.rundir, req("system.methodHelp", "core.echo", rid=42))
    assert body == b'{\n\t"jsonrpc":\t"2.0",\n\t"result":\t"Returns back its parameters.",\n\t"id":\t42\n}'
    out = json.loads(fifo_call(srv.rundir, req("system.listMethods")))
    assert {"core.echo", "jsonrpc.echo", "system.listMethods"} <= set(out["result"])


def test_several_requests_in_one_write_each_get_their_reply(srv):
    with reply_fifo() as (n1, fd1), reply_fifo() as (n2, fd2):
        r1 = json.dumps(dict(req("jsonrpc.echo", "one"), reply_name=n1))
        r2 = json.dumps(dict(req("jsonrpc.echo", "two"), reply_name=n2))
        fifo_write(srv.rundir, r1 + "\n" + r2 + "\n")
        assert json.loads(read_reply(fd1))["result"] == ["one"]
        assert json.loads(read_reply(fd2))["result"] == ["two"]


def test_the_fifo_process_does_not_spin_once_writers_are_gone(srv):
    proc = psutil.Process(pid_of(srv, "JSONRPCS FIFO"))
    fifo_call(srv.rundir, req("jsonrpc.echo"))        # a writer came and went
    before = sum(proc.cpu_times()[:2])
    time.sleep(0.5)
    assert sum(proc.cpu_times()[:2]) - before < 0.1


def test_datagram_request_reply(srv):
    out = json.loads(dgram_call(srv.rundir, req("jsonrpc.echo", "q", 5, rid="x")))
    assert out == {"jsonrpc": "2.0", "result": ["q", 5], "id": "x"}
    err = json.loads(dgram_call(srv.rundir, req("no.such")))
    assert err["error"] == {"code": 500, "message": "Method Not Found"}


def test_jsonrpc_exec_in_the_route_and_jsonrpl(srv):
    with SipClient(srv.addr) as c:
        assert c.final(ruri=f"sip:jsonrpc.echo@127.0.0.1:{srv.port}").reason == "200 OK"
        assert c.final(ruri=f"sip:no.such@127.0.0.1:{srv.port}").reason == "500 Method Not Found"


def _as_nobody(fn):
    """Run fn() in a child that dropped root for `nobody`; -> its exit code."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            code = fn()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_non_root_client_cannot_use_fifo_or_socket(srv):
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to the nobody user")
    # the run dir is made 0700 (Kamailio's main.c); opened here so that what refuses
    # nobody below is the FIFO's and the socket's own mode
    os.chmod(srv.rundir, 0o755)
    control = os.path.join(srv.rundir, "open.fifo")     # beside it, open to all
    os.mkfifo(control, 0o666)
    os.chmod(control, 0o666)
    fifo = os.path.join(srv.rundir, "kamailio_rpc.fifo")
    sock = os.path.join(srv.rundir, "kamailio_rpc.sock")

    def try_open(path):
        def fn():
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
                return 0
            except PermissionError:
                return 13
            except OSError:
                return 0        # ENXIO: allowed, only no reader
        return fn

    def try_send():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            s.sendto(b"{}", sock)
            return 0
        except PermissionError:
            return 13

    try:
        assert _as_nobody(try_open(control)) == 0       # the directories let nobody through
        assert _as_nobody(try_open(fifo)) == 13
        assert _as_nobody(try_send) == 13
    finally:
        os.unlink(control)


BAD_FIFO = [
    '{"jsonrpc": "2.0", "method": "core.echo", "params": [1,, "reply_name": "@REPLY@", "id": 7}',
    '{"jsonrpc": "2.0", "method": 5, "params": "x", "reply_name": "@REPLY@", "id": {"a": 1}}',
    '{"jsonrpc": "2.0", "method": "core.echo", "params": "zz", "reply_name": "@REPLY@", "id": 2}',
    '{"jsonrpc": "2.0", "method": "no.such", "reply_name": "@REPLY@", "id": 3}',
    '{"jsonrpc": "2.0", "method": "core.echo", "reply_name": "../../etc/x", "id": 3}',
    '{"jsonrpc": "2.0", "method": "core.echo", "reply_name": "nobody_made_this_fifo", "id": 3}',
    '[{"jsonrpc": "2.0", "method": "core.echo", "reply_name": "@REPLY@"}]',
    '{"jsonrpc": "2.0", "method": "core.echo", "params": ["' + "x" * 20000 + '"], "reply_name": "@REPLY@"}',
    "\x00\xff garbage } without { balance",
]


def test_bad_fifo_input_costs_only_that_request(srv):
    pid = pid_of(srv, "JSONRPCS FIFO")
    replies = [fifo_call(srv.rundir, bad, timeout=0.6) for bad in BAD_FIFO]
    assert replies[0] == b"" and replies[7] == b"" and replies[6] == b""
    assert json.loads(replies[1]) == {"jsonrpc": "2.0", "result": {}, "id": 0}
    assert json.loads(replies[2])["result"] == [] and json.loads(replies[3])["error"]["code"] == 500
    time.sleep(1.1)         # the junk's half request is stale now
    assert json.loads(fifo_call(srv.rundir, req("jsonrpc.echo", "alive")))["result"] == ["alive"]
    assert pid_of(srv, "JSONRPCS FIFO") == pid
    assert "input data too large" in srv.log() and "Forbidden reply fifo filename" in srv.log()


def test_a_reply_fifo_nobody_reads_and_a_writer_that_vanishes(srv):
    pid = pid_of(srv, "JSONRPCS FIFO")
    name = reply_name()
    os.mkfifo("/tmp/" + name, 0o600)         # exists, but nobody ever opens it to read
    try:
        t0 = time.monotonic()
        fifo_write(srv.rundir, json.dumps(dict(req("core.echo"), reply_name=name)))
        fifo_write(srv.rundir, '{"jsonrpc": "2.0", "method": "core.ec')      # and goes away
        time.sleep(1.5)     # read after the ~0.3 s given to the reply FIFO, stale 1 s later
        assert json.loads(fifo_call(srv.rundir, req("jsonrpc.echo", "still")))["result"] == ["still"]
        assert time.monotonic() - t0 < 4
    finally:
        os.unlink("/tmp/" + name)
    assert pid_of(srv, "JSONRPCS FIFO") == pid
    assert "no client at" in srv.log()


def test_bad_datagrams_cost_only_that_request(srv):
    pid = pid_of(srv, "JSONRPCS DATAGRAM")
    assert dgram_call(srv.rundir, b"{not json", timeout=0.3) is None
    assert dgram_call(srv.rundir, b"x" * 70000, timeout=0.3) is None
    assert json.loads(dgram_call(srv.rundir, b'{"jsonrpc": "2.0", "method": 5, "id": 1}'))["result"] == {}
    anon = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)       # unbound: no address to answer
    anon.sendto(json.dumps(req("core.echo")).encode(), os.path.join(srv.rundir, "kamailio_rpc.sock"))
    anon.close()
    assert json.loads(dgram_call(srv.rundir, req("jsonrpc.echo", "ok")))["result"] == ["ok"]
    assert pid_of(srv, "JSONRPCS DATAGRAM") == pid


def test_kill_9_of_the_fifo_process_is_respawned_and_answers(srv):
    pid = pid_of(srv, "JSONRPCS FIFO")
    os.kill(pid, signal.SIGKILL)
    srv.wait_log(r"respawned JSONRPCS FIFO \(rank -2\) as pid \d+", timeout=5)
    assert json.loads(fifo_call(srv.rundir, req("jsonrpc.echo", "back")))["result"] == ["back"]
    assert pid_of(srv, "JSONRPCS FIFO") != pid


# -- the real kamctl (RPCFIFO engine) ------------------------------------------------------
def kamctl(srv, *args):
    if KAMCTL is None:
        pytest.skip("kamctl is not installed (./run_tests.sh installs the Debian package kamailio)")
    home = tempfile.mkdtemp(prefix="kamctl-home-")
    try:
        with open(os.path.join(home, ".kamctlrc"), "w") as f:
            f.write(f'RPCFIFOPATH="{srv.rundir}/kamailio_rpc.fifo"\n')
        env = dict(os.environ, HOME=home, RPCFIFOPATH=f"{srv.rundir}/kamailio_rpc.fifo")
        return subprocess.run([KAMCTL, *args], capture_output=True, text=True, timeout=20, env=env,
                              stdin=subprocess.DEVNULL)
    finally:
        os.unlink(os.path.join(home, ".kamctlrc"))
        os.rmdir(home)


def test_kamctl_rpc(srv):
    r = kamctl(srv, "rpc", "jsonrpc.echo", "hello", "7")
    assert r.returncode == 0, r.stderr
    assert '"result": [' in r.stdout and '"hello"' in r.stdout and "7" in r.stdout
    r = kamctl(srv, "rpc", "no.such")
    assert "Method Not Found" in r.stdout


def test_kamctl_ps_lists_the_process_titles(srv):
    r = kamctl(srv, "ps")
    assert r.returncode == 0, r.stderr
    for title in ("main process - attendant", "udp receiver child=0", "JSONRPCS FIFO", "JSONRPCS DATAGRAM"):
        assert title in r.stdout, r.stdout


def test_kamctl_uptime(srv):
    r = kamctl(srv, "uptime")
    assert r.returncode == 0, r.stderr
    assert '"up_since"' in r.stdout and '"uptime"' in r.stdout and '"now"' in r.stdout, r.stdout


def test_kamctl_stats(srv):
    r = kamctl(srv, "stats")
    assert r.returncode == 0, r.stderr
    assert "core:rcv_requests = " in r.stdout, r.stdout


# -- the same requests against Kamailio 5.6.3 ---------------------------------------------------
KAM_CFG = """
debug=2
children=1
log_stderror=yes
listen=udp:127.0.0.1:LPORT
loadmodule "jsonrpcs.so"
loadmodule "sl.so"
request_route { sl_send_reply("200", "ok"); exit; }
"""
SAME = [
    req("system.methodHelp", "core.echo", rid=4),
    req("system.methodHelp", "no.such", rid=5),
    req("no.such", rid=3),
    {"jsonrpc": "2.0", "method": "jsonrpc.echo", "params": ["q", 5], "id": "s"},
    {"jsonrpc": "2.0", "method": "jsonrpc.echo", "params": {"a": "q"}, "id": 1.5},
    {"jsonrpc": "2.0", "method": "jsonrpc.echo", "params": "zz", "id": None},
    {"jsonrpc": "2.0", "method": "jsonrpc.echo", "id": True},
    {"jsonrpc": "2.0", "method": "jsonrpc.echo"},
    {"jsonrpc": "2.0", "id": 8},
]
SHAPED = [
    {"jsonrpc": "2.0", "method": "core.echo", "params": [1, "a", 2.5], "id": 7},
    req("system.listMethods", rid=10),
]


def shape(v):
    if isinstance(v, dict):
        return {k: shape(x) for k, x in v.items()}
    if isinstance(v, list):
        return "list"
    return type(v).__name__


@pytest.mark.kamailio
def test_replies_have_kamailios_shapes(srv):
    if not os.access(kamailio_binary(), os.X_OK):
        pytest.skip(SKIP_KAMAILIO)
    with run_kamailio(KAM_CFG, ready_file="kamailio_rpc.sock") as k:
        time.sleep(0.2)
        for r in SAME:       # byte for byte, over both transports
            assert fifo_call(srv.rundir, r) == fifo_call(k.rundir, r), r
            assert dgram_call(srv.rundir, r) == dgram_call(k.rundir, r), r
        for r in SHAPED:     # values differ (method lists, echo conversions): same keys and types
            ours, theirs = json.loads(fifo_call(srv.rundir, r)), json.loads(fifo_call(k.rundir, r))
            assert shape(ours) == shape(theirs) and list(ours) == list(theirs), r
        ours = json.loads(dgram_call(srv.rundir, req("system.listMethods")))["result"]
        theirs = json.loads(dgram_call(k.rundir, req("system.listMethods")))["result"]
        assert {"system.listMethods", "system.methodHelp", "core.echo", "jsonrpc.echo"} <= set(ours) & set(theirs)
        for bad in ('{"jsonrpc": "2.0", "method": "core.echo", "params": [1,, "reply_name": "@REPLY@"}',
                    '{"jsonrpc": "1.0", "method": "core.echo", "reply_name": "@REPLY@", "id": 1}',
                    '{"jsonrpc": "2.0", "method": "core.echo", "id": 1}'):
            assert fifo_call(srv.rundir, bad, timeout=0.6) == fifo_call(k.rundir, bad, timeout=0.6) == b""
        assert dgram_call(srv.rundir, b"{oops", timeout=0.4) is None
        assert dgram_call(k.rundir, b"{oops", timeout=0.4) is None
