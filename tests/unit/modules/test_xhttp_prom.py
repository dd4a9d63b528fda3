"""xhttp_prom: modparam syntax, atof, and the exposition of a Stats plus user
metrics in Kamailio 5.6.3's text, read back with prometheus_client's parser.
"""
import pytest
from prometheus_client.parser import text_string_to_metric_families

from asyncd.core.counters import Stats
from asyncd.modules.prom_exposition import KamailioCollector, StatsSpecError, render
from asyncd.modules.xhttp_prom import atof, parse_metric
from shm.arena import ShmArena
from shm.prom import COUNTER, DEFAULT_BUCKETS, GAUGE, HISTOGRAM, PromStore


@pytest.fixture
def arena():
    a = ShmArena.create(8 << 20)
    yield a
    a.destroy()


def test_metric_modparams():
    d = parse_metric(COUNTER, "name=cnt01; label=m1:m2;")
    assert (d.kind, d.name, d.labels) == (COUNTER, "cnt01", ("m1", "m2"))
    d = parse_metric(HISTOGRAM, "name=h; buckets=0.1:1.0:5.5")
    assert d.labels == () and d.buckets == (0.1, 1.0, 5.5)
    assert parse_metric(HISTOGRAM, "name=h2").buckets == DEFAULT_BUCKETS
    for kind, bad in ((COUNTER, "label=a"), (GAUGE, "name=g; buckets=1"), (COUNTER, "name=c; foo=1"),
                      (HISTOGRAM, "name=h; buckets=2:1"), (GAUGE, "name=g; label=a:b:c:d")):
        with pytest.raises(ValueError):
            parse_metric(kind, bad)


def test_atof_is_c_like():
    assert atof("2.5") == 2.5 and atof("-3e2x") == -300.0 and atof("abc") == 0.0 and atof(" 7") == 7.0


@pytest.fixture
def collector(arena):
    st = PromStore(arena, [parse_metric(COUNTER, "name=cnt01; label=m1:m2"),
                           parse_metric(GAUGE, "name=gg01"),
                           parse_metric(HISTOGRAM, "name=hh01; label=h1; buckets=0.1:1")])
    stats = Stats()
    h = stats.register("sl", "200_replies")
    stats.register("core", "rcv-requests")
    stats.allocate(arena, 4)
    stats.row(1)[h] += 3
    st.counter_inc("cnt01", 5, ("a", "b"))
    st.gauge_set("gg01", -2.5)
    st.histogram_observe("hh01", 0.5, ("p",))
    return KamailioCollector(st, stats, "kamailio_", "all")


def test_render_is_kamailio_text(collector):
    text = render(collector)
    lines = text.splitlines()
    assert lines[0] == "# User defined metrics"
    assert lines[1].startswith('kamailio_cnt01{m1="a", m2="b"} 5 ')
    assert lines[2].startswith("kamailio_gg01 -2.500000 ")
    assert lines[3].startswith('kamailio_hh01_bucket{h1="p", le="0.100000"} 0 ')
    assert lines[5].startswith('kamailio_hh01_bucket{h1="p", le="+Inf"} 1 ')
    assert lines[6].startswith('kamailio_hh01_sum{h1="p"} 0.500000 ')
    assert "# HELP" not in text and "# TYPE" not in text and "_total" not in text
    i = lines.index("# Kamailio whole internal statistics")
    assert lines[i - 1] == ""
    assert [ln.split()[:2] for ln in lines[i + 1:]] == [["kamailio_core_rcv_requests", "0"],
                                                       ["kamailio_sl_200_replies", "3"]]
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["kamailio_cnt01"] == 5 and samples["kamailio_sl_200_replies"] == 3


def test_stats_selection(collector):
    collector.spec = "sl:"
    assert "# Kamailio statistics for group: sl:" in render(collector)
    assert [n for _g, n, _v in collector.stat_items()] == ["200_replies"]
    collector.spec = "sl:200_replies"
    assert collector.stat_items() == [("sl", "200_replies", 3)]
    collector.spec = "nope"
    with pytest.raises(StatsSpecError):
        render(collector)
    collector.spec = ""
    assert "internal statistics" not in render(collector)


def test_collector_families_are_prometheus_client_metrics(collector):
    fams = {f.name: f for f in collector.collect()}
    assert fams["kamailio_cnt01"].type == "counter"
    assert fams["kamailio_gg01"].type == "gauge"
    assert fams["kamailio_hh01"].type == "histogram"
    assert fams["kamailio_sl_200_replies"].type == "unknown"


class _Script:
    def __init__(self, stats):
        self.stats = stats


def _rpc(handler, script, *params):
    from asyncd.core.rpc import RpcCall
    call = RpcCall(script, None, "x", params)
    handler(call)
    return call.values


def test_rpc_methods_and_script_functions(arena, monkeypatch):
    from asyncd.core.rpc import RpcFault
    from asyncd.modules import xhttp_prom as xp
    st = PromStore(arena, [parse_metric(COUNTER, "name=c; label=a"), parse_metric(GAUGE, "name=g"),
                           parse_metric(HISTOGRAM, "name=h; buckets=1:2")])
    monkeypatch.setattr(xp.S, "store", st)
    monkeypatch.setattr(xp.S, "beginning", "kamailio_")
    monkeypatch.setattr(xp.S, "spec", "")
    script = _Script(Stats())
    names = {e.name for e in xp.EXPORTS.rpc}
    assert names == {"xhttp_prom.counter_reset", "xhttp_prom.counter_inc", "xhttp_prom.gauge_reset",
                     "xhttp_prom.gauge_set", "xhttp_prom.histogram_observe",
                     "xhttp_prom.metric_list_print"}
    _rpc(xp.rpc_counter_inc, script, "c", 4, "x")
    _rpc(xp.rpc_gauge_set, script, "g", "1.5")
    _rpc(xp.rpc_histogram_observe, script, "h", 1.5)
    assert xp.w_counter_inc(None, None, "c", 2, "x") == 1
    assert xp.w_counter_inc(None, None, "c", -1, "x") == -1        # negative refused
    assert xp.w_counter_inc(None, None, "c", 1) == -1              # label count
    assert xp.w_gauge_set(None, None, "nope", "1") == -1
    assert xp.w_histogram_observe(None, None, "h", "0.5") == 1
    text = _rpc(xp.rpc_metric_list_print, script)[0]
    assert 'kamailio_c{a="x"} 6 ' in text and "kamailio_g 1.500000 " in text
    assert 'kamailio_h_bucket{le="1.000000"} 1 ' in text and "kamailio_h_count 2 " in text
    assert "internal statistics" not in text
    _rpc(xp.rpc_counter_reset, script, "c", "x")
    _rpc(xp.rpc_gauge_reset, script, "g")
    assert 'kamailio_c{a="x"} 0 ' in _rpc(xp.rpc_metric_list_print, script)[0]
    for handler, params, code in ((xp.rpc_counter_inc, ("c",), 400), (xp.rpc_gauge_set, (), 400),
                                  (xp.rpc_counter_inc, ("nope", 1), 500),
                                  (xp.rpc_gauge_set, ("c", 1.0, "x"), 500)):
        with pytest.raises(RpcFault) as e:
            _rpc(handler, script, *params)
        assert e.value.code == code
