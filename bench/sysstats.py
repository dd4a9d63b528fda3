"""What the machine and the server's processes cost: CPU, PSS, UDP drops.

Runs in: the bench harness process.

- CPU: user+system seconds of the whole process tree (psutil), plus what
  the kernel already charged to the main process for reaped children, so
  a child that exits between two samples is not lost.
- Memory: PSS (proportional set size) summed over the tree. Shared memory
  mapped by every child counts once in total, which is the only fair sum
  for a multi-process server (RSS would count it once per process).
- Open file descriptors summed over the tree (the soak's leak check).
- Kernel UDP receive drops: ``RcvbufErrors`` / ``InErrors`` of the ``Udp:``
  lines of /proc/net/snmp. System-wide counters: deltas over a step, on a
  machine where nothing else is sending, are the server's and SIPp's drops.
"""
import os
import platform
import subprocess
from pathlib import Path
from typing import Optional

import psutil

SNMP = "/proc/net/snmp"


class ProcessTree:
    """The server's main process and its descendants, sampled on demand."""

    def __init__(self, pid: int):
        self.pid = pid
        self._procs = {}

    def _members(self):
        try:
            main = self._procs.get(self.pid) or psutil.Process(self.pid)
            self._procs[self.pid] = main
            kids = main.children(recursive=True)
        except psutil.Error:
            return []
        alive = {self.pid: main}
        for k in kids:
            alive[k.pid] = self._procs.get(k.pid, k)   # keep objects: cheaper, same identity
        self._procs = alive
        return list(alive.values())

    def count(self) -> int:
        return len(self._members())

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self._members():
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system
            if p.pid == self.pid:
                total += t.children_user + t.children_system
        return total

    def pss_bytes(self) -> int:
        total = 0
        for p in self._members():
            try:
                total += p.memory_full_info().pss
            except (psutil.Error, AttributeError):
                continue
        return total

    def pss_own_bytes(self) -> int:
        """PSS of the pages the tree itself allocated: anonymous memory and
        shared memory (Pss_Anon + Pss_Shmem of /proc/<pid>/smaps_rollup). The
        file-backed rest (the Python binary, libraries) is shared with every
        other process mapping the same files, so it moves when they start or
        exit: not a signal of the server's own growth."""
        total = 0
        for p in self._members():
            try:
                with open(f"/proc/{p.pid}/smaps_rollup") as f:
                    for line in f:
                        if line.startswith(("Pss_Anon:", "Pss_Shmem:")):
                            total += int(line.split()[1]) * 1024
            except (OSError, ValueError):
                continue
        return total

    def fd_count(self) -> int:
        """Open file descriptors of the whole tree (the entries of each /proc/<pid>/fd)."""
        total = 0
        for p in self._members():
            try:
                total += p.num_fds()
            except psutil.Error:
                continue
        return total

    def rss_bytes(self) -> int:
        total = 0
        for p in self._members():
            try:
                total += p.memory_info().rss
            except psutil.Error:
                continue
        return total


def read_udp_counters(path: str = SNMP) -> dict:
    """The Udp: counters of /proc/net/snmp as a dict (empty if unreadable)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return {}
    udp = [ln.split()[1:] for ln in lines if ln.startswith("Udp:")]
    if len(udp) < 2:
        return {}
    names, values = udp[0], udp[1]
    out = {}
    for n, v in zip(names, values):
        try:
            out[n] = int(v)
        except ValueError:
            pass
    return out


def udp_drops_delta(before: dict, after: dict) -> dict:
    keys = ("RcvbufErrors", "InErrors", "SndbufErrors")
    return {k: after.get(k, 0) - before.get(k, 0) for k in keys if k in after or k in before}


def _git_commit(repo: Path) -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        commit = out.stdout.strip() or None
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{commit}{'+dirty' if dirty and commit else ''}" if commit else None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(repo: Path) -> dict:
    vm = psutil.virtual_memory()
    return {
        "hostname": platform.node(),
        "kernel": platform.release(),
        "os": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(vm.total / 2**30, 1),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "commit": _git_commit(repo),
    }
