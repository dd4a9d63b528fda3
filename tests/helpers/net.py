"""Free loopback UDP ports for tests.

Runs in: the pytest process.

The kernel picks an unused ephemeral port; we remember what we handed out in
this process so two calls in one test never return the same port even if the
first has not been bound yet.
"""
import socket

_given = set()


def free_udp_port(host="127.0.0.1"):
    """A UDP port on `host` that nobody is bound to right now (also free for TCP, for SIPp)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port in _given:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                t.bind((host, port))
        except OSError:
            continue
        _given.add(port)
        return port
    raise RuntimeError("no free UDP port found")


def free_udp_ports(n, host="127.0.0.1"):
    return [free_udp_port(host) for _ in range(n)]
