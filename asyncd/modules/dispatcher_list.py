"""dispatcher's destination list: the list file, the attributes, the set
order and the hash functions, as Kamailio computes them.

Runs in: main process (mod_init loads the list), the RPC processes
(dispatcher.reload) and every process that routes (the list is rebuilt from
shm after a reload; hashes for algorithms 0-3 and 7).

Kamailio: src/modules/dispatcher/dispatch.c ds_load_list (the file format),
add_dest2list + reindex_dests (the order of a set's destinations: highest
priority first, and equal priorities in the reverse order of the file),
ds_set_attrs (attrs), pack_dest (the URI check, "sip:" added to a bare
host, the DNS lookup at load), dp_init_weights (the 100-slot weight table),
ds_avl_insert (the sets kept in an AVL tree: every walk -- dispatcher.list,
ds_is_from_list() without a group, the pings -- visits it children first,
so its order is the tree's post-order), ds_get_hash and get_uri_hash_keys
(the hash functions of algorithms 0-3).
"""
import marshal
import random
import socket

from asyncd.core import log
from asyncd.core.params import split_socket
from asyncd.sip import parse_uri

MOD = "dispatcher"

# destination state bits (dispatch.h)
DS_INACTIVE_DST, DS_TRYING_DST, DS_DISABLED_DST, DS_PROBING_DST, DS_NODNSARES_DST = 1, 2, 4, 8, 16
DS_STATES_ALL = 31
DS_HASH_USER_ONLY, DS_FAILOVER_ON = 1, 2
# Kamailio's proto ids (src/core/ip_addr.h): a URI without transport= is PROTO_NONE
PROTOS = {"udp": 1, "tcp": 2, "tls": 3, "sctp": 4, "ws": 5, "wss": 6}
U32 = 0xFFFFFFFF


def skip_dst(flags):
    """ds_skip_dst: inactive or disabled destinations are never selected."""
    return flags & (DS_INACTIVE_DST | DS_DISABLED_DST)


class ListError(ValueError):
    """The list file cannot be loaded (Kamailio's ds_load_list returns -1)."""


class Dest:
    """One destination (Kamailio's ds_dest_t without the runtime state, which
    lives in shm: shm/dispatcher.py)."""
    __slots__ = ("uri", "flags", "priority", "body", "duid", "maxload", "weight", "rweight",
                 "socket", "sockname", "ping_from", "obproxy", "host", "port", "proto", "ip")

    def __init__(self, uri, flags, priority, body, host, port, proto, ip):
        self.uri, self.flags, self.priority, self.body = uri, flags, priority, body
        self.host, self.port, self.proto, self.ip = host, port, proto, ip
        self.duid = self.socket = self.sockname = self.ping_from = self.obproxy = None
        self.maxload = self.weight = self.rweight = 0
        if body:
            set_attrs(self, body)

    def row(self):
        return (self.uri, self.flags, self.priority, self.body, self.host, self.port, self.proto, self.ip)


class DsSet:
    """One destination set: its id, its destinations in Kamailio's array
    order, the weight table (algorithm 9) and `base`, the index of its first
    destination's state record in shm."""
    __slots__ = ("id", "dests", "wlist", "base")

    def __init__(self, sid, dests, wlist, base):
        self.id, self.dests, self.wlist, self.base = sid, dests, wlist, base


class DsList:
    """Every set, in the order Kamailio walks them (`order`), by id (`sets`)."""

    def __init__(self, sets):
        self.order = sets
        self.sets = {s.id: s for s in sets}
        self.ndests = sum(len(s.dests) for s in sets)

    def dumps(self):
        """The bytes kept in shm: every process rebuilds the same list from them."""
        return marshal.dumps([(s.id, [d.row() for d in s.dests], s.wlist) for s in self.order])

    @classmethod
    def loads(cls, data):
        sets, base = [], 0
        for sid, rows, wlist in marshal.loads(data):
            s = DsSet(sid, [Dest(*r) for r in rows], wlist, base)
            base += len(s.dests)
            sets.append(s)
        return cls(sets)

    def set_or_log(self, sid):
        """The set `sid`, or None after Kamailio's error line (dispatch.c
        ds_get_index's callers: "destination set [N] not found")."""
        s = self.sets.get(sid)
        if s is None:
            log.err(MOD, f"destination set [{sid}] not found")
        return s

    def find(self, sid, uri):
        """(set, index) of the destination with this URI (case-insensitive, as
        ds_update_state compares), or (set, -1); (None, -1) without the set."""
        s = self.sets.get(sid)
        if s is None:
            return None, -1
        low = uri.lower()
        for i, d in enumerate(s.dests):
            if d.uri.lower() == low:
                return s, i
        return s, -1


# -- attributes -----------------------------------------------------------------------
def _sint(v):
    """str2sint: the leading (signed) digits, 0 when there are none."""
    v = v.strip()
    sign, i = 1, 0
    if v[:1] in "+-" and v:
        sign, i = (-1 if v[0] == "-" else 1), 1
    j = i
    while j < len(v) and v[j].isdigit():
        j += 1
    return sign * int(v[i:j]) if j > i else 0


def split_params(body):
    """`a=1;b="x;y";c` -> [(name, value)] (parse_params, CLASS_ANY)."""
    out, cur, quote = [], [], False
    for ch in body + ";":
        if ch == '"':
            quote = not quote
        if ch == ";" and not quote:
            name, _, value = "".join(cur).partition("=")
            if name.strip():
                out.append((name.strip(), value.strip().strip('"')))
            cur = []
        else:
            cur.append(ch)
    return out


def set_attrs(d, body):
    """ds_set_attrs: the attributes dispatcher itself reads."""
    for name, value in split_params(body):
        n = name.lower()
        if n == "duid":
            d.duid = value
        elif n == "weight":
            w = _sint(value)
            d.weight = w if 1 <= w <= 100 else 0
            if not 1 <= w <= 100:
                log.err(MOD, f"weight {w} not in 1-100 range - ignoring destination")
        elif n == "rweight":
            w = _sint(value)
            d.rweight = w if 1 <= w <= 100 else 0
        elif n == "maxload":
            d.maxload = _sint(value)
        elif n in ("socket", "sockname", "ping_from", "obproxy"):
            setattr(d, n, value)


# -- one destination --------------------------------------------------------------------
def resolve(host):
    """resolvehost: the first address, IPv4 before IPv6; None when it fails."""
    h = host.strip("[]")
    for fam in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.getaddrinfo(h, None, fam, socket.SOCK_DGRAM)[0][4][0]
        except (OSError, UnicodeError):
            continue
    return None


def is_local_socket(spec, sockets):
    """grep_sock_info: `proto:host:port` names one of our listen sockets."""
    parts = split_socket(spec)
    if parts is None:
        return False
    proto, host, port = parts
    return any((not proto or p == proto) and ip == host.strip("[]") and (not port or int(port) == pt)
               for p, ip, pt in sockets)


def pack_dest(uri, flags, priority, body, attrs_none=False, sockets=None):
    """pack_dest -> Dest; ValueError (the log line) when Kamailio skips it.
    `sockets`: our listen sockets (proto, ip, port), to refuse a foreign socket=."""
    try:
        u = parse_uri(uri)
    except Exception:
        if len(uri) > 4 and not uri.startswith("sip:") and len(uri) < 500:
            try:
                u = parse_uri("sip:" + uri)
            except Exception:
                raise ValueError(f"bad uri [{uri}]") from None
            log.info(MOD, f"uri without sip scheme - fixing it: {uri}")
            uri = "sip:" + uri
        else:
            raise ValueError(f"bad uri [{uri}]") from None
    if u.scheme not in ("sip", "sips") or not u.host:
        raise ValueError(f"bad uri [{uri}]")
    if body and body.endswith(";"):
        body = body[:-1]
    if not body and attrs_none:
        body = "none=yes"
    proto = PROTOS.get(u.transport or "", 0)
    d = Dest(uri, flags, priority, body or None, u.host, u.port or 0, proto, None)
    if d.socket and sockets is not None and not is_local_socket(d.socket, sockets):
        raise ValueError(f"non-local socket <{d.socket}>")
    if not flags & DS_NODNSARES_DST:
        d.ip = resolve(u.host)
        if d.ip is None:
            raise ValueError(f"could not resolve {u.host} (missing no-probing flag?!?)")
    return d


# -- the file ------------------------------------------------------------------------------
_WS = " \t\r\n"


def _digits(line, i):
    n = 0
    while i < len(line) and line[i].isdigit():
        n = n * 10 + ord(line[i]) - 48
        i += 1
    return n, i


def _skip_ws(line, i):
    while i < len(line) and line[i] in _WS:
        i += 1
    return i


def parse_line(line):
    """One line of the list file -> (setid, uri, flags, priority, attrs) or None
    (blank, comment); ListError for a line without a URI (ds_load_list)."""
    i = _skip_ws(line, 0)
    if i >= len(line) or line[i] == "#":
        return None
    sid, i = _digits(line, i)
    i = _skip_ws(line, i)
    if i >= len(line) or line[i] == "#":
        raise ListError(f"bad line [{line.rstrip()}]")
    j = i
    while j < len(line) and line[j] not in _WS + "#":
        j += 1
    uri, i = line[i:j], _skip_ws(line, j)
    fields = [0, 0]
    for k in range(2):
        if i >= len(line) or line[i] == "#":
            return sid, uri, fields[0], fields[1], ""
        fields[k], i = _digits(line, i)
        i = _skip_ws(line, i)
    if i >= len(line) or line[i] == "#":
        return sid, uri, fields[0], fields[1], ""
    j = i
    while j < len(line) and line[j] not in _WS:
        j += 1
    return sid, uri, fields[0], fields[1], line[i:j]


def load_file(path, load_mode=0, attrs_none=False, sockets=None):
    """ds_load_list -> DsList; ListError when Kamailio's load fails."""
    if not path:
        raise ListError("bad list file")
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.readlines()
    except OSError:
        raise ListError(f"can't open list file [{path}]") from None
    entries = []
    for line in lines:
        e = parse_line(line)
        if e is not None:
            entries.append(e)
    return build(entries, load_mode, attrs_none, sockets)


def build(entries, load_mode=0, attrs_none=False, sockets=None, skipped=None):
    """(setid, uri, flags, priority, attrs) in file order -> DsList. A line
    that cannot be added is skipped (its URI appended to `skipped` when
    given: ds_load_db counts them), or fails the load with ds_load_mode=1."""
    tree = AvlOrder()
    by_set = {}
    for sid, uri, flags, prio, attrs in entries:
        try:
            d = pack_dest(uri, flags, prio, attrs, attrs_none, sockets)
        except ValueError as e:
            log.warn(MOD, f"{e}; unable to add destination {uri} to set {sid} -- skipping")
            if skipped is not None:
                skipped.append(uri)
            if load_mode == 1:
                raise ListError(f"unable to add destination {uri} to set {sid}") from None
            continue
        tree.insert(sid)
        by_set.setdefault(sid, []).append(d)
    sets, base = [], 0
    for sid in tree.postorder():
        dests = order_dests(by_set[sid])
        sets.append(DsSet(sid, dests, init_weights(dests), base))
        base += len(dests)
    return DsList(sets)


def order_dests(dests):
    """add_dest2list + reindex_dests: the linked list is kept by ascending
    priority (a new one after the equal ones), then copied backwards."""
    asc = []
    for d in dests:
        k = len(asc)
        for i, o in enumerate(asc):
            if o.priority > d.priority:
                k = i
                break
        asc.insert(k, d)
    return asc[::-1]


def init_weights(dests):
    """dp_init_weights: 100 slots, each destination's index `weight` times,
    the rest for the last one, shuffled; all 0 when the first has no weight."""
    if not dests or dests[0].weight == 0:
        return [0] * 100
    w = []
    for j, d in enumerate(dests):
        w.extend([j] * d.weight)
    w = w[:100]
    if len(w) < 100:
        log.info(MOD, f"extra weight {100 - len(w)} for last destination in group")
        w.extend([len(dests) - 1] * (100 - len(w)))
    random.shuffle(w)
    return w


class AvlOrder:
    """The set ids in an AVL tree as ds_avl_insert builds it (the usual
    single/double rotations at the lowest unbalanced node), for its walk order."""

    def __init__(self):
        self.root = None        # node: [id, left, right, height]

    def insert(self, sid):
        self.root = self._ins(self.root, sid)

    def _ins(self, n, sid):
        if n is None:
            return [sid, None, None, 1]
        if sid == n[0]:
            return n
        side = 2 if sid > n[0] else 1
        n[side] = self._ins(n[side], sid)
        return self._balance(n)

    @staticmethod
    def _h(n):
        return n[3] if n else 0

    def _fix(self, n):
        n[3] = 1 + max(self._h(n[1]), self._h(n[2]))
        return n

    def _rot(self, n, side):
        """Rotate child `side` (1 left, 2 right) up over n."""
        c = n[side]
        n[side] = c[3 - side]
        c[3 - side] = self._fix(n)
        return self._fix(c)

    def _balance(self, n):
        self._fix(n)
        bal = self._h(n[1]) - self._h(n[2])
        if bal > 1:
            if self._h(n[1][1]) < self._h(n[1][2]):
                n[1] = self._rot(n[1], 2)
            return self._rot(n, 1)
        if bal < -1:
            if self._h(n[2][2]) < self._h(n[2][1]):
                n[2] = self._rot(n[2], 1)
            return self._rot(n, 2)
        return n

    def postorder(self):
        out = []

        def walk(n):
            if n is not None:
                walk(n[1])
                walk(n[2])
                out.append(n[0])
        walk(self.root)
        return out


# -- hashes (algorithms 0-3, 7) ------------------------------------------------------------
def _chunk_hash(s, h):
    b = [c - 256 if c > 127 else c for c in s]   # C `char` is signed on x86
    n, i = len(b), 0
    while i + 4 <= n:
        v = ((b[i] << 24) + (b[i + 1] << 16) + (b[i + 2] << 8) + b[i + 3]) & U32
        h = (h + (v ^ (v >> 3))) & U32
        i += 4
    v = 0
    for c in b[i:]:
        v = ((v << 8) + c) & U32
    return (h + (v ^ (v >> 3))) & U32


def ds_get_hash(x, y=None):
    """dispatch.c ds_get_hash over one or two byte strings (never 0)."""
    if x is None and y is None:
        return 0
    h = 0
    for s in (x, y):
        if s is not None:
            h = _chunk_hash(s, h)
    h = (h + (h >> 11) + (h >> 13) + (h >> 23)) & U32
    return h or 1


def uri_hash_keys(uri, user_only=False):
    """get_uri_hash_keys: (user, host[:port]) as written in the URI, the port
    only when it is not the scheme's default; ValueError when it is invalid."""
    uri = uri.strip()
    u = parse_uri(uri)          # validates; raises on a bad URI
    if not u.host:
        raise ValueError("invalid uri, no host present")
    rest = uri.partition(":")[2]
    at = rest.find("@")
    user = rest[:at].partition(":")[0] if at >= 0 else None
    hostpart = rest[at + 1:]
    for stop in ";?>":
        hostpart = hostpart.partition(stop)[0]
    if user is None:
        log.warn(MOD, f"empty username in: {uri}")
    if user_only:
        return user, None
    host = hostpart
    if u.port is not None and u.port == (5061 if u.scheme == "sips" else 5060):
        host = hostpart[:len(u.host)]
    return user, host


def _b(s):
    return None if s is None else s.encode("utf-8", "surrogateescape")


def hash_uri(uri, flags):
    user, host = uri_hash_keys(uri, bool(flags & DS_HASH_USER_ONLY))
    return ds_get_hash(_b(user) if user is not None else None, _b(host))


def hash_str(s):
    return ds_get_hash(_b(s.strip(" \t\r\n")))
