"""Command line: Kamailio's flags, then hand over to the supervisor.

Runs in: main process (before anything is forked).

    asyncd [-f FILE] [-c] [-D|-DD] [-E] [-A NAME[=VALUE]]... [-m MB] [-M MB]
           [-n N] [-l ADDR]... [-d]... [-P PIDFILE] [--daemonize]
           [--dump-compiled] [-V|-v]

asyncd stays in the foreground unless `--daemonize` is given (Kamailio
daemonizes by default; `-D`/`-DD` are accepted for muscle memory and change
nothing). Without `-f` the embedded example cfg (asyncd/default.cfg) runs.
Exit codes: 0 ok, 255 cfg or startup error (Kamailio's -1), other non-zero
codes come from the supervisor (a child died or failed to boot).
"""
import argparse
import os
import platform
import sys

from asyncd import __version__
from asyncd.core import log
from asyncd.core.errors import CfgError
from asyncd.core.params import parse_listen
from asyncd.cfg.compiler import compile_cfg
from asyncd.cfg.fixups import Loc
from workers.supervisor import Supervisor

DEFAULT_CFG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.cfg")
EXIT_CFG_ERROR = 255


def version_text():
    return (f"version: asyncd {__version__} ({platform.machine()}/{sys.platform})\n"
            f"flags: USE_UDP, SHM_ARENA, ZMQ_IPC, python {platform.python_version()}\n")


def build_parser():
    p = argparse.ArgumentParser(
        prog="asyncd", add_help=True,
        description="SIP server running Kamailio routing scripts (kamailio.cfg syntax).")
    p.add_argument("-f", dest="cfg", metavar="FILE",
                   help="configuration file (default: the embedded example cfg)")
    p.add_argument("-c", dest="check", action="store_true",
                   help="check the configuration file (including fixups) and exit")
    p.add_argument("-D", dest="no_daemon", action="count", default=0,
                   help="foreground (asyncd never daemonizes unless --daemonize is given)")
    p.add_argument("-E", dest="log_stderr", action="store_true", help="log to stderr")
    p.add_argument("-A", dest="defines", action="append", default=[], metavar="NAME[=VALUE]",
                   help="add a preprocessor define, as #!define NAME VALUE")
    p.add_argument("-m", dest="shm_mb", type=int, metavar="MB", help="shared memory size in MB")
    p.add_argument("-M", dest="pkg_mb", type=int, metavar="MB",
                   help="private memory size in MB (accepted for Kamailio compatibility; no effect)")
    p.add_argument("-n", dest="children", type=int, metavar="N",
                   help="number of UDP receiver processes per listen socket")
    p.add_argument("-l", dest="listen", action="append", default=[], metavar="ADDR",
                   help="listen on [proto:]addr[:port] (replaces the cfg's listen lines)")
    p.add_argument("-d", dest="debug_inc", action="count", default=0,
                   help="raise the debug level by one (repeatable)")
    p.add_argument("-P", dest="pid_file", metavar="FILE",
                   help="write the main pid here once every process is up")
    p.add_argument("--daemonize", action="store_true",
                   help="detach from the terminal (logs go to syslog unless -E)")
    p.add_argument("--dump-compiled", action="store_true",
                   help="print the Python source the cfg compiles to (with -c: then exit)")
    p.add_argument("-Y", dest="run_dir", metavar="DIR",
                   help="runtime directory for control sockets and FIFOs (core param run_dir)")
    p.add_argument("-V", "-v", dest="version", action="store_true", help="print version and exit")
    return p


def parse_defines(items):
    """-A NAME[=VALUE] -> {NAME: VALUE or None}, as Kamailio's #!define."""
    out = {}
    for item in items:
        name, eq, value = item.partition("=")
        out[name.strip()] = value if eq else None
    return out


def compile_script(opts, defines):
    """Compile the cfg; returns the Script or raises CfgError."""
    if opts.cfg:
        return compile_cfg(path=opts.cfg, defines=defines)
    with open(DEFAULT_CFG) as f:
        return compile_cfg(text=f.read(), defines=defines, filename=DEFAULT_CFG)


def main(argv=None):
    opts = build_parser().parse_args(argv)
    if opts.version:
        sys.stdout.write(version_text())
        return 0
    log.configure(to_stderr=True)
    try:
        listen = [parse_listen(x, Loc("-l", 0, 0)) for x in opts.listen]
    except CfgError as e:
        sys.stderr.write(f"ERROR: -l: {e.message}\n")
        return EXIT_CFG_ERROR
    defines = parse_defines(opts.defines)
    try:
        script = compile_script(opts, defines)
    except CfgError as e:
        sys.stderr.write(f"ERROR: bad config file ({e})\n")
        return EXIT_CFG_ERROR
    except OSError as e:
        sys.stderr.write(f"ERROR: cannot read config file: {e}\n")
        return EXIT_CFG_ERROR
    if opts.run_dir:
        script.core["run_dir"] = opts.run_dir
    if opts.dump_compiled:
        sys.stdout.write(script.source)
        sys.stdout.flush()
    if opts.check:
        sys.stderr.write("config file ok, exiting...\n")
        return 0
    return Supervisor(script, opts, listen).run()


def console_main():
    sys.exit(main())


if __name__ == "__main__":
    console_main()
