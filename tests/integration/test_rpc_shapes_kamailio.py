"""htable.*, pv.shvGet and cfg.* reply shapes and faults, asyncd against the
real Kamailio 5.6: the same calls on the same tables, compared by keys,
nesting, member order and value types (not values: slots and times differ).

Kamailio answers over its jsonrpcs datagram socket (parsed keeping repeated
member names, as pv.shvGet's `shv` ones); asyncd through `script.rpc.call`
with the reply put together as jsonrpcs does (one value, or an array for a
RET_ARRAY method).

Runs in: the pytest process; starts Kamailio.
"""
import json
import os
import socket
import tempfile

import pytest

from asyncd.cfg.compiler import compile_cfg
from asyncd.core import log
from asyncd.core.rpc import RET_ARRAY, RpcFault
from bench.servers import kamailio_binary
from shm.arena import ShmArena
from tests.helpers.kamailio import SKIP_KAMAILIO, run_kamailio

pytestmark = [pytest.mark.kamailio,
              pytest.mark.skipif(kamailio_binary() is None, reason=SKIP_KAMAILIO)]

COMMON = r'''
loadmodule "pv.so"
loadmodule "htable.so"
loadmodule "cfg_rpc.so"
modparam("htable", "htable", "t=>size=4;autoexpire=100")
modparam("htable", "htable", "u=>size=2")
modparam("pv", "shvset", "g=i:7")
modparam("pv", "shvset", "h=s:hello")
request_route { $shv(x) = 1; exit; }
'''
KAMAILIO_CFG = ('#!KAMAILIO\nlisten=udp:127.0.0.1:LPORT\nchildren=1\n'
                'loadmodule "ctl.so"\nloadmodule "jsonrpcs.so"\n' + COMMON)

SETUP = [("htable.sets", ["t", "k1", "v1"]), ("htable.seti", ["t", "k2", 5])]
SAME = [("htable.dump", ["t"]), ("htable.get", ["t", "k1"]), ("htable.get", ["t", "k2"]),
        ("htable.listTables", []), ("htable.stats", []), ("pv.shvGet", []), ("pv.shvGet", ["g"]),
        ("cfg.get", ["core", "debug"]), ("cfg.list", []), ("cfg.help", ["core", "debug"])]
FAULTS = [("htable.get", ["t", "zz"]), ("htable.get", ["zz", "k"]), ("htable.dump", []),
          ("htable.delete", ["t", "zz"]), ("htable.reload", ["t"]), ("pv.shvGet", ["nope"]),
          ("pv.shvSet", ["g", "foo", "1"]), ("cfg.get", ["core", "nope"]),
          ("cfg.seti", ["core", "nope", 1]), ("cfg.get", ["core", "log_facility"])]


def shape(v):
    """Keys, nesting and scalar types; member order kept, array elements as a set."""
    if isinstance(v, dict):
        v = list(v.items())
    if isinstance(v, list) and v and all(isinstance(x, tuple) and len(x) == 2 for x in v):
        return ("struct", tuple((k, shape(x)) for k, x in v))
    if isinstance(v, list):
        return ("array", frozenset(shape(x) for x in v))
    return type(v).__name__


class KamailioRpc:
    def __init__(self, k):
        self.path = os.path.join(k.rundir, "kamailio_rpc.sock")
        self.me = os.path.join(tempfile.mkdtemp(prefix="rpc-client-"), "c.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.me)
        self.sock.settimeout(5)

    def __call__(self, method, params):
        req = {"jsonrpc": "2.0", "method": method, "params": params, "id": 1}
        self.sock.sendto(json.dumps(req).encode(), self.path)
        reply = json.loads(self.sock.recv(1 << 20), object_pairs_hook=list)
        reply = dict(reply)
        if "error" in reply:
            return ("fault", dict(reply["error"])["code"], dict(reply["error"])["message"])
        return reply["result"]

    def close(self):
        self.sock.close()
        os.unlink(self.me)
        os.rmdir(os.path.dirname(self.me))


def asyncd_rpc(s):
    def call(method, params):
        try:
            c = s.rpc.call(s, None, method, params)
        except RpcFault as e:
            return ("fault", e.code, e.text)
        if c.export.flags & RET_ARRAY or len(c.values) > 1:
            return list(c.values)
        return c.values[0] if c.values else {}
    return call


@pytest.fixture(scope="module")
def both():
    s = compile_cfg(text=COMMON)
    s.shm = ShmArena.create(16 << 20)
    s.init_modules()
    saved = log.state.level
    s.cfg.allocate(s.shm)
    ours = asyncd_rpc(s)
    with run_kamailio(KAMAILIO_CFG) as k:
        theirs = KamailioRpc(k)
        for m, p in SETUP:
            assert theirs(m, p) == ours(m, p)
        yield ours, theirs
        theirs.close()
    log.state.level = saved
    s.shm.destroy()


@pytest.mark.parametrize("method,params", SAME, ids=[f"{m} {' '.join(map(str, p))}" for m, p in SAME])
def test_reply_shapes_match_kamailio(both, method, params):
    ours, theirs = both
    a, b = ours(method, list(params)), theirs(method, list(params))
    if method == "cfg.help":
        # two values (BINRPC: two records); Kamailio's jsonrpcs keeps the last as `result`
        assert a[-1] == b and isinstance(a[0], str)
        return
    if method == "cfg.list":
        assert set(a) <= set(b)             # asyncd has fewer groups and variables
        assert shape(a) == shape(b)
        return
    assert shape(a) == shape(b), (a, b)


def test_cfg_get_group_is_a_subset_of_kamailios(both):
    ours, theirs = both
    a, b = dict(ours("cfg.get", ["core"])), dict(theirs("cfg.get", ["core"]))
    assert set(a) <= set(b) and all(type(a[k]) is type(b[k]) for k in a)


@pytest.mark.parametrize("method,params", FAULTS, ids=[f"{m} {' '.join(map(str, p))}" for m, p in FAULTS])
def test_faults_match_kamailio(both, method, params):
    ours, theirs = both
    assert ours(method, list(params)) == theirs(method, list(params))
