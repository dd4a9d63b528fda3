"""Core (global) cfg parameters: the table of names Kamailio accepts, their
types and defaults, and the order-sensitive async worker group rules.

Runs in: main process (cfg compilation).

Kamailio applies core parameters while parsing, in file order
(src/core/cfg.y); `async_workers`, `async_workers_group`, `async_usleep`
and `async_nonblock` interact exactly as src/core/async_task.c
(docs/kamailio-async.md §4.2). asyncd serves UDP only for now: TCP/TLS/SCTP parameters are
accepted and ignored (a startup log line says so).
"""
import difflib
from dataclasses import dataclass

from asyncd.core import log
from asyncd.core.errors import CfgError


@dataclass
class AsyncGroup:
    name: str
    workers: int
    nonblock: int = 0
    usleep: int = 0


BOOL_WORDS = {"yes": 1, "true": 1, "on": 1, "enable": 1, "no": 0, "false": 0,
              "off": 0, "disable": 0}
FACILITIES = {"LOG_KERN", "LOG_USER", "LOG_MAIL", "LOG_DAEMON", "LOG_AUTH", "LOG_SYSLOG",
              "LOG_LPR", "LOG_NEWS", "LOG_UUCP", "LOG_CRON", "LOG_AUTHPRIV", "LOG_FTP"} | \
    {f"LOG_LOCAL{i}" for i in range(8)}

# name -> (kind, default). kinds: int, bool, str, listen, alias, group, facility, any
TABLE = {
    "listen": ("listen", None), "alias": ("alias", None), "children": ("int", 8),
    "debug": ("int", 0), "log_stderror": ("bool", 0), "log_facility": ("facility", "LOG_DAEMON"),
    "log_name": ("str", "asyncd"), "log_prefix": ("str", ""), "log_color": ("bool", 0),
    "fork": ("bool", 1), "auto_aliases": ("bool", 1), "mpath": ("str", ""),
    "async_workers": ("int", 0), "async_workers_group": ("group", None),
    "async_usleep": ("int", 0), "async_nonblock": ("int", 0),
    "async_tkv_gname": ("str", ""), "async_tkv_evcb": ("str", ""),
    "memlog": ("int", 0), "mem_log": ("int", 0), "memdbg": ("int", 0), "mem_summary": ("int", 0),
    "disable_tcp": ("bool", 0), "enable_tls": ("bool", 0), "disable_tls": ("bool", 1),
    "enable_sctp": ("int", 0), "disable_sctp": ("bool", 1), "port": ("int", 5060),
    "server_header": ("str", ""), "user_agent_header": ("str", ""),
    "server_signature": ("bool", 1), "sip_warning": ("bool", 0), "dns": ("bool", 0),
    "rev_dns": ("bool", 0), "use_dns_cache": ("bool", 1), "use_dns_failover": ("bool", 0),
    "dns_try_ipv6": ("bool", 0), "dns_retr_time": ("int", 0), "dns_retr_no": ("int", 0),
    "dns_servers_no": ("int", 0), "dns_use_search_list": ("bool", 1),
    "dns_cache_init": ("bool", 1), "auto_bind_ipv6": ("bool", 0), "mhomed": ("bool", 0),
    "maxbuffer": ("int", 262144), "max_while_loops": ("int", 100),
    "max_recursive_level": ("int", 256), "max_branches": ("int", 12),
    "check_via": ("bool", 0), "phone2tel": ("bool", 1), "sock_mode": ("int", 0),
    "latency_log": ("int", 0), "latency_limit_action": ("int", 0), "latency_limit_db": ("int", 0),
    "latency_cfg_log": ("int", 0), "shm_mem_size": ("int", 0), "pkg_mem_size": ("int", 0),
    "user": ("str", ""), "group": ("str", ""), "uid": ("str", ""), "gid": ("str", ""),
    "chroot": ("str", ""), "workdir": ("str", ""), "wdir": ("str", ""),
    "corelog": ("int", -1), "log_engine_type": ("str", ""), "log_engine_data": ("str", ""),
    "onsend_route_reply": ("bool", 0), "received_route_mode": ("int", 0),
    "reply_to_via": ("bool", 0), "udp_mtu": ("int", 0), "udp_mtu_try_proto": ("str", ""),
    "statistics": ("any", None), "socket_workers": ("int", 0), "stats_name_separator": ("str", "_"),
    "xavp_via_params": ("str", ""), "xavp_via_fields": ("str", ""), "kemi.onsend_route_callback": ("str", ""),
    "sip_parser_log": ("int", 0), "sip_parser_mode": ("int", 1), "open_files_limit": ("int", 0),
    "shm_force_alloc": ("bool", 0), "mlock_pages": ("bool", 0), "real_time": ("int", 0),
    "rt_prio": ("int", 0), "rt_policy": ("int", 0), "mcast_loopback": ("bool", 0),
    "mcast_ttl": ("int", 0), "tos": ("any", None), "pmtu_discovery": ("int", 0),
    "advertised_address": ("str", ""), "advertised_port": ("int", 0),
    "force_rport": ("bool", 0), "http_reply_parse": ("bool", 0), "version_table": ("str", ""),
    "pv_buffer_size": ("int", 8192), "pv_buffer_slots": ("int", 10), "modinit_delay": ("int", 0),
    "route_locks_size": ("int", 0), "ip_free_bind": ("int", 0), "local_rport": ("bool", 0),
    "fork_delay": ("int", 0), "exit_timeout": ("int", 60), "dst_blocklist_init": ("bool", 1),
    "use_dst_blocklist": ("bool", 0), "dst_blacklist_init": ("bool", 1),
    # TCP (docs/kamailio-tcp.md): Kamailio's names and defaults (tcp_accept_iplimit and
    # tcp_msg_read_timeout are Kamailio 5.7.3's); tcp_children 0 = `children`
    "tcp_children": ("int", 0), "tcp_max_connections": ("int", 2048),
    "tcp_accept_iplimit": ("int", 1024), "tcp_connection_lifetime": ("int", 120),
    "tcp_connect_timeout": ("int", 10), "tcp_send_timeout": ("int", 10),
    "tcp_msg_read_timeout": ("int", 20), "tcp_accept_no_cl": ("bool", 0),
    "tcp_crlf_ping": ("bool", 1), "tcp_conn_wq_max": ("int", 32 * 1024),
    "tcp_no_connect": ("bool", 0), "tcp_rd_buf_size": ("int", 16384),
    # where the control sockets and FIFOs go (Kamailio's RUN_DIR; -Y overrides it)
    "run_dir": ("str", "/run/kamailio"),
    # asyncd's own (docs/architecture.md, "Respawn"): Kamailio has no respawn
    "respawn": ("bool", 1), "respawn_max": ("int", 5), "respawn_window": ("int", 10),
    # asyncd's own (docs/kamailio-tm.md §7): a UDP request that waited longer than
    # this in the kernel's receive queue means overload: new requests get 503 (0: off)
    "overload_delay_ms": ("int", 250),
}
# other spellings Kamailio's cfg lexer accepts for the same parameter (src/core/cfg.lex)
SPELLINGS = {"rundir": "run_dir"}
IGNORED_PREFIXES = ("tcp_", "tls_", "sctp_", "dst_blocklist_", "dst_blacklist_", "dns_cache_",
                    "ws_", "mem_", "shm_", "pkg_")


def defaults():
    core = {name: d for name, (kind, d) in TABLE.items() if kind not in ("listen", "alias", "group")}
    core.update(listen=[], listen_extra=[], alias=[], async_groups=[], ignored=[])
    return core


def _err(loc, msg):
    return CfgError(msg, loc.file, loc.line, loc.col)


def _as_int(name, value, loc):
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lower() in BOOL_WORDS:
        return BOOL_WORDS[value.lower()]
    raise _err(loc, f"core parameter '{name}' needs an integer, got '{value}'")


def split_socket(value):
    """`[proto:]host[:port]` (listen=, -l, force_send_socket()) -> (proto or None,
    host, port text or None); None when a bracketed IPv6 host is not closed or is
    followed by anything but `:port`."""
    text = str(value).strip()
    proto = None
    low = text.lower()
    for p in ("udp", "tcp", "tls", "sctp", "ws", "wss"):
        if low.startswith(p + ":"):
            proto, text = p, text[len(p) + 1:]
            break
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        host, rest = text[1:end], text[end + 1:]
        if rest and not rest.startswith(":"):
            return None
        return proto, host, (rest[1:] if rest else None)
    host, _, port = text.partition(":")
    return proto, host, (port or None)


def parse_listen(value, loc):
    """`[proto:]host[:port]` -> (proto, host, port); port 5060 by default, proto
    None when not given (Kamailio: every enabled protocol, UDP and TCP)."""
    parts = split_socket(value)
    if parts is None:
        raise _err(loc, f"bad listen address '{value}'")
    proto, host, port = parts
    if port is None:
        port = 5060 if proto != "tls" else 5061
    try:
        port = int(port)
    except ValueError:
        raise _err(loc, f"bad port in listen '{value}'")
    if not host or not 0 <= port <= 65535:
        raise _err(loc, f"bad listen address '{value}'")
    return (proto, host, port)


def parse_group(text, loc):
    """`name=X;workers=N;nonblock=0|1;usleep=U` (docs/kamailio-async.md §4.2): keys case-insensitive,
    unknown keys ignored, name and workers > 0 mandatory."""
    vals = {}
    for part in str(text).split(";"):
        if not part.strip():
            continue
        k, eq_, v = part.partition("=")
        if not eq_:
            raise _err(loc, f"async_workers_group: malformed item '{part.strip()}' in '{text}'")
        vals[k.strip().lower()] = v.strip()
    name = vals.get("name", "")
    if not name:
        raise _err(loc, f"async_workers_group: 'name' is mandatory in '{text}'")

    def num(key, default):
        if key not in vals:
            return default
        try:
            return int(vals[key])
        except ValueError:
            raise _err(loc, f"async_workers_group: {key} must be an integer in '{text}'")
    workers = num("workers", 0)
    if workers <= 0:
        raise _err(loc, f"async_workers_group: 'workers' must be set and > 0 in '{text}'")
    return AsyncGroup(name, workers, 1 if num("nonblock", 0) else 0, num("usleep", 0))


def _apply_group(core, g, loc):
    groups = core["async_groups"]
    if g.name == "default":
        if groups:
            head = groups[0]
            if head.workers > 0:
                log.warn("core", "async task workers already set - ignoring the new number",
                         where=loc.where)
            else:
                head.workers = g.workers
            head.nonblock, head.usleep = g.nonblock, g.usleep
        else:
            groups.append(g)
        return
    if not groups:
        groups.append(AsyncGroup("default", 1))      # implicit head, 1 worker (docs/kamailio-async.md §4.2)
    groups.insert(1, g)                             # right after the head


def apply(core, name, value, loc):
    """Apply one `name=value` in file order."""
    name = SPELLINGS.get(name, name)
    entry = TABLE.get(name)
    if entry is None:
        if name.startswith(IGNORED_PREFIXES) or "." in name:
            core["ignored"].append(name)
            core[name] = value
            return
        m = difflib.get_close_matches(name, sorted(TABLE), n=1, cutoff=0.7)
        raise _err(loc, f"unknown core parameter '{name}'" + (f" (did you mean '{m[0]}'?)" if m else ""))
    kind = entry[0]
    if kind == "listen":
        phrase, extra = value if isinstance(value, tuple) else (value, [])
        core["listen"].append(parse_listen(phrase, loc))
        core["listen_extra"].append(dict(extra))
    elif kind == "alias":
        core["alias"].append(str(value))
    elif kind == "group":
        _apply_group(core, parse_group(value, loc), loc)
    elif kind in ("int", "bool"):
        v = _as_int(name, value, loc)
        core[name] = (1 if v else 0) if kind == "bool" else v
        if name == "async_workers" and v > 0:
            groups = core["async_groups"]
            if not groups:
                groups.append(AsyncGroup("default", v))
            elif groups[0].workers > 0:
                log.warn("core", "async task workers already set - ignoring", where=loc.where)
            else:
                groups[0].workers = v
        elif name == "async_usleep" and core["async_groups"]:
            core["async_groups"][0].usleep = v
        elif name == "async_nonblock" and core["async_groups"] and v:
            core["async_groups"][0].nonblock = 1
    elif kind == "facility":
        if str(value) not in FACILITIES:
            raise _err(loc, f"bad log_facility '{value}'")
        core[name] = str(value)
    elif kind == "str":
        if isinstance(value, tuple):
            value = value[0]
        core[name] = str(value)
    else:
        core[name] = value


def finish(core):
    """After the whole cfg: derived values."""
    groups = core["async_groups"]
    core["async_workers_total"] = sum(g.workers for g in groups)
    return core
