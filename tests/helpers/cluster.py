"""A three-node cluster on loopback: a dispatcher node in front of proxy nodes that
share registrations through a real redis-server (docs/cluster.md).

Runs in: the pytest process (and `python -m bench.cluster`); the nodes, Redis and
SIPp run as subprocesses.

`run_cluster(kind)` starts redis-server (tests/helpers/redis_server.py), N proxy
nodes on tests/cluster/proxy.cfg and a dispatcher node on tests/cluster/dispatcher.cfg
whose list file names the proxies, each node a server tree of `kind` ("asyncd" or
"kamailio") started the same way for both: foreground, its own process group, a
private runtime dir (`-Y`, where its ctl socket lands), the ports and paths as `-A`
defines. A Node can be killed by pid (its whole process group: a host that dies)
and started again on the same port; everything is stopped by pid on exit.
"""
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.servers import free_udp_port, kamailio_binary
from tests.helpers.redis_server import run_redis

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_DIR = REPO_ROOT / "tests" / "cluster"
DISPATCHER_CFG = CLUSTER_DIR / "dispatcher.cfg"
PROXY_CFG = CLUSTER_DIR / "proxy.cfg"
KINDS = ("asyncd", "kamailio")


class NodeFailed(AssertionError):
    pass


class Node:
    """One server tree: `name`, `port`, `addr`, `pid`, `ctl` (the BINRPC socket for
    kamcmd), `log()`, `kill()`, `start()`, `stop()`."""

    def __init__(self, kind, name, cfg, port, defines, workdir, mem_mb=64):
        self.kind = kind
        self.name = name
        self.cfg = str(cfg)
        self.port = port
        self.addr = ("127.0.0.1", port)
        self.defines = dict(defines)
        self.workdir = workdir
        self.rundir = os.path.join(workdir, "run")
        self.log_path = os.path.join(workdir, "node.log")
        self.pid_path = os.path.join(workdir, "node.pid")
        self.ctl = f"unix:{self.rundir}/kamailio_ctl"
        self.mem_mb = mem_mb
        self.proc = None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def command(self):
        defines = [a for k, v in self.defines.items() for a in ("-A", f"{k}={v}")]
        if self.kind == "kamailio":
            head = [kamailio_binary(), "-DD", "-E", "-m", str(self.mem_mb), "-M", "8"]
        else:
            head = [sys.executable, "-m", "asyncd", "-DD", "-E", "-m", str(self.mem_mb),
                    "-P", self.pid_path]
        return head + ["-Y", self.rundir, "-f", self.cfg, "-A", f"LPORT={self.port}"] + defines

    def log(self):
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self, ready_timeout=20.0):
        """Start the node (again, on the same port); returns when its ctl socket is up."""
        os.makedirs(self.rundir, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.rundir, "kamailio_ctl"))
        env = dict(os.environ, PYTHONUNBUFFERED="1",
                   PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, cwd=self.workdir, env=env,
                                         start_new_session=True)
        self._wait_ready(ready_timeout)
        return self

    def _wait_ready(self, timeout):
        ready = os.path.join(self.rundir, "kamailio_ctl")
        end = time.monotonic() + timeout
        while not os.path.exists(ready) or (self.kind == "asyncd" and not os.path.exists(self.pid_path)):
            if self.proc.poll() is not None or time.monotonic() > end:
                rc = self.proc.poll()
                self.stop()
                raise NodeFailed(f"{self.kind} {self.name} did not start (rc {rc}); "
                                 f"log:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        time.sleep(0.3)             # Kamailio's ctl handler forks after the socket exists

    def kill(self, sig=signal.SIGKILL):
        """Kill the whole tree by its process group (the main pid leads it): a node that dies."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)
        self._reap(5.0)

    def stop(self, timeout=10.0):
        """SIGTERM to the main pid, SIGKILL to the group after `timeout`."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        self._reap(timeout)

    def _reap(self, timeout):
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        # children left in the group (a SIGTERM'd Kamailio waits for them; asyncd too)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.pid_path)
        self.proc = None


class Cluster:
    """`redis` (RedisServer), `dispatcher` (Node), `proxies` (list of Node), `nodes`."""

    def __init__(self, kind, redis, dispatcher, proxies, workdir):
        self.kind = kind
        self.redis = redis
        self.dispatcher = dispatcher
        self.proxies = proxies
        self.workdir = workdir

    @property
    def nodes(self):
        return [self.dispatcher, *self.proxies]

    def proxy_by_port(self, port):
        return next(p for p in self.proxies if p.port == int(port))

    def stop(self):
        for node in reversed(self.nodes):
            node.stop()


def ds_list(proxies, setid=1):
    """dispatcher's list file (dispatch.c ds_load_list: setid uri flags priority attrs)."""
    return "".join(f"{setid} sip:127.0.0.1:{p.port} 0 0 duid={p.name}\n" for p in proxies)


def make_nodes(kind, redis_url, workdir, proxies=2, mem_mb=64, db=0, kinds=None):
    """The proxy Nodes ("proxya", "proxyb", ...) and the dispatcher Node (not started);
    the list file is written. `kinds` ({node name: kind}) overrides `kind` per node: a
    mixed cluster of asyncd and Kamailio nodes on the same cfgs and Redis."""
    kinds = kinds or {}
    nodes = []
    for i in range(proxies):
        name = f"proxy{chr(ord('a') + i)}"
        d = os.path.join(workdir, name)
        os.makedirs(d)
        nodes.append(Node(kinds.get(name, kind), name, PROXY_CFG, free_udp_port([n.port for n in nodes]),
                          {"DBURL": f'"{redis_url}/{db}"'}, d, mem_mb))
    dslist = os.path.join(workdir, "dispatcher.list")
    Path(dslist).write_text(ds_list(nodes))
    d = os.path.join(workdir, "dispatcher")
    os.makedirs(d)
    disp = Node(kinds.get("dispatcher", kind), "dispatcher", DISPATCHER_CFG,
                free_udp_port([n.port for n in nodes]), {"DSLIST": f'"{dslist}"'}, d, mem_mb)
    return disp, nodes


@contextlib.contextmanager
def run_cluster(kind, proxies=2, mem_mb=64, redis=None, kinds=None):
    """Redis (or the RedisServer given), `proxies` proxy nodes, then the dispatcher node
    in front of them (each of `kind`, or as `kinds` says: make_nodes); yields a Cluster;
    stops every node and Redis by pid on exit."""
    workdir = tempfile.mkdtemp(prefix=f"cluster-{kind}-")
    with contextlib.ExitStack() as stack:
        if redis is None:
            redis = stack.enter_context(run_redis())
        disp, nodes = make_nodes(kind, redis.url, workdir, proxies, mem_mb, kinds=kinds)
        cluster = Cluster(kind, redis, disp, nodes, workdir)
        stack.callback(shutil.rmtree, workdir, True)
        stack.callback(cluster.stop)
        for node in nodes:
            node.start()
        disp.start()
        yield cluster
