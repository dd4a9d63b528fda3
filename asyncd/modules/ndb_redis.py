"""The ndb_redis module: Redis commands from the cfg (redis_cmd and friends,
$redis, $redisd).

Runs in: main process (modparams, the startup probe in mod_init), every
child but tcp main (child_init opens one connection per server; udp/tcp
receivers, async task workers, timers and rpc processes run the functions
and read $redis). Replies are per process, as Kamailio's (a reply stored by
a task worker is not seen by the receiver that resumes the transaction).

Kamailio: src/modules/ndb_redis (ndb_redis_mod.c: exports, w_redis_cmd*,
pv_parse_redisc_name, pv_get_redisc; redis_client.c: connections, replies,
pipelines, disable). The connection side is asyncd/modules/ndb_redis_client.py.
Return codes as Kamailio 5.6.3: redis_cmd 1, or -1 when the server is
unknown, the call fails, the server is disabled, or Redis answers with an
error reply (the reply is kept: $redis(r=>type) is 6 and $redis(r=>info)
its text); redis_execute 1, -1, or -2 while disabled (error replies inside a
pipeline do not fail it); redis_pipe_cmd 1/-1; redis_free 1, or -1 for a
reply name never used.
Differences, on purpose (docs/kamailio-ndb_redis.md):
- Redis down at start is found in mod_init (main, before fork): startup is
  refused there with a clear line unless init_without_redis=1. Kamailio
  finds it in each child's child_init. A child forked again later (respawn)
  never refuses to start: it logs and reconnects on its first command;
- `cluster=1` (MOVED redirection) and sentinel servers are refused at
  startup instead of being half-supported;
- `%b` and printf conversions (`%d`...) in a command, or more `%s` than
  values, fail the call with a log line (Kamailio reads garbage memory);
- integers read through $redis are cut to 32 bits as Kamailio does.
"""
import re

from asyncd.cfg.fixups import Loc
from asyncd.cfg.pvcore import PvTable, parse_pv, to_int
from asyncd.core import log
from asyncd.core.errors import CfgError
from asyncd.core.exports import FuncExport, ModuleExports, P, ParamExport, PvExport
from asyncd.core.procs import PROC_MAIN, PROC_TCP_MAIN
from asyncd.modules.ndb_redis_client import (ErrorReply, FormatError, Limits, RedisServer, Status,
                                             encode_args, format_command, parse_server_spec)

MOD = "ndb_redis"
# hiredis.h reply types, as $redis(r=>type) and $redisd show them
REDIS_REPLY_STRING, REDIS_REPLY_ARRAY, REDIS_REPLY_INTEGER = 1, 2, 3
REDIS_REPLY_NIL, REDIS_REPLY_STATUS, REDIS_REPLY_ERROR = 4, 5, 6
# redis_client.h: MAXIMUM_NESTED_KEYS
MAX_NESTED_KEYS = 10
_EMPTY = object()       # a reply container with no reply (freed, failed, never filled)


class NdbRedisState:
    """ndb_redis's state. `servers` is built in mod_init; each child opens
    its own connections in child_init. `replies` (name -> the parsed
    reply, or _EMPTY) is per process."""
    __slots__ = ("servers", "replies", "limits", "init_without_redis", "pv_table")

    def __init__(self):
        self.servers = {}
        self.replies = {}
        self.limits = Limits()
        self.init_without_redis = 0
        self.pv_table = None

    def configure(self, mp):
        self.limits = Limits(int(mp["connect_timeout"]), int(mp["cmd_timeout"]),
                             int(mp["allowed_timeouts"]), int(mp["disable_time"]),
                             int(mp["flush_on_reconnect"]))
        self.init_without_redis = int(mp["init_without_redis"])
        if int(mp["cluster"]):
            raise CfgError("ndb_redis: cluster=1 (Redis cluster MOVED redirection) is not supported")
        self.servers, self.replies = {}, {}
        for spec in mp["server"]:
            try:
                attrs = parse_server_spec(spec)
            except ValueError as e:
                raise CfgError(f"ndb_redis: bad server {spec!r}: {e}") from None
            # redisc_get_server finds the last definition of a name first
            self.servers[attrs["name"]] = RedisServer(attrs, self.limits)
        if not self.servers:
            raise CfgError("ndb_redis: no redis servers defined (modparam(\"ndb_redis\", \"server\", "
                           "\"name=srv;addr=127.0.0.1;port=6379\"))")


S = NdbRedisState()


# -- functions ----------------------------------------------------------------------------
def _server(srv, res, cmd):
    if not srv or not res or not cmd:
        log.err(MOD, "invalid parameters")
        return None
    rsrv = S.servers.get(srv)
    if rsrv is None:
        log.err(MOD, f"no redis server found: {srv}")
    return rsrv


def _argv(cmd, values):
    try:
        argv = format_command(cmd, values)
    except FormatError as e:
        log.err(MOD, f"invalid redis command {cmd!r}: {e}")
        return None
    if not argv:
        log.err(MOD, f"invalid redis command {cmd!r}: no arguments")
        return None
    return encode_args(argv)


def _flush_pipeline(rsrv):
    rc, replies = rsrv.run_pipeline()
    for name, reply in replies:
        S.replies[name] = _EMPTY if reply is None else reply
    return rc


def redis_exec(srv, cmd, values, res):
    """redisc_exec: run one command, keep its reply under `res`; 1 or -1."""
    rsrv = _server(srv, res, cmd)
    if rsrv is None:
        return -1
    argv = _argv(cmd, values)
    if argv is None:
        return -1
    if rsrv.pending:
        log.notice(MOD, "Calling redis_cmd with pipelined commands in the buffer."
                   " Automatically call redis_execute")
        _flush_pipeline(rsrv)
    rc, reply = rsrv.execute(argv)
    if rc == -2:
        return -1
    S.replies[res] = _EMPTY if rc < 0 else reply
    if rc < 0:
        return -1
    if type(reply) is ErrorReply:
        log.err(MOD, f"Redis error:{_text(reply)}")
        return -1
    return 1


def w_redis_cmd3(ctx, site, srv, cmd, res):
    # w_redis_cmd3: a %s or %b with no value to put there is refused before anything is sent
    for i in range(len(cmd) - 1):
        if cmd[i] == "%" and cmd[i + 1] in "sb":
            log.err(MOD, "command argument specifier found, but no params")
            return -1
    return redis_exec(srv, cmd, (), res)


def redis_append(srv, cmd, values, res):
    """redisc_append_cmd: queue a command for redis_execute; 1 or -1."""
    rsrv = _server(srv, res, cmd)
    if rsrv is None:
        return -1
    argv = _argv(cmd, values)
    if argv is None or not rsrv.append(argv, res):
        return -1
    S.replies.setdefault(res, _EMPTY)
    return 1


def _values_then_res(fn):
    """The wrapper of redis_cmd / redis_pipe_cmd with 0-3 values between the
    command and the reply name: fn(srv, cmd, values, res)."""
    def w(ctx, site, srv, cmd, *rest):
        return fn(srv, cmd, rest[:-1], rest[-1])
    return w


w_redis_cmd_values = _values_then_res(redis_exec)     # redis_cmd with 1-3 values
w_redis_pipe_cmd = _values_then_res(redis_append)


def w_redis_execute(ctx, site, srv):
    """redisc_exec_pipelined_cmd: 1, -1, or -2 while the server is disabled."""
    if not srv:
        log.err(MOD, "invalid parameters")
        return -1
    rsrv = S.servers.get(srv)
    if rsrv is None:
        log.err(MOD, f"no redis server found: {srv}")
        return -1
    rc = _flush_pipeline(rsrv)
    return rc if rc else 1


def w_redis_free(ctx, site, name):
    """redisc_free_reply: -1 for a name no command, pipeline or $redis used."""
    if not name or name not in S.replies:
        if not name:
            log.err(MOD, "invalid parameters")
        return -1
    S.replies[name] = _EMPTY
    return 1


# -- $redis(name=>key) ------------------------------------------------------------------------
_NAME_END = re.compile(r"[\s=]")
_KEY = re.compile(r"=>\s*(?:(value|type)(?:\s*\[\s*([^\s\]]+)\s*\])?|(info|size))")


def _index(token):
    """A literal index, or a variable read at get time (redis_parse_index)."""
    if token.startswith("$"):
        if S.pv_table is None:
            S.pv_table = PvTable()
        return parse_pv(token, Loc("<redis index>", 0, 0), S.pv_table)
    try:
        return int(token)
    except ValueError:
        raise ValueError(f"bad number <{token}>") from None


def parse_redis_name(inner):
    """`r=>value[1]=>type[0]` -> (reply name, [(key, index or None), ...])
    as pv_parse_redisc_name: only value[n] may be followed by another key."""
    text = (inner or "").strip()
    m = _NAME_END.search(text)
    end = m.start() if m else len(text)
    name = text[:end]
    i = end
    while i < len(text) and text[i].isspace():
        i += 1
    if not name or not text.startswith("=>", i):
        raise ValueError(f"invalid var spec [{inner}]")
    keys = []
    while True:
        m = _KEY.match(text, i)
        if m is None:
            raise ValueError(f"invalid key spec in [{inner}]")
        key = m.group(1) or m.group(3)
        keys.append((key, _index(m.group(2)) if m.group(2) else None))
        i = m.end()
        if len(keys) > MAX_NESTED_KEYS:
            raise ValueError(f"too many nested fields in [{inner}]")
        if i == len(text):
            return name, keys
        if key != "value" or m.group(2) is None:
            raise ValueError(f"invalid key spec in [{inner}]")


def _pos(ctx, index):
    if index is None:
        return -1
    if type(index) is int:
        return index
    return to_int(index.get(ctx))


def reply_type(v):
    if v is None:
        return REDIS_REPLY_NIL
    t = type(v)
    if t is list:
        return REDIS_REPLY_ARRAY
    if t is int:
        return REDIS_REPLY_INTEGER
    if t is Status:
        return REDIS_REPLY_STATUS
    if t is ErrorReply:
        return REDIS_REPLY_ERROR
    return REDIS_REPLY_STRING


def _text(b):
    return b.decode("utf-8", "surrogateescape")


def _int32(n):
    # pv_get_redisc: (int)reply->integer
    return (n + 0x80000000) % 0x100000000 - 0x80000000


def _scalar(v):
    """A string or integer value ($redis value); None for anything else."""
    t = type(v)
    if t is bytes:
        return _text(v)
    if t is int:
        return _int32(v)
    return None


def _element(v, pos):
    if type(v) is not list or pos is None or not 0 <= pos < len(v):
        return _EMPTY
    return v[pos]


def _get_key(v, key, pos):
    if key == "value":
        if type(v) is list:
            e = _element(v, pos)
            return None if e is _EMPTY else _scalar(e)
        return _scalar(v) if pos == -1 else None
    if key == "type":
        if pos == -1:
            return reply_type(v)
        e = _element(v, pos)
        return None if e is _EMPTY else reply_type(e)
    if key == "size":
        return len(v) if type(v) is list else None
    # info: the text of a string, status or error reply
    return _text(v) if type(v) in (bytes, Status, ErrorReply) else None


def _redis_get(ctx, spec, idx):
    name, keys = spec
    v = S.replies.setdefault(name, _EMPTY)
    if v is _EMPTY:
        return None
    for key, index in keys[:-1]:
        v = _element(v, _pos(ctx, index))
        if v is _EMPTY:
            return None
    key, index = keys[-1]
    pos = _pos(ctx, index)
    if pos is None:
        return None
    return _get_key(v, key, pos)


_REDISD = {"rpl_str": REDIS_REPLY_STRING, "rpl_arr": REDIS_REPLY_ARRAY, "rpl_int": REDIS_REPLY_INTEGER,
           "rpl_nil": REDIS_REPLY_NIL, "rpl_sts": REDIS_REPLY_STATUS, "rpl_err": REDIS_REPLY_ERROR}


def _redisd_parse(inner):
    key = (inner or "").strip()
    if key not in _REDISD:
        raise ValueError(f"unknown redisd name {key}")
    return _REDISD[key]


def _redisd_get(ctx, spec, idx):
    return spec


# -- lifecycle --------------------------------------------------------------------------------
def mod_init(script):
    """Check every server answers before any child exists (see the docstring)."""
    S.configure(script.modparams[MOD])
    for rsrv in S.servers.values():
        ok = rsrv.connect(False)
        rsrv.close()                    # nothing open in main across fork
        if ok:
            continue
        if S.init_without_redis == 1:
            log.warn(MOD, "failed to initialize redis connections, but initializing module anyway.")
            continue
        raise CfgError(f"ndb_redis: failed to initialize redis connections: redis server "
                       f"[{rsrv.name}] ({rsrv.where}) does not answer (modparam init_without_redis=1 "
                       f"starts without it)")


def child_init(proc, rank):
    """redisc_init in every child but tcp main. A server that does not
    answer is logged; the first command tries again."""
    if rank in (PROC_MAIN, PROC_TCP_MAIN):
        return
    S.replies = {}
    for rsrv in S.servers.values():
        rsrv.pending = []
        rsrv.connect(False)


def mod_destroy(script):
    for rsrv in S.servers.values():
        rsrv.close()


def _cmds(name, base, impls):
    return [FuncExport(name, (P.STR,) * (base + i), fn) for i, fn in enumerate(impls)]


EXPORTS = ModuleExports(
    name=MOD,
    functions=[
        *_cmds("redis_cmd", 3, (w_redis_cmd3,) + (w_redis_cmd_values,) * 3),
        *_cmds("redis_pipe_cmd", 3, (w_redis_pipe_cmd,) * 4),
        FuncExport("redis_execute", (P.STR,), w_redis_execute),
        FuncExport("redis_free", (P.STR,), w_redis_free),
    ],
    params=[
        ParamExport("server", str, None, multi=True),
        ParamExport("init_without_redis", int, 0),
        ParamExport("connect_timeout", int, 1000),
        ParamExport("cmd_timeout", int, 1000),
        ParamExport("cluster", int, 0),
        ParamExport("disable_time", int, 0),
        ParamExport("allowed_timeouts", int, -1),
        ParamExport("flush_on_reconnect", int, 0),
        ParamExport("allow_dynamic_nodes", int, 0),
    ],
    pvs=[
        PvExport("redis", _redis_get, None, parse_redis_name, True),
        PvExport("redisd", _redisd_get, None, _redisd_parse, True),
    ],
    mod_init=mod_init,
    child_init=child_init,
    mod_destroy=mod_destroy,
)
