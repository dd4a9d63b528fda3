"""Socket names and local addresses, as Kamailio prints and matches them.

Runs in: main process (listen sockets, `myself`), udp receivers (which
replies are ours).
"""
import socket


def sock_name(ip, port):
    """ip:port as Kamailio prints socket names (IPv6 in brackets)."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def proto_socket(addrs, proto, sock, v6=None):
    """Index into `addrs` ((proto, ip, port) per listen socket) of a socket speaking
    `proto`: `sock` itself when it does, else the first one of that protocol (and of
    that address family when v6 is True/False); None when there is none."""
    if 0 <= sock < len(addrs) and addrs[sock][0] == proto:
        return sock
    for i, (p, ip, _port) in enumerate(addrs):
        if p == proto and (v6 is None or (":" in ip) == v6):
            return i
    return None


def local_ips(family=None):
    """Addresses of this host's interfaces (all families, or one), sorted; loopback at worst."""
    # imported here: only a wildcard or missing `listen` needs it, and psutil
    # loaded in main before the forks adds ~0.5 MB of PSS to every process
    import psutil
    try:
        return sorted({a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                       if a.family in ((family,) if family else (socket.AF_INET, socket.AF_INET6))})
    except OSError:     # no permission to list interfaces: loopback still works
        return ["127.0.0.1"]
