"""shm.prom: xhttp_prom's user metrics in shared memory: updates from a forked
process are seen by the parent, label sets in creation order, bounds, the
timeout sweep (Kamailio's prom_metric_list_timeout_delete).
"""
import os

import pytest

from shm.prom import (COUNTER, DEFAULT_BUCKETS, GAUGE, HISTOGRAM, LABEL_MAX, MetricDef, PromError,
                      PromStore)


def store(arena, series=4):
    return PromStore(arena, [MetricDef(COUNTER, "c", ("a", "b")), MetricDef(GAUGE, "g"),
                             MetricDef(HISTOGRAM, "h", ("x",), (0.1, 1.0, 5.5)),
                             MetricDef(HISTOGRAM, "d", (), DEFAULT_BUCKETS)], series)


def snap(st):
    return {d.name: rows for d, rows in st.snapshot()}


def test_updates_in_a_forked_child_are_seen_by_the_parent(arena):
    st = store(arena)
    st.counter_inc("c", 5, ("p", "q"))
    pid = os.fork()
    if pid == 0:
        try:
            st.counter_inc("c", 10, ("p", "q"))
            st.counter_inc("c", 1, ("r", "s"))
            st.gauge_set("g", -2.5)
            st.histogram_observe("h", 0.5, ("z",))
            st.histogram_observe("d", 7.0)
        finally:
            os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    s = snap(st)
    assert s["c"] == [(("p", "q"), 15), (("r", "s"), 1)]     # creation order
    assert s["g"] == [((), -2.5)]
    assert s["h"] == [(("z",), (1, 0.5, [0, 1, 1]))]
    assert s["d"] == [((), (1, 7.0, [0] * 10 + [1]))]


def test_errors_unknown_type_arity_bounds(arena):
    st = store(arena, series=2)
    with pytest.raises(PromError, match="No metric found"):
        st.counter_inc("nope", 1)
    with pytest.raises(PromError, match="type does not match"):
        st.gauge_set("c", 1.0, ("a", "b"))
    with pytest.raises(PromError, match="Number of labels"):
        st.counter_inc("c", 1, ("a",))
    with pytest.raises(PromError, match="longer than"):
        st.counter_inc("c", 1, ("x" * (LABEL_MAX + 1), "b"))
    st.counter_inc("c", 1, ("1", "1"))
    st.counter_inc("c", 1, ("2", "2"))
    with pytest.raises(PromError, match="all 2 label sets in use"):
        st.counter_inc("c", 1, ("3", "3"))
    st.counter_reset("c", ("1", "1"))
    assert snap(st)["c"] == [(("1", "1"), 0), (("2", "2"), 1)]


def test_timeout_drops_label_sets_not_updated(arena):
    st = store(arena)
    st.timeout_ms = 60000
    st.update("c", COUNTER, ("old", "x"), lambda b, v, d: None, now_ms=1_000_000)
    st.update("c", COUNTER, ("new", "x"), lambda b, v, d: None, now_ms=1_050_000)
    st.update("g", GAUGE, (), lambda b, v, d: None, now_ms=1_070_000)
    assert [lb for lb, _v in snap(st)["c"]] == [("new", "x")]
