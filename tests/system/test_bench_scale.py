"""`sealedos bench paging --scale`, small: 8 sealed processes paced through start-up, held at
their start gate, let go at once, every one verified (the 256-process run is a benchmark,
not a test)."""
from __future__ import annotations

from systems import assert_no_orphans, children

from host_tools import bench_scale


def test_scale_run_holds_every_process_at_the_gate_then_verifies_all() -> None:
    before = children()
    r = bench_scale.scale(8, 96, frames=64, memory=False)
    assert_no_orphans(before)
    assert "baseline" not in r                       # 8 <= BASELINE_PROCS: one run
    assert r["verified"] == 8 and r["failed_exits"] == 0
    assert r["start_s"]["n"] == 8
    assert r["pss_mib"]["n"] == 8                    # all alive when sampled: held at the gate
    assert r["pss_mib"]["p50"] > 0
    assert r["faults"] >= 8 * 96                     # every page touched after the gate opened
    assert r["major_faults"] > 0                     # 96 pages each on 64 frames: they paged
    assert r["kernel_cpu_us_per_fault"] > 0
    assert 0 < r["kernel_main_us_per_fault"] <= r["kernel_cpu_us_per_fault"]
    assert r["kernel_main_switches_per_fault"]["voluntary"] > 0    # it waited for messages
    assert "8 sealed processes x 96 pages" in bench_scale.scale_text(r)
