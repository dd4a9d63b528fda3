"""What a scrape of xhttp_prom's /metrics answers: a prometheus_client
Collector over the user metrics (shm.prom) and the statistics
(`script.stats`), and a writer of Kamailio 5.6.3's text.

Runs in: the tcp receiver that runs prom_dispatch(), and any RPC process
(xhttp_prom.metric_list_print).

The metric families are prometheus_client's (`Metric`, typed counter, gauge,
histogram; the statistics `unknown`), so a CollectorRegistry can hold the
collector. The text is not `generate_latest`'s: Kamailio 5.6.3
(src/modules/xhttp_prom/prom.c prom_stats_get, prom_metric.c
prom_metric_list_print) writes no HELP/TYPE lines, no `_total` suffix, labels
joined by ", ", gauges and sums with "%f", integer counts, a millisecond
timestamp on every line and two comment headings; a scraper reads both the
same, and the comparison test (tests/integration/test_prom.py) reads ours the
way it reads Kamailio's. Label values are escaped as the text format wants
(Kamailio writes them raw).
"""
import time

from prometheus_client.metrics_core import Metric

from shm.prom import COUNTER, GAUGE, HISTOGRAM

__all__ = ["KamailioCollector", "render", "StatsSpecError"]


class StatsSpecError(ValueError):
    """xhttp_prom_stats names a statistic that does not exist (a 500 for the scrape)."""


class KamailioCollector:
    """prometheus_client's Collector protocol: collect() yields the families."""

    def __init__(self, store, stats, beginning="kamailio_", spec="", tasks=None):
        self.store = store          # shm.prom.PromStore or None (no user metric)
        self.stats = stats          # asyncd.core.counters.Stats
        self.beginning = beginning
        self.spec = spec            # xhttp_prom_stats: "", "all", "group:", "group:name" or "name"
        self.tasks = tasks          # asyncd.ipc.async_task.Framework or None

    def collect(self):
        yield from self.collect_user()
        yield from self.collect_stats()
        yield from self.collect_async()

    # -- user metrics ----------------------------------------------------------------------
    def collect_user(self, now=None):
        ts = time.time() if now is None else now
        if self.store is None:
            return []
        out = []
        for d, rows in self.store.snapshot():
            name = self.beginning + d.name
            fam = Metric(name, "", d.kind)
            fam.name = name                 # counters: no `_total` trimming or adding
            for values, v in rows:
                labels = dict(zip(d.labels, values))
                if d.kind == HISTOGRAM:
                    _histogram_samples(fam, name, labels, d.buckets, v, ts)
                else:
                    fam.add_sample(name, labels, v, ts)
            out.append(fam)
        return out

    # -- statistics ------------------------------------------------------------------------
    def stat_items(self):
        """[(group, name, value)] that xhttp_prom_stats selects, sorted by group then
        name (Kamailio's counter iteration order). Raises StatsSpecError."""
        spec = self.spec
        st = self.stats
        if not spec or st is None:
            return []
        if spec == "all":
            return sorted(st.items())
        if spec.endswith(":"):
            return sorted(st.items(spec[:-1]))
        grp, _, name = spec.rpartition(":")
        for g, n, v in st.items(grp or None):
            if n == name:
                return [(g, n, v)]
        raise StatsSpecError(f"stat not found: {spec}")

    def collect_stats(self, now=None):
        ts = time.time() if now is None else now
        out = []
        for g, n, v in self.stat_items():
            name = (self.beginning + g + "_" + n).replace("-", "_")
            fam = Metric(name, "", "unknown")
            fam.add_sample(name, {}, v, ts)
            out.append(fam)
        return out

    # -- asyncd's task groups (Kamailio has none) ----------------------------------------------
    def collect_async(self, now=None):
        """Per task group, with a `group` label: gauges workers, busy, queued;
        counters accepted, rejected, run; the histogram queue_wait_seconds
        (push to a worker starting the task). Shown with the statistics when
        xhttp_prom_stats is "all" or "async:" (docs/operations.md)."""
        if self.tasks is None or self.spec not in ("all", "async:"):
            return []
        ts = time.time() if now is None else now
        rows = self.tasks.group_stats()
        if not rows:
            return []
        out = []
        for key, kind in ASYNC_SERIES:
            name = f"{self.beginning}async_{key}"
            fam = Metric(name, "", kind)
            fam.name = name
            for row in rows:
                fam.add_sample(name, {"group": row["name"]}, row[key], ts)
            out.append(fam)
        name = f"{self.beginning}async_queue_wait_seconds"
        fam = Metric(name, "", HISTOGRAM)
        for row in rows:
            bounds, cum, total, count = self.tasks.wait_histogram(row["name"])
            _histogram_samples(fam, name, {"group": row["name"]}, bounds, (count, total, cum), ts)
        out.append(fam)
        return out

    def heading(self):
        """The comment line before the statistics (None when none are shown)."""
        spec = self.spec
        if not spec:
            return None
        if spec == "all":
            return "# Kamailio whole internal statistics"
        if spec.endswith(":"):
            return f"# Kamailio statistics for group: {spec}"
        return f"# Kamailio statistics for: {spec}"


ASYNC_SERIES = (("workers", GAUGE), ("busy", GAUGE), ("queued", GAUGE),
                ("accepted", COUNTER), ("rejected", COUNTER), ("run", COUNTER))


def _histogram_samples(fam, name, labels, buckets, v, ts):
    count, total, counts = v
    for upper, c in zip(buckets, counts):
        fam.add_sample(name + "_bucket", {**labels, "le": "%f" % upper}, c, ts)
    fam.add_sample(name + "_bucket", {**labels, "le": "+Inf"}, count, ts)
    fam.add_sample(name + "_sum", labels, total, ts)
    fam.add_sample(name + "_count", labels, count, ts)


def _esc(v):
    return str(v).replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _line(s, kind):
    lbl = ""
    if s.labels:
        lbl = "{" + ", ".join(f'{k}="{_esc(v)}"' for k, v in s.labels.items()) + "}"
    floaty = kind == GAUGE or (kind == HISTOGRAM and s.name.endswith("_sum"))
    val = "%f" % s.value if floaty else "%d" % (int(s.value) & 0xFFFFFFFFFFFFFFFF)
    return f"{s.name}{lbl} {val} {int(round(s.timestamp * 1000))}\n"


def render(collector, stats=True):
    """Kamailio 5.6.3's /metrics body (str); stats=False: the user metrics alone
    (what xhttp_prom.metric_list_print answers). Raises StatsSpecError."""
    now = time.time()
    fams = collector.collect_user(now)
    out = ["# User defined metrics\n" if collector.store is not None and collector.store.defs
           else "# NO User defined metrics\n"]
    for fam in fams:
        out.extend(_line(s, fam.type) for s in fam.samples)
    if stats:
        stats = collector.collect_stats(now)
        head = collector.heading()
        if head is not None:
            out.append("\n" + head + "\n")
            for fam in stats:
                out.extend(_line(s, COUNTER) for s in fam.samples)
        tasks = collector.collect_async(now)
        if tasks:
            out.append("\n# asyncd async task groups\n")
            for fam in tasks:
                out.extend(_line(s, fam.type) for s in fam.samples)
    return "".join(out)
