"""Clustered page-outs on real processes: several pages per PAGE_OUT, and a pager that
falsifies the answers (--batch-attack, pager_service/hostile.py) costs only write-backs.

memstress dirties more pages than there are frames, so page-outs dominate.  With clustering
(the default) the kernel sends fewer PAGE_OUT requests than pages; with --cluster 1 one per
page.  Whatever a hostile pager answers to a cluster (some pages failed, an answer for a page
it was not sent, two answers, answers reordered or for another slot, or none), every page
reaches the app verified and the kernel carries on; with a mirror, nothing is lost either.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from host_tools.system import System
from pager_service.hostile import BATCH_ATTACKS

TIMEOUTS = dict(pager_timeout_ms=1500, pager_retries=1)
WORK = ["--pages", "160", "--passes", "2"]
#: Frames: an eviction takes a cluster of min(16, 64 // vm.RECLAIM_SHARE) = 4 victims.
FRAMES = 64


def run_memstress(system: System, name: str = "memstress.1") -> dict:
    """Run memstress to a verified end; its kernel record."""
    system.spawn_app("memstress", WORK, name)
    code = system.wait_apps(180)[name]
    rec = system.process(name)
    assert code == 0 and rec is not None, (system.log_tail(name), system.log_tail("kernel"),
                                           system.stats()["kernel"])
    assert rec["checksum"] == "verified"
    return rec


@pytest.mark.parametrize("cluster", [16, 1])
def test_page_outs_are_clustered_unless_cluster_is_one(make_system: Callable[..., System],
                                                        cluster: int) -> None:
    system = make_system(frames=FRAMES, disk_size_mib=8, cluster=cluster)   # sealedos up --cluster
    assert run_memstress(system)["major_faults"] > 0
    k = system.stats()["kernel"]
    assert k["page_outs"] > 0 and k["writeback_failures"] == 0
    if cluster == 1:
        assert k["page_out_requests"] == k["page_outs"]
    else:
        assert k["page_out_requests"] < k["page_outs"]


@pytest.mark.parametrize("attack", [a for a in BATCH_ATTACKS if a != "withhold"])
def test_one_pager_falsifying_clusters_costs_only_write_backs(
        make_system: Callable[..., System], monkeypatch: pytest.MonkeyPatch, attack: str) -> None:
    monkeypatch.setenv("SEALEDOS_BATCH_ATTACK", attack)
    # the default pager budget (12 s): this is about the answers, not about a loaded
    # machine's pager being slow past a short budget
    system = make_system(frames=FRAMES, disk_size_mib=8, hostile="snoop")
    run_memstress(system)
    k = system.stats()["kernel"]
    assert k["integrity_failures"] == {} and k["page_out_requests"] < k["page_outs"]
    if attack != "twice":             # answered twice, the first answer is honest
        assert k["writeback_failures"] + k["pager_retries"] > 0, "the attack was not felt"
    assert f"batch_attack={attack}" in system.log_tail("pager0")


@pytest.mark.parametrize("attack", BATCH_ATTACKS)
def test_mirrored_a_pager_falsifying_clusters_loses_nothing(
        make_system: Callable[..., System], monkeypatch: pytest.MonkeyPatch, attack: str) -> None:
    monkeypatch.setenv("SEALEDOS_BATCH_ATTACK", attack)
    system = make_system(frames=FRAMES, disk_size_mib=8, hostile="snoop", pagers=2, **TIMEOUTS)
    run_memstress(system)
    # a page-in may time out at a pager suspected for withholding (and fail over): never a
    # page that fails its check (every page is stored honestly, every ack is its own page's)
    assert set(system.stats()["kernel"]["integrity_failures"]) <= {"timeout"}


def test_bench_scan_dirty_fits_80_columns_and_has_json() -> None:
    """`sealedos bench scan --dirty`, piped: a row per --cluster setting within 80 columns;
    --json carries pages/s and pages per request of each and the same-run ratio."""
    cmd = [sys.executable, "-m", "host_tools.cli", "bench", "scan", "--dirty", "--frames", "32",
           "--pages", "96", "--repeat", "1"]
    env = {**os.environ, "COLUMNS": "80"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, lines
    assert [line.split("│")[1].strip() for line in lines if line.startswith("│")] == ["16", "1"]
    out = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=180, env=env)
    result = json.loads(out.stdout)
    assert result["dirty"]["1"]["pages_per_request"] == 1.0
    assert result["dirty"]["16"]["pages_per_request"] > 1.0
    assert result["ratio_vs_cluster_1"] > 0
