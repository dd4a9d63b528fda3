"""The statistics asyncd registers against the real Kamailio 5.6.3's: every
core:/sl:/tmx:/shmem: name `kamcmd stats.get_statistics all` lists exists
in asyncd, and `stats.fetch all`, `sl.stats`, `tm.stats`, `cnt.get_vars
script` have the same keys in the same order (asyncd's through
script.rpc.call, values as BINRPC renders them: kamcmd prints a struct as
`key: value` lines).

Runs in: the pytest process; Kamailio and kamcmd are subprocesses.
"""
import pytest

from asyncd.cfg.compiler import compile_cfg
from asyncd.core.context import ProcState
from bench.servers import kamailio_binary
from shm.arena import ShmArena
from tests.helpers.kamailio import KAMCMD, SKIP_KAMAILIO, SKIP_KAMCMD, kamcmd, run_kamailio

MODS = ("ctl", "kex", "sl", "tm", "tmx", "counters", "pv")
BODY = """
modparam("counters", "script_counter", "foo first one")
modparam("counters", "script_counter", "bar")
request_route {
    cnt_inc("foo");
    sl_send_reply("200", "OK");
}
"""
KAM_CFG = ("#!KAMAILIO\nlisten=udp:127.0.0.1:LPORT\nchildren=1\ndisable_tcp=yes\n"
           'mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"\n'
           + "".join(f'loadmodule "{m}.so"\n' for m in MODS) + BODY)
OURS_CFG = "".join(f'loadmodule "{m}.so"\n' for m in MODS if m != "ctl") + BODY


def _struct_keys(text):
    """kamcmd's rendering of one struct -> its keys in order."""
    return [ln.strip().split(":", 1)[0] for ln in text.splitlines()
            if ln.startswith("\t") and ":" in ln]


def _ours():
    script = compile_cfg(text=OURS_CFG)
    script.shm = ShmArena.create(8 << 20)
    script.init_modules()
    script.stats.allocate(script.shm, 2)
    proc = ProcState(script=script)
    proc.cnt = script.stats.row(1)
    return script, proc


@pytest.mark.kamailio
def test_statistics_names_and_rpc_shapes_match_kamailio():
    if not kamailio_binary():
        pytest.skip(SKIP_KAMAILIO)
    if not KAMCMD:
        pytest.skip(SKIP_KAMCMD)
    with run_kamailio(KAM_CFG) as k:
        out = {args: kamcmd(k.ctl, *args.split()) for args in (
            "stats.get_statistics all", "stats.fetch all", "sl.stats", "tm.stats",
            "cnt.get_vars script")}
    for args, r in out.items():
        assert r.returncode == 0, (args, r.stderr)
    script, proc = _ours()
    try:
        def call(method, *params):
            return script.rpc.call(script, proc, method, list(params)).values

        kam = {ln.split(" = ")[0] for ln in out["stats.get_statistics all"].stdout.splitlines()
               if " = " in ln}
        ours = {ln.split(" = ")[0] for ln in call("stats.get_statistics", "all")}
        for group in ("core", "sl", "tmx", "shmem", "script"):
            want = {n for n in kam if n.startswith(group + ":")}
            assert want and want <= ours, (group, sorted(want - ours))
        # Kamailio's dns: group (its resolver) is the one asyncd cannot have
        assert {n.split(":")[0] for n in kam - ours} <= {"dns"}, sorted(kam - ours)
        assert {n.split(":")[0] for n in ours - kam} == set(), sorted(ours - kam)

        fetched, = call("stats.fetch", "all")
        kam_fetch = [k for k in _struct_keys(out["stats.fetch all"].stdout)
                     if not k.startswith("dns.")]
        assert [k for k, _v in fetched] == kam_fetch
        assert all(isinstance(v, str) for _k, v in fetched)
        for method in ("sl.stats", "tm.stats", "cnt.get_vars script"):
            m, *params = method.split()
            st, = call(m, *params)
            assert list(st) == _struct_keys(out[method].stdout), method
            assert all(isinstance(v, int) for v in st.values())
    finally:
        script.shm.destroy()
