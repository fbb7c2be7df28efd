"""Supervision under real kills: the pager and the disk service die (SIGKILL) or hang (SIGSTOP)
while sealed processes page heavily, and nothing is lost.

Every test runs real processes (the make_system fixture stops them all and fails on any
orphan) and ends with every checksum verified, no app-visible error, no leaked frame or swap
block.  Progress is judged from the kernel's fault log ("a major fault that began after the
kill was served"), never from timings; the only time limits are generous deadlines.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polling
import psutil
import pytest

from apps.runtime import PAGE_SIZE, SealedProcess
from disk_service.device import check_device
from host_tools import chaos_analysis as ca
from host_tools.system import System
from wire.client import Client
from wire.protocol import BLOCK_SIZE, Op

PROGRAM = __file__
DEADLINE_S: float = 90.0
#: The paging workload: two memstress arrays of PAGES pages each over FRAMES frames.
FRAMES, PAGES = 32, 96


# -- helpers ---------------------------------------------------------------------------------
wait_for = functools.partial(polling.wait_for, timeout_s=DEADLINE_S)


class FaultWatch:
    """Reads the kernel's fault log incrementally (Op.FAULT_LOG)."""

    def __init__(self, system: System) -> None:
        self.system, self.cursor, self.majors = system, 0, []

    def poll(self) -> None:
        reply = self.system.client().call(Op.FAULT_LOG, cursor=self.cursor)
        self.cursor = reply["cursor"]
        self.majors += [r for r in reply["records"] if r[1] == "major"]

    def served_major_since(self, t_s: float) -> bool:
        """Has a major fault that *began* at or after t_s been served?"""
        self.poll()
        return ca.recovery_s(self.majors, t_s) is not None


def start_paging(system: System, duration_s: float = 0) -> list[str]:
    """Two memstress instances paging heavily; returns their names."""
    names = []
    for i in (1, 2):
        args = ["--pages", str(PAGES), "--seed", str(i)]
        args += ["--duration", str(duration_s)] if duration_s else ["--passes", "2"]
        system.spawn_app("memstress", args, f"memstress.{i}")
        names.append(f"memstress.{i}")
    return names


def disk_used_blocks(system: System, disk: str = "disk0") -> int:
    """The disk service's count of allocated blocks (its stats op)."""
    addr = system.services[disk].addr or ""
    with Client(addr, keys=system.keyring("observer"), server=disk) as c:
        return c.call(Op.STATS)["used_blocks"]


def assert_all_verified_and_reclaimed(system: System, names: list[str]) -> dict[str, Any]:
    """Every app exited 0 with its checksum verified; frames and swap all came back."""
    codes = system.wait_apps(DEADLINE_S)
    assert codes == {n: 0 for n in names}, "\n".join(system.log_tail(n) for n in names)
    for n in names:
        rec = system.process(n)
        assert rec["checksum"] == "verified", rec
        assert rec["state"] == "exited", rec
    kernel = system.stats()["kernel"]
    assert kernel["integrity_failures"] == {}, kernel["integrity_failures"]
    wait_for("frames to come back", lambda: system.stats()["kernel"]["free_frames"] == FRAMES)
    wait_for("swap blocks to be freed", lambda: all(
        disk_used_blocks(system, f"disk{m}") == 0 for m in range(system.config.pagers)))
    return system.stats()["kernel"]


def kill_and_recover(system: System, watch: FaultWatch, service: str, sig: signal.Signals) -> None:
    """Signal the service's current instance; wait for a major fault begun after it."""
    t = time.monotonic()
    os.kill(system.services[service].pid, sig)
    wait_for(f"a major fault served after {sig.name} of {service}",
             lambda: watch.served_major_since(t))


# -- supervision -------------------------------------------------------------------------------
def test_several_pager_kills_during_heavy_paging_lose_nothing(
        make_system: Callable[..., System]) -> None:
    system = make_system(frames=FRAMES, disk_size_mib=16)
    watch = FaultWatch(system)
    names = start_paging(system, duration_s=4)
    wait_for("paging to start", lambda: watch.served_major_since(0))
    pids = set()
    for _ in range(3):
        pids.add(system.services["pager0"].pid)
        kill_and_recover(system, watch, "pager0", signal.SIGKILL)
    assert system.services["pager0"].restarts >= 3 and system.services["pager0"].pid not in pids
    kernel = assert_all_verified_and_reclaimed(system, names)
    assert kernel["pager_restarts"] >= 3          # the kernel admitted each new instance


def test_disk_kill_is_retried_and_served_from_the_same_file(
        make_system: Callable[..., System]) -> None:
    system = make_system(frames=FRAMES, disk_size_mib=16)
    watch = FaultWatch(system)
    names = start_paging(system, duration_s=4)
    wait_for("paging to start", lambda: watch.served_major_since(0))
    kill_and_recover(system, watch, "disk0", signal.SIGKILL)
    kill_and_recover(system, watch, "disk0", signal.SIGKILL)
    assert system.services["disk0"].restarts >= 2
    kernel = assert_all_verified_and_reclaimed(system, names)
    assert kernel["pager_kills"] == 0, "a dead disk was blamed on its (healthy) pager"


def test_stopped_pager_times_out_is_replaced_and_requests_are_retried(
        make_system: Callable[..., System]) -> None:
    system = make_system(frames=FRAMES, disk_size_mib=16)
    watch = FaultWatch(system)
    names = start_paging(system, duration_s=4)
    wait_for("paging to start", lambda: watch.served_major_since(0))
    stopped = system.services["pager0"].pid
    kill_and_recover(system, watch, "pager0", signal.SIGSTOP)    # never continued
    assert system.services["pager0"].pid != stopped
    assert not psutil.pid_exists(stopped) or psutil.Process(stopped).status() == "zombie"
    kernel = system.stats()["kernel"]
    assert kernel["pager_timeouts"] >= 1 and kernel["pager_retries"] >= 1
    hung = [e for e in system.events if e[1] == "pager0" and "hung" in e[2]]
    assert kernel["pager_kills"] >= 1 or hung, system.events   # kernel or watchdog killed it
    assert_all_verified_and_reclaimed(system, names)


def test_stopped_disk_is_killed_by_the_watchdog(make_system: Callable[..., System]) -> None:
    system = make_system(frames=FRAMES, disk_size_mib=16)
    watch = FaultWatch(system)
    names = start_paging(system, duration_s=4)
    wait_for("paging to start", lambda: watch.served_major_since(0))
    kill_and_recover(system, watch, "disk0", signal.SIGSTOP)
    assert any(e[1] == "disk0" and "hung" in e[2] for e in system.events), system.events
    assert_all_verified_and_reclaimed(system, names)


def device_ciphertexts(path: Path) -> set[str]:
    """The sha256 of every allocated data block of a device file (read-only)."""
    _, idx = check_device(path)
    data = path.read_bytes()
    return {hashlib.sha256(data[b * BLOCK_SIZE:(b + 1) * BLOCK_SIZE]).hexdigest()
            for slots in idx.slots.values() for b in slots.values()}


def test_mirror_that_was_down_is_resynced(make_system: Callable[..., System]) -> None:
    system = make_system(frames=8, disk_size_mib=8, pagers=2)
    pages = [hashlib.sha256(b"%d" % i).digest() * (PAGE_SIZE // 32) for i in range(48)]
    with SealedProcess.connect(system.kernel_addr, system.admit("memstress", "writer")) as proc:
        addr = proc.map(len(pages))
        for i in range(24):
            proc.write(addr + i * PAGE_SIZE, pages[i])
        os.kill(system.services["pager1"].pid, signal.SIGSTOP)     # mirror 1 hangs ...
        for i in range(24, 48):                                    # ... while pages go out
            proc.write(addr + i * PAGE_SIZE, pages[i])
        for i in range(12):                                        # and old ones change
            pages[i] = pages[i][::-1]
            proc.write(addr + i * PAGE_SIZE, pages[i])

        def settled() -> bool:
            k = system.stats()["kernel"]
            quiet = all(p["up"] and not p["inflight"] and not p["backlog"] for p in k["pagers"])
            return quiet and k["resynced"] > 0 and k["resync_pending"] == 0
        wait_for("mirror 1 to rejoin and be resynced", settled)
        # Both mirrors now hold the very same sealed pages (the kernel copies ciphertext).
        on0 = device_ciphertexts(system.device_file(0))
        on1 = device_ciphertexts(system.device_file(1))
        assert on0 and on0 == on1
        for i, page in enumerate(pages):
            assert proc.read(addr + i * PAGE_SIZE, PAGE_SIZE) == page, f"page {i}"
    kernel = system.stats()["kernel"]
    assert kernel["pager_restarts"] >= 1 and kernel["resync_failed"] == 0


# -- sealedos chaos end to end -------------------------------------------------------------------
def run_chaos(*args: str) -> dict[str, Any]:
    """`sealedos chaos ARGS --json` as its own session; return the report.  Fails if any
    process of that session outlives it (the children of its System are in the session)."""
    cmd = [sys.executable, "-m", "host_tools.cli", "chaos", *args, "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        left = [p for p in psutil.process_iter() if _sid(p.pid) == proc.pid]
        for p in left:
            p.kill()
    assert not left, f"orphans of sealedos chaos: {[p.pid for p in left]}"
    assert proc.returncode == 0, err[-3000:] + out[-3000:]
    return json.loads(out)


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def test_chaos_json_end_to_end_kills_the_pager(tmp_path: Path) -> None:
    plot = tmp_path / "chaos.png"
    report = run_chaos("--kill", "pager", "--every", "1.5", "--duration", "5",
                       "--memstress", "2", "--pages", "96", "--frames", "32",
                       "--plot", str(plot))
    assert report["kills"] >= 2 and report["restarts"] >= report["kills"]
    assert len(report["recovery_ms"]) == report["kills"]
    assert all(r is not None and r > 0 for r in report["recovery_ms"])
    assert report["app_errors"] == 0 and report["verified"] is True
    assert report["reclaimed"] is True and not any(report["leaks"].values())
    for window in ("before", "during"):
        assert report["latency_us"][window]["n"] > 0
    assert report["ipc"]["calls"] > 0 and report["ipc"]["peer_died"] == 0
    assert plot.stat().st_size > 10_000


def test_chaos_killing_the_echo_server_gives_its_clients_peer_died(tmp_path: Path) -> None:
    report = run_chaos("--kill", "echo.1", "--every", "1", "--duration", "4",
                       "--memstress", "1", "--pages", "48", "--frames", "32")
    assert report["kills"] >= 1
    assert all(k.get("reclaim_ok") for k in report["kill_log"])
    assert report["ipc"]["peer_died"] >= 1                  # the clients saw it and went on
    assert report["app_errors"] == 0 and report["verified"] is True
    assert report["reclaimed"] is True


# -- the analysis, on made-up records ---------------------------------------------------------
def test_recovery_is_the_first_major_fault_begun_after_the_kill() -> None:
    majors = [(10.0, "major", 1e6, 1),       # began at 9.0: before the kill, proves nothing
              (10.5, "major", 1e5, 1),       # began at 10.4: after the kill at 10.2
              (11.0, "major", 1e3, 1)]
    assert ca.recovery_s(majors, 10.2) == pytest.approx(0.3)
    assert ca.recovery_s(majors, 11.5) is None
    windows = ca.outages([10.2], [0.3], 20.0)
    lat = ca.latency_windows(majors, [10.2], windows)
    assert lat["before"]["n"] == 1 and lat["during"]["n"] == 1 and lat["after"]["n"] == 1
    assert ca.outages([1.0, 5.0], [None, 0.5], 9.0)[0] == ca.Outage(1.0, 5.0, False)


def test_ipc_series_sums_clients_on_one_grid() -> None:
    loads = [{"t0": 100.0, "bin_s": 0.5, "counts": [10, 10, 10, 10, 5]},
             {"t0": 100.5, "bin_s": 0.5, "counts": [20, 20, 20, 5]}]
    times, rates, running = ca.ipc_series(loads)
    assert running == 100.5 and times[0] == 100.0
    assert rates[:4] == [20.0, 60.0, 60.0, 60.0]
    rates_by = ca.ipc_rates(times, rates, running, [101.5], ca.outages([101.5], [0.5], 103.0))
    assert rates_by == {"before": 60.0, "during": 60.0}
