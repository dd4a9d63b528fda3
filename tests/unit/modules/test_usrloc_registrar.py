"""usrloc + registrar through the real cfg compiler, in process: startup
errors for what needs a database, save() without a reply (flag 0x02),
lookup() rewriting the R-URI and filling the destination set in q order,
registered(), unregister(), the statistics, and a record saved in a forked
child seen by the parent.

Runs in: the pytest process (and one forked child).
"""
import pytest

from asyncd.cfg.compiler import compile_cfg
from asyncd.core.context import ProcState
from asyncd.core.errors import CfgError
from asyncd.modules import usrloc
from asyncd.sip import parse_msg
from shm.arena import ShmArena
from tests.unit.shm.shm_testutil import fork, wait_all

HEAD = '''
loadmodule "pv.so"
loadmodule "sl.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
'''

ROUTE = r'''
request_route {
    if (method == "REGISTER") { save("location", "0x02"); exit; }
    if ($rU == "gone") { unregister("location", "sip:bob@h"); exit; }
    $var(reg) = registered("location");
    $var(fetched) = reg_fetch_contacts("location", "$ru", "p");
    $var(count) = $(ulc(p=>count));
    $var(addr1) = $(ulc(p=>addr)[1]);
    $var(q0) = $(ulc(p=>q)[0]);
    $var(rc) = lookup("location");
}
'''


def _register(user, contact, callid="c1", cseq=1, extra=""):
    return (f"REGISTER sip:h SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-{callid}{cseq}\r\n"
            f"From: <sip:{user}@h>;tag=1\r\nTo: <sip:{user}@h>\r\nCall-ID: {callid}\r\n"
            f"CSeq: {cseq} REGISTER\r\nContact: {contact}\r\n{extra}Content-Length: 0\r\n\r\n").encode()


def _invite(user):
    return (f"INVITE sip:{user}@h SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-i\r\n"
            f"From: <sip:a@h>;tag=1\r\nTo: <sip:{user}@h>\r\nCall-ID: i1\r\n"
            f"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").encode()


@pytest.fixture
def script():
    s = compile_cfg(text=HEAD + ROUTE)
    s.shm = ShmArena.create(16 << 20)
    s.init_modules()
    yield s
    s.shm.destroy()


def _run(s, data):
    msg = parse_msg(data, ("10.0.0.1", 5060), ("127.0.0.1", 5060))
    proc = ProcState(script=s)
    ctx = s.new_ctx(msg, proc)
    s.run_request_route(ctx)
    return ctx, proc


@pytest.mark.parametrize("param, text", [('"db_mode", 2', "db_mode 2 is not supported"),
                                         ('"preload", "location"', "preload needs a database")])
def test_database_features_are_startup_errors(param, text):
    s = compile_cfg(text=HEAD + f'modparam("usrloc", {param})\n' + ROUTE)
    s.shm = ShmArena.create(4 << 20)
    try:
        with pytest.raises(CfgError) as e:
            s.init_modules()
        assert text in str(e.value)
    finally:
        s.shm.destroy()


def test_save_lookup_dset_registered_unregister(script):
    _run(script, _register("bob", "<sip:low@10.0.0.2>;q=0.1"))
    _run(script, _register("bob", "<sip:high@10.0.0.3>;q=0.9", callid="c2"))
    ctx, _p = _run(script, _invite("bob"))
    assert ctx.proc.vars["rc"] == 1 and ctx.proc.vars["reg"] == 1
    assert ctx.msg.new_uri == "sip:high@10.0.0.3"               # highest q first
    assert [b.uri for b in ctx.msg.dset] == ["sip:low@10.0.0.2"]
    v = ctx.proc.vars                                            # reg_fetch_contacts + $ulc
    assert (v["fetched"], v["count"], v["addr1"], v["q0"]) == (1, 2, "sip:low@10.0.0.2", 900)
    ctx, _p = _run(script, _invite("nobody"))
    assert ctx.proc.vars["rc"] == -1 and ctx.proc.vars["reg"] == -1
    st = script.stats
    assert st.get(st.handle("usrloc", "location_contacts")) == 2
    assert st.get(st.handle("usrloc", "registered_users")) == 1
    _run(script, _register("gone", "<sip:g@10.0.0.4>"))
    assert usrloc.S.domains["location"].get("bob")
    _run(script, _invite("gone"))                                # unregister("...bob@h")
    assert usrloc.S.domains["location"].get("bob") == []


def test_zero_expires_and_star_remove(script):
    d = usrloc.S.domains["location"]
    _run(script, _register("x", "<sip:a@1.1.1.1>"))
    _run(script, _register("x", "<sip:b@1.1.1.1>", callid="c2"))
    _run(script, _register("x", "<sip:a@1.1.1.1>;expires=0", cseq=2))
    assert [c[0] for c in d.get("x")] == ["sip:b@1.1.1.1"]
    _run(script, _register("x", "*", callid="c3", extra="Expires: 0\r\n"))
    assert d.get("x") == []


def test_a_child_saves_the_parent_looks_up(script):
    pid = fork(lambda: _run(script, _register("kid", "<sip:kid@10.0.0.9>")))
    assert set(wait_all([pid], 20).values()) == {0}
    ctx, _p = _run(script, _invite("kid"))
    assert ctx.msg.new_uri == "sip:kid@10.0.0.9"


def test_get_all_ucontacts_by_cflags(script):
    _run(script, _register("n1", "<sip:n1@10.0.0.5>"))
    d = usrloc.S.domains["location"]

    def natted(cs):
        return [c[:6] + (1 << 6,) + c[7:] for c in cs], None
    d.update("n1", natted)
    _run(script, _register("n2", "<sip:n2@10.0.0.6>"))
    assert [c[0] for c in usrloc.get_all_ucontacts(1 << 6)] == ["sip:n1@10.0.0.5"]
    assert sorted(c[0] for c in usrloc.get_all_ucontacts()) == ["sip:n1@10.0.0.5", "sip:n2@10.0.0.6"]


def test_domain_aor_names_the_table_and_aor_or_logs_a_bad_uri(monkeypatch):
    import io
    from types import SimpleNamespace

    from asyncd.core import log
    from asyncd.modules.registrar_save import domain_aor
    out = io.StringIO()
    monkeypatch.setattr(log.state, "out", out)
    monkeypatch.setattr(log.state, "stderr", True)
    monkeypatch.setattr(log.state, "level", log.L_ERR)
    ul = SimpleNamespace(use_domain=1, domain=lambda t: "D" if t == "location" else None)
    cfg = SimpleNamespace(case_sensitive=0)
    assert domain_aor(cfg, ul, "location", "sip:Alice@Example.COM", "f") == ("D", "alice@example.com")
    assert domain_aor(cfg, ul, "other", "sip:a@x", "f") is None
    assert domain_aor(cfg, ul, "location", "not a uri", "unregister") is None
    assert "unregister(): bad AOR URI 'not a uri'" in out.getvalue()
