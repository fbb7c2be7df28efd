"""Prefetching end to end: real disk, pager, kernel (--prefetch trend) and sealed processes.

The test process becomes a sealed process and scans its swapped memory through its own MMU;
every byte it reads must be the byte it wrote, whether a page came by a major fault or was
read ahead by the kernel and served from what it held or installed around a fault."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

from polling import wait_for

from apps.runtime import PAGE_SIZE
from host_tools.bench_scan import order, pattern
from host_tools.system import System

FRAMES: int = 16
PAGES: int = 160


def test_sequential_and_strided_scans_of_swapped_memory_are_read_ahead_and_verified(
        make_system: Callable[..., System]) -> None:
    system = make_system(frames=FRAMES, prefetch="trend", disk_size_mib=8)
    with system.connect_sealed("memstress", "scanner") as proc:
        base = proc.map(PAGES)
        for i in range(PAGES):
            proc.write(base + i * PAGE_SIZE, pattern(0, i))
        wait_for("the region on swap",
                 lambda: system.process("scanner")["swapped_pages"] >= PAGES - FRAMES, 30)
        for scan in ("sequential", "strided", "random"):
            for i in order(scan, PAGES, 4):
                assert proc.read(base + i * PAGE_SIZE, PAGE_SIZE) == pattern(0, i), (scan, i)
        k = system.stats()["kernel"]
        assert k["prefetch"] == "trend" and k["integrity_failures"] == {}
        used = k["prefetch_hits"] + k["fault_around"]   # faulted on, or installed around
        assert used >= PAGES // 2                     # the two streams were read ahead
        assert used <= k["prefetches"] and k["fault_around"] > 0
        rec = system.process("scanner")
        assert rec["state"] == "running"
        assert rec["quota"]["prefetched"][0] <= rec["quota"]["prefetched"][1]


def test_memstress_verifies_with_prefetch_trend(make_system: Callable[..., System]) -> None:
    system = make_system(frames=FRAMES, prefetch="trend", disk_size_mib=8)
    system.spawn_app("memstress", ["--pages", "96", "--passes", "2"], "memstress.1")
    assert system.wait_apps(120) == {"memstress.1": 0}, system.log_tail("memstress.1")
    assert system.process("memstress.1")["checksum"] == "verified"
    k = system.stats()["kernel"]
    assert k["prefetch_hits"] + k["fault_around"] > 0 and k["integrity_failures"] == {}


def test_bench_scan_report_fits_80_columns_when_piped() -> None:
    """`sealedos bench scan`, piped: one row per scan and mode, no line over 80 columns."""
    out = subprocess.run([sys.executable, "-m", "host_tools.cli", "bench", "scan",
                          "--frames", "16", "--pages", "32", "--repeat", "1"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "80"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, lines
    modes = [line.split("│")[2].strip() for line in lines if line.startswith("│")]
    assert modes == ["off", "trend", "readahead"] * 3
    assert lines[-1] == "every byte verified: True"
