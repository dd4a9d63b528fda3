"""The jsonrpcs module in-process (asyncd/modules/jsonrpcs.py): mod_init makes
the FIFO and the socket where Kamailio does, with its modes, refuses what
Kamailio refuses, mod_destroy removes them; jsonrpc_exec() and $jsonrpl;
handle_request() for xhttp."""
import json
import os
import shutil
import socket
import stat
import tempfile

import pytest

from asyncd.cfg.compiler import compile_cfg
from asyncd.core.context import ProcState
from asyncd.core.errors import CfgError
from asyncd.modules import jsonrpcs
from asyncd.sip import parse_msg
from bench.servers import free_udp_port

OPTIONS = (b"OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK1\r\n"
           b"From: <sip:b@127.0.0.1>;tag=1\r\nTo: <sip:a@127.0.0.1>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\n"
           b"Content-Length: 0\r\n\r\n")


@pytest.fixture
def tmp():
    d = tempfile.mkdtemp(prefix="jsonrpcs-t-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def compiled(tmp, params="", route="exit;"):
    text = f'loadmodule "jsonrpcs.so"\n{params}\nrequest_route {{ {route} }}\n'
    s = compile_cfg(text=text)
    s.core["run_dir"] = os.path.join(tmp, "run")
    return s


@pytest.fixture
def inited(tmp):
    made = []

    def init(params=""):
        s = compiled(tmp, params)
        jsonrpcs.mod_init(s)
        made.append(s)
        return s
    yield init
    for s in made:
        jsonrpcs.mod_destroy(s)


def test_default_fifo_and_socket_in_the_run_dir_with_kamailios_modes(tmp, inited):
    s = inited()
    run = os.path.join(tmp, "run")
    fifo, sock = os.path.join(run, "kamailio_rpc.fifo"), os.path.join(run, "kamailio_rpc.sock")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and stat.S_IMODE(os.stat(fifo).st_mode) == 0o660
    assert stat.S_ISSOCK(os.stat(sock).st_mode) and stat.S_IMODE(os.stat(sock).st_mode) == 0o660
    titles = [(r.title, r.rank, r.count) for r in jsonrpcs.procs(s)]
    assert titles == [("JSONRPCS FIFO", -2, 1), ("JSONRPCS DATAGRAM", -2, 1)]
    jsonrpcs.mod_destroy(s)
    assert not os.path.exists(fifo) and not os.path.exists(sock)


def test_transport_bits_modes_workers_and_a_stale_file(tmp, inited):
    run = os.path.join(tmp, "run")
    os.makedirs(run)
    with open(os.path.join(run, "my.fifo"), "w") as f:
        f.write("left by a killed run")
    s = inited('modparam("jsonrpcs", "transport", 2)\nmodparam("jsonrpcs", "fifo_name", "my.fifo")\n'
               'modparam("jsonrpcs", "fifo_mode", 0600)')
    assert stat.S_ISFIFO(os.stat(os.path.join(run, "my.fifo")).st_mode)
    assert stat.S_IMODE(os.stat(os.path.join(run, "my.fifo")).st_mode) == 0o600
    assert [r.title for r in jsonrpcs.procs(s)] == ["JSONRPCS FIFO"]
    jsonrpcs.mod_destroy(s)
    s = inited('modparam("jsonrpcs", "transport", 4)\nmodparam("jsonrpcs", "dgram_workers", 3)\n'
               f'modparam("jsonrpcs", "dgram_socket", "{tmp}/abs.sock")')
    assert [(r.title, r.count) for r in jsonrpcs.procs(s)] == [("JSONRPCS DATAGRAM", 3)]
    assert stat.S_ISSOCK(os.stat(f"{tmp}/abs.sock").st_mode)


def test_udp_dgram_socket(tmp, inited):
    port = free_udp_port()
    s = inited(f'modparam("jsonrpcs", "transport", 4)\nmodparam("jsonrpcs", "dgram_socket", "udp:127.0.0.1:{port}")')
    ep = jsonrpcs._open_dgram(ProcState(s), 0)[0]
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.bind(("127.0.0.1", 0))
    c.settimeout(2)
    c.sendto(b'{"jsonrpc": "2.0", "method": "core.echo", "params": ["u"], "id": 1}', ("127.0.0.1", port))
    ep.on_readable(ProcState(s))
    assert json.loads(c.recv(65536))["result"] == ["u"]     # core.echo is RET_ARRAY
    c.close()


@pytest.mark.parametrize("params, text", [
    ('modparam("jsonrpcs", "transport", 1)', "XHTTP"),
    ('modparam("jsonrpcs", "fifo_reply_dir", "/nonexistent/")', "not a directory"),
    ('modparam("jsonrpcs", "fifo_user", "no-such-user-x")', "bad fifo user"),
    ('modparam("jsonrpcs", "transport", 4)\nmodparam("jsonrpcs", "dgram_socket", "udp:127.0.0.1:80")',
     "1024,65535"),
])
def test_startup_errors(tmp, params, text):
    s = compiled(tmp, params)
    with pytest.raises(CfgError, match=text):
        jsonrpcs.mod_init(s)
    jsonrpcs.mod_destroy(s)


def test_transport_zero_leaves_out_a_failing_transport(tmp, inited):
    s = inited('modparam("jsonrpcs", "transport", 0)\nmodparam("jsonrpcs", "fifo_reply_dir", "/nonexistent/")')
    assert [r.title for r in jsonrpcs.procs(s)] == ["JSONRPCS DATAGRAM"]


def test_a_bad_modparam_type_is_a_cfg_error(tmp):
    with pytest.raises(CfgError):
        compiled(tmp, 'modparam("jsonrpcs", "transport", "fifo")')


def test_jsonrpc_exec_keeps_the_reply_for_jsonrpl(tmp):
    route = ('jsonrpc_exec(\'{"jsonrpc": "2.0", "method": "core.echo", "params": ["a"], "id": 1}\');'
             '$var(c) = $jsonrpl(code); $var(t) = $jsonrpl(text); $var(b) = $jsonrpl(body);'
             '$var(r1) = jsonrpc_exec("not json"); $var(c2) = $jsonrpl(code);'
             'jsonrpc_exec(\'{"jsonrpc": "2.0", "method": "no.such"}\');'
             '$var(c3) = $jsonrpl(code); $var(t3) = $jsonrpl(text);')
    s = compiled(tmp, 'loadmodule "pv.so"', route)
    proc = ProcState(s)
    s.run_request_route(s.new_ctx(parse_msg(OPTIONS, ("127.0.0.1", 5999), ("127.0.0.1", 5060)), proc))
    v = proc.vars
    assert (v["c"], v["t"]) == (200, "OK")
    assert json.loads(v["b"]) == {"jsonrpc": "2.0", "result": ["a"], "id": 1}
    assert (v["r1"], v["c2"]) == (-1, 200)      # not JSON: false, the last reply stays
    assert (v["c3"], v["t3"]) == (500, "Method Not Found")


def test_jsonrpl_names_are_checked_at_startup(tmp):
    with pytest.raises(CfgError):
        compiled(tmp, 'loadmodule "pv.so"', "$var(x) = $jsonrpl(nope);")


def test_handle_request_gives_what_jsonrpc_dispatch_replies(tmp):
    s = compiled(tmp)
    code, reason, body = jsonrpcs.handle_request(s, None, b'{"jsonrpc": "2.0", "method": "core.echo", "id": 2}')
    assert (code, reason) == (200, "OK") and json.loads(body)["id"] == 2
    code, reason, body = jsonrpcs.handle_request(s, None, b'{"jsonrpc": "2.0", "method": "x.y", "id": 2}')
    assert (code, reason) == (500, "Method Not Found") and json.loads(body)["error"]["code"] == 500
    assert jsonrpcs.handle_request(s, None, b"{oops") is None


def test_jsonrpc_echo_is_kamailios(tmp):
    s = compiled(tmp)
    assert s.rpc.call(s, None, "jsonrpc.echo", ["q", 5]).values == ["q", 5]
    assert s.rpc.call(s, None, "jsonrpc.echo", ["q", "x"]).values == ["q"]
    assert s.rpc.call(s, None, "jsonrpc.echo", []).values == []
    assert s.rpc.lookup("jsonrpc.echo").flags & 1


def test_reply_names_that_leave_the_reply_dir_are_refused():
    jsonrpcs.S.reply_dir = "/tmp/"
    for bad in ("../etc/x", "a/b", "a.b", "a\\b", "", "x" * 200, "a\0b"):
        assert jsonrpcs._reply_path(bad) is None
    assert jsonrpcs._reply_path("kamailio_receiver_1") == "/tmp/kamailio_receiver_1"


def test_reply_fifo_that_nobody_opens_gives_up(tmp):
    jsonrpcs.S.reply_dir = tmp + "/"
    os.mkfifo(os.path.join(tmp, "r1"))
    assert jsonrpcs._open_reply_fifo("r1") is None          # ~0.3 s of retries, then no client
    with open(os.path.join(tmp, "plain"), "w"):
        pass
    os.symlink(os.path.join(tmp, "r1"), os.path.join(tmp, "link"))
    rfd = os.open(os.path.join(tmp, "r1"), os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert jsonrpcs._open_reply_fifo("plain") is None   # not a FIFO
        assert jsonrpcs._open_reply_fifo("link") is None    # a symlink
        fd = jsonrpcs._open_reply_fifo("r1")
        assert fd is not None
        # nobody reads: the write gives up at its deadline instead of blocking
        assert jsonrpcs._write_all(fd, b"x" * (1 << 20), 0) is False
        os.close(fd)
    finally:
        os.close(rfd)


def test_dgram_endpoint_answers_and_survives_a_vanished_client(tmp, inited):
    s = inited('modparam("jsonrpcs", "transport", 4)')
    proc = ProcState(s)
    ep = jsonrpcs._open_dgram(proc, 0)[0]
    path = os.path.join(tmp, "run", "kamailio_rpc.sock")
    gone = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    gone.bind(os.path.join(tmp, "gone"))
    gone.sendto(b'{"jsonrpc": "2.0", "method": "core.echo", "id": 1}', path)
    gone.close()
    os.unlink(os.path.join(tmp, "gone"))
    c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    c.bind(os.path.join(tmp, "c"))
    c.settimeout(2)
    c.sendto(b'{"jsonrpc": "2.0", "method": "core.echo", "params": ["z"], "id": 2}', path)
    ep.on_readable(proc)            # the first reply has nowhere to go: logged, not raised
    assert json.loads(c.recv(65536))["result"] == ["z"]
    c.close()


def test_fifo_endpoint_never_raises_into_the_loop(tmp, inited, monkeypatch):
    s = inited('modparam("jsonrpcs", "transport", 2)')
    ep = jsonrpcs._open_fifo(ProcState(s), 0)[0]

    def broken(proc, doc):
        raise OSError("disk on fire")
    monkeypatch.setattr(jsonrpcs, "_serve_fifo", broken)
    os.write(jsonrpcs.S.fifo_wfd, b'{"jsonrpc": "2.0", "method": "core.echo", "reply_name": "r"}')
    ep.on_readable(ProcState(s))        # logged, not raised: the loop keeps the endpoint
    assert not ep.closed


def test_a_failing_datagram_socket_leaves_no_fifo_behind(tmp):
    s = compiled(tmp, 'modparam("jsonrpcs", "dgram_socket", "udp:127.0.0.1:80")')
    with pytest.raises(CfgError):
        jsonrpcs.mod_init(s)
    assert os.listdir(os.path.join(tmp, "run")) == []
