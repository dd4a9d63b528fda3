"""SIPp: command lines, running one load step, and reading its statistics.

Runs in: the bench harness process (SIPp itself is a child process).

SIPp writes its counters with ``-trace_stat -stf FILE -fd 1``: a ';'
separated CSV, one row per second plus a final row at exit. Counters come
in pairs, ``Name(P)`` for the last period and ``Name(C)`` cumulative; the
last row's cumulative values are the totals of the run. Time stamps are
``date<TAB>time<TAB>epoch``; durations are ``HH:MM:SS`` (elapsed) or
``HH:MM:SS:uuuuuu`` (response times). SIPp's own response times are
quantised to its scheduler tick (about 4 ms here), so latencies come from
the built-in sender instead (bench/sender.py).

CPU of SIPp is taken from the kernel's rusage of the reaped child
(``os.wait4``), which is exact and costs nothing during the run.
"""
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
DEFAULT_BUFF = 8 * 1024 * 1024


def version_output(exe: Optional[str]) -> Optional[str]:
    """What `exe -v` prints, or None when it is missing or fails (SIPp and Kamailio)."""
    if not exe:
        return None
    try:
        return subprocess.run([exe, "-v"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def sipp_binary() -> Optional[str]:
    return shutil.which("sipp")


def sipp_version() -> Optional[str]:
    out = version_output(sipp_binary())
    if not out:
        return None
    for line in out.splitlines():
        if "SIPp" in line:
            return line.strip()
    return out.strip() or None


# --- statistics file -------------------------------------------------------

def _parse_value(text: str):
    text = text.strip()
    if text == "":
        return None
    if "\t" in text:                       # date \t time \t epoch
        try:
            return float(text.split("\t")[-1])
        except ValueError:
            return text
    if text.count(":") in (2, 3):          # HH:MM:SS or HH:MM:SS:uuuuuu
        parts = text.split(":")
        try:
            h, m, s = int(parts[0]), int(parts[1]), int(parts[2])
            us = int(parts[3]) if len(parts) == 4 else 0
            return h * 3600 + m * 60 + s + us / 1e6
        except ValueError:
            return text
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def parse_stat_csv(text: str) -> list:
    """All rows of a SIPp -trace_stat file as dicts (column name -> value)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return []
    header = [h for h in lines[0].rstrip(";").split(";")]
    rows = []
    for ln in lines[1:]:
        cells = ln.rstrip("\n").split(";")
        row = {}
        for i, name in enumerate(header):
            if name and i < len(cells):
                row[name] = _parse_value(cells[i])
        rows.append(row)
    return rows


@dataclass
class SippTotals:
    """The cumulative counters of one SIPp run (from the last statistics row)."""
    created: int = 0
    successful: int = 0
    failed: int = 0
    retransmissions: int = 0
    timeouts_on_recv: int = 0
    unexpected: int = 0
    dead_msgs: int = 0
    out_of_call: int = 0
    elapsed_s: float = 0.0
    target_rate: Optional[float] = None
    per_second: list = field(default_factory=list)  # successful calls in each period

    @property
    def achieved_rate(self) -> float:
        return self.successful / self.elapsed_s if self.elapsed_s > 0 else 0.0


def totals_from_rows(rows: list) -> SippTotals:
    if not rows:
        return SippTotals()
    last = rows[-1]

    def c(name):
        v = last.get(name + "(C)")
        return v if isinstance(v, int) else 0
    start = last.get("StartTime")
    now = last.get("CurrentTime")
    elapsed = (now - start) if isinstance(start, float) and isinstance(now, float) else 0.0
    return SippTotals(
        created=last.get("TotalCallCreated") or 0,
        successful=c("SuccessfulCall"), failed=c("FailedCall"),
        retransmissions=c("Retransmissions"), timeouts_on_recv=c("FailedTimeoutOnRecv"),
        unexpected=c("FailedUnexpectedMessage"), dead_msgs=c("DeadCallMsgs"),
        out_of_call=c("OutOfCallMsgs"), elapsed_s=round(elapsed, 6),
        target_rate=last.get("TargetRate"),
        per_second=[r.get("SuccessfulCall(P)") or 0 for r in rows[1:]])


def read_stat_file(path) -> SippTotals:
    return totals_from_rows(parse_stat_csv(Path(path).read_text(errors="replace")))


def read_stat_progress(path, window: int = 65536) -> SippTotals:
    """The counters so far of a SIPp that is still running: its header and its last
    complete row. Read from the end: a 30-minute soak writes 1,800 rows of ~1 KB, and
    the row SIPp is writing now may be cut short."""
    try:
        with open(path, "rb") as f:
            header = f.readline()
            f.seek(0, os.SEEK_END)
            start = max(len(header), f.tell() - window)
            f.seek(start)
            tail = f.read()
    except OSError:
        return SippTotals()
    pieces = tail.split(b"\n")[:-1]        # the piece after the last newline is unfinished
    if start > len(header):
        pieces = pieces[1:]                 # the window began inside a row
    rows = [p for p in pieces if p.strip()]
    if not header.endswith(b"\n") or not rows:
        return SippTotals()
    text = (header + rows[-1] + b"\n").decode(errors="replace")
    return totals_from_rows(parse_stat_csv(text))


# --- injection files --------------------------------------------------------

def users_file(path, users: int, contact_hostport: str) -> str:
    """A SIPp -inf file of `users` distinct users, read in order (SEQUENTIAL: call n takes
    line n mod users): field0 the user name, field1 the host:port its Contact names."""
    lines = ["SEQUENTIAL"] + [f"bench{i:05d};{contact_hostport};" for i in range(users)]
    Path(path).write_text("\n".join(lines) + "\n")
    return str(path)


# --- running ---------------------------------------------------------------

@dataclass
class SippRun:
    totals: SippTotals
    returncode: Optional[int]
    cpu_s: float
    wall_s: float
    timed_out: bool
    stat_file: str
    log_tail: str = ""


def uac_command(scenario: str, target: str, local_port: int, rate: int, calls: int,
                stat_file: str, service: str = "bench", rsa: Optional[str] = None,
                recv_timeout_ms: int = 5000, global_timeout_s: int = 60,
                limit: Optional[int] = None, buff_size: int = DEFAULT_BUFF,
                transport: str = "udp", tcp_mode: str = "t1", inf: Optional[str] = None) -> list:
    cmd = [sipp_binary() or "sipp", "-sf", str(SCENARIO_DIR / scenario), "-s", service, target,
           "-i", "127.0.0.1", "-p", str(local_port), "-m", str(calls), "-r", str(rate),
           "-rp", "1000", "-nostdin", "-trace_stat", "-stf", stat_file, "-fd", "1",
           "-recv_timeout", str(recv_timeout_ms), "-timeout", f"{global_timeout_s}s",
           "-timeout_error", "-buff_size", str(buff_size), "-trace_err",
           # Keep the scheduler busy enough for >10k calls/s on one core.
           "-max_recv_loops", "10000", "-max_sched_loops", "10000"]
    if limit:
        cmd += ["-l", str(limit)]
    if rsa:
        cmd += ["-rsa", rsa]
    if inf:
        cmd += ["-inf", inf]
    if transport == "tcp":
        # t1: every call on one connection; tn: a connection per call. Over TCP SIPp
        # never retransmits (RFC 3261 17.1.2.2: timer E only on unreliable transports).
        cmd += ["-t", tcp_mode]
    return cmd


def uas_command(scenario: str, local_port: int, stat_file: str,
                buff_size: int = DEFAULT_BUFF) -> list:
    return [sipp_binary() or "sipp", "-sf", str(SCENARIO_DIR / scenario),
            "-i", "127.0.0.1", "-p", str(local_port), "-nostdin", "-trace_stat",
            "-stf", stat_file, "-fd", "1", "-buff_size", str(buff_size), "-trace_err",
            "-max_recv_loops", "10000", "-max_sched_loops", "10000"]


def _wait4(proc: subprocess.Popen, deadline: float):
    """Reap proc by pid with rusage; (returncode, cpu seconds, timed_out).

    Past the deadline SIPp gets SIGTERM, then SIGKILL three seconds later.
    """
    escalation = [signal.SIGTERM, signal.SIGKILL]
    timed_out = False
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        if time.monotonic() > deadline:
            timed_out = True
            if escalation:
                try:
                    os.kill(proc.pid, escalation.pop(0))
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 3
        time.sleep(0.02)
    rc = os.waitstatus_to_exitcode(status)
    proc.returncode = rc
    return rc, ru.ru_utime + ru.ru_stime, timed_out


class SippProcess:
    """A running SIPp; finish() reaps it with rusage and reads its statistics."""

    def __init__(self, cmd: list, stat_file: str, log_file: str, cwd: str):
        self.stat_file = stat_file
        self.log_file = log_file
        self.t0 = time.monotonic()
        self._log = open(log_file, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=cwd)

    def running(self) -> bool:
        """Still running? Asked without reaping it (WNOWAIT), so finish() still gets its rusage."""
        if self.proc.returncode is not None:
            return False
        try:
            return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
        except ChildProcessError:
            return False

    def finish(self, timeout_s: float) -> SippRun:
        rc, cpu, timed_out = _wait4(self.proc, time.monotonic() + timeout_s)
        return self._result(rc, cpu, timed_out)

    def stop(self) -> SippRun:
        """For a UAS that runs until told: SIGTERM, then reap."""
        if self.proc.returncode is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        rc, cpu, _ = _wait4(self.proc, time.monotonic() + 5)
        return self._result(rc, cpu, False)

    def _result(self, rc, cpu, timed_out) -> SippRun:
        wall = time.monotonic() - self.t0
        self._log.close()
        try:
            totals = read_stat_file(self.stat_file)
        except OSError:
            totals = SippTotals()
        try:
            tail = Path(self.log_file).read_text(errors="replace")[-1500:]
        except OSError:
            tail = ""
        return SippRun(totals=totals, returncode=rc, cpu_s=round(cpu, 3), wall_s=round(wall, 3),
                       timed_out=timed_out, stat_file=self.stat_file, log_tail=tail)
