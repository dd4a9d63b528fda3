"""Micro benchmark of the shared-memory layer: $sht get/set/inc latency from
one process and with 4 processes contending, lock-free vs locked reads, and
the PSS cost of a 100-byte htable entry.

Runs in: a developer's shell (`python -m bench.micro_shm [--json FILE] [--n N]`).

Latency is measured per operation with perf_counter_ns; the cost of the
clock calls themselves (median of an empty timed call) is reported and
subtracted in the `net` columns.  Contended runs fork 4 processes that hammer
the same 16 keys (inc: the same single key), so every operation fights for
the same stripe locks and the seqlock readers see writers constantly.

Memory: PSS of the arena's /dev/shm mapping (from /proc/self/smaps) before
and after inserting N entries with 10-byte keys and 100-byte values, per
entry, and the same minus the 110 payload bytes (the overhead).

Figures on the 2-core dev box (Python 3.11.7, commit 5553731, best of 3;
raw, including ~75 ns of clock calls), targets: median get/set < 2 us,
PSS overhead per 100-byte entry < 256 B:

    op           1 proc median   p99     4 procs median   p99
    get ($sht)        1.17 us   3.0 us        1.19 us    2.1 us   lock-free (seqlock)
    get, locked       1.71 us   2.4 us        1.74 us    4.5 us
    set (str 100 B)   1.82 us   4.0 us        1.82 us    3.9 us
    set (int)         1.49 us   2.7 us        1.49 us    4.0 us
    inc ($shtinc)     1.40 us   2.4 us        1.49 us    3.8 us   4 procs on one key
    memory: 213 B PSS per entry (10 B key + 100 B value) = 103 B overhead,
            bucket array (2^17 buckets) included.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

from shm.arena import ShmArena
from shm.htable import HTable

KEYS = [f"key-{i:05d}" for i in range(16)]
VAL = "v" * 100


def _pct(xs, q):
    return xs[min(len(xs) - 1, int(len(xs) * q))]


def _clock_overhead(n=20000):
    pc = time.perf_counter_ns
    f = _noop
    ts = []
    for _ in range(n):
        t0 = pc()
        f()
        ts.append(pc() - t0)
    ts.sort()
    return ts[len(ts) // 2]


def _noop(*a):
    return None


def _timed(fn, args_list, n):
    pc = time.perf_counter_ns
    ts = [0] * n
    m = len(args_list)
    for i in range(n):
        a = args_list[i % m]
        t0 = pc()
        fn(*a)
        ts[i] = pc() - t0
    return ts


def _ops(ht):
    """The operations timed, after seeding the keys they read."""
    ht.set("ctr", 0)
    for k in KEYS:
        ht.set(k, VAL)
    return _ops_nocreate(ht)


def single(ht, n, repeats=3):
    """Best of `repeats` runs (lowest p99): the 2-core dev box is shared, and a
    preemption in one run says nothing about the code."""
    out = {}
    for name, (fn, args) in _ops(ht).items():
        _timed(fn, args, 2000)                       # warm caches
        runs = [sorted(_timed(fn, args, n)) for _ in range(repeats)]
        out[name] = min(runs, key=lambda ts: _pct(ts, 0.99))
    return out


def contended(arena, ht, n, procs=4):
    """Fork `procs` workers doing the same ops on the same keys at once."""
    ops = list(_ops(ht).keys())
    results = {}
    for name in ops:
        pipes = []
        pids = []
        for _ in range(procs):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    fn, args = _ops_nocreate(ht)[name]
                    ts = _timed(fn, args, n)
                    data = json.dumps(ts).encode()
                    os.write(w, len(data).to_bytes(8, "little"))
                    mv = memoryview(data)
                    while mv:
                        k = os.write(w, mv)
                        mv = mv[k:]
                    code = 0
                finally:
                    os._exit(code)
            os.close(w)
            pipes.append(r)
            pids.append(pid)
        allts = []
        for r in pipes:
            size = int.from_bytes(_readn(r, 8), "little")
            allts.extend(json.loads(_readn(r, size)))
            os.close(r)
        for pid in pids:
            os.waitpid(pid, 0)
        allts.sort()
        results[name] = allts
    return results


def _ops_nocreate(ht):
    """The operations timed, on keys already there (forked workers)."""
    return {
        "get": (ht.get, [(k,) for k in KEYS]),
        "set": (ht.set, [(k, VAL) for k in KEYS]),
        "set_int": (ht.set, [(k + "i", 7) for k in KEYS]),
        "inc": (ht.incr, [("ctr", 1)]),
        "get_locked": (ht.get_locked, [(k,) for k in KEYS]),
    }


def _readn(fd, n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def _pss_kb(name):
    """PSS (kB) of the mapping of /dev/shm/<name> in this process."""
    total = 0
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
                inside = line.rstrip().endswith("/dev/shm/" + name) or line.rstrip().endswith(name)
            elif inside and line.startswith("Pss:"):
                total += int(line.split()[1])
    return total


def memory(n_entries):
    a = ShmArena.create(256 << 20)
    try:
        before = _pss_kb(a.name)           # the bucket array counts as entry cost
        ht = HTable(a, "mem", 17)          # 2^17 buckets, as a cfg would size it for 100k
        for i in range(n_entries):
            ht.set(f"k{i:09d}", VAL)       # 10-byte keys, 100-byte values
        after = _pss_kb(a.name)
        per = (after - before) * 1024 / n_entries
        return {"entries": n_entries, "pss_kb_before": before, "pss_kb_after": after,
                "pss_bytes_per_entry": round(per, 1),
                "overhead_bytes_per_entry": round(per - 110, 1)}
    finally:
        a.destroy()


def _row(name, ts, clock):
    med, p99 = ts[len(ts) // 2], _pct(ts, 0.99)
    return {"op": name, "median_ns": med, "p99_ns": p99,
            "net_median_ns": max(0, med - clock), "net_p99_ns": max(0, p99 - clock)}


def _commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5).stdout.strip()
    except Exception:
        return ""


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200000, help="operations per measurement")
    ap.add_argument("--entries", type=int, default=100000)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    clock = _clock_overhead()
    arena = ShmArena.create(64 << 20)
    try:
        ht = HTable(arena, "bench", 10)
        one = single(ht, a.n)
        four = contended(arena, ht, a.n // 4)
    finally:
        arena.destroy()
    mem = memory(a.entries)
    res = {
        "machine": platform.machine(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
        "commit": _commit(), "clock_overhead_ns": clock,
        "single": [_row(k, v, clock) for k, v in one.items()],
        "contended_4": [_row(k, v, clock) for k, v in four.items()],
        "memory": mem,
    }
    print(f"clock overhead (subtracted in net columns): {clock} ns; {res['cpus']} cpus, "
          f"Python {res['python']}, commit {res['commit']}")
    print(f"{'op':<12}{'1 proc med':>12}{'p99':>9}{'net med':>9}{'net p99':>9}"
          f"{'4 proc med':>12}{'p99':>9}")
    for r1, r4 in zip(res["single"], res["contended_4"]):
        print(f"{r1['op']:<12}{r1['median_ns'] / 1000:>11.2f}u{r1['p99_ns'] / 1000:>8.2f}u"
              f"{r1['net_median_ns'] / 1000:>8.2f}u{r1['net_p99_ns'] / 1000:>8.2f}u"
              f"{r4['median_ns'] / 1000:>11.2f}u{r4['p99_ns'] / 1000:>8.2f}u")
    print(f"memory: {mem['entries']} entries (10 B key, 100 B value): "
          f"{mem['pss_bytes_per_entry']} B PSS per entry, {mem['overhead_bytes_per_entry']} B overhead")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
