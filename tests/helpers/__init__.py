"""Shared test helpers: free ports, a running server, a tiny SIP client, SIPp.

Runs in: the pytest process (it starts servers and SIPp as child processes).
Fixtures wrapping these live in tests/conftest.py.
"""
from tests.helpers.net import free_udp_port, free_udp_ports
from tests.helpers.server import run_server, Server, ServerFailed, REPO_ROOT
from tests.helpers.sipclient import SipClient, Reply, build_request
from tests.helpers.sipp import run_sipp, sipp_path, SippResult

__all__ = ["free_udp_port", "free_udp_ports", "run_server", "Server", "ServerFailed", "REPO_ROOT",
           "SipClient", "Reply", "build_request", "run_sipp", "sipp_path", "SippResult"]
