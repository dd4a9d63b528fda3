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
