"""The paging core end to end: real disk, pager, kernel and sealed processes as OS processes.

The test process itself becomes a sealed process where a test needs to drive the MMU step
by step (SealedProcess.connect): its pages still live in its own bank and cross to the kernel
only as messages, exactly like an app's."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from polling import wait_for

from apps.runtime import PAGE_SIZE, SealedProcess
from apps.runtime.errors import ProtectionFault, SegmentationFault
from host_tools.system import System
from wire.client import Client
from wire.protocol import PROT_R, Op

BELADY = "1,2,3,4,1,2,5,1,2,3,4,5"
SILBERSCHATZ = "7,0,1,2,0,3,0,4,2,3,0,3,2,1,2,0,1,7,0,1"
PROGRAM = __file__
#: Bound on waiting for paging activity (write-backs, page-outs) to show in the stats.
SETTLE_S: float = 10.0
#: Bound on waiting for an exited or killed process's frames and blocks to be reclaimed.
FREED_S: float = 10.0


def refstring_faults(make_system: Callable[..., System], policy: str, frames: int,
                     refs: str) -> int:
    """Run refstring on a fresh system; return the kernel's fault count for it."""
    system = make_system(frames=frames, policy=policy, disk_size_mib=4)
    system.spawn_app("refstring", ["--pages", refs], "refstring.1")
    assert system.wait_apps(60) == {"refstring.1": 0}, system.log_tail("refstring.1")
    rec = system.process("refstring.1")
    assert rec["checksum"] == "verified"
    return rec["minor_faults"] + rec["major_faults"]


@pytest.mark.parametrize("policy,frames,refs,expected", [
    ("fifo", 3, BELADY, 9),
    ("fifo", 4, BELADY, 10),          # Belady's anomaly: more frames, more faults
    ("fifo", 3, SILBERSCHATZ, 15),
    ("lru", 3, SILBERSCHATZ, 12),
])
def test_textbook_reference_strings_end_to_end(make_system: Callable[..., System], policy: str,
                                               frames: int, refs: str, expected: int) -> None:
    assert refstring_faults(make_system, policy, frames, refs) == expected


def test_sealedos_up_reports_beladys_anomaly_as_json() -> None:
    out = subprocess.run([sys.executable, "-m", "host_tools.cli", "up", "--frames", "3",
                          "--policy", "fifo", "--prefetch", "off", "--json",   # textbook paging
                          "refstring", "--pages", BELADY],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    proc = doc["processes"]["refstring.1"]
    assert proc["minor_faults"] + proc["major_faults"] == 9
    assert proc["checksum"] == "verified"
    # Five first touches are minor; each of the 4 refaults is major, or minor when it comes
    # while the page's write-back is still in flight (HELD: served from the kernel's copy).
    assert proc["minor_faults"] >= 5
    assert proc["major_faults"] == proc["page_ins"] <= 4
    assert proc["major_faults"] + doc["kernel"]["soft_faults"] == 4
    assert proc["evictions"] == 9 - 3                 # every fault once the 3 frames are full
    assert proc["resident_pages"] == 0                # everything given back at exit
    assert doc["kernel"]["nframes"] == 3


@pytest.mark.parametrize("policy", ["fifo", "clock", "lru"])
def test_data_survives_heavy_paging_bit_for_bit(make_system: Callable[..., System],
                                                policy: str) -> None:
    system = make_system(frames=12, policy=policy, disk_size_mib=8)
    for i in (1, 2):
        system.spawn_app("memstress", ["--pages", "40", "--passes", "2", "--seed", str(i)],
                         f"memstress.{i}")
    codes = system.wait_apps(120)
    assert codes == {"memstress.1": 0, "memstress.2": 0}, system.log_tail("memstress.1")
    stats = system.stats()
    for rec in [p for p in stats["processes"] if p["program"] == "memstress"]:
        assert rec["checksum"] == "verified"
        assert rec["major_faults"] > 0 and rec["page_outs"] > 0
    assert stats["kernel"]["integrity_failures"] == {}


def test_segfault_and_protection_fault_stop_only_the_offender(
        make_system: Callable[..., System]) -> None:
    system = make_system(frames=12, disk_size_mib=8)
    system.spawn_app("memstress", ["--pages", "30", "--passes", "2"], "memstress.1")
    with SealedProcess.connect(system.kernel_addr, system.admit("memstress", "offender")) as proc:
        with pytest.raises(SegmentationFault, match="outside every region"):
            proc.load_u64(0x7000_0000)
        ro = proc.map(1, PROT_R)
        assert proc.load_u64(ro) == 0
        with pytest.raises(ProtectionFault, match="protection fault"):
            proc.store_u64(ro, 1)
        rw = proc.map(2)                       # the offender itself still works
        proc.store_u64(rw, 7)
        assert proc.load_u64(rw) == 7
    assert system.wait_apps(120) == {"memstress.1": 0}
    assert system.process("memstress.1")["checksum"] == "verified"
    assert system.stats()["kernel"]["segfaults"] == 1


def fill(proc: SealedProcess, addr: int, npages: int, salt: int) -> list[bytes]:
    """Write a distinct page into each of npages pages; return what was written."""
    pages = [os.urandom(PAGE_SIZE // 2) + bytes([salt, i % 256]) * (PAGE_SIZE // 4)
             for i in range(npages)]
    for i, page in enumerate(pages):
        proc.write(addr + i * PAGE_SIZE, page)
    return pages


def test_disk_restart_serves_every_page_written_before(make_system: Callable[..., System]) -> None:
    system = make_system(frames=8, disk_size_mib=8)
    with SealedProcess.connect(system.kernel_addr, system.admit("memstress", "writer")) as proc:
        addr = proc.map(32)
        pages = fill(proc, addr, 32, 1)
        swapped = system.process("writer")["swapped_pages"]
        assert swapped > 0
        disk = system.services["disk0"]
        old = disk.proc.pid
        os.kill(old, signal.SIGKILL)
        for i, page in enumerate(pages):          # page-ins wait for the new disk service
            assert proc.read(addr + i * PAGE_SIZE, PAGE_SIZE) == page, f"page {i}"
        assert disk.restarts >= 1 and disk.proc.pid != old
    assert system.stats()["kernel"]["integrity_failures"] == {}


def disk_used_blocks(system: System) -> int:
    """The disk service's count of allocated blocks."""
    with Client(system.services["disk0"].addr or "", keys=system.keyring("observer"),
                server="disk0") as disk:
        return disk.call(Op.STATS)["used_blocks"]


def test_exit_frees_frames_swap_and_handle(make_system: Callable[..., System]) -> None:
    system = make_system(frames=8, disk_size_mib=8)
    base = system.stats()["kernel"]
    proc = SealedProcess.connect(system.kernel_addr, system.admit("memstress", "leaver"))
    addr = proc.map(24)
    fill(proc, addr, 24, 2)
    # write-backs settle (HELD -> SWAPPED) after the faults that caused them were answered
    wait_for("a swapped page", lambda: system.process("leaver")["swapped_pages"] > 0, SETTLE_S)
    assert system.stats()["kernel"]["free_frames"] == 0
    assert disk_used_blocks(system) > 0
    proc.close()
    kernel = system.stats()["kernel"]
    assert kernel["free_frames"] == 8 - (base["nframes"] - base["free_frames"])
    assert kernel["swapped_pages"] == base["swapped_pages"]
    # CLOSE reaches the disk through the pager
    wait_for("swap blocks freed", lambda: disk_used_blocks(system) == 0, FREED_S)


def test_killed_process_is_reclaimed(make_system: Callable[..., System]) -> None:
    system = make_system(frames=10, disk_size_mib=8)
    base = system.stats()["kernel"]
    app = system.spawn_app("memstress", ["--pages", "40", "--passes", "50"], "memstress.1")
    wait_for("a page-out", lambda: (system.process("memstress.1") or {}).get("page_outs", 0) > 0,
             SETTLE_S)
    os.kill(app.proc.pid, signal.SIGKILL)
    app.proc.wait()

    def reclaimed() -> dict[str, Any] | None:
        """The kernel's stats once the process, its frames and its blocks are all reclaimed."""
        kernel = system.stats()["kernel"]
        done = kernel["live_processes"] == base["live_processes"] \
            and kernel["free_frames"] == base["free_frames"] and disk_used_blocks(system) == 0
        return kernel if done else None
    kernel = wait_for("the killed process reclaimed", reclaimed, FREED_S)
    assert kernel["live_processes"] == base["live_processes"]
    assert kernel["free_frames"] == base["free_frames"]
    assert disk_used_blocks(system) == 0
    assert system.process("memstress.1")["exit_reason"] == "died"
