"""Run SIPp against a server and read its counters.

Runs in: the pytest process.

SIPp's own exit status says whether every call succeeded; the stat CSV
(`-trace_stat -stf FILE`, its last line) gives SuccessfulCall(C),
FailedCall(C) and Retransmissions(C), which is what "zero failures, zero
retransmissions" means (TESTING-NOTES.md).

`transport` is SIPp's `-t` mode: None keeps SIPp's default (u1: UDP),
"t1" is TCP over one connection, "tn" TCP with a connection per call.
SIPp's default `-max_socket` (50000) is above the usual `ulimit -n`; over
TCP it then warns and exits 1, so every TCP run passes a limit that fits.
`trace_msg=True` keeps the messages SIPp sent and received (`-trace_msg`)
in `SippResult.messages` / `SippUas.messages()`.
"""
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.helpers.net import free_udp_port

SCENARIOS = Path(__file__).resolve().parents[1] / "sipp" / "scenarios"


def sipp_path():
    return shutil.which("sipp")


MAX_SOCKET = 1000          # SIPp's -max_socket for TCP runs (see the module docstring)


def transport_args(transport):
    """SIPp's arguments for a transport mode (None: SIPp's default, UDP)."""
    if not transport:
        return []
    args = ["-t", transport]
    if transport.startswith("t"):
        args += ["-max_socket", str(MAX_SOCKET)]
    return args


class SippResult:
    def __init__(self, rc, stats, stdout, stderr, errors, messages=""):
        self.rc = rc
        self.stats = stats            # dict: column name -> value (last line of the stat CSV)
        self.stdout = stdout
        self.stderr = stderr
        self.errors = errors          # content of the -trace_err file
        self.messages = messages      # content of the -trace_msg file (when asked for)

    def count(self, name):
        v = self.stats.get(name)
        try:
            return int(v)
        except (TypeError, ValueError):
            return None

    @property
    def successful(self):
        return self.count("SuccessfulCall(C)")

    @property
    def failed(self):
        return self.count("FailedCall(C)")

    @property
    def retransmissions(self):
        return self.count("Retransmissions(C)")

    def summary(self):
        return (f"rc={self.rc} ok={self.successful} failed={self.failed} "
                f"retrans={self.retransmissions}\nstderr: {self.stderr[-1500:]}\n"
                f"errors: {self.errors[-1500:]}")


def run_sipp(target, scenario=None, builtin=None, calls=1, rate=10, service=None, extra=(),
             timeout=60, local_port=None, rate_period_ms=1000, max_outstanding=None,
             transport=None, trace_msg=False):
    """Run sipp against target (ip, port). scenario: a path or a name under tests/sipp/scenarios/
    (".xml" optional); builtin: a SIPp built-in scenario name (uac, uas, ...); transport:
    SIPp's -t mode ("t1", "tn"; None: UDP); trace_msg: keep the messages in .messages."""
    exe = sipp_path()
    if exe is None:
        raise RuntimeError("sipp not installed (apt-get install -y sip-tester)")
    work = tempfile.mkdtemp(prefix="asyncd-sipp-")
    stat = os.path.join(work, "stat.csv")
    errf = os.path.join(work, "errors.log")
    msgf = os.path.join(work, "messages.log")
    cmd = [exe, f"{target[0]}:{target[1]}", "-i", "127.0.0.1", "-p", str(local_port or free_udp_port()),
           "-m", str(calls), "-r", str(rate), "-rp", str(rate_period_ms), "-nostdin",
           "-trace_stat", "-stf", stat, "-fd", "1", "-trace_err", "-error_file", errf,
           "-timeout", f"{int(timeout)}s", "-timeout_error",
           # SIPp's default 208 KB socket buffer overflows on reply bursts (TESTING-NOTES.md)
           "-buff_size", str(8 << 20)]
    if max_outstanding:
        cmd += ["-l", str(max_outstanding)]
    cmd += transport_args(transport)
    if trace_msg:
        cmd += ["-trace_msg", "-message_file", msgf]
    if builtin:
        cmd += ["-sn", builtin]
    else:
        p = Path(scenario)
        if not p.exists():
            p = SCENARIOS / (scenario if scenario.endswith(".xml") else scenario + ".xml")
        cmd += ["-sf", str(p)]
    if service:
        cmd += ["-s", service]
    cmd += list(extra)
    proc = subprocess.run(cmd, cwd=work, stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=timeout + 30)
    stats = _last_stats(stat)
    errors = Path(errf).read_text(errors="replace") if os.path.exists(errf) else ""
    messages = Path(msgf).read_text(errors="replace") if os.path.exists(msgf) else ""
    shutil.rmtree(work, ignore_errors=True)
    return SippResult(proc.returncode, stats, proc.stdout.decode(errors="replace"),
                      proc.stderr.decode(errors="replace"), errors, messages)


def _last_stats(path):
    try:
        lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return {}
    if len(lines) < 2:
        return {}
    names = lines[0].rstrip(";").split(";")
    values = lines[-1].rstrip(";").split(";")
    return dict(zip(names, values))


class SippUas:
    """A SIPp UAS in the background on a free port (built-in `-sn NAME` or a scenario
    file under tests/sipp/scenarios), stopped by pid with stop(). Its SIPp errors (and
    with trace_msg its messages) go to per-port files that stop() removes. transport:
    SIPp's -t mode ("t1", "tn": it listens on TCP; None: UDP)."""

    def __init__(self, scenario=None, builtin=None, extra=(), transport=None, trace_msg=False):
        self.port = free_udp_port()
        self.err_file = f"/tmp/sipp-uas-{self.port}.err"
        self.msg_file = f"/tmp/sipp-uas-{self.port}.msg" if trace_msg else None
        cmd = [sipp_path() or "sipp", "-i", "127.0.0.1", "-p", str(self.port), "-nostdin",
               "-trace_err", "-error_file", self.err_file] + transport_args(transport) + list(extra)
        if trace_msg:
            cmd += ["-trace_msg", "-message_file", self.msg_file]
        cmd += ["-sn", builtin] if builtin else ["-sf", str(SCENARIOS / scenario)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, cwd="/tmp")
        time.sleep(0.2)

    def messages(self):
        """What the -trace_msg file holds so far ("" without trace_msg)."""
        try:
            return Path(self.msg_file).read_text(errors="replace") if self.msg_file else ""
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.err_file, self.msg_file):
            try:
                if f:
                    os.unlink(f)
            except OSError:
                pass
