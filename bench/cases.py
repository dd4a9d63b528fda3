"""Benchmark cases and suites, loaded from data files in bench/cases/.

Runs in: the bench harness process.

A case is data: a cfg (run unchanged by asyncd and by Kamailio), which
load to apply, and which servers can run it. Two ways to declare one:

1. ``bench/cases/<name>.toml``::

       title = "stateless sl_send_reply"
       cfg = "stateless.cfg"
       servers = ["asyncd", "kamailio"]   # who can run the cfg at all
       note = "..."                       # shown for a server left out
       mem_mb = 256                       # -m for both servers, or per server:
       # mem_mb = {asyncd = 64, kamailio = 1024}   (each server the case runs needs its own)
       transport = "tcp"                  # "udp" (default) or "tcp": how the load reaches the cfg
       args = ["-l", "udp:127.0.0.1:{port}"]   # extra options for both servers ({port}, {run_dir})
       [sipp]        # clean-rate search with SIPp
       scenario = "options_uac.xml"; rates = [...]; step_s = 10; refine = 1
       uas = "uas.xml"                    # relay cases: a SIPp UAS behind the server
       users = 10000                      # -inf: calls go to this many distinct users, in order
       register = {scenario = "register_uac.xml", rate = 1000}   # first REGISTER every user once
       [latency]     # built-in sender, fixed rate, per-request latency
       rate = 1000; count = 3000; nominal_ms = 0; drain_s = 2
       rates = [1000, 3000]               # optional: one run per rate, each as long as `count` at `rate`
       [throughput]  # async_task_data / tkv: deliveries counted by the cfg, stepped
       rates = [2000, 4000, 8000]; step_s = 3; timeout_s = 5   # like the SIPp search
       [soak]        # one SIPp load at a fixed rate for a long time, sampled (bench/soak.py)
       scenario = "options_uac.xml"; rate = 4250; duration_s = 1800; sample_s = 60
       [overload]    # after the search (or base_rate): factor x the max clean rate for a while
       factor = 2.0; duration_s = 30; base_rate = 6000   # base_rate: skip the search (bench/overload.py)
       [quick]       # overrides for --quick, same shape as above
       sipp = {rates = [200, 500], step_s = 1}

2. A bare ``bench/cases/<name>.cfg`` with no .toml beside it (e.g. the
   async engineer's ``async_*.cfg``): the same keys as TOML lines in
   comments at its top, each prefixed ``# bench:``, for example
   ``# bench: latency = {rate = 200, count = 400, nominal_ms = 1000}``.
   With no such lines it gets a latency run at 200/s.

A ``transport = "tcp"`` case sends its latency run over one TCP connection
(bench/sender_tcp.py) and its SIPp steps with ``-t t1`` (``[sipp] tcp_mode``
says otherwise, e.g. ``"tn"``: a connection per call); its cfg listens on
TCP only. Only ``[latency]`` and ``[sipp]`` run over TCP: the data counter
and the soak's UAS are UDP.

A case with ``opt_in = true`` (the half-hour soak cases) runs only when a
suite or its own name asks for it: "all" leaves it out.

Suites are lists of case names in ``bench/cases/suites.toml``; every case
name is also a suite of one, and "all" is every case that is not opt-in.
"""
import copy
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

CASES_DIR = Path(__file__).resolve().parent / "cases"
SERVERS = ("asyncd", "kamailio")
TRANSPORTS = ("udp", "tcp")

DEFAULT_SIPP = {"scenario": "options_uac.xml", "rates": [1000, 2000, 5000], "step_s": 10,
                "refine": 1, "recv_timeout_ms": 4000, "cooldown_s": 1.0, "min_rate_fraction": 0.9,
                "service": "bench", "uas": None}
DEFAULT_LATENCY = {"rate": 200, "count": 400, "nominal_ms": 0, "drain_s": 2.0, "user": "bench",
                   "warmup": 20}
DEFAULT_THROUGHPUT = {"rates": [1000, 2000, 4000], "step_s": 3.0, "refine": 0, "timeout_s": 5.0,
                      "user": "bench"}
# Issue 12's soak: minute samples; "pass" is judged from the second sample (minute 2) on.
DEFAULT_SOAK = {"scenario": "options_uac.xml", "uas": None, "service": "bench", "rate": 1000,
                "duration_s": 1800, "sample_s": 60, "recv_timeout_ms": 4000,
                "pss_drift_limit_pct": 5.0, "rate_source": ""}
DEFAULT_QUICK = {"sipp": {"rates": [200, 400], "step_s": 1, "refine": 0, "cooldown_s": 0.2},
                 "latency": {"count": 100, "drain_s": 1.5, "warmup": 5},
                 "throughput": {"rates": [500, 1000], "step_s": 0.5, "timeout_s": 3.0},
                 "soak": {"duration_s": 60, "sample_s": 15},
                 "overload": {"duration_s": 3, "recv_timeout_ms": 4000, "sample_s": 0.5,
                              "cooldown_s": 1.0}}
# Issue 16's overload: `rate` (None: factor x the base) and `base_rate` (None: the search's
# maximum; a number, or a table per server) are set by --rate and --overload-base.
# recv_timeout_ms past SIPp's last retransmission (timer E to T2, 9 times: ~31.5 s), so a
# call without an answer ends as SIPp's retransmission timeout, about timer F (32 s).
DEFAULT_OVERLOAD = {"scenario": "options_answers_uac.xml", "service": "bench", "factor": 2.0,
                    "duration_s": 30, "rate": None, "base_rate": None, "recv_timeout_ms": 34000,
                    "sample_s": 2.0, "cooldown_s": 6.0, "goodput_target": 0.9,
                    "pss_growth_limit_pct": 10.0, "pss_settle_s": 10.0}
PARTS = ("sipp", "latency", "throughput", "soak", "overload")


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


@dataclass
class Case:
    name: str
    title: str
    cfg: Path
    servers: tuple
    note: str = ""
    mem_mb: object = 256        # int: -m for both servers; dict: server -> -m (mem_for)
    sipp: Optional[dict] = None
    latency: Optional[dict] = None
    throughput: Optional[dict] = None
    soak: Optional[dict] = None
    overload: Optional[dict] = None
    quick: dict = field(default_factory=dict)
    kind: str = "load"          # "timer" when the latency run measures a nominal delay
    opt_in: bool = False        # left out of "all": runs only when named (a suite or itself)
    transport: str = "udp"      # "tcp": the cfg listens on TCP, the latency run and SIPp use TCP
    args: tuple = ()            # extra server options for both servers ("{port}", "{run_dir}")

    def mem_for(self, kind: str) -> int:
        """The -m (MB) server `kind` runs this case at."""
        return per_server(self.mem_mb, kind)

    def for_mode(self, quick: bool) -> "Case":
        """The case with its --quick overrides applied (defaults, then its own)."""
        if not quick:
            return self
        c = copy.copy(self)
        over = deep_merge(DEFAULT_QUICK, self.quick)
        for part in PARTS:
            cur = getattr(self, part)
            if cur is not None and part in over:
                setattr(c, part, deep_merge(cur, over[part]))
        return c

    def with_soak(self, over: dict) -> "Case":
        """The case with the command line's soak settings (--rate, --duration, --sample-s)."""
        if not self.soak or not over:
            return self
        c = copy.copy(self)
        c.soak = {**self.soak, **over}
        return c

    def with_overload(self, over: dict) -> "Case":
        """The case with the command line's overload settings (--rate, --duration, --sample-s,
        --overload-base)."""
        if not self.overload or not over:
            return self
        c = copy.copy(self)
        c.overload = {**self.overload, **over}
        return c

    def overload_base(self, kind: str) -> Optional[int]:
        """The overload's base rate for server `kind` when given (no search), else None."""
        base = per_server((self.overload or {}).get("base_rate"), kind)
        return int(base) if base else None

    def with_fixed_rates(self, rates) -> "Case":
        """The case for --fixed-rates: its latency run at each rate, no clean-rate search."""
        if not rates or self.latency is None:
            return self
        c = copy.copy(self)
        c.latency = {**self.latency, "rates": list(rates)}
        c.sipp = None
        return c

    def describe_load(self) -> str:
        bits = []
        if self.latency:
            lat = self.latency
            nominal = f", delay {lat['nominal_ms']} ms" if lat.get("nominal_ms") else ""
            rates = latency_rates(lat)
            if rates == [lat["rate"]]:
                bits.append(f"sender {lat['rate']}/s x {lat['count']}{nominal}")
            else:
                bits.append(f"sender {' and '.join(f'{r}/s' for r in rates)}, "
                            f"{lat['count'] / lat['rate']:g} s each{nominal}")
        if self.throughput:
            t = self.throughput
            bits.append(f"data steps {t['rates']} x {t['step_s']} s")
        if self.sipp:
            s = self.sipp
            over = f" over TCP (-t {s['tcp_mode']})" if self.transport == "tcp" else ""
            users = ""
            if s.get("users"):
                reg = s.get("register")
                users = (f" to {s['users']} users" + (f" registered first at {reg['rate']}/s" if reg else ""))
            bits.append(f"SIPp {s['scenario']}{over}{users} steps {s['rates']} x {s['step_s']} s")
        if self.soak:
            s = self.soak
            uas = f" to a SIPp UAS ({s['uas']})" if s.get("uas") else ""
            bits.append(f"soak: SIPp {s['scenario']}{uas} at {s['rate']}/s for {s['duration_s']:g} s, "
                        f"sampled every {s['sample_s']:g} s")
        if self.overload:
            o = self.overload
            rate = f"{o['rate']}/s" if o.get("rate") else f"{o['factor']:g} x the max clean rate"
            base = f" (base {o['base_rate']}/s)" if o.get("base_rate") else ""
            bits.append(f"overload: SIPp {o['scenario']} at {rate}{base} for {o['duration_s']:g} s")
        if self.transport == "tcp" and self.latency:
            bits[0] += " over one TCP connection"
        return "; ".join(bits)


def per_server(value, kind: str):
    """A case value given for both servers (a number) or per server (a table)."""
    return value[kind] if isinstance(value, dict) else value


def _mem_mb(name: str, value, servers: tuple):
    """`mem_mb`: an int for both servers, or a table with an int for each server that runs."""
    if not isinstance(value, dict):
        return int(value)
    unknown = [k for k in value if k not in SERVERS]
    missing = [s for s in servers if s not in value]
    if unknown or missing:
        raise ValueError(f"case {name}: mem_mb table: unknown servers {unknown}, missing {missing}")
    return {k: int(v) for k, v in value.items()}


def latency_rates(lat: dict) -> list:
    """The rates of a latency phase: its `rates`, or its one `rate`."""
    return list(lat.get("rates") or [lat["rate"]])


def at_rate(lat: dict, rate: int) -> dict:
    """A latency phase's settings for one of its rates: as long as `count` at `rate`."""
    if rate == lat["rate"]:
        return lat
    return {**lat, "rate": rate, "count": max(1, round(lat["count"] * rate / lat["rate"]))}


def _from_dict(name: str, d: dict, cfg_default: Optional[Path] = None) -> Case:
    cfg = CASES_DIR / d["cfg"] if "cfg" in d else cfg_default
    if cfg is None or not cfg.exists():
        raise ValueError(f"case {name}: cfg {cfg} not found")
    servers = tuple(d.get("servers", SERVERS))
    bad = [s for s in servers if s not in SERVERS]
    if bad:
        raise ValueError(f"case {name}: unknown servers {bad}")
    sipp = deep_merge(DEFAULT_SIPP, d["sipp"]) if "sipp" in d else None
    latency = deep_merge(DEFAULT_LATENCY, d["latency"]) if "latency" in d else None
    throughput = deep_merge(DEFAULT_THROUGHPUT, d["throughput"]) if "throughput" in d else None
    soak = deep_merge(DEFAULT_SOAK, d["soak"]) if "soak" in d else None
    overload = deep_merge(DEFAULT_OVERLOAD, d["overload"]) if "overload" in d else None
    if overload and not (sipp or overload.get("base_rate")):
        raise ValueError(f"case {name}: [overload] needs a [sipp] ladder or a base_rate")
    if not (sipp or latency or throughput or soak or overload):
        latency = dict(DEFAULT_LATENCY)
    kind = "timer" if latency and latency.get("nominal_ms") else "load"
    transport = d.get("transport", "udp")
    if transport not in TRANSPORTS:
        raise ValueError(f"case {name}: unknown transport {transport!r}")
    if transport == "tcp":
        if throughput or soak or overload or (sipp and sipp.get("uas")):
            raise ValueError(f"case {name}: over TCP only [latency] and [sipp] without a UAS run")
        if sipp:
            sipp.setdefault("tcp_mode", "t1")
    return Case(name=name, title=d.get("title", name), cfg=cfg, servers=servers,
                note=d.get("note", ""), mem_mb=_mem_mb(name, d.get("mem_mb", 256), servers), sipp=sipp,
                latency=latency, throughput=throughput, soak=soak, overload=overload,
                quick=d.get("quick", {}), kind=kind,
                opt_in=bool(d.get("opt_in", False)), transport=transport,
                args=tuple(str(a) for a in d.get("args", ())))


def header_toml(cfg_text: str) -> dict:
    """TOML from the ``# bench:`` comment lines of a cfg."""
    lines = []
    for ln in cfg_text.splitlines():
        s = ln.strip()
        if s.startswith("# bench:"):
            lines.append(s[len("# bench:"):].strip())
    return tomllib.loads("\n".join(lines)) if lines else {}


def load_cases(directory: Path = CASES_DIR) -> dict:
    cases = {}
    for p in sorted(directory.glob("*.toml")):
        if p.name == "suites.toml":
            continue
        with open(p, "rb") as f:
            cases[p.stem] = _from_dict(p.stem, tomllib.load(f))
    used = {c.cfg.resolve() for c in cases.values()}
    for p in sorted(directory.glob("*.cfg")):
        if p.resolve() in used or p.stem in cases:
            continue
        d = header_toml(p.read_text(errors="replace"))
        cases[p.stem] = _from_dict(p.stem, d, cfg_default=p)
    return cases


def load_suites(directory: Path = CASES_DIR, cases: Optional[dict] = None) -> dict:
    cases = cases if cases is not None else load_cases(directory)
    suites = {}
    path = directory / "suites.toml"
    if path.exists():
        with open(path, "rb") as f:
            for name, body in tomllib.load(f).items():
                suites[name] = {"description": body.get("description", ""),
                                "cases": list(body.get("cases", []))}
    suites.setdefault("all", {"description": "every case but the opt-in ones (soak)",
                              "cases": sorted(n for n, c in cases.items() if not c.opt_in)})
    for n in cases:
        suites.setdefault(n, {"description": cases[n].title, "cases": [n]})
    for name, s in suites.items():
        missing = [c for c in s["cases"] if c not in cases]
        if missing:
            s["missing"] = missing
    return suites


def resolve_suite(name: str, directory: Path = CASES_DIR) -> list:
    """The Case objects of suite (or case) `name`, in suite order."""
    cases = load_cases(directory)
    suites = load_suites(directory, cases)
    if name not in suites:
        raise KeyError(f"no suite or case named {name!r} (try: python -m bench list)")
    return [cases[c] for c in suites[name]["cases"] if c in cases]
