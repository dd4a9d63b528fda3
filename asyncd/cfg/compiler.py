"""compile_cfg(): kamailio.cfg text -> Script, the compiled routing script
every process runs.

Runs in: main process (compilation, fixups, mod_init); the Script object is
inherited by every child through fork and its run_* methods run there.

Order as Kamailio (src/main.c, cfg.y, sr_module.c): the preprocessor and
parser run first, core parameters and modparams are applied in file order
while parsing, then all function fixups run (they see every modparam), and
module mod_init runs later and separately (`init_modules()`), so
`asyncd -c` checks a cfg, fixups included, without starting anything.
"""
import linecache
import re
import socket
from itertools import count

from asyncd.core import core_rpc, core_stats, log, params
from asyncd.core.cfg_groups import CfgGroups, core_vars
from asyncd.core.counters import Stats
from asyncd.core.context import RunCtx
from asyncd.core.errors import CfgError, ScriptExit
from asyncd.core.registry import UnknownModule, load_module, script_name
from asyncd.core.net import local_ips
from asyncd.core.rpc import Registry
from asyncd.core.route_types import (BRANCH_ROUTE, CORE_ONREPLY_ROUTE, EVENT_ROUTE, FAILURE_ROUTE,
                                     ONSEND_ROUTE, REQUEST_ROUTE, TM_ONREPLY_ROUTE)
from asyncd.cfg import core_funcs, nodes as N
from asyncd.cfg.codegen import CodeGen, runtime_namespace
from asyncd.cfg.hints import did_you_mean, loadable_modules
from asyncd.cfg.parser import parse_tokens
from asyncd.cfg.preprocess import preprocess
from asyncd.cfg.pvcore import PvTable, parse_format
from asyncd.sip.uri import parse_uri_cached

_serial = count(1)


class Script:
    """The compiled cfg (docs/contracts.md §2)."""

    def __init__(self, filename):
        self.filename = filename
        self.core = params.defaults()
        self.modules = []               # ModuleExports, load order
        self.modparams = {}
        self.shm = None
        self.rundir = None
        self.routes = {}                # (kind, name) -> python function
        self.route_names = set()
        self.failure_route_names = set()
        self.onreply_route_names = set()
        self.branch_route_names = set()
        self.empty_routes = set()       # route[...] names whose block has no statement
        self.event_routes = set()
        self.has_request_route = False
        self.has_reply_route = False
        self.has_onsend_route = False
        self.continuations = {}
        self.source = ""
        self.linemap = []               # generated line (1-based index - 1) -> Loc
        self.code_filename = ""
        self.sites = []
        self._funcs = {}
        self._req = None
        self._named = {}
        self._self_hosts = None
        self.rpc = None                 # asyncd.core.rpc.Registry: core and module RPC methods
        self.log_prefix = None          # core param log_prefix, parsed: pieces for pvcore.fmt
        self.stats = Stats()            # statistics: registered in mod_init, rows made before fork
        self.core_stats = None          # asyncd.core.core_stats.CoreStats: core: handles
        self.cfg = CfgGroups()          # runtime cfg groups (cfg.get/cfg.seti): core's at compile, modules' in mod_init

    # -- lookups -----------------------------------------------------------------
    def has_route(self, name):
        return str(name) in self.route_names

    def route_is_empty(self, name):
        """True when route[name] exists and its block holds no statement:
        Kamailio's async functions refuse such a route with -1 ("empty
        action lists", docs/kamailio-async.md §2.1). False for an unknown name (has_route
        says that)."""
        return str(name) in self.empty_routes

    def find_func(self, name, arity):
        for fe, _mod in self._funcs.get(name, ()):
            if len(fe.params) == arity:
                return fe
        return None

    def module(self, name):
        for m in self.modules:
            if m.name == name:
                return m
        return None

    def is_myself(self, v, is_uri=False):
        """Kamailio's check_self(): a listen address or an alias (host, port)."""
        if v is None:
            return False
        port = None
        if is_uri:
            u = parse_uri_cached(str(v))
            if u is None:
                return False
            host, port = u.host or "", u.port
        else:
            host = str(v)
        host = host.strip("[]").lower()
        if self._self_hosts is None:
            hosts, ports = set(), set()
            # the sockets really bound (`-l` overrides the cfg's listen lines)
            listen = getattr(self, "sock_addrs", None) or self.core.get("listen", ())
            for _proto, ip, p in listen:
                ip = ip.strip("[]").lower()
                if ip in ("0.0.0.0", "::"):
                    hosts.update(local_ips(socket.AF_INET))
                    hosts.add("localhost")
                hosts.add(ip)
                ports.add(p or 5060)
            for a in self.core.get("alias", ()):
                h, _, p = str(a).rpartition(":") if ":" in str(a) else (str(a), "", "")
                hosts.add(h.strip("[]").lower())
                if p.isdigit():
                    ports.add(int(p))
            if not listen:
                hosts.update(("127.0.0.1", "localhost"))
                ports.add(5060)
            self._self_hosts = (hosts, ports)
        hosts, ports = self._self_hosts
        if host not in hosts:
            return False
        return port is None and 5060 in ports or port in ports or not is_uri

    def new_ctx(self, msg, proc, route_type=REQUEST_ROUTE):
        return RunCtx(msg, proc, route_type)

    # -- lifecycle ---------------------------------------------------------------
    def init_modules(self):
        """Every mod_init in load order (main process, after shm creation, before fork);
        first the core's statistics (asyncd.core.core_stats: always, kex or not)."""
        if self.core_stats is None:
            core_stats.register(self)
        for m in self.modules:
            if m.mod_init is not None:
                m.mod_init(self)

    def child_init_modules(self, proc, rank):
        for m in self.modules:
            if m.child_init is not None:
                m.child_init(proc, rank)

    def destroy_modules(self):
        for m in reversed(self.modules):
            if m.mod_destroy is not None:
                try:
                    m.mod_destroy(self)
                except Exception as e:     # shutdown goes on
                    log.err("core", f"mod_destroy of {m.name} failed: {e!r}")

    # -- running -----------------------------------------------------------------
    def _run(self, fn, ctx):
        try:
            return fn(ctx)
        except ScriptExit as e:
            if e.drop:
                ctx.dropped = True
            return 0
        except Exception as e:
            self.log_exception(e, ctx)
            return -1

    def log_exception(self, e, ctx=None):
        where = self.where_of(e)
        log.err("core", f"runtime error in cfg: {type(e).__name__}: {e}", where=where)

    def where_of(self, e):
        """cfg `file:line` of the innermost generated frame of a traceback."""
        where = ""
        tb = e.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == self.code_filename:
                ln = tb.tb_lineno - 1
                if 0 <= ln < len(self.linemap) and self.linemap[ln] is not None:
                    where = self.linemap[ln].where
            tb = tb.tb_next
        return where

    def run_request_route(self, ctx):
        if self._req is None:
            return 1
        ctx.route_type = REQUEST_ROUTE
        return self._run(self._req, ctx)

    def run_route(self, name, ctx, route_type=None):
        fn = self.routes.get(("route", str(name))) if str(name) != "0" else self._req
        if fn is None:
            log.err("core", f"route [{name}] not found")
            return -1
        if route_type is not None:
            ctx.route_type = route_type
        return self._run(fn, ctx)

    def _run_kind(self, kind, name, ctx, rt):
        fn = self.routes.get((kind, name))
        if fn is None:
            return None
        ctx.route_type = rt
        return self._run(fn, ctx)

    def run_failure_route(self, name, ctx):
        return self._run_kind("failure", str(name), ctx, FAILURE_ROUTE)

    def run_onreply_route(self, name, ctx):
        return self._run_kind("onreply", str(name), ctx, TM_ONREPLY_ROUTE)

    def run_branch_route(self, name, ctx):
        return self._run_kind("branch", str(name), ctx, BRANCH_ROUTE)

    def run_reply_route(self, ctx):
        return self._run_kind("reply", None, ctx, CORE_ONREPLY_ROUTE)

    def run_onsend_route(self, ctx):
        return self._run_kind("onsend", None, ctx, ONSEND_ROUTE)

    def run_event_route(self, name, ctx):
        return self._run_kind("event", str(name), ctx, EVENT_ROUTE)

    def run_continuation(self, cid, ctx):
        fn = self.continuations.get(cid)
        if fn is None:
            log.err("core", f"unknown continuation id {cid}")
            return -1
        return self._run(fn, ctx)

    # -- helpers bound into the generated code -------------------------------------
    def _namespace(self):
        ns = runtime_namespace()
        script = self

        def _ferr(ctx, site, e):
            log.err(site.module or "core", f"{site.func.name}(): {type(e).__name__}: {e}",
                    where=site.loc.where)
            return -1

        def _call(ctx, site, impl, *args):
            ctx.site = site
            try:
                r = impl(ctx, site, *args)
            except ScriptExit:
                raise
            except Exception as e:
                r = _ferr(ctx, site, e)
            if r == 0:
                raise ScriptExit()
            ctx.retcode = r
            return r

        def _rcall(ctx, fn):
            r = fn(ctx)
            if r == 0:
                raise ScriptExit()
            ctx.retcode = r
            return r

        def _rdyn(ctx, name, loc):
            key = "" if name is None else (name if type(name) is str else str(name))
            fn = script._named.get(key)
            if fn is None:
                log.err("core", f"route({key}): no such route block", where=loc.where)
                return -1
            return _rcall(ctx, fn)

        def _runaway(loc):
            log.err("core", f"runaway while: more than {script.core.get('max_while_loops', 100)} "
                    "loops", where=loc.where)

        def _myself(v, is_uri):
            return script.is_myself(v, is_uri)

        ns.update(_myself=_myself, _ferr=_ferr, _call=_call, _rcall=_rcall, _rdyn=_rdyn, _runaway=_runaway)
        return ns


# -- compilation ------------------------------------------------------------------
def _func_table(modules):
    table = {}
    for m in list(modules) + [core_funcs.EXPORTS]:
        for fe in m.functions:
            table.setdefault(fe.name, []).append((fe, m.name))
    return table


def _rpc_table(script):
    """The core's RPC methods, then each loaded module's (asyncd.core.rpc.Registry)."""
    reg = Registry()
    try:
        for e in core_rpc.RPC:
            reg.register(e, "core")
        for m in script.modules:
            for e in m.rpc:
                reg.register(e, m.name)
    except ValueError as e:
        raise CfgError(str(e), script.filename, 0, 0) from None
    return reg


def _load(script, path, loc):
    name = script_name(path)
    try:
        ex = load_module(name)
    except UnknownModule:
        known = loadable_modules()
        raise loc.error(f"unknown module '{name}' (loadmodule \"{path}\"){did_you_mean(name, known)}; "
                        f"asyncd has: {', '.join(known)}")
    except Exception as e:
        raise loc.error(f"cannot load module '{name}': {type(e).__name__}: {e}")
    if ex in script.modules:
        log.warn("core", f"module '{name}' loaded twice - ignoring", where=loc.where)
        return
    for dep in ex.depends:
        if not any(m.name == dep for m in script.modules):
            log.warn("core", f"module '{name}' depends on '{dep}', which is not loaded (yet)",
                     where=loc.where)
    script.modules.append(ex)
    script.modparams[ex.name] = ex.param_defaults()


def _modparam(script, mod, param, value, loc, vloc):
    if any(ch in mod for ch in _REGEX_CHARS):
        return _modparam_regex(script, mod, param, value, loc, vloc)
    ex = script.module(mod)
    if ex is None:
        raise loc.error(f"modparam for module '{mod}', which is not loaded "
                        f"(loadmodule \"{mod}.so\" must come before its modparam lines)")
    for p in ex.params:
        if p.name == param:
            break
    else:
        raise loc.error(f"module '{mod}' has no parameter '{param}'"
                        f"{did_you_mean(param, [q.name for q in ex.params])}")
    _set_modparam(script, mod, p, value, vloc)


_REGEX_CHARS = set("|*+?()[]^$\\")


def _modparam_regex(script, pattern, param, value, loc, vloc):
    """modparam("nathelper|registrar", ...): the module name is a regular
    expression over the loaded modules (case-insensitive, whole name), and
    the value goes to every match that has the parameter, as Kamailio's
    set_mod_param_regex (src/core/modparam.c); none at all is an error."""
    try:
        rx = re.compile(f"^(?:{pattern})$", re.I)
    except re.error as e:
        raise loc.error(f"bad module name regular expression '{pattern}': {e}")
    done = 0
    for ex in script.modules:
        if rx.match(ex.name):
            for p in ex.params:
                if p.name == param:
                    _set_modparam(script, ex.name, p, value, vloc)
                    done += 1
    if not done:
        raise loc.error(f"parameter '{param}' not found in any module matching '{pattern}'")


def _set_modparam(script, mod, p, value, vloc):
    want = p.type
    ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
    if not ok:
        tname = "an integer" if want is int else "a string"
        raise vloc.error(f"modparam(\"{mod}\", \"{p.name}\"): value must be {tname}, got {value!r}")
    if p.multi:
        script.modparams[mod][p.name].append(value)
    else:
        script.modparams[mod][p.name] = value


def compile_cfg(path=None, text=None, defines=None, filename=None):
    """Compile a cfg (fixups included). Raises CfgError `file:line:col: message`."""
    if text is None:
        if path is None:
            raise CfgError("no cfg given", filename or "<cfg>", 0, 0)
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError as e:
            raise CfgError(f"cannot read cfg: {e.strerror}", path, 0, 0)
    filename = filename or path or "<cfg>"
    try:
        tokens = preprocess(text, filename, defines)
        items = parse_tokens(tokens)
    except RecursionError:
        raise CfgError("cfg nested too deeply", filename, 0, 0)
    script = Script(filename)
    routes = []
    seen = {}
    for it in items:
        if isinstance(it, N.Route):
            key = (it.kind, it.name)
            if key in seen:
                what = it.kind + "_route" if it.name is None else f"{it.kind}[{it.name}]"
                raise it.loc.error(f"duplicate {what} block (first at line {seen[key].line})")
            seen[key] = it.loc
            routes.append(it)
        elif it[0] == "param":
            params.apply(script.core, it[1], it[2], it[3])
        elif it[0] == "loadmodule":
            _load(script, it[1], it[2])
        elif it[0] == "modparam":
            _modparam(script, *it[1:])
    params.finish(script.core)
    for r in routes:
        if r.kind == "route":
            script.route_names.add(r.name)
            if not r.body.stmts:
                script.empty_routes.add(r.name)
        elif r.kind == "failure":
            script.failure_route_names.add(r.name)
        elif r.kind == "onreply":
            script.onreply_route_names.add(r.name)
        elif r.kind == "branch":
            script.branch_route_names.add(r.name)
        elif r.kind == "event":
            script.event_routes.add(r.name)
        elif r.kind == "request":
            script.has_request_route = True
        elif r.kind == "reply":
            script.has_reply_route = True
        elif r.kind == "onsend":
            script.has_onsend_route = True
    script._funcs = _func_table(script.modules)
    script.rpc = _rpc_table(script)
    script.cfg.declare("core", core_vars(script.core))
    pvtable = PvTable(script.modules)
    if script.core.get("log_prefix"):
        # Kamailio's log_prefix: a format with variables, evaluated for each message
        # the receivers handle (src/core/dprint.c log_prefix_set)
        script.log_prefix = parse_format(str(script.core["log_prefix"]), None, pvtable)
    gen = CodeGen(script, script._funcs, pvtable, script.core.get("max_while_loops", 100))
    try:
        gen.gen_routes(routes)
    except RecursionError:
        raise CfgError("cfg expression nested too deeply", filename, 0, 0)
    _finish(script, gen)
    return script


def _finish(script, gen):
    script.source = gen.source()
    script.linemap = gen.locs
    script.sites = gen.sites
    script.code_filename = f"<asyncd-cfg-{next(_serial)}>"
    try:
        code = compile(script.source, script.code_filename, "exec")
    except (SyntaxError, RecursionError, MemoryError, ValueError) as e:
        # Python's own limits (e.g. 20 statically nested loops/try blocks)
        ln = (getattr(e, "lineno", None) or 1) - 1
        loc = script.linemap[ln] if 0 <= ln < len(script.linemap) and script.linemap[ln] else None
        msg = f"cfg too deeply nested to compile ({getattr(e, 'msg', e)})"
        if loc is None:
            raise CfgError(msg, script.filename, 0, 0)
        raise loc.error(msg)
    # tracebacks through generated code show its lines (each names its cfg line)
    linecache.cache[script.code_filename] = (len(script.source), None,
                                             script.source.splitlines(True), script.code_filename)
    ns = script._namespace()
    ns.update(gen.ns)
    exec(code, ns)
    for (kind, name), pyname in gen.route_fns.items():
        script.routes[(kind, name)] = ns[pyname]
    script._req = script.routes.get(("request", None))
    script._named = {name: fn for (kind, name), fn in script.routes.items() if kind == "route"}
    if script._req is not None:
        script._named.setdefault("0", script._req)
    script.continuations = {cid: ns[pyname] for cid, pyname in gen.conts.items()}
    c = script.core
    other = [n for n in c.get("ignored", ()) if n.startswith(("tcp_", "tls_", "sctp_"))]
    wants = c.get("enable_tls") or c.get("enable_sctp") or \
        any(p not in (None, "udp", "tcp") for p, _h, _port in c.get("listen", ()))
    if wants:
        log.warn("core", "asyncd serves UDP and TCP only: TLS/SCTP/WS sockets are ignored")
    if other:
        log.info("core", f"parameters accepted and ignored: {', '.join(other)}")


def dump_source(script):
    """The generated Python source (`asyncd -c --dump-compiled`)."""
    return script.source
