"""The same RPC methods, asked with the real kamcmd, answer with the same
shapes on Kamailio 5.6.3 and on asyncd running an equivalent cfg: the same
struct member names in the same order, the same number and kind (integer
or string, as kamcmd prints them) of values, the same faults. Values
(pids, times, sizes) are not compared.

CASES is a table other parts of the ops work extend: (method, args, how).
`how` is "exact" (the whole printed shape is equal) or "items" (each
top-level value is one of the shapes the other server printed: lists
whose length differs, such as the process list).

Runs in: the pytest process; Kamailio and asyncd run as subprocesses.
"""
import os
import re
import tempfile

import pytest

from bench.servers import kamailio_binary
from tests.helpers import run_server
from tests.helpers.kamailio import KAMCMD, SKIP_KAMAILIO, SKIP_KAMCMD, kamcmd, run_kamailio

pytestmark = [pytest.mark.kamailio,
              pytest.mark.skipif(KAMCMD is None, reason=SKIP_KAMCMD)]

CFG = """
debug=2
listen=udp:127.0.0.1:LPORT
children=2
loadmodule "sl.so"
loadmodule "ctl.so"
request_route { sl_send_reply("404", "Not here"); }
"""

CASES = [
    ("core.psx", (), "items"),
    ("core.psa", (), "items"),
    ("core.ps", (), "items"),
    ("core.uptime", (), "exact"),
    ("core.version", (), "exact"),
    ("core.info", (), "exact"),
    ("core.shmmem", (), "exact"),
    ("core.shmmem", ("m",), "exact"),
    ("core.shmmem", ("x",), "exact"),
    ("core.tcp_info", (), "exact"),
    ("core.pwd", (), "exact"),
    ("core.arg", (), "items"),
    ("core.modules", (), "items"),
    ("core.prints", ("a", "s:1"), "exact"),
    ("core.printi", (1, 2), "exact"),
    ("core.printi", ("abc",), "exact"),
    ("core.echo", ("a", 1), "exact"),
    ("core.sockets_list", (), "exact"),
    ("system.listMethods", (), "items"),
    ("system.methodHelp", ("core.psx",), "exact"),
    ("system.methodHelp", (), "exact"),
    ("system.methodHelp", ("no.such",), "exact"),
    ("system.methodSignature", ("core.psx",), "exact"),
    ("no.such.method", (), "exact"),
    ("ctl.listen", (), "exact"),
    ("ctl.connections", (), "exact"),
    ("ctl.who", (), "exact"),
]

_INT = re.compile(r"-?\d+")


def _kind(text):
    return "int" if _INT.fullmatch(text) else "str"


def shape(out):
    """kamcmd's printed reply -> its shape: one entry per line, values
    replaced by their kind; a fault stays as it is (code and text)."""
    if out.startswith("error:"):
        return [out.strip()]
    lines = []
    for line in out.rstrip("\n").split("\n"):
        depth = len(line) - len(line.lstrip("\t"))
        body = line.strip("\t")
        if body in ("{", "}"):
            lines.append(("\t" * depth) + body)
            continue
        m = re.match(r"([^\s:{}]+): ?(.*)$", body)
        if m and depth:
            v = m.group(2)
            lines.append(f"{chr(9) * depth}{m.group(1)}: {v if v == '{' else _kind(v)}")
        else:
            lines.append(("\t" * depth) + _kind(body))
    return lines


def items(lines):
    """Top-level values: a scalar line, or a struct from `{` to its `}`."""
    out, cur = [], []
    for line in lines:
        cur.append(line)
        if not line.startswith("\t") and line != "{":
            out.append(tuple(cur))
            cur = []
    return out


@pytest.fixture(scope="module")
def servers():
    if kamailio_binary() is None:
        pytest.skip(SKIP_KAMAILIO)
    with run_kamailio(CFG) as kam:
        run = tempfile.mkdtemp(prefix="ctl-vs-")
        with run_server(CFG, args=("-Y", os.path.join(run, "run"))):
            yield kam.ctl, f"unix:{run}/run/kamailio_ctl"
        os.rmdir(os.path.join(run, "run"))
        os.rmdir(run)


def _case_id(case):
    method, args, _how = case
    return "-".join([method, *map(str, args)])


@pytest.mark.parametrize("method,args,how", CASES, ids=[_case_id(c) for c in CASES])
def test_same_shape_as_kamailio(servers, method, args, how):
    kam_sock, our_sock = servers
    theirs = kamcmd(kam_sock, method, *args)
    ours = kamcmd(our_sock, method, *args)
    assert theirs.returncode == ours.returncode == 0, (theirs.stderr, ours.stderr)
    want, got = shape(theirs.stdout), shape(ours.stdout)
    if how == "exact":
        assert got == want, f"Kamailio:\n{theirs.stdout}\nasyncd:\n{ours.stdout}"
    else:
        assert got and want
        assert set(items(got)) <= set(items(want)), f"Kamailio:\n{theirs.stdout}\nasyncd:\n{ours.stdout}"
