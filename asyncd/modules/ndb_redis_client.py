"""ndb_redis's connection to one Redis server: Kamailio's redis_client.c in
Python, on redis-py's own Connection (socket, timeouts, AUTH, SELECT, the
RESP writer and reader).

Runs in: main process (the startup probe in mod_init, closed before fork),
and every child but tcp main (one connection per server per process, opened
in child_init as Kamailio's redisc_init, used by redis_cmd / redis_execute).

What is Kamailio's here (src/modules/ndb_redis/redis_client.c):
- the command text is split into arguments by hiredis's rules
  (`redisvFormatCommand`): a space ends an argument, `%s` puts one value
  into the argument being built (so "foo bar" stays one argument, "k%s"
  glues), `%%` is a literal percent; see `format_command`;
- a command that finds the connection broken reconnects once and sends it
  again (`redisc_exec`); a failed reconnect logs Kamailio's two lines and
  fails the call; with `allowed_timeouts` >= 0 the failures are counted per
  process and past the limit the server is left alone for `disable_time`
  seconds (`redis_count_err_and_disable`, `redis_check_server`): -2;
- `flush_on_reconnect` sends FLUSHALL after every reconnect.
Differences, on purpose (docs/kamailio-ndb_redis.md):
- a command that times out (`cmd_timeout`) is not sent again: Kamailio
  reconnects and resends it, so a slow Redis holds the process up to twice
  cmd_timeout (plus connect_timeout) and may run a write twice; here the
  connection is dropped (its stream is out of step) and the call fails
  after one cmd_timeout; the next call reconnects;
- a connection that is known to be down is reconnected once, not tried,
  failed and then reconnected: one connect attempt per call while Redis is
  away, not two;
- no sentinel and no cluster (MOVED) support: the module refuses them at
  startup rather than ignore them.
redis-py's parsers fold a status reply (`+OK`) into a plain string; the
`$redis(r=>type)` of Kamailio (hiredis' REDIS_REPLY_STATUS = 5 vs
REDIS_REPLY_STRING = 1) needs them apart, so `TypedReplyParser` lets
redis-py parse each reply and only tags status and error replies by their
first byte.
"""
import inspect
import time

from redis import exceptions as rexc
from redis._parsers import _RESP2Parser
from redis.connection import Connection, UnixDomainSocketConnection

from asyncd.core import log

MOD = "ndb_redis"
# redis_client.h: MAXIMUM_PIPELINED_COMMANDS
MAX_PIPELINED = 1000
# what a dead, refused, reset or slow server raises through redis-py
NET_ERRORS = (rexc.ConnectionError, rexc.TimeoutError, OSError)


class Status(bytes):
    """A status reply (`+OK`): hiredis' REDIS_REPLY_STATUS."""
    __slots__ = ()


class ErrorReply(bytes):
    """An error reply (`-ERR ...`), kept as a value with its whole text, as
    hiredis' REDIS_REPLY_ERROR (redis-py would strip the code and raise)."""
    __slots__ = ()


class TypedReplyParser(_RESP2Parser):
    """redis-py's RESP2 parser, with status and error replies tagged.

    Each reply (and each array element, through the parser's own
    recursion) is peeked at for its type byte, then parsed by redis-py."""

    def _read_response(self, disable_decoding=False, **kw):
        pos = self._buffer.get_pos()
        line = self._buffer.readline(**kw)
        self._buffer.rewind(pos)
        kind = line[:1]
        value = super()._read_response(disable_decoding=disable_decoding, **kw)
        if kind == b"+":
            return Status(value)
        if kind == b"-":
            return ErrorReply(line[1:])
        return value


class FormatError(ValueError):
    pass


def format_command(text, args):
    """The argument list hiredis' redisvFormatCommand builds from `text` and
    the string values `args` (consumed by `%s` in order).

    FormatError for `%b` (a binary pointer+length pair no cfg can pass), any
    printf conversion (`%d`... read a char* in Kamailio: garbage) and a `%s`
    without a value (undefined behaviour in Kamailio)."""
    argv, cur, touched = [], [], False
    values = iter(args)
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c != "%" or i + 1 == n:
            if c == " ":
                if touched:
                    argv.append("".join(cur))
                    cur, touched = [], False
            else:
                cur.append(c)
                touched = True
            i += 1
            continue
        spec = text[i + 1]
        if spec == "s":
            try:
                cur.append(next(values))
            except StopIteration:
                raise FormatError("more %s in the command than values given") from None
        elif spec == "%":
            cur.append("%")
        else:
            raise FormatError(f"unsupported conversion %{spec} (only %s and %% are)")
        touched = True
        i += 2
    if touched:
        argv.append("".join(cur))
    return argv


def parse_server_spec(spec):
    """`name=srv;addr=127.0.0.1;port=6379;db=0;pass=x` (or `unix=/path`) ->
    dict of attributes, as redisc_add_server + redisc_init read them.
    ValueError without a name. A bad port or db falls back to 6379 / 0."""
    text = str(spec).strip()
    if text.endswith(";"):
        text = text[:-1]
    attrs = {}
    for part in text.split(";"):
        k, eq, v = part.partition("=")
        k = k.strip()
        if not k:
            continue
        attrs[k] = v.strip() if eq else ""
    if not attrs.get("name"):
        raise ValueError(f"no server name in {spec!r}")
    for k in ("sentinel", "sentinel_group", "sentinel_master"):
        if k in attrs:
            raise ValueError(f"server {attrs['name']}: {k} (Redis sentinel) is not supported")
    attrs["port"] = _int_or(attrs.get("port"), 6379)
    attrs["db"] = _int_or(attrs.get("db"), 0)
    return attrs


def _int_or(v, default):
    try:
        n = int(str(v).strip())
    except (TypeError, ValueError):
        return default
    return n if n >= 0 else default


def _no_client_info():
    """Connection kwargs that turn off redis-py's CLIENT SETINFO (one round
    trip per connect Kamailio does not make)."""
    params = inspect.signature(Connection.__init__).parameters
    if "driver_info" in params:
        return {"driver_info": None}
    if "lib_name" in params:
        return {"lib_name": None, "lib_version": None}
    return {}


_CLIENT_INFO = _no_client_info()


class Limits:
    """The modparams a connection obeys (filled by ndb_redis mod_init)."""
    __slots__ = ("connect_timeout", "cmd_timeout", "allowed_timeouts", "disable_time",
                 "flush_on_reconnect")

    def __init__(self, connect_timeout=1000, cmd_timeout=1000, allowed_timeouts=-1, disable_time=0,
                 flush_on_reconnect=0):
        self.connect_timeout = connect_timeout
        self.cmd_timeout = cmd_timeout
        self.allowed_timeouts = allowed_timeouts
        self.disable_time = disable_time
        self.flush_on_reconnect = flush_on_reconnect


class RedisServer:
    """One `server` modparam: its connection in this process, its pipeline
    buffer and its disable state (all per process, as in Kamailio)."""

    def __init__(self, attrs, limits):
        self.name = attrs["name"]
        self.attrs = attrs
        self.limits = limits
        self.conn = None
        self.up = False
        self.pending = []           # [(argv, reply name)], redis_pipe_cmd
        self.errors = 0             # consecutive failures (allowed_timeouts)
        self.disabled = False
        self.restore_tick = 0
        unix = attrs.get("unix")
        self.where = (f"unix:{unix} db:{attrs['db']}" if unix is not None
                      else f"{attrs.get('addr', '')}:{attrs['port']}/{attrs['db']}")

    # -- connecting ----------------------------------------------------------------
    def _new_conn(self):
        lim, a = self.limits, self.attrs
        kw = dict(db=a["db"], password=a.get("pass") or None, socket_timeout=lim.cmd_timeout / 1000.0,
                  socket_connect_timeout=lim.connect_timeout / 1000.0, parser_class=TypedReplyParser,
                  protocol=2, retry=None, health_check_interval=0, **_CLIENT_INFO)
        if a.get("unix") is not None:
            return UnixDomainSocketConnection(path=a["unix"], **kw)
        return Connection(host=a.get("addr", ""), port=a["port"], **kw)

    def connect(self, reconnect):
        """(Re)open the connection: AUTH and SELECT by redis-py, then PING as
        redisc_init; FLUSHALL after a reconnect when flush_on_reconnect.
        False (and Kamailio's two log lines) when it fails."""
        self.close()
        self.conn = self._new_conn()
        try:
            self.conn.connect()
            self._must("PING")
            if reconnect and self.limits.flush_on_reconnect:
                self._must("FLUSHALL")
        except (rexc.RedisError, OSError) as e:
            log.err(MOD, f"error communicating with redis server [{self.name}] ({self.where}): {_why(e)}")
            log.err(MOD, f"failed to connect to redis server [{self.name}] ({self.where})")
            self.close()
            return False
        self.up = True
        return True

    def close(self):
        self.up = False
        if self.conn is not None:
            try:
                self.conn.disconnect()
            except (rexc.RedisError, OSError):
                pass

    def _roundtrip(self, argv):
        self.conn.send_command(*argv)
        return self.conn.read_response()

    def _must(self, cmd):
        """A command of the connect sequence: an error reply fails the connect."""
        reply = self._roundtrip((cmd,))
        if type(reply) is ErrorReply:
            raise rexc.ResponseError(reply.decode("utf-8", "replace"))

    # -- disable after allowed_timeouts (redis_check_server, redis_count_err_and_disable) --
    def check_disabled(self):
        if not self.disabled:
            return False
        if int(time.monotonic()) > self.restore_tick:
            log.notice(MOD, f"REDIS server {self.name} re-enabled")
            self.disabled, self.errors = False, 0
            return False
        return True

    def count_error(self):
        lim = self.limits
        if lim.allowed_timeouts < 0:
            return
        self.errors += 1
        if self.errors > lim.allowed_timeouts:
            self.disabled = True
            self.restore_tick = int(time.monotonic()) + lim.disable_time
            log.warn(MOD, f"REDIS server {self.name} disabled for {lim.disable_time} seconds")

    def _fail(self, text):
        self.count_error()
        log.err(MOD, text)
        return -1, None

    # -- one command (redisc_exec) --------------------------------------------------
    def execute(self, argv):
        """-> (0, reply) | (-1, None) broken | (-2, None) disabled. An error
        reply is a reply: the caller decides (redis_cmd fails on it)."""
        if self.check_disabled():
            return -2, None
        if not self.up:
            if not self.connect(True):
                return self._fail(f"unable to reconnect to redis server: {self.name}")
            return self._send(argv, retry=False)
        return self._send(argv, retry=True)

    def _send(self, argv, retry):
        try:
            reply = self._roundtrip(argv)
        except rexc.TimeoutError:
            return self._timed_out()
        except NET_ERRORS as e:
            self.close()
            if not retry:
                return self._fail(f"redis server [{self.name}] ({self.where}): {_why(e)}")
            if not self.connect(True):
                return self._fail(f"unable to reconnect to redis server: {self.name}")
            return self._send(argv, retry=False)
        except rexc.RedisError as e:       # a reply redis-py cannot read: the stream is lost
            self.close()
            return self._fail(f"redis server [{self.name}] ({self.where}): {_why(e)}")
        if type(reply) is not ErrorReply:
            self.errors = 0
        return 0, reply

    def _timed_out(self):
        self.close()
        return self._fail(f"redis server [{self.name}] ({self.where}) did not answer within "
                          f"cmd_timeout {self.limits.cmd_timeout} ms: connection dropped, "
                          f"the next command reconnects")

    # -- pipelines (redisc_append_cmd, redisc_exec_pipelined) -------------------------
    def append(self, argv, name):
        if len(self.pending) >= MAX_PIPELINED:
            log.err(MOD, f"Too many pipelined commands, maximum is {MAX_PIPELINED}")
            return False
        self.pending.append((argv, name))
        return True

    def run_pipeline(self):
        """-> (rc, [(name, reply or None)]): every pending command sent in one
        write, the replies read in order. rc as execute(); on -1 only the
        first reply's container is emptied (as Kamailio)."""
        cmds, self.pending = self.pending, []
        if self.check_disabled():
            return -2, []
        if not cmds:
            log.warn(MOD, "call for redis_cmd without any pipelined commands")
            return -1, []
        if not self.up and not self.connect(True):
            rc, _ = self._fail(f"unable to reconnect to redis server: {self.name}")
            return rc, [(cmds[0][1], None)]
        first = self._pipe_first(cmds, retry=True)
        if first is None:
            return -1, [(cmds[0][1], None)]
        out = [(cmds[0][1], first)]
        for argv, name in cmds[1:]:
            out.append((name, self._pipe_next(argv)))
        self.errors = 0
        return 0, out

    def _pipe_first(self, cmds, retry):
        try:
            self.conn.send_packed_command(self.conn.pack_commands([argv for argv, _ in cmds]))
            return self.conn.read_response()
        except rexc.TimeoutError:
            self._timed_out()
            return None
        except NET_ERRORS as e:
            self.close()
            if retry and self.connect(True):
                return self._pipe_first(cmds, retry=False)
            self._fail(f"Unable to read reply ({self.name}: {_why(e)})")
            return None
        except rexc.RedisError as e:
            self.close()
            self._fail(f"Unable to read reply ({self.name}: {_why(e)})")
            return None

    def _pipe_next(self, argv):
        if not self.up:
            return None
        try:
            return self.conn.read_response()
        except (rexc.RedisError, OSError) as e:
            self.close()
            cmd = b" ".join(encode_args(argv))[:80].decode("utf-8", "replace")
            log.err(MOD, f"Unable to read reply for {cmd} ({_why(e)})")
            return None


def encode_args(argv):
    """str arguments -> bytes, undoing the utf-8/surrogateescape decoding of
    SIP text, so any byte of a header reaches Redis unchanged."""
    return [a.encode("utf-8", "surrogateescape") if type(a) is str else a for a in argv]


def _why(e):
    text = str(e) or type(e).__name__
    return text.replace("\n", " ")
