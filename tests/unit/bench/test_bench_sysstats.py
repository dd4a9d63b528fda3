"""Process-tree CPU and PSS, /proc/net/snmp drops, machine facts (bench/sysstats.py)."""
import subprocess
import sys
import time
from pathlib import Path

from bench import sysstats

SNMP = """Ip: Forwarding DefaultTTL
Ip: 1 64
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 100 2 7 90 5 0 0 0 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
UdpLite: 0 0 0 0 0 0 0 0 0
"""


def test_udp_counters_and_delta(tmp_path):
    p = tmp_path / "snmp"
    p.write_text(SNMP)
    before = sysstats.read_udp_counters(str(p))
    assert before["RcvbufErrors"] == 5 and before["InErrors"] == 7 and before["InDatagrams"] == 100
    p.write_text(SNMP.replace("Udp: 100 2 7 90 5", "Udp: 300 2 9 90 8"))
    after = sysstats.read_udp_counters(str(p))
    assert sysstats.udp_drops_delta(before, after) == {"RcvbufErrors": 3, "InErrors": 2, "SndbufErrors": 0}
    assert sysstats.read_udp_counters(str(tmp_path / "missing")) == {}


def test_real_snmp_is_readable():
    assert "RcvbufErrors" in sysstats.read_udp_counters()


BURN = """
import os, time
kids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        end = time.monotonic() + 30
        buf = bytearray(8 * 1024 * 1024)          # touched: shows in PSS
        while time.monotonic() < end:
            sum(range(10000))
        os._exit(0)
    kids.append(pid)
time.sleep(30)
"""


def test_process_tree_cpu_and_pss_cover_the_children():
    proc = subprocess.Popen([sys.executable, "-c", BURN])
    try:
        tree = sysstats.ProcessTree(proc.pid)
        deadline = time.monotonic() + 10
        while tree.count() < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tree.count() == 3
        c0 = tree.cpu_seconds()
        time.sleep(1.0)
        c1 = tree.cpu_seconds()
        # two children spinning; the main process sleeps. A busy shared 2-core machine
        # may give them little, but never nothing: the sum must see the children.
        assert c1 - c0 > 0.2
        assert tree.pss_bytes() > 2 * 8 * 1024 * 1024
        assert tree.rss_bytes() >= tree.pss_bytes() * 0.5
    finally:
        import psutil
        for kid in psutil.Process(proc.pid).children(recursive=True):
            kid.kill()
        proc.kill()
        proc.wait()
        time.sleep(0.1)
    assert sysstats.ProcessTree(proc.pid).cpu_seconds() == 0.0   # gone: nothing, no exception


def test_machine_info_records_python_and_commit():
    info = sysstats.machine_info(Path(__file__).resolve().parents[3])
    assert info["python"] == ".".join(map(str, sys.version_info[:3]))
    assert info["cpu_count"] >= 1
    assert info["commit"] and len(info["commit"].split("+")[0]) == 40
