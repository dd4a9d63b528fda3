"""The in-process async task path benchmark runs the real path end to end."""
from bench import micro_async


def test_micro_async_every_request_gets_one_200():
    # timings are not asserted (shared machine; see docs/benchmarks.md): the
    # point is that the rig still drives the real receiver -> tm -> dispatch ->
    # worker -> send_reply path, one 200 per request, nothing queued left over
    res = micro_async.main(["--n", "300", "--repeat", "2"])
    assert res["requests"] == 600
    assert res["replies"] == res["replies_200"] == 600
    assert res["receiver_us"] > 0 and res["worker_us"] > 0
