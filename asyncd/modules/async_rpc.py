"""async.stats: the task groups and the ASYNC module's timers, as numbers an
operator (or the Prometheus exporter) reads while the server runs.

Runs in: the processes that serve RPC (ctl handler, JSONRPCS FIFO/DATAGRAM).

asyncd's own method: Kamailio 5.6 has no RPC for its async task groups or
the async module's timer lists (docs/operations.md "async.stats"). Every
number comes from shared memory the producers and consumers already keep
(asyncd/ipc/dispatch.py, asyncd/ipc/timers.py), so reading costs the
serving processes nothing: accepted == run + skipped + pending for every
group and every timer feed.
"""
from asyncd.core.rpc import RpcExport
from asyncd.ipc import async_task


def _ms(seconds):
    text = f"{seconds * 1000:g}"
    return f"le_{text}ms"


def wait_struct(hist):
    """(bounds_seconds, cumulative_counts, sum_seconds, count) -> the `wait`
    member: count, sum_ms and one cumulative bucket per bound, then le_inf."""
    bounds, cum, total_s, count = hist
    out = {"count": count, "sum_ms": round(total_s * 1000, 3)}
    for b, n in zip(bounds, cum):
        out[_ms(b)] = n
    out["le_inf"] = cum[-1]
    return out


def group_rows():
    """One struct per task group, list order (Kamailio's async_workers_group)."""
    fw = async_task.framework()
    if fw is None:
        return []
    rows = []
    for row in fw.group_stats():
        row = dict(row)
        row["wait"] = wait_struct(fw.wait_histogram(row["name"]))
        rows.append(row)
    return rows


def timer_rows(feeds):
    """feeds: [(process title, TimerFeed, processes)] -> one struct each."""
    rows = []
    for title, feed, procs in feeds:
        if feed is None:
            continue
        row = {"name": title, "processes": procs}
        row.update(feed.stats())
        rows.append(row)
    return rows


def rpc_exports(timer_feeds):
    """timer_feeds() -> [(title, TimerFeed or None, processes)]: the ASYNC
    module's feeds as its mod_init made them."""
    def stats(call):
        call.add({"groups": group_rows(), "timers": timer_rows(timer_feeds())})
    return [RpcExport("async.stats", stats,
                      "asyncd: task groups (workers, busy, queued, accepted, rejected, run, "
                      "skipped, pending, queue wait) and the async module's timers.")]
