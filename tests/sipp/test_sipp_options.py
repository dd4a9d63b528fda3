"""SIPp against the stateless OPTIONS cfg: 1,000 OPTIONS at 500/s, zero failures.

Runs in: the pytest process (server and SIPp are subprocesses).
"""
from tests.integration.test_server import SL_CFG


def test_sipp_1000_options_at_500_per_second(run_server, sipp):
    with run_server(SL_CFG) as srv:
        res = sipp(srv.addr, scenario="options", calls=1000, rate=500, timeout=30)
        assert res.rc == 0, res.summary()
        assert res.successful == 1000, res.summary()
        assert res.failed == 0, res.summary()
        # a retransmission = a reply later than 500 ms or a lost datagram: none on a quiet box;
        # a handful are tolerated when other jobs share the two cores
        assert res.retransmissions <= 10, res.summary()
        assert srv.alive()
