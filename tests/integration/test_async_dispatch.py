"""Idle-worker dispatch on the real server (docs/kamailio-async.md §10.7): a group of two
workers, one task blocked for 2 s in cfgutils `sleep`, then 20 quick tasks:
all 20 are answered within ~200 ms by the other worker. Also every accepted
task is accounted for at shutdown.

Runs in: the pytest process, against one real server.
"""
import re
import threading
import time

from tests.helpers import SipClient
from tests.helpers.async_cfg import PRE, cfg

TEXT = cfg("request_route {\n" + PRE + """    if ($rU == "slow") {
        async_task_group_route("SLOW", "two");
    }
    async_task_group_route("QUICK", "two");
}
route[SLOW] {
    sleep("2");
    send_reply("200", "slow $pp");
    exit;
}
route[QUICK] {
    send_reply("200", "quick $pp");
    exit;
}
""", core='async_workers=1\nasync_workers_group="name=two;workers=2"', children=2)


def test_long_task_does_not_hold_up_tasks_behind_it(run_server):
    with run_server(TEXT, stop_timeout=8.0) as srv:
        slow = {}

        def ask_slow():
            with SipClient(srv.addr) as c:
                slow["r"] = c.final("OPTIONS", f"sip:slow@127.0.0.1:{srv.port}", timeout=4.0)
        t = threading.Thread(target=ask_slow)
        t.start()
        time.sleep(0.1)                  # the slow task is running in one worker
        with SipClient(srv.addr) as c:
            t0 = time.monotonic()
            for k in range(20):
                c.send("OPTIONS", f"sip:q{k}@127.0.0.1:{srv.port}")
            got = c.collect(1.0, until=lambda rs: len(rs) >= 20)
            elapsed = max(r.t_recv for r in got) - t0 if got else None
        assert len(got) == 20 and all(r.status == 200 for r in got), got
        assert elapsed < 0.25, elapsed        # the issue asks ~200 ms; typically ~20 ms
        pids = {r.reason.split()[1] for r in got}
        t.join(5)
        assert slow["r"] is not None and slow["r"].status == 200
        assert slow["r"].reason.split()[1] not in pids      # the busy worker took none
        print(f"20 quick tasks behind a 2 s task: {elapsed * 1000:.1f} ms")
        srv.stop()
        m = re.search(r"task group \[two\]: accepted=(\d+), rejected=0, run=(\d+), skipped=0, "
                      r"pending=0", srv.log())
        assert m and m.group(1) == m.group(2) == "21", srv.log()[-2000:]
