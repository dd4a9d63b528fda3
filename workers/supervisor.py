"""The main process: set everything up before the first fork, fork the
process roles, then supervise them as `main process - attendant`.

Runs in: main process (and, for the few lines after fork in spawn_role, in
each child until it enters its role's loop).

Order (Kamailio's main.c; docs/kamailio-async.md §1.1): the cfg is already
compiled (cli.py); stale shm of killed runs is removed; UDP sockets are
bound; the shm arena, the core async task framework and every module's
mod_init come next; then the process table is made from rows
(asyncd.core.procs.ProcRow): the receivers' (`udp receiver child=<i>
sock=<ip>:<port>`, rank 1..), the core async workers', and each module's
in load order. Each row names its role; ROLES maps a role to the loop in
workers/ that runs it. Nothing that owns a thread (ZeroMQ contexts, event
loops) exists in this process before the forks: children make their own.

Supervision is gunicorn's arbiter shape: signal handlers only queue the
signal (and wake the loop through signal.set_wakeup_fd); the main loop
dispatches to handle_<signame>; children are reaped with waitpid(-1,
WNOHANG) and every exit is classified. A child that cannot boot while the
server starts exits with BOOT_ERROR and startup stops. After startup a dead
child is logged (description, rank, pid, how it died) and forked again from
its row, same instance, rank and title: its modules' child_init runs again
and its role's loop recovers what the dead one left in shared memory
(docs/architecture.md, "Respawn"). Transactions, AVPs, htables, task queues
and timers live in shm and outlive it; Kamailio instead stops everything on
SIGCHLD (src/main.c, handle_sigs) and relies on systemd. Two core
parameters of asyncd's own bound this: a slot that dies more than
`respawn_max` times within `respawn_window` seconds stops the server (a bug
that kills every new child must not spin: circus's flapping guard), and
`respawn=no` keeps Kamailio's policy. SIGTERM/SIGINT: children get SIGTERM,
then SIGKILL after STOP_GRACE, shm is unlinked, exit 0 well within 2 s.
"""
import ctypes
import gc
import os
import select
import shutil
import signal
import socket
import sys
import syslog
import tempfile
import time
import traceback
from collections import deque
from multiprocessing import resource_tracker

from asyncd import __version__
from asyncd.core import log
from asyncd.core.cfg_groups import updater
from asyncd.core.context import ProcState
from asyncd.core.net import local_ips, sock_name
from asyncd.core.procs import (PROC_MAIN, PROC_TCP_MAIN, ROLE_RECEIVER, ROLE_RPC, ROLE_TASK_WORKER,
                               ROLE_TCP_MAIN, ROLE_TCP_RECEIVER, ROLE_TIMER, ProcRow)
from asyncd.ipc import async_task
from asyncd.ipc.tcp import TcpConf, TcpPlan
from asyncd.sip import faked_request
from asyncd.sip.build import DEFAULT_SERVER_LINE, set_server_header
from shm import arena as shm_arena
from shm.locks import pid_alive
from shm.proctable import ProcTable
from workers import receiver, rpc_server, task_worker, tcp_main, tcp_receiver, timer

try:
    from setproctitle import setproctitle as _setproctitle
except ImportError:  # optional, as gunicorn treats it: titles are a convenience
    def _setproctitle(title):
        return None

MOD = "core"
BOOT_ERROR = 3          # child exit code: failed before entering its loop
EXIT_CHILD_DIED = 1     # supervisor exit code: a child died unexpectedly
EXIT_BOOT_FAILED = 3    # supervisor exit code: a child failed while booting
EXIT_STARTUP = 255      # supervisor exit code: setup failed before forking (Kamailio's -1)
STOP_GRACE = 1.0        # seconds between SIGTERM and SIGKILL for children at shutdown
RCVBUF = 8 << 20        # per listen socket: bursts must not overflow (RcvbufErrors)
RUNDIR_PREFIX = "asyncd-run-"
SIGNAMES = {getattr(signal, n): n for n in dir(signal) if n.startswith("SIG") and not n.startswith("SIG_")}


TITLE_PREFIX = "asyncd: "
# the loop of each role (asyncd.core.procs): run(proc, row, instance)
ROLES = {ROLE_RECEIVER: receiver.run, ROLE_TASK_WORKER: task_worker.run, ROLE_TIMER: timer.run,
         ROLE_TCP_MAIN: tcp_main.run, ROLE_TCP_RECEIVER: tcp_receiver.run, ROLE_RPC: rpc_server.run}


def set_title(desc):
    """`ps` shows `asyncd: <Kamailio description>`, as `kamctl ps` would."""
    _setproctitle(TITLE_PREFIX + desc)


class StartupError(Exception):
    pass


class Child:
    """One process slot: instance `instance` of `row`, in process-table slot
    `idx`; a respawn forks the same slot again (`forks` counts them, `deaths`
    holds the recent death times the flapping guard looks at)."""
    __slots__ = ("idx", "row", "instance", "desc", "rank", "pid", "ready", "forks", "deaths")

    def __init__(self, idx, row, instance):
        self.idx, self.row, self.instance = idx, row, instance
        self.desc = row.title_of(instance)
        self.rank = row.rank_of(instance)
        self.pid = 0
        self.ready = False
        self.forks = 0
        self.deaths = deque()


class Supervisor:
    STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
    SIGNALS = STOP_SIGNALS + (signal.SIGCHLD, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)

    def __init__(self, script, opts, listen_override=()):
        self.script = script
        self.opts = opts
        self.listen_override = list(listen_override)
        self.sockets = []          # socket objects, index = msg.sock
        self.sock_addrs = []       # (proto, ip, port)
        self.tcp = None            # asyncd.ipc.tcp.TcpPlan when a TCP socket listens
        self.children = {}         # pid -> Child
        self.plan = []             # every Child, in fork order
        self.sig_queue = []
        self.arena = None
        self.proctable = None
        self.rundir = None
        self.wake_r = self.wake_w = -1
        self.ready_r = self.ready_w = -1
        self.stopping = False
        self.exit_code = None
        self.announced = False
        self.daemon_fd = -1
        self.modules_inited = False
        self.main_pid = os.getpid()
        core = script.core
        self.respawn = _truthy(core.get("respawn", 1))
        self.respawn_max = int(core.get("respawn_max", 5) or 0)
        self.respawn_window = float(core.get("respawn_window", 10) or 0)
        self.respawned = 0
        if opts.pid_file:  # --daemonize changes directory to /
            opts.pid_file = os.path.abspath(opts.pid_file)

    # -- top level ------------------------------------------------------
    def run(self):
        try:
            self.configure_logging()
            if self.opts.daemonize:
                self.daemonize()
            self.install_signals()
            self.setup()
        except StartupError as e:
            log.crit(MOD, str(e))
            self.cleanup()
            return EXIT_STARTUP
        try:
            self.spawn_all()
            if self.exit_code is None:
                set_title("main process - attendant")
                self.main_loop()
        except BaseException as e:  # noqa: BLE001 - a supervisor bug must still stop everything
            log.crit(MOD, f"supervisor error, stopping: {e!r}")
            self.exit_code = EXIT_CHILD_DIED
        finally:
            self.stop_children()
            self.cleanup()
        return self.exit_code

    def configure_logging(self):
        core = self.script.core
        level = int(core.get("debug", log.L_WARN) or 0) + self.opts.debug_inc
        to_stderr = bool(self.opts.log_stderr or _truthy(core.get("log_stderror")))
        fac = core.get("log_facility")
        facility = None
        if isinstance(fac, str):
            facility = getattr(syslog, fac.upper(), syslog.LOG_DAEMON)
        log.configure(level=level, to_stderr=to_stderr, rank=0, facility=facility)

    def daemonize(self):
        """--daemonize: the caller waits until the daemon reports every process up (or failure)."""
        r, w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            os.close(w)
            status = os.read(r, 1)
            os._exit(0 if status == b"1" else EXIT_STARTUP)
        os.close(r)
        self.daemon_fd = w
        self.main_pid = os.getpid()
        os.setsid()
        os.chdir("/")
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        if not self.opts.log_stderr:
            os.dup2(null, 2)
            log.configure(to_stderr=False)
        os.close(null)

    # -- setup before fork ----------------------------------------------
    def setup(self):
        self.script.start_time = time.time()    # core.uptime's up_since (Kamailio's up_since, main.c)
        _no_resource_tracker()
        shm_arena.cleanup_stale()
        self.cleanup_stale_rundirs()
        self.bind_sockets()
        size = (self.opts.shm_mb or shm_arena.DEFAULT_MB) << 20
        try:
            self.arena = shm_arena.ShmArena.create(size)
        except (OSError, ValueError) as e:
            raise StartupError(f"cannot create shared memory of {size >> 20} MB: {e}") from e
        self.script.shm = self.arena
        self.rundir = tempfile.mkdtemp(prefix=f"{RUNDIR_PREFIX}{os.getpid()}-")
        self.script.rundir = self.rundir
        self.script.sockets = self.sockets
        self.script.sock_addrs = self.sock_addrs
        self.script._self_hosts = None     # `myself` = the sockets bound (-l included)
        self.configure_server_header()
        try:
            async_task.init(self.script)        # the core framework, before the modules use it
            self.script.init_modules()
            self.modules_inited = True
            self.plan_children()
            self.make_tables()
        except StartupError:
            raise
        except Exception as e:  # CfgError/RuntimeError from mod_init (contracts §1), ArenaFull
            raise StartupError(f"module initialization failed: {e}") from e

    def configure_server_header(self):
        """Core params (Kamailio's names): server_signature=no drops the Server
        header of locally built replies; server_header="Server: ..." replaces it."""
        core = self.script.core
        if "server_signature" in core and not _truthy(core["server_signature"]):
            set_server_header("")
        elif core.get("server_header"):
            set_server_header(str(core["server_header"]))
        else:
            set_server_header(DEFAULT_SERVER_LINE)

    def make_tables(self):
        """Process table and statistics rows, sized to the plan, in the arena's static area."""
        self.proctable = ProcTable(self.arena, len(self.plan) + 1)
        self.proctable.set(0, os.getpid(), PROC_MAIN, "main process - attendant")
        self.script.proctable = self.proctable
        self.script.stats.allocate(self.arena, len(self.plan) + 1)
        # the cfg framework's shm fields; debug starts at the level logging runs at (-d included)
        self.script.cfg.set_default("core", "debug", log.state.level)
        self.script.cfg.allocate(self.arena)

    def tcp_enabled(self):
        return not _truthy(self.script.core.get("disable_tcp", 0))

    def listen_addrs(self):
        """(proto, ip, port) to bind. A listen line without a protocol means
        every enabled one, UDP and TCP, as in Kamailio; no listen line at all,
        every local IPv4 address on port 5060 (docs/kamailio-tcp.md §1)."""
        addrs = self.listen_override or list(self.script.core.get("listen") or [])
        tcp = self.tcp_enabled()
        out = []
        for proto, ip, port in addrs:
            port = int(port or 5060)
            if proto is None:
                out.append(("udp", ip, port))
                if tcp:
                    out.append(("tcp", ip, port))
            elif proto == "tcp" and not tcp:
                log.warn(MOD, f"disable_tcp=yes: ignoring listen=tcp:{sock_name(ip, port)}")
            elif proto in ("udp", "tcp"):
                out.append((proto, ip, port))
            else:
                log.warn(MOD, f"{proto} is not supported: ignoring listen={proto}:{sock_name(ip, port)}")
        if not addrs:
            # Kamailio listens on every local address when the cfg has no listen line.
            for ip in local_ips(socket.AF_INET):
                out.append(("udp", ip, 5060))
                if tcp:
                    out.append(("tcp", ip, 5060))
        if not out:
            raise StartupError("no UDP or TCP listen socket configured")
        # Kamailio's order: the UDP sockets first (each gets its receivers), then TCP
        return [a for a in out if a[0] == "udp"] + [a for a in out if a[0] == "tcp"]

    def bind_sockets(self):
        addrs = self.listen_addrs()
        if any(p == "tcp" for p, _i, _p in addrs):
            core = self.script.core
            n = int(core.get("tcp_children") or 0) or self.opts.children or int(core.get("children") or 8)
            self.tcp = TcpPlan(TcpConf(core), n)
            self.script.tcp = self.tcp
        for proto, ip, port in addrs:
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            index = len(self.sockets)
            if proto == "udp":
                s = socket.socket(family, socket.SOCK_DGRAM)
            else:
                s = socket.socket(family, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((ip, port))
                if proto == "tcp":
                    s.listen(1024)
            except OSError as e:
                s.close()
                raise StartupError(f"cannot bind {proto}:{sock_name(ip, port)}: {e.strerror}") from e
            if proto == "udp":
                _grow_rcvbuf(s)
                self.sockets.append(s)
            else:
                self.tcp.listen[index] = s
                self.sockets.append(self.tcp.sender(index, s.getsockname()[:2]))
            self.sock_addrs.append((proto, ip, port))
        lines = "\n".join(f"             {proto}: {sock_name(ip, port)}"
                          for proto, ip, port in self.sock_addrs)
        sys.stdout.write(f"Listening on \n{lines}\nAliases: \n\n")
        sys.stdout.flush()

    def plan_children(self):
        """Every process to fork, in Kamailio's order, from the rows of the
        core (receivers, async task workers) and of each module (load order)."""
        for row in self.proc_rows():
            for i in range(max(0, row.count)):
                self.plan.append(Child(len(self.plan) + 1, row, i))

    def proc_rows(self):
        n = self.opts.children or int(self.script.core.get("children") or 8)
        rows = [ProcRow(ROLE_RECEIVER, f"udp receiver child={{i}} sock={sock_name(ip, port)}",
                        1 + si * n, n, si)
                for si, (proto, ip, port) in enumerate(self.sock_addrs) if proto == "udp"]
        rows += async_task.framework().proc_rows()
        for mod in self.script.modules:
            if mod.procs is not None:
                rows += list(mod.procs(self.script) or ())
        if self.tcp is not None:
            # Kamailio forks the tcp readers and tcp main last (tcp_init_children);
            # the readers are SIP workers: positive ranks after the udp receivers'
            first = 1 + sum(r.count for r in rows if r.role == ROLE_RECEIVER)
            rows += [ProcRow(ROLE_TCP_RECEIVER, "tcp receiver (generic) child={i}", first,
                             self.tcp.n, self.tcp),
                     ProcRow(ROLE_TCP_MAIN, "tcp main process", PROC_TCP_MAIN, 1, self.tcp)]
        for r in rows:
            if not isinstance(r, ProcRow) or r.role not in ROLES:
                raise StartupError(f"bad process row {r!r}")
        return rows

    # -- forking ----------------------------------------------------------
    def install_signals(self):
        """Queue-only handlers from before setup on: a SIGTERM during startup still cleans up."""
        self.wake_r, self.wake_w = _pipe_nonblock()
        for sig in self.SIGNALS:
            signal.signal(sig, self.queue_signal)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)

    def spawn_all(self):
        self.ready_r, self.ready_w = _pipe_nonblock(write_blocking=True)
        # Everything made so far (compiled script, modules, tables) lives as long as the server:
        # freezing it keeps the children's collections from scanning it (tens of ms per full
        # collection, seen as p99 latency) and from dirtying its pages (copy-on-write, PSS).
        gc.collect()
        gc.freeze()
        for child in self.plan:
            if self.sig_queue and any(s in self.STOP_SIGNALS for s in self.sig_queue):
                break  # told to stop while forking: stop now rather than fork the rest
            self.spawn_role(child)
        # ready_w stays open in main: a respawned child reports on it too

    def spawn_role(self, child):
        sys.stdout.flush()
        sys.stderr.flush()
        child.ready = False
        child.forks += 1
        pid = os.fork()
        if pid:
            child.pid = pid
            self.children[pid] = child
            self.proctable.set(child.idx, pid, child.rank, child.desc)
            return
        self._child_main(child)  # never returns

    def _child_main(self, child):
        code = 0
        try:
            proc = self._child_boot(child)
        except BaseException as e:  # noqa: BLE001 - report anything, then the dedicated code
            _child_log_exc(f"{child.desc}: failed while booting: {e!r}")
            os._exit(BOOT_ERROR)
        try:
            ROLES[child.row.role](proc, child.row, child.instance)
        except BaseException as e:  # noqa: BLE001
            if not proc.stopping:
                _child_log_exc(f"{child.desc}: {e!r}")
                code = 1
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)

    def _child_boot(self, child):
        signal.set_wakeup_fd(-1)
        for fd in (self.wake_r, self.wake_w, self.ready_r, self.daemon_fd):
            if fd >= 0:
                os.close(fd)
        proc = ProcState(self.script, child.rank, child.desc, child.row.role)
        proc.pid = os.getpid()
        proc.sockets = self.sockets
        proc.index = child.idx
        proc.cnt = self.script.stats.row(child.idx)

        def on_term(signum, frame):
            proc.stopping = True

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGQUIT, on_term)
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # the attendant decides; it SIGTERMs us
        for sig in (signal.SIGCHLD, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_DFL)
        _die_with_parent(self.main_pid)
        set_title(child.desc)
        log.configure(rank=child.idx)
        self.script.child_init_modules(proc, child.rank)
        first = child.rank == 1 and child.forks == 1     # "once": not again in a respawned rank 1
        if first and "core:worker-one-init" in getattr(self.script, "event_routes", ()):
            _worker_one_init(self.script, proc)
        os.write(self.ready_w, child.idx.to_bytes(4, "little"))
        os.close(self.ready_w)
        return proc

    # -- supervision ------------------------------------------------------
    def queue_signal(self, signum, frame):
        if len(self.sig_queue) < 16:
            self.sig_queue.append(signum)

    def main_loop(self):
        cfg_update = updater(self.script)      # cfg.seti core debug: the attendant's lines too
        while self.exit_code is None:
            self.sleep()
            cfg_update()
            self.read_ready()
            self.dispatch_signals()
            if self.exit_code is None:
                self.reap_children()

    def sleep(self):
        try:
            rd, _, _ = select.select([self.wake_r, self.ready_r], [], [], 1.0)
        except InterruptedError:
            return
        if self.wake_r in rd:
            try:
                while os.read(self.wake_r, 512):
                    pass
            except (BlockingIOError, InterruptedError):
                pass

    def read_ready(self):
        try:
            data = os.read(self.ready_r, 4096)
        except (BlockingIOError, InterruptedError):
            return
        by_idx = {c.idx: c for c in self.children.values()}
        for i in range(0, len(data) - 3, 4):
            c = by_idx.get(int.from_bytes(data[i:i + 4], "little"))
            if c is not None:
                c.ready = True
        if not self.announced and self.children and all(c.ready for c in self.children.values()) \
                and len(self.children) == len(self.plan):
            self.announce_ready()

    def announce_ready(self):
        self.announced = True
        log.notice(MOD, f"asyncd {__version__} started: {len(self.plan) + 1} processes "
                   f"({len(self.sockets)} listen socket(s))")
        if self.opts.pid_file:
            tmp = self.opts.pid_file + ".tmp"
            with open(tmp, "w") as f:
                f.write(f"{os.getpid()}\n")
            os.replace(tmp, self.opts.pid_file)
        if self.daemon_fd >= 0:
            os.write(self.daemon_fd, b"1")
            os.close(self.daemon_fd)
            self.daemon_fd = -1

    def dispatch_signals(self):
        # stop requests first: a child's exit that follows them is expected
        queue, self.sig_queue = self.sig_queue, []
        queue.sort(key=lambda s: s not in self.STOP_SIGNALS)
        for sig in queue:
            name = SIGNAMES.get(sig, str(sig))
            handler = getattr(self, "handle_" + name[3:].lower(), None)
            if handler is not None:
                handler()
            if self.exit_code is not None:
                return

    def handle_term(self):
        log.notice(MOD, "SIGTERM received, shutting down")
        self.exit_code = 0

    def handle_int(self):
        log.notice(MOD, "SIGINT received, shutting down")
        self.exit_code = 0

    def handle_quit(self):
        log.notice(MOD, "SIGQUIT received, shutting down")
        self.exit_code = 0

    def handle_chld(self):
        self.reap_children()

    def handle_hup(self):
        log.notice(MOD, "SIGHUP ignored (reload is not supported; restart to change the cfg)")

    def handle_usr1(self):
        for idx, pid, rank, desc in self.proctable.rows():
            log.notice(MOD, f"process {idx:3d} pid {pid:7d} rank {rank:3d}: {desc}")

    def reap_children(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            self.proctable.clear(child.idx)
            if self.stopping or self.exit_code is not None:
                continue
            self.child_died(child, status)

    def child_died(self, child, status):
        how = _describe_status(status)
        booting = not child.ready or (os.WIFEXITED(status) and os.WEXITSTATUS(status) == BOOT_ERROR)
        who = f"child process {child.pid} ({child.desc}, rank {child.rank})"
        if booting and not self.announced:
            log.crit(MOD, f"{who} failed while booting ({how}); stopping asyncd")
            self.exit_code = EXIT_BOOT_FAILED
            return
        if booting:
            how += " while booting"
        if not self.respawn:
            log.crit(MOD, f"{who} {how}; stopping asyncd (respawn=no)")
            self.exit_code = EXIT_CHILD_DIED
            return
        now = time.monotonic()
        child.deaths.append(now)
        while child.deaths and now - child.deaths[0] > self.respawn_window:
            child.deaths.popleft()
        if len(child.deaths) > self.respawn_max:
            log.crit(MOD, f"{who} {how}; it died {len(child.deaths)} times within "
                     f"{self.respawn_window:g} s (respawn_max={self.respawn_max}, "
                     f"respawn_window={self.respawn_window:g}): stopping asyncd")
            self.exit_code = EXIT_CHILD_DIED
            return
        log.alert(MOD, f"{who} {how}; respawning it")
        self.spawn_role(child)
        self.respawned += 1
        log.notice(MOD, f"respawned {child.desc} (rank {child.rank}) as pid {child.pid}")

    # -- shutdown ---------------------------------------------------------
    def stop_children(self):
        self.stopping = True
        for pid in list(self.children):
            _kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while self.children and time.monotonic() < deadline:
            self.reap_children()
            if self.children:
                time.sleep(0.005)
        for pid, child in list(self.children.items()):
            log.warn(MOD, f"child process {pid} ({child.desc}) did not stop within "
                     f"{STOP_GRACE}s; killing it")
            _kill(pid, signal.SIGKILL)
        for pid in list(self.children):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            self.children.pop(pid, None)

    def cleanup(self):
        for fd in (self.ready_r, self.ready_w):
            if fd >= 0:
                os.close(fd)
        self.ready_r = self.ready_w = -1
        if self.respawned:
            log.notice(MOD, f"{self.respawned} dead process(es) were respawned")
        if self.script.stats.buf is not None and self.arena is not None:
            self.log_core_stats()
        if self.modules_inited:
            self.script.destroy_modules()
        if self.arena is not None:
            self.arena.destroy()
            self.arena = None
        if self.rundir:
            shutil.rmtree(self.rundir, ignore_errors=True)
            self.rundir = None
        for s in self.sockets:
            s.close()
        if self.tcp is not None:
            st = self.tcp.stats()
            log.notice(MOD, f"tcp: {st['passive_open']} connections accepted, "
                       f"{st['connect_success']} opened ({st['connect_failed']} failed); refused "
                       f"{st['local_reject']} over tcp_max_connections and {st['iplimit_reject']} "
                       f"over tcp_accept_iplimit; closed {st['read_timeout']} on read timeout, "
                       f"{st['send_timeout']} on send timeout, {st['bad_framing'] + st['msg_too_big']} "
                       f"on bad framing")
            self.tcp.close()
            self.tcp = None
        if self.opts.pid_file and self.announced:
            try:
                os.unlink(self.opts.pid_file)
            except OSError:
                pass
        if self.exit_code is None:
            self.exit_code = EXIT_STARTUP
        if self.exit_code == 0:
            log.notice(MOD, "all processes stopped, shared memory released")

    def log_core_stats(self):
        """The exit summary: Kamailio's core: statistics (asyncd.core.core_stats),
        read from the processes' rows before the arena goes."""
        st = self.script.stats

        def v(name):
            h = st.handle("core", name)
            return st.get(h) if h is not None else 0
        log.notice(MOD, f"received {v('rcv_requests')} requests, {v('rcv_replies')} replies; "
                   f"{v('bad_msg_hdr')} malformed (core:bad_msg_hdr); forwarded "
                   f"{v('fwd_replies')} replies statelessly and dropped {v('drop_replies')}; "
                   f"{v('drop_requests')} non-SIP requests no module took (core:drop_requests)")

    def cleanup_stale_rundirs(self):
        base = tempfile.gettempdir()
        try:
            names = os.listdir(base)
        except OSError:
            return
        for name in names:
            if not name.startswith(RUNDIR_PREFIX):
                continue
            pid = name[len(RUNDIR_PREFIX):].split("-", 1)[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(os.path.join(base, name), ignore_errors=True)


# -- helpers ----------------------------------------------------------------

def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()  # loaded in main, inherited by every child


def _die_with_parent(main_pid):
    """A child gets SIGTERM when the attendant dies, even by SIGKILL (Linux PR_SET_PDEATHSIG),
    so no orphaned receiver keeps a port after its supervisor is gone."""
    try:
        _LIBC.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except AttributeError:
        return
    if os.getppid() != main_pid:  # the attendant died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _no_resource_tracker():
    """multiprocessing's resource tracker would be forked by main on the first shared_memory call
    (a stray child next to the roles, and one that may unlink segments still in use). The
    supervisor owns the segment's lifetime (unlink at exit, cleanup_stale at start), so main
    never starts it."""

    def _noop(*_a, **_k):
        return None

    resource_tracker.register = _noop
    resource_tracker.unregister = _noop
    resource_tracker.ensure_running = _noop


def _truthy(v):
    return v in (1, True) or (isinstance(v, str) and v.lower() in ("yes", "on", "true", "1"))


def _pipe_nonblock(write_blocking=False):
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, write_blocking)
    return r, w


def _grow_rcvbuf(s):
    """Root may exceed net.core.rmem_max with SO_RCVBUFFORCE; otherwise take what we get."""
    force = getattr(socket, "SO_RCVBUFFORCE", 33)
    try:
        s.setsockopt(socket.SOL_SOCKET, force, RCVBUF)
    except OSError:
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        except OSError:
            pass


def _describe_status(status):
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = SIGNAMES.get(sig, "?")
        if sig == signal.SIGKILL:
            name += ", perhaps out of memory"       # the kernel's OOM killer sends SIGKILL
        core = ", core dumped" if os.WCOREDUMP(status) else ""
        return f"terminated by signal {sig} ({name}){core}"
    if os.WIFEXITED(status):
        return f"exited with status {os.WEXITSTATUS(status)}"
    return f"stopped with wait status {status}"


def _kill(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _child_log_exc(text):
    log.crit(MOD, text)
    if log.enabled(log.L_ERR):
        for line in traceback.format_exc().rstrip().splitlines():
            log.log(log.L_ERR, MOD, line)


def _worker_one_init(script, proc):
    """Kamailio runs event_route[core:worker-one-init] once, in the first SIP
    worker after its child_init (main.c), on a faked request; a failing route
    is logged, the worker still starts (as Kamailio)."""
    try:
        script.run_event_route("core:worker-one-init", script.new_ctx(faked_request(), proc))
    except Exception as e:      # noqa: BLE001 - a script error never stops the boot
        log.err(MOD, f"event_route[core:worker-one-init] failed: {e!r}")
