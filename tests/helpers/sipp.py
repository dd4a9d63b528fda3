"""Run SIPp against a server and read its counters.

Runs in: the pytest process.

SIPp's own exit status says whether every call succeeded; the stat CSV
(`-trace_stat -stf FILE`, its last line) gives SuccessfulCall(C),
FailedCall(C) and Retransmissions(C), which is what "zero failures, zero
retransmissions" means (TESTING-NOTES.md).
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


class SippResult:
    def __init__(self, rc, stats, stdout, stderr, errors):
        self.rc = rc
        self.stats = stats            # dict: column name -> value (last line of the stat CSV)
        self.stdout = stdout
        self.stderr = stderr
        self.errors = errors          # content of the -trace_err file

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
                f"retrans={self.retransmissions}\nstderr: {self.stderr[-1500:]}\nerrors: {self.errors[-1500:]}")


def run_sipp(target, scenario=None, builtin=None, calls=1, rate=10, service=None, extra=(),
             timeout=60, local_port=None, rate_period_ms=1000, max_outstanding=None):
    """Run sipp against target (ip, port). scenario: a path or a name under tests/sipp/scenarios/
    (".xml" optional); builtin: a SIPp built-in scenario name (uac, uas, ...)."""
    exe = sipp_path()
    if exe is None:
        raise RuntimeError("sipp not installed (apt-get install -y sip-tester)")
    work = tempfile.mkdtemp(prefix="asyncd-sipp-")
    stat = os.path.join(work, "stat.csv")
    errf = os.path.join(work, "errors.log")
    cmd = [exe, f"{target[0]}:{target[1]}", "-i", "127.0.0.1", "-p", str(local_port or free_udp_port()),
           "-m", str(calls), "-r", str(rate), "-rp", str(rate_period_ms), "-nostdin",
           "-trace_stat", "-stf", stat, "-fd", "1", "-trace_err", "-error_file", errf,
           "-timeout", f"{int(timeout)}s", "-timeout_error",
           # SIPp's default 208 KB socket buffer overflows on reply bursts (TESTING-NOTES.md)
           "-buff_size", str(8 << 20)]
    if max_outstanding:
        cmd += ["-l", str(max_outstanding)]
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
    shutil.rmtree(work, ignore_errors=True)
    return SippResult(proc.returncode, stats, proc.stdout.decode(errors="replace"),
                      proc.stderr.decode(errors="replace"), errors)


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
    file under tests/sipp/scenarios), stopped by pid with stop(). Its SIPp errors go to
    a per-port file that stop() removes."""

    def __init__(self, scenario=None, builtin=None, extra=()):
        self.port = free_udp_port()
        self.err_file = f"/tmp/sipp-uas-{self.port}.err"
        cmd = [sipp_path() or "sipp", "-i", "127.0.0.1", "-p", str(self.port), "-nostdin",
               "-trace_err", "-error_file", self.err_file] + list(extra)
        cmd += ["-sn", builtin] if builtin else ["-sf", str(SCENARIOS / scenario)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, cwd="/tmp")
        time.sleep(0.2)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            os.unlink(self.err_file)
        except OSError:
            pass
