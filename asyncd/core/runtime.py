"""Small glue shared by the process roles: Kamailio-shaped log lines that name
the emitting file:line and function, process titles, socket naming.

Runs in: every process.

Kamailio's log line is `LEVEL: <module> [file:line]: function(): text`;
asyncd.core.log writes the frame, this module fills in where and who.
Only for control-path logging (startup, supervision, errors): the
per-message path calls log.* directly behind a level check.
"""
import os
import socket
import sys

from asyncd.core import log

try:
    from setproctitle import setproctitle as _setproctitle
except ImportError:  # optional, as gunicorn treats it: titles are a convenience
    def _setproctitle(title):
        return None

TITLE_PREFIX = "asyncd: "


def _where(depth):
    f = sys._getframe(depth + 1)
    path = f.f_code.co_filename
    short = "/".join(path.split(os.sep)[-2:])
    return f"{short}:{f.f_lineno}", f.f_code.co_name


def klog(level, module, text, depth=1):
    """Log `text` as Kamailio does, naming the caller's file:line and function."""
    if level > log.state.level:
        return
    where, func = _where(depth)
    log.log(level, module, f"{func}(): {text}", where)


def err(module, text):
    klog(log.L_ERR, module, text, 2)


def crit(module, text):
    klog(log.L_CRIT, module, text, 2)


def warn(module, text):
    klog(log.L_WARN, module, text, 2)


def notice(module, text):
    klog(log.L_NOTICE, module, text, 2)


def info(module, text):
    klog(log.L_INFO, module, text, 2)


def dbg(module, text):
    klog(log.L_DBG, module, text, 2)


def set_title(desc):
    """`ps` shows `asyncd: <Kamailio description>` (spec B §1.1)."""
    _setproctitle(TITLE_PREFIX + desc)


def sock_name(ip, port):
    """ip:port as Kamailio prints socket names (IPv6 in brackets)."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def local_ips(family=None):
    """Addresses of this host's interfaces (all families, or one), sorted; loopback at worst."""
    try:
        import psutil
        return sorted({a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                       if a.family in ((family,) if family else (socket.AF_INET, socket.AF_INET6))})
    except Exception:  # noqa: BLE001 - no psutil or no permission: loopback still works
        return ["127.0.0.1"]
