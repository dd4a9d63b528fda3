"""What an operator's commands cost, asyncd beside Kamailio: BINRPC calls
over the ctl unix socket (what `kamcmd` sends) and Prometheus scrapes of
xhttp_prom's /metrics, on the same cfg, one server at a time.

Runs in: a developer's shell (`python -m bench.micro_ops [--n N] [--server
asyncd|kamailio|both]`).

Per command: latency p50 / p99 in ms over N sequential calls from one
client (a new connection per call, as kamcmd and a scraper make), and the
server's CPU per call (user+system of its whole process tree over the N
calls, divided by N). The client is asyncd's own BINRPC client
(asyncd.ctl_client.call) for both servers, so the client side costs the
same; the statistics listing is of what each server registers (Kamailio's
has ~300 names, asyncd's the same ones plus tcp:).
"""
import argparse
import http.client
import json
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from asyncd.ctl_client import call
from bench.servers import Server, free_udp_port, kamailio_binary
from bench.sysstats import ProcessTree

CFG = r"""#!KAMAILIO
debug=1
children=2
tcp_children=2
listen=udp:127.0.0.1:LPORT
listen=tcp:127.0.0.1:LPORT
tcp_accept_no_cl=yes
loadmodule "ctl.so"
loadmodule "kex.so"
loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "tmx.so"
loadmodule "pv.so"
loadmodule "htable.so"
loadmodule "xhttp.so"
loadmodule "xhttp_prom.so"
modparam("ctl", "binrpc", "unix:CTLSOCK")
modparam("htable", "htable", "t=>size=8;")
modparam("xhttp_prom", "xhttp_prom_stats", "all")
request_route {
    sl_send_reply("200", "OK");
}
event_route[xhttp:request] {
    if (prom_check_uri()) {
        prom_dispatch();
        exit;
    }
    xhttp_reply("404", "Not Found", "text/plain", "no");
}
"""

COMMANDS = (("core.uptime", ()), ("tm.stats", ()), ("stats.get_statistics", ("all",)),
            ("htable.dump", ("t",)))


def _pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _measure(tree, n, fn):
    times = []
    cpu0 = tree.cpu_seconds()
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    cpu = (tree.cpu_seconds() - cpu0) * 1000 / n
    return {"p50_ms": round(_pct(times, 0.5), 3), "p99_ms": round(_pct(times, 0.99), 3),
            "mean_ms": round(statistics.fmean(times), 3), "cpu_ms_per_call": round(cpu, 3)}


def _scrape(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"/metrics answered {r.status}")
        return body
    finally:
        conn.close()


def run_one(kind, n, workdir):
    cfg = Path(workdir) / f"{kind}.cfg"
    sock = str(Path(workdir) / f"{kind}_ctl")
    cfg.write_text(CFG.replace("CTLSOCK", sock))
    srv = Server(kind, str(cfg), free_udp_port(), 64, Path(workdir))
    srv.start()
    try:
        time.sleep(1.0)             # the ctl handler forks after the SIP workers answer
        tree = ProcessTree(srv.pid)
        out = {}
        for method, params in COMMANDS:
            call(f"unix:{sock}", method, params)
            out[method] = _measure(tree, n, lambda: call(f"unix:{sock}", method, params))
        size = len(_scrape(srv.port))
        out["GET /metrics"] = dict(_measure(tree, n, lambda: _scrape(srv.port)), bytes=size)
        return out
    finally:
        srv.stop()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.micro_ops")
    ap.add_argument("--n", type=int, default=300, help="calls per command (default 300)")
    ap.add_argument("--server", default="both", choices=("asyncd", "kamailio", "both"))
    opts = ap.parse_args(argv)
    kinds = ["asyncd", "kamailio"] if opts.server == "both" else [opts.server]
    if "kamailio" in kinds and not kamailio_binary():
        kinds.remove("kamailio")
    results = {}
    with tempfile.TemporaryDirectory(prefix="micro-ops-") as wd:
        for kind in kinds:
            results[kind] = run_one(kind, opts.n, wd)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent).stdout.strip()
    print(f"# micro_ops n={opts.n} commit={commit} python={platform.python_version()} "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| command | " + " | ".join(f"{k} p50 / p99 ms, CPU ms/call" for k in kinds) + " |")
    print("|---|" + "---|" * len(kinds))
    for cmd in results[kinds[0]]:
        cells = []
        for k in kinds:
            r = results[k][cmd]
            extra = f", {r['bytes']:,} B" if "bytes" in r else ""
            cells.append(f"{r['p50_ms']} / {r['p99_ms']}, {r['cpu_ms_per_call']}{extra}")
        print(f"| {cmd} | " + " | ".join(cells) + " |")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
