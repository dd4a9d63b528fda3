"""asyncd-ctl against a running asyncd: ps, uptime, rpc with kamcmd-typed
arguments, --json, a fault's exit status and text, no answer.

Runs in: the pytest process; asyncd and asyncd-ctl run as subprocesses.
"""
import json
import os
import subprocess
import sys
import tempfile

import pytest

from bench.servers import free_tcp_port
from tests.helpers import run_server
from tests.helpers.server import REPO_ROOT

CFG = """
debug=2
listen=udp:127.0.0.1:LPORT
children=1
loadmodule "sl.so"
loadmodule "ctl.so"
modparam("ctl", "binrpc", "unix:{path}")
modparam("ctl", "binrpc", "tcp:127.0.0.1:{tcp}")
request_route {{ sl_send_reply("404", "Not here"); }}
"""


def ctl(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-m", "asyncd.ctl_client", *args], capture_output=True,
                          text=True, timeout=20, env=env, cwd=REPO_ROOT)


@pytest.fixture(scope="module")
def srv():
    d = tempfile.mkdtemp(prefix="ctlc-")
    path = os.path.join(d, "ctl.sock")
    tcp = free_tcp_port()
    with run_server(CFG.format(path=path, tcp=tcp)) as s:
        s.sock = f"unix:{path}"
        s.tcp = f"tcp:127.0.0.1:{tcp}"
        yield s
    os.rmdir(d)


def test_ps_table_and_json(srv):
    r = ctl("-s", srv.sock, "ps")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["IDX", "PID", "DESCRIPTION"]
    assert lines[1].split(None, 2) == ["0", str(srv.pid), "main process - attendant"]
    assert any(line.endswith("ctl handler") for line in lines)
    r = ctl("-s", srv.tcp, "--json", "ps")
    rows = json.loads(r.stdout)
    assert rows[0] == {"IDX": 0, "PID": srv.pid, "DSC": "main process - attendant"}
    assert {p.pid for p in srv.processes()} == {row["PID"] for row in rows}


def test_uptime(srv):
    r = ctl("-s", srv.sock, "uptime")
    assert r.returncode == 0 and r.stdout.startswith("up ") and " s, since " in r.stdout
    u = json.loads(ctl("-s", srv.sock, "--json", "uptime").stdout)
    assert set(u) == {"now", "up_since", "uptime"} and isinstance(u["uptime"], int)


def test_rpc_types_arguments_as_kamcmd(srv):
    r = ctl("-s", srv.sock, "--json", "rpc", "core.printi", "7", "-3")
    assert json.loads(r.stdout) == [7, -3]
    r = ctl("-s", srv.sock, "--json", "rpc", "core.prints", "s:5060", "abc")
    assert json.loads(r.stdout) == ["5060", "abc"]
    r = ctl("-s", srv.sock, "rpc", "core.shmmem", "k")
    assert r.stdout.startswith("{\n\ttotal: ") and r.stdout.endswith("}\n")


def test_fault_exit_status_and_text(srv):
    r = ctl("-s", srv.sock, "rpc", "core.printi", "abc")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == ("error: 400 - error at parameter 0: expected integer type but record doesn't "
                        "match type\n")
    r = ctl("-s", srv.sock, "rpc", "no.such")
    assert r.returncode == 1 and r.stderr == "error: 500 - command no.such not found\n"


def test_no_answer_exit_status():
    r = ctl("-s", "unix:/nonexistent/ctl", "ps")
    assert r.returncode == 2 and "No such file" in r.stderr
