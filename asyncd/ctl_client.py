"""Runs in: an operator's shell (a client; no server process imports it).

asyncd-ctl: ask a running asyncd (or Kamailio) over its ctl module's BINRPC
socket, as kamcmd does.

usage: asyncd-ctl [-s SOCK] [--json] [-t SECONDS] COMMAND [ARGS...]

commands:
  ps                     the processes: index, pid, description (core.psx)
  uptime                 start time and seconds up (core.uptime)
  stats [GROUP]          statistics, all or one group (stats.get_statistics)
  htable dump TABLE      the entries of an htable (htable.dump)
  rpc METHOD [ARGS...]   any RPC method; ARGS typed as kamcmd types them:
                         a whole number is an integer, a decimal a float,
                         anything else a string; `s:` in front forces a
                         string (s:5060)

-s SOCK takes kamcmd's forms: unix:/path (or a bare path), unixd:/path,
udp:host:port, tcp:host:port; the default is the ctl module's default
socket, unix:/run/kamailio/kamailio_ctl (a server started with -Y DIR
listens on unix:DIR/kamailio_ctl). Output is a human table or tree, or
JSON with --json. Exit status: 0 done, 1 the server answered with a fault
(its code and text on stderr), 2 no answer (cannot connect, time-out,
malformed reply).
"""
import argparse
import json
import os
import random
import socket
import sys
import tempfile

from asyncd.core.rpc import Struct
from asyncd.ipc import binrpc
from asyncd.modules.ctl import DEFAULT_NAME, parse_socket

DEFAULT_SOCKET = f"unix:/run/kamailio/{DEFAULT_NAME}"
EXIT_FAULT, EXIT_NO_ANSWER = 1, 2


class NoAnswer(Exception):
    """The server could not be asked or did not answer properly."""


class Fault(Exception):
    def __init__(self, code, text):
        super().__init__(f"{code} - {text}")
        self.code = code
        self.text = text


# -- transport -------------------------------------------------------------------------
def _connect(spec, timeout):
    """-> (socket, kind, local unix path to remove or None)."""
    cs = parse_socket(spec)
    if cs.kind in ("unixs", "unixd"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM if cs.kind == "unixs" else socket.SOCK_DGRAM)
        s.settimeout(timeout)
        local = None
        if cs.kind == "unixd":      # a datagram server answers to our own bound name
            local = os.path.join(tempfile.gettempdir(), f"asyncd-ctl-{os.getpid()}")
            s.bind(local)
        s.connect(cs.path)
        return s, cs.kind, local
    host, port = cs.addr
    host = "127.0.0.1" if host in ("*", "0.0.0.0") else host
    kind = socket.SOCK_STREAM if cs.kind == "tcp" else socket.SOCK_DGRAM
    info = socket.getaddrinfo(host, port, 0, kind)[0]
    s = socket.socket(info[0], kind)
    s.settimeout(timeout)
    s.connect(info[4])
    return s, cs.kind, None


def _read_reply(s, stream):
    if not stream:
        return binrpc.parse_datagram(s.recv(65535))
    parser = binrpc.StreamParser(limit=1 << 30)
    while True:
        data = s.recv(65536)
        if not data:
            raise NoAnswer("the server closed the connection without a reply")
        packets = parser.feed(data)
        if packets:
            return packets[0]


def call(sock_spec, method, params=(), timeout=5.0):
    """One request -> the reply's values; Fault on a fault, NoAnswer when
    nothing usable came back."""
    cookie = random.randrange(1, 1 << 31)
    local = None
    try:
        s, kind, local = _connect(sock_spec, timeout)
        with s:
            s.sendall(binrpc.encode_request(method, list(params), cookie))
            pkt = _read_reply(s, kind in ("unixs", "tcp"))
    except ValueError as e:
        raise NoAnswer(str(e)) from None
    except (OSError, binrpc.BinrpcError) as e:
        raise NoAnswer(f"{sock_spec}: {e}") from None
    finally:
        if local:
            try:
                os.unlink(local)
            except OSError:
                pass
    if pkt.cookie != cookie:
        raise NoAnswer(f"bad reply: cookie {pkt.cookie:#x}, sent {cookie:#x}")
    if pkt.type == binrpc.FAULT:
        raise Fault(*pkt.fault())
    return pkt.values()


# -- output ----------------------------------------------------------------------------
def tree(value, indent=0):
    """kamcmd's layout: scalars as they are, structs between { and } with
    `name: value` members, one tab per level."""
    pad = "\t" * indent
    if isinstance(value, (dict, Struct)):
        lines = [pad + "{"]
        for k, v in value.items():
            if isinstance(v, (dict, list, Struct)):
                sub = tree(v, indent + 1)
                lines.append(f"{pad}\t{k}: {sub[0].lstrip()}")
                lines.extend(sub[1:])
            else:
                lines.append(f"{pad}\t{k}: {_scalar(v)}")
        lines.append(pad + "}")
        return lines
    if isinstance(value, list):
        lines = [pad + "{"]
        for v in value:
            lines.extend(tree(v, indent + 1))
        lines.append(pad + "}")
        return lines
    return [pad + _scalar(value)]


def _scalar(v):
    if isinstance(v, float) and v == int(v):
        return str(int(v))
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def to_json(value):
    """JSON of a decoded value: a struct whose names repeat becomes an object
    whose repeated names hold lists."""
    if isinstance(value, Struct):
        out = {}
        for k, v in value:
            v = to_json(v)
            if k in out:
                out[k] = out[k] + [v] if isinstance(out[k], list) and _repeated(value, k) else [out[k], v]
            else:
                out[k] = [v] if _repeated(value, k) else v
        return out
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _repeated(st, name):
    return sum(1 for k, _v in st if k == name) > 1


def _table(rows, headers):
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    return ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip() for r in [headers, *rows]]


# -- commands --------------------------------------------------------------------------
def cmd_ps(opts):
    vals = call(opts.socket, "core.psx", timeout=opts.timeout)
    if opts.json:
        return to_json(vals)
    return _table([(v.get("IDX"), v.get("PID"), v.get("DSC")) for v in vals if isinstance(v, dict)],
                  ("IDX", "PID", "DESCRIPTION"))


def cmd_uptime(opts):
    vals = call(opts.socket, "core.uptime", timeout=opts.timeout)
    if opts.json:
        return to_json(vals[0] if vals else {})
    u = vals[0] if vals and isinstance(vals[0], dict) else {}
    return [f"up {u.get('uptime')} s, since {u.get('up_since')} (now {u.get('now')})"]


def cmd_stats(opts):
    vals = call(opts.socket, "stats.get_statistics", [opts.group or "all"], timeout=opts.timeout)
    if not opts.json:
        return [_scalar(v) for v in vals]
    out = {}
    for v in vals:
        name, sep, num = str(v).partition(" = ")
        out[name] = int(num) if sep and num.strip().isdigit() else num if sep else v
    return out


def cmd_htable(opts):
    if opts.action != "dump":
        raise NoAnswer(f"unknown htable command {opts.action!r} (only: dump)")
    return _generic(opts, "htable.dump", [opts.table])


def cmd_rpc(opts):
    return _generic(opts, opts.method, [binrpc.kamcmd_arg(a) for a in opts.args])


def _generic(opts, method, params):
    vals = call(opts.socket, method, params, timeout=opts.timeout)
    if opts.json:
        return to_json(vals)
    return [line for v in vals for line in tree(v)]


def build_parser():
    paras = __doc__.split("\n\n")         # "Runs in", what it is, usage, the rest
    p = argparse.ArgumentParser(prog="asyncd-ctl", description=paras[1],
                                epilog="\n\n".join(paras[3:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-s", dest="socket", default=DEFAULT_SOCKET, metavar="SOCK",
                   help=f"the ctl socket (default {DEFAULT_SOCKET})")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table or tree")
    p.add_argument("-t", dest="timeout", type=float, default=5.0, metavar="SECONDS",
                   help="how long to wait for the answer (default 5)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("ps", help="the processes (core.psx)").set_defaults(fn=cmd_ps)
    sub.add_parser("uptime", help="time since start (core.uptime)").set_defaults(fn=cmd_uptime)
    st = sub.add_parser("stats", help="statistics (stats.get_statistics)")
    st.add_argument("group", nargs="?", help="a group (core, shmem, tm, ...) or group:name; default all")
    st.set_defaults(fn=cmd_stats)
    ht = sub.add_parser("htable", help="htable dump TABLE (htable.dump)")
    ht.add_argument("action", choices=["dump"])
    ht.add_argument("table")
    ht.set_defaults(fn=cmd_htable)
    rp = sub.add_parser("rpc", help="any method: rpc METHOD [ARGS...]")
    rp.add_argument("method")
    rp.add_argument("args", nargs=argparse.REMAINDER)
    rp.set_defaults(fn=cmd_rpc)
    return p


def main(argv=None):
    opts = build_parser().parse_args(argv)
    try:
        out = opts.fn(opts)
    except Fault as f:
        sys.stderr.write(f"error: {f.code} - {f.text}\n")
        return EXIT_FAULT
    except NoAnswer as e:
        sys.stderr.write(f"asyncd-ctl: {e}\n")
        return EXIT_NO_ANSWER
    if opts.json:
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        sys.stdout.write("".join(line + "\n" for line in out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
