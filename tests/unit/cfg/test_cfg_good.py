"""Real-shaped cfgs compile (tests/corpus/cfg/good: the admin-guide examples,
a default-kamailio.cfg-shaped config), and Kamailio's own default
kamailio.cfg parses when it is installed on the machine."""
import glob
import os
from pathlib import Path

import pytest

from asyncd.cfg.compiler import compile_cfg
from asyncd.cfg.parser import parse_tokens
from asyncd.cfg.preprocess import preprocess
from asyncd.core.context import ProcState

from cfg_helpers import make_msg

GOOD = os.path.join(os.path.dirname(__file__), "..", "..", "corpus", "cfg", "good")
CASES = sorted(glob.glob(os.path.join(GOOD, "*.cfg")))


@pytest.mark.parametrize("path", CASES, ids=[os.path.basename(p) for p in CASES])
def test_good_cfg_compiles(path):
    s = compile_cfg(path, defines={"LPORT": "5099"})
    assert s.has_request_route and s.source


def test_admin_guide_cfg_shape():
    s = compile_cfg(os.path.join(GOOD, "admin_guide_all.cfg"))
    names = [g.name for g in s.core["async_groups"]]
    assert names == ["default", "tkv", "abc"]          # later groups go right after the head
    assert s.core["listen"] == [("udp", "127.0.0.1", 5071)]
    assert s.event_routes == {"core:tkv"} and s.has_route("RESUME")
    sleeps = [x for x in s.sites if x.func.name in ("async_sleep", "async_ms_sleep")]
    assert sleeps and all(x.continuation in s.continuations for x in sleeps)


def test_kamailio_style_runs_options_keepalive(runner):
    s = compile_cfg(os.path.join(GOOD, "kamailio_style.cfg"), defines={"LPORT": "5060"})
    proc = ProcState(s)
    msg = make_msg("OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\n"
                   "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKka1\r\n"
                   "From: <sip:a@10.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\n"
                   "Call-ID: ka1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
    ctx = s.new_ctx(msg, proc)
    assert s.run_request_route(ctx) == 0      # exit after the keepalive reply
    assert proc.vars == {}                     # never got past REQINIT
    assert s.is_myself("sip:127.0.0.1:5060", True) and s.is_myself("sip:sip.example.com", True)
    assert not s.is_myself("sip:10.9.9.9", True) and s.is_myself("127.0.0.1")


# Debian's stock cfg, byte-exact (tests/acceptance/stock/README.md)
KAMAILIO_CFG = str(Path(__file__).resolve().parents[2] / "acceptance" / "stock" / "kamailio.cfg")


@pytest.mark.parametrize("defines", [{}, {k: None for k in (
    "WITH_MYSQL WITH_AUTH WITH_USRLOCDB WITH_NAT WITH_PRESENCE WITH_TLS WITH_ANTIFLOOD "
    "WITH_DEBUG WITH_IPAUTH WITH_ACCDB WITH_VOICEMAIL WITH_PSTN WITH_ALIASDB WITH_SPEEDDIAL "
    "WITH_MULTIDOMAIN WITH_BLOCK3XX WITH_BLOCK401407 WITH_XHTTP WITH_JSONRPC WITH_NATSIPPING "
    "WITH_RTPENGINE WITH_WEBSOCKETS").split()}], ids=["default", "all-features"])
def test_kamailio_default_cfg_parses(defines):
    with open(KAMAILIO_CFG) as f:
        items = parse_tokens(preprocess(f.read(), KAMAILIO_CFG, defines))
    kinds = {getattr(i, "kind", None) for i in items}
    assert "request" in kinds and "route" in kinds
