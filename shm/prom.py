"""User-defined Prometheus metrics (xhttp_prom's prom_counter / prom_gauge /
prom_histogram) in shared memory: any process updates them, the one serving
the scrape reads them.

Runs in: main process (layout, before fork), every child (updates from the
script and RPC, reads for a scrape).

Kamailio keeps each metric's label-value sets ("lvalues") in a shm list under
one lock (src/modules/xhttp_prom/prom_metric.c): an update finds or appends
the lvalue of its label values and stamps it; every update first deletes the
lvalues not updated for `xhttp_prom_timeout` minutes; a scrape prints them in
creation order. Here each metric has a fixed table of `series` slots in the
arena's static area (sized before the fork), under one robust lock
(shm/locks.py). Beyond `series` label-value sets of one metric, or a label
value longer than LABEL_MAX bytes, the update fails (logged, the script
function returns -1), as a Kamailio update fails when shm runs out. A
process remembers where a label set lives (a slot index, checked against
the slot's sequence number on use), so an update does not scan the table.

Layout: a header u64 `next_seq`, then per metric `series` records of:
    offset  size  field
    0       8     u64 seq: creation order, 0 = free
    8       8     u64 ts: last update, ms since the epoch
    16      3x96  label values: u8 length + up to 95 bytes UTF-8 each
    304     ...   counter: u64 value | gauge: f64 value |
                  histogram: u64 count, f64 sum, u64 per bucket (cumulative)
"""
import struct
import time

from shm.locks import LockSet

LABEL_MAX = 95
_LBL = LABEL_MAX + 1
_HEAD = 16 + 3 * _LBL
_U64 = struct.Struct("<Q")
_F64 = struct.Struct("<d")
_SEQ_TS = struct.Struct("<QQ")
COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SERIES = 128


class PromError(Exception):
    """An update that cannot be done (unknown metric, wrong type or label count, full)."""


class MetricDef:
    __slots__ = ("kind", "name", "labels", "buckets", "index", "off", "rsize", "nslots")

    def __init__(self, kind, name, labels=(), buckets=()):
        self.kind, self.name = kind, name
        self.labels = tuple(labels)
        self.buckets = tuple(buckets) if kind == HISTOGRAM else ()
        self.index = self.off = self.rsize = self.nslots = 0

    def value_size(self):
        return 16 + 8 * len(self.buckets) if self.kind == HISTOGRAM else 8


class PromStore:
    """The metric definitions (from modparams) and their slots in shm."""

    def __init__(self, arena, defs, series=SERIES):
        self.defs = list(defs)
        self.by_name = {}
        self.buf = arena.buf
        size = 8
        for i, d in enumerate(self.defs):
            d.index = i
            d.rsize = (_HEAD + d.value_size() + 7) & ~7
            d.nslots = series if d.labels else 1
            size += d.rsize * d.nslots
            self.by_name[d.name] = d
        self.base = arena.static_alloc(size)
        self.buf[self.base:self.base + size] = bytes(size)
        off = self.base + 8
        for d in self.defs:
            d.off = off
            off += d.rsize * d.nslots
        self.lock = LockSet(arena, 1, "xhttp_prom")
        self._where = {}            # (metric index, label values) -> slot (this process's cache)
        self.timeout_ms = 0
        self._last_sweep = 0

    # -- updates (any process) ----------------------------------------------------------
    def update(self, name, kind, labels, op, now_ms=None):
        """Find or create the series of `labels` of metric `name` (of type `kind`), stamp
        it and apply op(buf, value_offset, metric). Raises PromError."""
        d = self.by_name.get(name)
        if d is None:
            raise PromError(f"No metric found for name: {name}")
        if d.kind != kind:
            raise PromError(f"Metric type does not match for metric: {name}")
        labels = tuple(labels)
        if len(labels) != len(d.labels):
            raise PromError(f"Number of labels does not match for metric: {name}")
        enc = tuple(v.encode("utf-8", "surrogateescape") for v in labels)
        if any(len(v) > LABEL_MAX for v in enc):
            raise PromError(f"label value longer than {LABEL_MAX} bytes for metric: {name}")
        now = int(time.time() * 1000) if now_ms is None else now_ms
        ls = self.lock
        ls.acquire(0)
        try:
            if self.timeout_ms:
                self.sweep(now)
            rec = self._slot(d, enc)
            _U64.pack_into(self.buf, rec + 8, now)
            op(self.buf, rec + _HEAD, d)
        finally:
            ls.release(0)

    def _slot(self, d, enc):
        """Record offset of the series with label values enc (lock held)."""
        buf = self.buf
        key = (d.index, enc)
        i = self._where.get(key)
        if i is not None:
            rec = d.off + i * d.rsize
            if _U64.unpack_from(buf, rec)[0] and self._labels(rec, len(enc)) == enc:
                return rec
        free = -1
        for i in range(d.nslots):
            rec = d.off + i * d.rsize
            if not _U64.unpack_from(buf, rec)[0]:
                if free < 0:
                    free = i
            elif self._labels(rec, len(enc)) == enc:
                self._remember(key, i)
                return rec
        if free < 0:
            raise PromError(f"metric {d.name}: all {d.nslots} label sets in use")
        rec = d.off + free * d.rsize
        buf[rec:rec + d.rsize] = bytes(d.rsize)
        for k, v in enumerate(enc):
            p = rec + 16 + k * _LBL
            buf[p] = len(v)
            buf[p + 1:p + 1 + len(v)] = v
        seq = _U64.unpack_from(buf, self.base)[0] + 1
        _U64.pack_into(buf, self.base, seq)
        _U64.pack_into(buf, rec, seq)
        self._remember(key, free)
        return rec

    def _remember(self, key, i):
        if len(self._where) > 65536:
            self._where.clear()
        self._where[key] = i

    def _labels(self, rec, n):
        buf = self.buf
        out = []
        for k in range(n):
            p = rec + 16 + k * _LBL
            out.append(bytes(buf[p + 1:p + 1 + buf[p]]))
        return tuple(out)

    def sweep(self, now_ms):
        """Free the series not updated for timeout_ms (Kamailio's
        prom_metric_list_timeout_delete); at most once a second per process."""
        if now_ms - self._last_sweep < 1000:
            return
        self._last_sweep = now_ms
        buf = self.buf
        for d in self.defs:
            for i in range(d.nslots):
                rec = d.off + i * d.rsize
                seq, ts = _SEQ_TS.unpack_from(buf, rec)
                if seq and now_ms - ts > self.timeout_ms:
                    _U64.pack_into(buf, rec, 0)

    # -- the operations of the script functions and RPC methods ------------------------
    def counter_inc(self, name, n, labels=()):
        def op(buf, v, d):
            _U64.pack_into(buf, v, (_U64.unpack_from(buf, v)[0] + n) & 0xFFFFFFFFFFFFFFFF)
        self.update(name, COUNTER, labels, op)

    def counter_reset(self, name, labels=()):
        self.update(name, COUNTER, labels, lambda buf, v, d: _U64.pack_into(buf, v, 0))

    def gauge_set(self, name, x, labels=()):
        self.update(name, GAUGE, labels, lambda buf, v, d: _F64.pack_into(buf, v, x))

    def gauge_reset(self, name, labels=()):
        self.update(name, GAUGE, labels, lambda buf, v, d: _F64.pack_into(buf, v, 0.0))

    def histogram_observe(self, name, x, labels=()):
        def op(buf, v, d):
            _U64.pack_into(buf, v, _U64.unpack_from(buf, v)[0] + 1)
            _F64.pack_into(buf, v + 8, _F64.unpack_from(buf, v + 8)[0] + x)
            for k, upper in enumerate(d.buckets):
                if x <= upper:
                    p = v + 16 + 8 * k
                    _U64.pack_into(buf, p, _U64.unpack_from(buf, p)[0] + 1)
        self.update(name, HISTOGRAM, labels, op)

    # -- reads (the scrape) --------------------------------------------------------------
    def snapshot(self):
        """[(MetricDef, [(label values, value)])] in definition order, each metric's series
        in creation order; value: int (counter), float (gauge), (count, sum, [bucket
        counts]) (histogram). Taken under the lock, so a scrape is consistent."""
        out = []
        self.lock.acquire(0)
        try:
            for d in self.defs:
                rows = []
                for i in range(d.nslots):
                    rec = d.off + i * d.rsize
                    seq = _U64.unpack_from(self.buf, rec)[0]
                    if seq:
                        labels = tuple(v.decode("utf-8", "surrogateescape")
                                       for v in self._labels(rec, len(d.labels)))
                        rows.append((seq, labels, self._value(d, rec + _HEAD)))
                rows.sort(key=lambda r: r[0])
                out.append((d, [(lb, val) for _seq, lb, val in rows]))
        finally:
            self.lock.release(0)
        return out

    def _value(self, d, v):
        buf = self.buf
        if d.kind == COUNTER:
            return _U64.unpack_from(buf, v)[0]
        if d.kind == GAUGE:
            return _F64.unpack_from(buf, v)[0]
        count = _U64.unpack_from(buf, v)[0]
        total = _F64.unpack_from(buf, v + 8)[0]
        return count, total, [_U64.unpack_from(buf, v + 16 + 8 * k)[0] for k in range(len(d.buckets))]
