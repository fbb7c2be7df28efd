"""The benchmarks' reports as a user reads them: piped to a file, at 80 columns.

Timings are never asserted (the machine is noisy); the shape of the report is."""
from __future__ import annotations

import os
import subprocess
import sys


def run_piped(*args: str) -> list[str]:
    """Run `sealedos <args>` with stdout piped and COLUMNS=80; its stdout lines."""
    out = subprocess.run([sys.executable, "-m", "host_tools.cli", *args], capture_output=True,
                         text=True, timeout=180, env={**os.environ, "COLUMNS": "80"})
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_bench_paging_quick_report_fits_80_columns() -> None:
    lines = run_piped("bench", "paging", "--quick")
    assert max(len(line) for line in lines) <= 80, [ln for ln in lines if len(ln) > 80]
    rows = [line.split("│")[1].strip() for line in lines if line.startswith("│")]
    figures = ["minor fault (us)", "major fault (us)", "TLB hit (ns)"]
    assert rows == figures * 2                 # the latencies, then their ratios to the floors
    ratio_rows = [line for line in lines if line.startswith("│")][3:]
    assert all(line.rstrip("│ ").endswith("x") for line in ratio_rows)   # targets, as ratios


def test_up_summary_fits_80_columns_when_piped() -> None:
    """`sealedos up`'s per-process summary, piped: one row per app, every one verified."""
    lines = run_piped("up", "--duration", "1", "--frames", "32", "--disk-size", "16")
    assert max(len(line) for line in lines) <= 80, [ln for ln in lines if len(ln) > 80]
    rows = [line.split() for line in lines if line.startswith("memstress.")]
    assert len(rows) == 3 and all(r[-2:] == ["verified", "exited"] for r in rows), lines
