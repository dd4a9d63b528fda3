"""xhttp_prom: Prometheus metrics over xhttp: the statistics and the metrics
the script defines (prom_counter, prom_gauge, prom_histogram).

Runs in: main process (mod_init: the metric table in shm), every process
that runs a route or an RPC (updates), the tcp receiver that runs
prom_dispatch() (the scrape).

Kamailio 5.6.3 (src/modules/xhttp_prom/xhttp_prom.c, prom.c, prom_metric.c):
- modparams `xhttp_prom_stats` ("" none, "all", "group:" one group, or one
  statistic), `xhttp_prom_beginning` (prefix, "kamailio_"),
  `xhttp_prom_buf_size` (largest body; 0: Kamailio's a third of pkg memory,
  here the 64 KB a TCP reply may have: beyond it the scrape answers 500
  Internal Server Error, Kamailio's overflow answer), `xhttp_prom_timeout`
  (minutes, 60; 0 keeps label sets forever), and `prom_counter`, `prom_gauge`,
  `prom_histogram` = "name=N; label=a:b:c; buckets=0.1:1:10" (up to three
  labels; buckets only for histograms, default Prometheus' eleven);
- prom_check_uri() is true for the URL `/metrics`; prom_dispatch() answers
  the scrape (200, `text/plain; version=0.0.4`) and ends the route;
- prom_counter_inc / _reset, prom_gauge_set / _reset, prom_histogram_observe
  with 0 to 3 label values; RPC xhttp_prom.counter_reset, counter_inc,
  gauge_reset, gauge_set, histogram_observe, metric_list_print.
The metrics live in shm (shm/prom.py, which says what happens past its
bounds); the text is Kamailio's (asyncd/modules/prom_exposition.py).
"""
import re

from asyncd.core import log
from asyncd.core.exports import FuncExport, ModuleExports, P, ParamExport
from asyncd.core.route_types import ANY_ROUTE, EVENT_ROUTE, REQUEST_ROUTE
from asyncd.core.rpc import RpcExport, RpcFault
from asyncd.ipc import async_task
from asyncd.ipc.tcp import MAX_MSG
from asyncd.modules import xhttp
from asyncd.modules.prom_exposition import KamailioCollector, StatsSpecError, render
from shm.prom import COUNTER, DEFAULT_BUCKETS, GAUGE, HISTOGRAM, MetricDef, PromError, PromStore

MOD = "xhttp_prom"
URI = "/metrics"
CTYPE = "text/plain; version=0.0.4"
MAX_LABELS = 3
_REPLY_ROOM = 512       # status line and headers of the reply within MAX_MSG


class _State:
    store = None        # shm.prom.PromStore (made in mod_init, inherited)
    beginning = "kamailio_"
    spec = ""
    buf_size = 0


S = _State()


# -- modparams -----------------------------------------------------------------------------------
def parse_metric(kind, spec):
    """'name=cnt01; label=a:b; buckets=0.1:1' -> MetricDef (Kamailio's prom_*_create).
    Raises ValueError with Kamailio's wording."""
    fields = {}
    for part in spec.strip().rstrip(";").split(";"):
        if not part.strip():
            continue
        k, eq, v = part.partition("=")
        k, v = k.strip(), v.strip()
        allowed = ("name", "label", "buckets") if kind == HISTOGRAM else ("name", "label")
        if not eq or k not in allowed:
            raise ValueError(f"Unknown field: {k} ({v})")
        fields[k] = v
    name = fields.get("name")
    if not name:
        raise ValueError(f"No {kind} name")
    labels = tuple(x for x in fields.get("label", "").split(":") if x) if "label" in fields else ()
    if "label" in fields and not labels:
        raise ValueError(f"No label available ({spec})")
    if len(labels) > MAX_LABELS:
        raise ValueError(f"{name}: at most {MAX_LABELS} labels (the script functions take three)")
    return MetricDef(kind, name, labels, _buckets(fields["buckets"]) if "buckets" in fields
                     else DEFAULT_BUCKETS)


def _buckets(text):
    if not text:
        raise ValueError("Void bucket string")
    out = tuple(atof(x) for x in text.split(":") if x != "")
    if not out:
        raise ValueError("At least one bucket needed")
    if any(b < a for a, b in zip(out, out[1:])):
        raise ValueError("Buckets must increase")
    return out


_FLOAT_PREFIX = re.compile(r"\s*[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf(?:inity)?|nan)", re.I)


def atof(text):
    """C's atof, which Kamailio's double_parse_str uses: the longest number prefix,
    0.0 when there is none."""
    m = _FLOAT_PREFIX.match(str(text))
    return float(m.group(0)) if m else 0.0


def mod_init(script):
    if script.module(xhttp.MOD) is None:
        raise RuntimeError("xhttp_prom: cannot bind to XHTTP API (load the xhttp module)")
    mp = script.modparams[MOD]
    timeout = int(mp.get("xhttp_prom_timeout") or 0)
    if timeout < 0:
        raise RuntimeError(f"xhttp_prom: Invalid timeout: {timeout}")
    defs = []
    for kind, param in ((COUNTER, "prom_counter"), (GAUGE, "prom_gauge"), (HISTOGRAM, "prom_histogram")):
        for spec in mp.get(param) or ():
            try:
                defs.append(parse_metric(kind, str(spec)))
            except ValueError as e:
                raise RuntimeError(f"xhttp_prom: {param} \"{spec}\": {e}") from None
    names = [d.name for d in defs]
    if len(set(names)) != len(names):
        raise RuntimeError("xhttp_prom: a metric name is defined twice")
    # Kamailio lists the metrics in modparam order across the three kinds; the modparam
    # lists keep the order within a kind only: counters, then gauges, then histograms
    S.store = PromStore(script.shm, defs) if defs else None
    if S.store is not None:
        S.store.timeout_ms = timeout * 60000
    S.beginning = str(mp.get("xhttp_prom_beginning") if mp.get("xhttp_prom_beginning") is not None
                      else "kamailio_")
    S.spec = str(mp.get("xhttp_prom_stats") or "")
    size = int(mp.get("xhttp_prom_buf_size") or 0)
    S.buf_size = min(size, MAX_MSG - _REPLY_ROOM) if size > 0 else MAX_MSG - _REPLY_ROOM


def collector(script):
    return KamailioCollector(S.store, script.stats, S.beginning, S.spec, async_task.framework())


# -- script functions ----------------------------------------------------------------------------
def w_prom_check_uri(ctx, site):
    return 1 if ctx.msg.ruri == URI else -1


def w_prom_dispatch(ctx, site):
    """Answer the scrape; returns 0 (ends the route), as Kamailio's prom_dispatch."""
    if not ctx.msg.http:
        return 1        # Kamailio: NONSIP_MSG_PASS for a SIP message
    code, reason = 200, "OK"
    try:
        body = render(collector(ctx.proc.script))
        if len(body.encode("utf-8", "surrogateescape")) >= S.buf_size:
            log.err(MOD, f"Error body buffer overflow ({S.buf_size} bytes)")
            body = None
    except (StatsSpecError, PromError) as e:
        log.err(MOD, str(e))
        body = None
    if body is None:
        code, reason = 500, "Internal Server Error"
        body = reason
    xhttp.send(ctx, code, reason, CTYPE, body)
    return 0


def _labels(args):
    """Label values from the script: each must be a non-empty string (Kamailio's
    `Invalid lN string`)."""
    out = []
    for i, v in enumerate(args, 1):
        if v is None or v == "":
            raise PromError(f"Invalid l{i} string")
        out.append(str(v))
    return tuple(out)


def _run(what, fn, name, *rest):
    if not name:
        log.err(MOD, "Invalid name string")
        return -1
    try:
        fn(name, *rest)
    except PromError as e:
        log.err(MOD, f"{what} {name}: {e}")
        return -1
    return 1


def _w_reset(kind):
    """prom_counter_reset / prom_gauge_reset (name, label values...)."""
    def w_reset(ctx, site, name, *lv):
        try:
            labels = _labels(lv)
        except PromError as e:
            log.err(MOD, str(e))
            return -1
        return _run(f"Cannot reset {kind}:", _store_call(f"{kind}_reset"), name, labels)
    return w_reset


w_counter_reset = _w_reset("counter")
w_gauge_reset = _w_reset("gauge")


def w_counter_inc(ctx, site, name, number, *lv):
    if number is None:
        log.err(MOD, "no number")
        return -1
    if number < 0:
        log.err(MOD, "invalid negative number parameter")
        return -1
    try:
        labels = _labels(lv)
    except PromError as e:
        log.err(MOD, str(e))
        return -1
    return _run("Cannot add number to counter:", _store_call("counter_inc"), name, number, labels)


def w_gauge_set(ctx, site, name, number, *lv):
    return _set_or_observe(name, number, lv, "gauge_set", "Cannot assign number to gauge:")


def w_histogram_observe(ctx, site, name, number, *lv):
    return _set_or_observe(name, number, lv, "histogram_observe", "Cannot observe number in histogram:")


def _set_or_observe(name, number, lv, method, what):
    if number is None or str(number) == "":
        log.err(MOD, "Invalid number string")
        return -1
    try:
        labels = _labels(lv)
    except PromError as e:
        log.err(MOD, str(e))
        return -1
    return _run(what, _store_call(method), name, atof(number), labels)


def _store_call(method):
    """The store's method, or one that fails when no metric is defined at all."""
    store = S.store
    if store is None:
        def none(name, *a):
            raise PromError(f"No metric found for name: {name}")
        return none
    return getattr(store, method)


# -- RPC ------------------------------------------------------------------------------------------
def _rpc_name(call, what):
    got = call.scan("S") if call.params else None
    if not got or not got[0]:
        raise RpcFault(400, f"required {what} identifier")
    return got[0]


def _rpc_labels(call, skip):
    """The optional label values after `skip` parameters (Kamailio's "*SSS")."""
    return tuple(str(v) for v in call.params[skip:skip + MAX_LABELS])


def _rpc_do(fn, fault, name, *args):
    try:
        fn(name, *args)
    except PromError:
        raise RpcFault(500, fault) from None


def rpc_counter_reset(call):
    name = _rpc_name(call, "counter")
    labels = _rpc_labels(call, 1)
    _rpc_do(_store_call("counter_reset"), f"Failed to reset counter: {name}", name, labels)


def rpc_gauge_reset(call):
    name = _rpc_name(call, "gauge")
    labels = _rpc_labels(call, 1)
    _rpc_do(_store_call("gauge_reset"), f"Failed to reset gauge: {name}", name, labels)


def rpc_counter_inc(call):
    name = _rpc_name(call, "counter")
    number = _rpc_number(call, "d")
    if number < 0:
        log.err(MOD, "invalid negative number parameter")
        return          # Kamailio answers nothing more (no fault)
    _rpc_do(_store_call("counter_inc"), f"Failed to add {number} to counter: {name}", name,
            number, _rpc_labels(call, 2))


def rpc_gauge_set(call):
    name = _rpc_name(call, "gauge")
    number = _rpc_number(call, "f")
    _rpc_do(_store_call("gauge_set"), f"Failed to assign {number:f} gauge: {name}", name, number,
            _rpc_labels(call, 2))


def rpc_histogram_observe(call):
    name = _rpc_name(call, "histogram")
    number = _rpc_number(call, "f")
    _rpc_do(_store_call("histogram_observe"), f"Failed to observe {number:f} histogram: {name}",
            name, number, _rpc_labels(call, 2))


def _rpc_number(call, kind):
    return call.scan("S" + kind, fault=(400, "required number argument"))[1]


def rpc_metric_list_print(call):
    """The user metrics as the scrape shows them, one string (Kamailio's rpl_printf)."""
    call.add(render(collector(call.script), stats=False))


EXPORTS = ModuleExports(
    name=MOD,
    functions=[
        FuncExport("prom_check_uri", (), w_prom_check_uri, REQUEST_ROUTE | EVENT_ROUTE),
        FuncExport("prom_dispatch", (), w_prom_dispatch, REQUEST_ROUTE | EVENT_ROUTE),
    ] + [FuncExport("prom_counter_reset", (P.STR,) * (1 + n), w_counter_reset, ANY_ROUTE)
         for n in range(4)]
      + [FuncExport("prom_gauge_reset", (P.STR,) * (1 + n), w_gauge_reset, ANY_ROUTE)
         for n in range(4)]
      + [FuncExport("prom_counter_inc", (P.STR, P.INT) + (P.STR,) * n, w_counter_inc, ANY_ROUTE)
         for n in range(4)]
      + [FuncExport("prom_gauge_set", (P.STR,) * (2 + n), w_gauge_set, ANY_ROUTE)
         for n in range(4)]
      + [FuncExport("prom_histogram_observe", (P.STR,) * (2 + n), w_histogram_observe, ANY_ROUTE)
         for n in range(4)],
    params=[
        ParamExport("xhttp_prom_buf_size", int, 0),
        ParamExport("xhttp_prom_stats", str, ""),
        ParamExport("xhttp_prom_beginning", str, "kamailio_"),
        ParamExport("xhttp_prom_timeout", int, 60),
        ParamExport("prom_counter", str, None, multi=True),
        ParamExport("prom_gauge", str, None, multi=True),
        ParamExport("prom_histogram", str, None, multi=True),
    ],
    mod_init=mod_init,
    rpc=[
        RpcExport("xhttp_prom.counter_reset", rpc_counter_reset,
                  "Set a user counter (name, then its label values) back to 0"),
        RpcExport("xhttp_prom.counter_inc", rpc_counter_inc,
                  "Add a non-negative integer to a user counter (name, number, label values)"),
        RpcExport("xhttp_prom.gauge_reset", rpc_gauge_reset,
                  "Set a user gauge (name, then its label values) back to 0"),
        RpcExport("xhttp_prom.gauge_set", rpc_gauge_set, "Give a user gauge a value (name, number, label values)"),
        RpcExport("xhttp_prom.histogram_observe", rpc_histogram_observe,
                  "Add an observation to a user histogram (name, number, label values)"),
        RpcExport("xhttp_prom.metric_list_print", rpc_metric_list_print,
                  "The user metrics in the text a scrape of /metrics shows"),
    ],
    depends=("xhttp",),
)
