"""tm's transaction logic over real UDP sockets, in one process: a proxy
loop (parse, tm hooks, a Python "route"), a UAC socket and UAS sockets, and
tm's timer row run by the timer service's own loop object (workers/timer.py
TimerLoop), pumped by the test. The routes stand in for compiled cfg
routes so the state machine is tested without the rest of the server; the
full server is exercised by test_tm_sipp.py.
"""
import os
import signal
import socket
import time

import pytest

from asyncd.core.cfg_groups import CfgGroups
from asyncd.core.context import ProcState, RunCtx
from asyncd.core.counters import Stats
from asyncd.core.errors import ScriptExit
from asyncd.core.route_types import FAILURE_ROUTE, REQUEST_ROUTE
from asyncd.modules import tm
from asyncd.modules.tm import api as tm_api
from asyncd.modules.tm import mod as tm_mod
from asyncd.modules.tm.cell import (B_PROV, BR_FLAGS, BR_REQ, BR_SOCK, BR_STATUS, F_COMPACT, F_FINAL,
                                    F_WAIT, Cell, Handle, compact_encode)
from asyncd.modules.tm.state import S as tm_state
from asyncd.sip import parse_msg
from shm.arena import ShmArena
from workers.timer import TimerLoop
from tests.helpers.sipclient import Reply, build_request

# one process: no server is started (tests/unit: marked unit by tests/conftest.py)


class FakeScript:
    def __init__(self, arena, routes, params=None):
        self.shm = arena
        self.routes = routes
        # as the compiler does: the export table's defaults, then the cfg's values
        self.modparams = {"tm": {**tm.EXPORTS.param_defaults(), **(params or {})}}
        self.modules = [tm.EXPORTS]
        self.rundir = None
        self.core = {}
        self.cfg = CfgGroups()          # tm declares its runtime cfg group in mod_init
        self.stats = Stats()

    def new_ctx(self, msg, proc, route_type=REQUEST_ROUTE):
        return RunCtx(msg, proc, route_type)

    def _run(self, name, ctx):
        try:
            return self.routes[name](ctx)
        except ScriptExit:
            return 0

    def run_failure_route(self, name, ctx):
        return self._run(name, ctx)

    def run_route(self, name, ctx, route_type=None):
        return self._run(name, ctx)

    run_onreply_route = run_branch_route = run_failure_route

    def has_route(self, name):
        return name in self.routes


def _udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


class Net:
    """Proxy + UAC + UAS sockets and a pump that moves everything along."""

    def __init__(self, routes, params=None, nuas=1):
        self.arena = ShmArena.create(16 << 20)
        self.script = FakeScript(self.arena, routes, params)
        tm_mod.mod_init(self.script)
        self.psock = _udp()
        self.proc = ProcState(self.script, rank=1, desc="test", role="receiver")
        self.proc.sockets = [self.psock]
        tm_mod.child_init(self.proc, 1)
        row = tm_mod.procs(self.script)[0]
        self.timer = TimerLoop(self.proc, row.handlers, 0)
        self.paddr = self.psock.getsockname()
        self.uac = _udp()
        self.uas = [_udp() for _ in range(nuas)]
        self.got = {}            # socket -> list of Reply

    def close(self):
        for s in [self.psock, self.uac] + self.uas:
            s.close()
        self.arena.destroy()

    def proxy_step(self):
        moved = False
        while True:
            try:
                data, src = self.psock.recvfrom(65536)
            except BlockingIOError:
                break
            moved = True
            msg = parse_msg(data, src, self.paddr, 0, "udp")
            if msg.is_request:
                ctx = self.script.new_ctx(msg, self.proc)
                if not tm_mod.request_in(ctx):
                    try:
                        self.script.routes["request"](ctx)
                    except ScriptExit:
                        pass
                    tm_mod.request_done(ctx)
            else:
                ctx = self.script.new_ctx(msg, self.proc, 128)
                assert tm_mod.reply_in(ctx), "reply not taken by tm"
        # the timer process's turn: take what was armed, fire what is due
        self.timer.take()
        before = self.fired()
        self.timer.fire()
        self.timer.drain_rings()
        self.timer.run_jobs(time.monotonic())
        after = self.fired()
        return moved or after > before

    @staticmethod
    def fired():
        """Timer entries run or skipped so far: the feed's and the delay rings'."""
        stats = [tm_state.timers.stats()] + [r.stats() for r in tm_state.rings.values()]
        return sum(st["run"] + st["skipped"] for st in stats)

    def drain(self, sock):
        out = self.got.setdefault(sock, [])
        while True:
            try:
                data, src = sock.recvfrom(65536)
            except BlockingIOError:
                return out
            out.append(Reply(data, src, time.monotonic()))

    def run(self, secs, until=None):
        end = time.monotonic() + secs
        while time.monotonic() < end:
            self.proxy_step()
            for s in [self.uac] + self.uas:
                self.drain(s)
            if until is not None and until():
                return True
            time.sleep(0.001)
        return False

    def send(self, sock, data, addr=None):
        sock.sendto(data, addr or self.paddr)

    def uas_reply(self, req, code, reason, to_tag="uas1", idx=0):
        """A reply as a UAS builds it from a received request (Reply object)."""
        lines = [f"SIP/2.0 {code} {reason}"]
        for v in req.hdrs("via"):
            lines.append("Via: " + v)
        lines.append("From: " + req.hdr("from"))
        to = req.hdr("to")
        lines.append("To: " + (to if (code == 100 or ";tag=" in to) else to + ";tag=" + to_tag))
        lines += ["Call-ID: " + req.hdr("call-id"), "CSeq: " + req.hdr("cseq"), "Content-Length: 0"]
        self.uas[idx].sendto(("\r\n".join(lines) + "\r\n\r\n").encode(), req.src)


def uas_addr(net, i=0):
    return net.uas[i].getsockname()


@pytest.fixture
def net_factory():
    made = []

    def make(routes, params=None, nuas=1):
        n = Net(routes, params, nuas)
        made.append(n)
        return n
    yield make
    for n in made:
        n.close()


def _relay_to(i):
    def route(ctx):
        host, port = ctx.proc._uas[i]
        return tm_api.t_relay(ctx, host, port)
    return route


def _reqs(net, sock, method):
    return [r for r in net.got.get(sock, []) if not r.is_reply and r.method == method]


def _rpls(net, sock, status=None):
    return [r for r in net.got.get(sock, []) if r.is_reply and (status is None or r.status == status)]


def test_invite_relay_100_180_200_and_wait_frees(net_factory):
    net = net_factory({"request": _relay_to(0)}, {"wt_timer": 200})
    net.proc._uas = [uas_addr(net)]
    data, br, cid = build_request("INVITE", "sip:bob@127.0.0.1", net.uac.getsockname())
    net.send(net.uac, data)
    assert net.run(1, lambda: _reqs(net, net.uas[0], "INVITE"))
    assert _rpls(net, net.uac, 100), "auto 100 Trying"
    inv = _reqs(net, net.uas[0], "INVITE")[0]
    assert inv.hdrs("via")[0].startswith("SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bKtm" % net.paddr[1])
    net.uas_reply(inv, 180, "Ringing")
    net.uas_reply(inv, 200, "OK")
    assert net.run(1, lambda: _rpls(net, net.uac, 200))
    r180 = _rpls(net, net.uac, 180)[0]
    assert len(r180.hdrs("via")) == 1 and br in r180.hdrs("via")[0]
    assert tm_api.table_count() == 1
    assert net.run(1, lambda: tm_api.table_count() == 0), "wait timer frees the transaction"


def test_retransmission_absorbed_one_final(net_factory):
    net = net_factory({"request": _relay_to(0)}, {"wt_timer": 300})
    net.proc._uas = [uas_addr(net)]
    data, br, cid = build_request("OPTIONS", "sip:bob@127.0.0.1", net.uac.getsockname())
    net.send(net.uac, data)
    assert net.run(1, lambda: _reqs(net, net.uas[0], "OPTIONS"))
    for _ in range(3):
        net.send(net.uac, data)
    net.run(0.1)
    assert not _rpls(net, net.uac), "non-INVITE without a reply yet: nothing re-sent"
    assert len(_reqs(net, net.uas[0], "OPTIONS")) == 1, "retransmissions never reach the route"
    net.uas_reply(_reqs(net, net.uas[0], "OPTIONS")[0], 200, "OK")
    net.run(0.1)
    net.send(net.uac, data)
    net.run(0.1)
    finals = _rpls(net, net.uac, 200)
    assert len(finals) == 2 and finals[0].raw == finals[1].raw, "the final is re-sent on retransmission"


def test_request_retransmitted_timer_e_then_408(net_factory):
    net = net_factory({"request": lambda ctx: (tm_mod.w_t_set_fr(ctx, None, 0, 1200),
                                               tm_api.t_relay(ctx, *ctx.proc._uas[0]))[1]},
                      {"retr_timer1": 100, "retr_timer2": 400})
    net.proc._uas = [uas_addr(net)]
    data, br, cid = build_request("MESSAGE", "sip:bob@127.0.0.1", net.uac.getsockname(), body="hi")
    t0 = time.monotonic()
    net.send(net.uac, data)
    assert net.run(2, lambda: _rpls(net, net.uac, 408))
    took = time.monotonic() - t0
    assert 1.15 < took < 1.4, took
    n = len(_reqs(net, net.uas[0], "MESSAGE"))
    assert 4 <= n <= 6, n    # 0, .1, .3, .7, 1.1 (E doubles up to T2)


def test_486_failure_route_relays_to_second_uas(net_factory):
    def request(ctx):
        tm_mod.w_t_on_failure(ctx, None, "FAIL")
        return tm_api.t_relay(ctx, *ctx.proc._uas[0])

    def fail(ctx):
        assert ctx.route_type == FAILURE_ROUTE
        assert tm_mod.w_t_check_status(ctx, None, __import__("re").compile("486")) == 1
        ctx.proc._seen_code = tm_mod._get_reply_code(ctx, None, None)
        ctx.proc._seen_rpl = (tm_mod._get_T_rpl(ctx, "$rs", None), tm_mod._get_T_rpl(ctx, "$rr", None),
                              tm_mod._get_T_req(ctx, "$rU", None), tm_mod._get_T(ctx, "reply_reason", None))
        return tm_api.t_relay(ctx, *ctx.proc._uas[1])
    net = net_factory({"request": request, "FAIL": fail}, nuas=2)
    net.proc._uas = [uas_addr(net, 0), uas_addr(net, 1)]
    data, br, cid = build_request("INVITE", "sip:bob@127.0.0.1", net.uac.getsockname())
    net.send(net.uac, data)
    assert net.run(1, lambda: _reqs(net, net.uas[0], "INVITE"))
    net.uas_reply(_reqs(net, net.uas[0], "INVITE")[0], 486, "Busy Here", idx=0)
    assert net.run(1, lambda: _reqs(net, net.uas[1], "INVITE"))
    assert net.proc._seen_code == 486
    assert net.proc._seen_rpl == (486, "Busy Here", "bob", "Busy Here")
    assert net.run(1, lambda: _reqs(net, net.uas[0], "ACK")), "hop-by-hop ACK to the 486"
    net.uas_reply(_reqs(net, net.uas[1], "INVITE")[0], 200, "OK", to_tag="second", idx=1)
    assert net.run(1, lambda: _rpls(net, net.uac, 200))
    assert not _rpls(net, net.uac, 486)
    assert _rpls(net, net.uac, 200)[0].to_tag == "second"


def test_cancel_after_180_gives_487(net_factory):
    net = net_factory({"request": _relay_to(0)})
    net.proc._uas = [uas_addr(net)]
    data, br, cid = build_request("INVITE", "sip:bob@127.0.0.1", net.uac.getsockname())
    net.send(net.uac, data)
    assert net.run(1, lambda: _reqs(net, net.uas[0], "INVITE"))
    inv = _reqs(net, net.uas[0], "INVITE")[0]
    net.uas_reply(inv, 180, "Ringing")
    assert net.run(1, lambda: _rpls(net, net.uac, 180))
    cancel, _, _ = build_request("CANCEL", "sip:bob@127.0.0.1", net.uac.getsockname(), branch=br, callid=cid,
                                 from_tag=None)
    # a CANCEL must carry the INVITE's From tag too: rebuild from the INVITE bytes
    cancel = data.replace(b"INVITE sip:", b"CANCEL sip:", 1).replace(b"CSeq: 1 INVITE", b"CSeq: 1 CANCEL")
    net.send(net.uac, cancel)
    assert net.run(1, lambda: _reqs(net, net.uas[0], "CANCEL"))
    assert [r for r in _rpls(net, net.uac, 200) if "CANCEL" in r.hdr("cseq")]
    net.uas_reply(inv, 487, "Request Terminated")
    assert net.run(1, lambda: _rpls(net, net.uac, 487))


def test_suspend_continue_avps_and_auto_500(net_factory):
    from shm.avp import AvpList
    state = {}

    def request(ctx):
        if ctx.msg.method == "MESSAGE":
            ctx.avps = AvpList()
            ctx.avps.add("who", "alice")
            tm_api.t_newtran(ctx)
            rc, i, l = tm_api.t_suspend(ctx)
            state["id"] = (i, l)
            return 0

    net = net_factory({"request": request}, {"wt_timer": 200})
    data, br, cid = build_request("MESSAGE", "sip:bob@127.0.0.1", net.uac.getsockname(), body="x")
    net.send(net.uac, data)
    assert net.run(1, lambda: "id" in state)
    net.send(net.uac, data)        # retransmission while suspended: absorbed, nothing sent
    net.run(0.05)
    assert not _rpls(net, net.uac)
    seen = {}

    def resumed(ctx):
        seen["rt"] = ctx.route_type
        seen["ruri"] = ctx.msg.ruri
        seen["who"] = ctx.avps.get("who")

    assert tm_api.t_continue(net.proc, *state["id"], resumed) == 0
    assert seen == {"rt": FAILURE_ROUTE, "ruri": "sip:bob@127.0.0.1", "who": "alice"}
    assert net.run(1, lambda: _rpls(net, net.uac, 500))
    assert _rpls(net, net.uac, 500)[0].reason == "I'm terribly sorry, server error occurred (1/TM)"
    assert tm_api.t_continue(net.proc, *state["id"], resumed) < 0, "a second continue is refused"


def test_suspend_timeout_408_then_continue_skipped(net_factory):
    state = {}

    def request(ctx):
        tm_mod.w_t_set_fr(ctx, None, 0, 300)
        tm_api.t_newtran(ctx)
        state["id"] = tm_api.t_suspend(ctx)[1:]
        return 0
    net = net_factory({"request": request})
    data, br, cid = build_request("INVITE", "sip:bob@127.0.0.1", net.uac.getsockname())
    t0 = time.monotonic()
    net.send(net.uac, data)
    assert net.run(1, lambda: _rpls(net, net.uac, 408))
    assert 0.28 < time.monotonic() - t0 < 0.45
    ran = []
    assert tm_api.t_continue(net.proc, *state["id"], ran.append) != 0
    assert not ran


def test_cancel_while_suspended_487_and_skip(net_factory):
    state = {}

    def request(ctx):
        tm_api.t_newtran(ctx)
        state["id"] = tm_api.t_suspend(ctx)[1:]
        return 0
    net = net_factory({"request": request})
    data, br, cid = build_request("INVITE", "sip:bob@127.0.0.1", net.uac.getsockname())
    net.send(net.uac, data)
    assert net.run(1, lambda: "id" in state and _rpls(net, net.uac, 100))
    net.send(net.uac, data)        # INVITE retransmission: the 100 again
    assert net.run(1, lambda: len(_rpls(net, net.uac, 100)) == 2)
    cancel = data.replace(b"INVITE sip:", b"CANCEL sip:", 1).replace(b"CSeq: 1 INVITE", b"CSeq: 1 CANCEL")
    net.send(net.uac, cancel)
    assert net.run(1, lambda: _rpls(net, net.uac, 487))
    ran = []
    assert tm_api.t_continue(net.proc, *state["id"], ran.append) == 1
    assert not ran


def test_local_2xx_to_invite_retransmitted_until_ack(net_factory):
    net = net_factory({"request": lambda ctx: (tm_api.t_newtran(ctx), tm_api.t_reply(ctx, 200, "OK"))[1]},
                      {"retr_timer1": 100, "retr_timer2": 400, "wt_timer": 200})
    data, br, cid = build_request("INVITE", "sip:bob@127.0.0.1", net.uac.getsockname(), from_tag="ft2xx")
    net.send(net.uac, data)
    assert net.run(1, lambda: len(_rpls(net, net.uac, 200)) >= 3)    # 0, .1, .3 s
    ok = _rpls(net, net.uac, 200)
    assert all(r.raw == ok[0].raw for r in ok)
    ack, _, _ = build_request("ACK", "sip:bob@127.0.0.1", net.uac.getsockname(), callid=cid,
                              from_tag="ft2xx", to_tag=ok[0].to_tag)     # new branch: ACK to a 2xx
    net.send(net.uac, ack.replace(b"CSeq: 1 INVITE", b"CSeq: 1 ACK"))
    net.run(0.05)
    n = len(_rpls(net, net.uac, 200))
    net.run(0.9)
    assert len(_rpls(net, net.uac, 200)) == n, "the ACK stops the 2xx retransmissions"
    assert tm_api.table_count() == 0, "transaction and its ACK alias freed after the wait"


@pytest.mark.parametrize("mode,expect", [(3, 486), (0, 404)])
def test_failure_reply_mode(net_factory, mode, expect):
    def request(ctx):
        tm_mod.w_t_on_failure(ctx, None, "FAIL")
        return tm_api.t_relay(ctx, *ctx.proc._uas[0])
    net = net_factory({"request": request, "FAIL": lambda ctx: tm_api.t_relay(ctx, *ctx.proc._uas[1])},
                      {"failure_reply_mode": mode}, nuas=2)
    net.proc._uas = [uas_addr(net, 0), uas_addr(net, 1)]
    data, br, cid = build_request("INVITE", "sip:bob@127.0.0.1", net.uac.getsockname())
    net.send(net.uac, data)
    assert net.run(1, lambda: _reqs(net, net.uas[0], "INVITE"))
    net.uas_reply(_reqs(net, net.uas[0], "INVITE")[0], 404, "Not Here", idx=0)
    assert net.run(1, lambda: _reqs(net, net.uas[1], "INVITE"))
    net.uas_reply(_reqs(net, net.uas[1], "INVITE")[0], 486, "Busy Here", idx=1)
    assert net.run(1, lambda: _rpls(net, net.uac) and _rpls(net, net.uac)[-1].status >= 300)
    assert [r.status for r in _rpls(net, net.uac) if r.status >= 200] == [expect]


def test_non_invite_with_provisional_still_times_out(net_factory):
    net = net_factory({"request": lambda ctx: (tm_mod.w_t_set_fr(ctx, None, 0, 700),
                                               tm_api.t_relay(ctx, *ctx.proc._uas[0]))[1]},
                      {"retr_timer1": 200, "retr_timer2": 400})
    net.proc._uas = [uas_addr(net)]
    data, br, cid = build_request("MESSAGE", "sip:bob@127.0.0.1", net.uac.getsockname(), body="hi")
    net.send(net.uac, data)
    assert net.run(1, lambda: _reqs(net, net.uas[0], "MESSAGE"))
    net.uas_reply(_reqs(net, net.uas[0], "MESSAGE")[0], 180, "Working")   # before T1
    assert net.run(1.5, lambda: _rpls(net, net.uac, 408)), "fr_timer still ends it (Timer F)"


def test_record_route_and_loose_route(net_factory):
    from asyncd.modules import rr

    def request(ctx):
        if rr.loose_route(ctx) > 0:
            return tm_api.t_relay(ctx)
        rr.record_route(ctx)
        return tm_api.t_relay(ctx, *ctx.proc._uas[0])
    net = net_factory({"request": request})
    ua = uas_addr(net)
    net.proc._uas = [ua]
    data, br, cid = build_request("INVITE", "sip:bob@127.0.0.1", net.uac.getsockname(), from_tag="ftrr",
                                  headers=["Record-Route: <sip:upstream.example;lr>"])
    net.send(net.uac, data)
    assert net.run(1, lambda: _reqs(net, net.uas[0], "INVITE"))
    inv = _reqs(net, net.uas[0], "INVITE")[0]
    assert inv.hdrs("record-route") == ["<sip:127.0.0.1:%d;lr;ftag=ftrr>" % net.paddr[1],
                                        "<sip:upstream.example;lr>"], "ours on top (16.6 step 4)"
    # an in-dialog BYE routed by the UAC through us to the UAS (RFC 3261 16.12)
    bye, _, _ = build_request("BYE", "sip:uas@%s:%d" % ua, net.uac.getsockname(), callid=cid,
                              from_tag="ftrr", to_tag="t1", cseq=2,
                              headers=["Route: <sip:127.0.0.1:%d;lr;ftag=ftrr>" % net.paddr[1]])
    net.send(net.uac, bye)
    assert net.run(1, lambda: _reqs(net, net.uas[0], "BYE"))
    b = _reqs(net, net.uas[0], "BYE")[0]
    assert b.hdrs("route") == [] and b.first_line == "BYE sip:uas@%s:%d SIP/2.0" % ua
    # a loose route set naming a next hop: $du is that hop, the Route stays
    bye2, _, _ = build_request("BYE", "sip:elsewhere@192.0.2.1", net.uac.getsockname(), callid=cid,
                               from_tag="ftrr", to_tag="t1", cseq=3,
                               headers=["Route: <sip:127.0.0.1:%d;lr>, <sip:%s:%d;lr>" % ((net.paddr[1],) + ua)])
    net.send(net.uac, bye2)
    assert net.run(1, lambda: len(_reqs(net, net.uas[0], "BYE")) == 2)
    b2 = _reqs(net, net.uas[0], "BYE")[1]
    assert b2.hdrs("route") == ["<sip:%s:%d;lr>" % ua]


def test_suspend_timeout_runs_armed_failure_route(net_factory):
    state = {}

    def request(ctx):
        tm_mod.w_t_on_failure(ctx, None, "LATE")
        tm_mod.w_t_set_fr(ctx, None, 0, 300)
        tm_api.t_newtran(ctx)
        state["id"] = tm_api.t_suspend(ctx)[1:]
        return 0

    def late(ctx):
        state["code"] = tm_mod._get_reply_code(ctx, None, None)
        state["rt"] = ctx.route_type
        tm_mod.w_t_reply(ctx, None, 503, "Took Too Long")
    net = net_factory({"request": request, "LATE": late})
    data, br, cid = build_request("MESSAGE", "sip:bob@127.0.0.1", net.uac.getsockname(), body="x")
    net.send(net.uac, data)
    assert net.run(1, lambda: _rpls(net, net.uac, 503))
    assert state["code"] == 408 and state["rt"] == FAILURE_ROUTE
    ran = []
    # docs/kamailio-tm.md §4: a suspension that timed out is never resumed
    assert tm_api.t_continue(net.proc, *state["id"], ran.append) < 0 and not ran


def _suspended_message(net_factory, relay=False):
    """A MESSAGE suspended by the route (relayed first when `relay`): (net, id)."""
    state = {}

    def request(ctx):
        if relay:
            tm_api.t_relay(ctx, *ctx.proc._uas[0])
        else:
            tm_api.t_newtran(ctx)
            tm_api.t_suspend(ctx)
        state["id"] = (ctx.t.index, ctx.t.label)
        return 0
    net = net_factory({"request": request})
    net.proc._uas = [uas_addr(net)]
    data, br, cid = build_request("MESSAGE", "sip:bob@127.0.0.1", net.uac.getsockname(), body="x")
    net.send(net.uac, data)
    assert net.run(1, lambda: "id" in state)
    return net, state["id"]


def _die_holding_the_cell(tid):
    """Fork a process that takes the transaction's lock, as a task worker
    running its resumed route does, and kill it there."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            Handle(tm_state.table, *tid).acquire()
            os.write(w, b"x")
            time.sleep(60)
        finally:
            os._exit(1)
    assert os.read(r, 1) == b"x"
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(r)
    os.close(w)


def test_abandon_after_the_resuming_process_died_replies_500_at_once(net_factory):
    """docs/kamailio-async.md §10.7: the worker continuing it died holding the
    cell's lock; t_abandon takes the lock over and ends the transaction with
    the resume-failed 500 now, not at fr_timer, and never runs the route."""
    net, tid = _suspended_message(net_factory)
    _die_holding_the_cell(tid)
    t0 = time.monotonic()
    assert tm_api.t_abandon(net.proc, *tid) == 1
    assert time.monotonic() - t0 < 1.0
    assert net.run(0.5, lambda: _rpls(net, net.uac, 500))
    assert _rpls(net, net.uac, 500)[0].reason == "I'm terribly sorry, server error occurred (1/TM)"
    assert tm_api.t_abandon(net.proc, *tid) == 0, "a final reply is out: nothing more"
    ran = []
    assert tm_api.t_continue(net.proc, *tid, ran.append) < 0 and not ran
    net.run(0.1)
    assert len(_rpls(net, net.uac)) == 1


def test_abandon_leaves_a_relayed_transaction_alone(net_factory):
    net, tid = _suspended_message(net_factory, relay=True)
    assert net.run(1, lambda: _reqs(net, net.uas[0], "MESSAGE"))
    assert tm_api.t_abandon(net.proc, *tid) == 0     # its branch is pending: the reply will come
    net.run(0.1)
    assert not _rpls(net, net.uac)
    net.uas_reply(_reqs(net, net.uas[0], "MESSAGE")[0], 202, "Accepted")
    assert net.run(1, lambda: _rpls(net, net.uac, 202))


def test_branch_route_runs_per_branch_and_drop_cancels_it(net_factory):
    seen = []

    def request(ctx):
        tm_mod.w_t_on_branch(ctx, None, "BR")
        return tm_api.t_relay(ctx, *ctx.proc._uas[0])

    def br_route(ctx):
        seen.append(ctx.route_type)
        if ctx.msg.method == "MESSAGE":
            ctx.dropped = True            # what `drop` in the compiled block reports
        else:
            ctx.msg.hdr_adds.append("X-Branch: yes\r\n")
    net = net_factory({"request": request, "BR": br_route})
    net.proc._uas = [uas_addr(net)]
    opt, _, _ = build_request("OPTIONS", "sip:bob@127.0.0.1", net.uac.getsockname())
    net.send(net.uac, opt)
    assert net.run(1, lambda: _reqs(net, net.uas[0], "OPTIONS"))
    assert _reqs(net, net.uas[0], "OPTIONS")[0].hdr("x-branch") == "yes"
    msg, _, _ = build_request("MESSAGE", "sip:bob@127.0.0.1", net.uac.getsockname(), body="x")
    net.send(net.uac, msg)
    net.run(0.3)
    assert not _reqs(net, net.uas[0], "MESSAGE"), "a dropped branch is never sent"
    from asyncd.core.route_types import BRANCH_ROUTE
    assert seen == [BRANCH_ROUTE, BRANCH_ROUTE]


def test_reply_lumps_go_into_a_local_reply_once(net_factory):
    """append_to_reply before t_reply, and in a resumed route before its reply: each
    header once, as Kamailio's build_res_buf_from_sip_req adds msg->reply_lump
    (src/core/msg_translator.c)."""
    state = {}

    def request(ctx):
        tm_api.t_newtran(ctx)
        ctx.msg.reply_lumps.append("X-Where: request\r\n")
        if ctx.msg.method == "OPTIONS":
            return tm_api.t_reply(ctx, 200, "OK")
        state["id"] = tm_api.t_suspend(ctx)[1:]
        return 0

    def resumed(ctx):
        ctx.msg.reply_lumps.append("X-Where: resumed\r\n")
        tm_api.t_reply(ctx, 202, "Accepted")

    net = net_factory({"request": request}, {"wt_timer": 200})
    opt, _, _ = build_request("OPTIONS", "sip:bob@127.0.0.1", net.uac.getsockname())
    net.send(net.uac, opt)
    assert net.run(1, lambda: _rpls(net, net.uac, 200))
    assert _rpls(net, net.uac, 200)[0].hdrs("x-where") == ["request"]
    msg, _, _ = build_request("MESSAGE", "sip:bob@127.0.0.1", net.uac.getsockname(), body="x")
    net.send(net.uac, msg)
    assert net.run(1, lambda: "id" in state)
    assert tm_api.t_continue(net.proc, *state["id"], resumed) == 0
    assert net.run(1, lambda: _rpls(net, net.uac, 202))
    assert _rpls(net, net.uac, 202)[0].hdrs("x-where") == ["request", "resumed"]


def test_resumed_request_keeps_its_transport(net_factory):
    """$proto in a resumed route is the transport the request came on (Kamailio's
    fake_req copies msg->rcv, src/modules/tm/t_reply.c): a request received on a
    TCP socket is not re-read as UDP."""
    state = {}

    def request(ctx):
        tm_api.t_newtran(ctx)
        state["id"] = tm_api.t_suspend(ctx)[1:]
        return 0

    net = net_factory({"request": request}, {"wt_timer": 200})
    net.script.sock_addrs = [("tcp", *net.paddr)]    # socket 0 as main lists it: a TCP one
    msg, _, _ = build_request("MESSAGE", "sip:bob@127.0.0.1", net.uac.getsockname(), body="x")
    net.send(net.uac, msg)
    assert net.run(1, lambda: "id" in state)
    seen = []
    assert tm_api.t_continue(net.proc, *state["id"], lambda ctx: seen.append(ctx.msg.proto)) == 0
    assert seen == ["tcp"]


def test_unacked_local_final_ends_at_timer_h_not_at_the_next_g_tick(net_factory):
    """Timer H is 64*T1 from the final reply (RFC 3261 17.2.1), whatever T2 is: with
    T1 20 ms and T2 4 s, timer G's doubling ticks at 20, 60, 140, 300, 620, 1260 ms and
    next at 2540 ms; H must not wait for that tick (1280 ms, then wt_timer)."""
    net = net_factory({"request": lambda ctx: (tm_api.t_newtran(ctx), tm_api.t_reply(ctx, 486, "Busy"))[1]},
                      {"retr_timer1": 20, "retr_timer2": 4000, "wt_timer": 100})
    data, _, _ = build_request("INVITE", "sip:bob@127.0.0.1", net.uac.getsockname())
    t0 = time.monotonic()
    net.send(net.uac, data)
    assert net.run(0.5, lambda: _rpls(net, net.uac, 486))
    assert net.run(3, lambda: tm_api.table_count() == 0), "never freed"
    took = time.monotonic() - t0
    assert 1.28 + 0.1 <= took < 1.28 + 0.1 + 0.4, took


# ---- the compact wait-state record (docs/kamailio-tm.md §8) -------------------------
def _stored(tid):
    raw = tm_state.table.get(*tid)
    return None if raw is None else (Cell.decode(raw), len(raw))


def test_completed_non_invite_is_stored_compact(net_factory):
    """A non-INVITE answered with t_reply keeps only its reply: the request, its
    AVPs and lumps go in the write that stores the reply; a retransmission
    still gets the same bytes, $T_req still reads the request in the route
    that answered, and the wait timer frees it."""
    from shm.avp import AvpList
    state = {}

    def request(ctx):
        ctx.avps = AvpList()
        ctx.avps.add("big", "v" * 1000)
        tm_api.t_newtran(ctx)
        state["id"] = (ctx.t.index, ctx.t.label)
        state["full"] = _stored(state["id"])[1]
        tm_api.t_reply(ctx, 200, "OK")
        state["T_req"] = tm_mod._get_T_req(ctx, "$hdr(Subject)", None)

    net = net_factory({"request": request}, {"wt_timer": 400})
    data, br, cid = build_request("MESSAGE", "sip:bob@127.0.0.1", net.uac.getsockname(),
                                  headers=("Subject: compact",), body="x" * 1500)
    net.send(net.uac, data)
    assert net.run(1, lambda: _rpls(net, net.uac, 200))
    t_done = time.monotonic()
    cell, size = _stored(state["id"])
    assert cell.flags & (F_COMPACT | F_FINAL | F_WAIT) == F_COMPACT | F_FINAL | F_WAIT
    assert (cell.req, cell.avps, cell.xavps, cell.lumps, cell.branches) == (b"", None, None, None, [])
    assert cell.uas_status == 200 and cell.uas_reply == _rpls(net, net.uac, 200)[0].raw
    assert state["full"] > 1800 and size < 600, (state["full"], size)     # the request was in it
    assert state["T_req"] == "compact"
    assert tm_state.table.is_plain(*state["id"]), "its end is a delete with no read"
    net.send(net.uac, data)                 # a retransmission: the same final, from the compact record
    assert net.run(1, lambda: len(_rpls(net, net.uac, 200)) == 2)
    first, again = _rpls(net, net.uac, 200)
    assert again.raw == first.raw
    assert tm_api.t_continue(net.proc, *state["id"], lambda ctx: None) == -1, "not found, as before"
    assert net.run(1.5, lambda: tm_api.table_count() == 0)
    assert 0.3 < time.monotonic() - t_done < 1.2, "freed at wt_timer"


def test_late_reply_to_a_relayed_message_is_absorbed_by_the_compact_record(net_factory):
    net = net_factory({"request": _relay_to(0)}, {"wt_timer": 400})
    net.proc._uas = [uas_addr(net)]
    data, br, cid = build_request("MESSAGE", "sip:bob@127.0.0.1", net.uac.getsockname(), body="hi")
    net.send(net.uac, data)
    assert net.run(1, lambda: _reqs(net, net.uas[0], "MESSAGE"))
    req = _reqs(net, net.uas[0], "MESSAGE")[0]
    net.uas_reply(req, 200, "OK")
    assert net.run(1, lambda: _rpls(net, net.uac, 200))
    cell, _ = _stored(_ids(req))
    assert cell.flags & F_COMPACT and cell.req == b"" and cell.branches == []
    net.uas_reply(req, 200, "OK")           # the UAS retransmits its 200 (it never saw an ACK)
    net.uas_reply(req, 202, "Accepted")     # and a late, different final
    net.run(0.2)
    assert len(_rpls(net, net.uac)) == 1, "nothing more goes upstream"
    assert tm_api.table_count() == 1
    net.send(net.uac, data)
    assert net.run(1, lambda: len(_rpls(net, net.uac, 200)) == 2), "the relayed 200 is re-sent"
    assert net.run(1.5, lambda: tm_api.table_count() == 0)


def _ids(req):
    """(index, label) from the Via branch tm put on a request it relayed."""
    from asyncd.modules.tm.lookup import parse_branch
    branch = req.hdrs("via")[0].split("branch=")[1].split(";")[0]
    return parse_branch(branch)[:2]


def test_invite_keeps_its_whole_cell_in_wait_state(net_factory):
    net = net_factory({"request": _relay_to(0)}, {"wt_timer": 300})
    net.proc._uas = [uas_addr(net)]
    data, br, cid = build_request("INVITE", "sip:bob@127.0.0.1", net.uac.getsockname())
    net.send(net.uac, data)
    assert net.run(1, lambda: _reqs(net, net.uas[0], "INVITE"))
    req = _reqs(net, net.uas[0], "INVITE")[0]
    net.uas_reply(req, 200, "OK")
    assert net.run(1, lambda: _rpls(net, net.uac, 200))
    cell, _ = _stored(_ids(req))
    assert cell.flags & F_WAIT and not cell.flags & F_COMPACT and cell.req == data
    assert not tm_state.table.is_plain(*_ids(req))


def test_compact_form_keeps_pending_branches_status_and_flags():
    """A forked non-INVITE answered by one branch: the others keep their
    status and flags (a late reply on one still runs its onreply_route),
    without their URI, Via or bytes."""
    c = Cell()
    c.flags = F_FINAL | F_WAIT
    c.req, c.uas_status, c.uas_reply, c.on_reply = b"MESSAGE ...", 200, b"SIP/2.0 200 OK\r\n\r\n", "R"
    c.branches = [["sip:a@x", ["10.0.0.1", 5060], 0, "z9hG4bKtm1", b"req-a", 200, b"", 0, 1.0],
                  ["sip:b@y", ["10.0.0.2", 5060], 1, "z9hG4bKtm2", b"req-b", 180, b"", B_PROV, 2.0]]
    d = Cell.decode(compact_encode(c))
    assert d.flags == F_FINAL | F_WAIT | F_COMPACT and d.req == b"" and d.on_reply == "R"
    assert [(b[BR_STATUS], b[BR_FLAGS], b[BR_SOCK], b[BR_REQ]) for b in d.branches] == \
        [(200, 0, 0, b""), (180, B_PROV, 1, b"")]
    assert d.uas_reply == c.uas_reply and d.pending_branches() == [1]
