"""`sealedos bench paging --code K+R`: erasure-coded pagers against mirrored ones, same run.

For each of mirrored (`--pagers 2`) and erasure-coded (`--pagers K+R --code K+R`) it starts a
fresh system and measures, through a sealed process's own MMU: major faults with every pager
up (page-in p50/p99), paging throughput (a write scan over 4x the frames), and degraded reads
(page-ins after one and two pagers were killed for good; mirrored cannot lose two), plus the
bytes stored on the devices per page -- what the disks report (STATS: blocks in use x block
size, summed over the disks, over the pages they hold: slots stored on the fullest disk), with
the pages swapped out -- and the payload bytes per page (what the page needs: a mirror copy,
or K+R fragments with their MACs; the disks pack fragments, layout.py).  Beside the page-in
latency it shows the CPU a page-in costs the kernel and the pagers + disks (their processes'
CPU time over the healthy reads): on a small machine that, not the network, is what the K+delta
fan-out costs.

Reference printed beside ours: Hydra (USENIX FAST '22) reads erasure-coded remote memory
within a few microseconds of replication at about 1.6x less memory, tolerating crashes only.
"""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from apps.runtime import PAGE_SIZE, SealedProcess
from host_tools.bench_paging import fill_and_push, percentiles, throughput_pages_s, time_reads_us
from host_tools.system import Config, System
from kernel_daemon.erasure import MAC_BYTES, Coder, parse_code
from wire.client import Client
from wire.protocol import Op

WAIT_S: float = 30.0
HYDRA: str = ("Hydra (FAST '22): EC remote memory reads within a few us of replication at "
              "~1.6x less memory (crash faults only)")


def _wait(what: str, pred: Any, timeout_s: float = WAIT_S) -> None:
    """Poll pred() until true; RuntimeError naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench: timed out waiting for {what}")
        time.sleep(0.02)


def cpu_s(system: System) -> dict[str, float]:
    """CPU seconds used so far by the kernel, and by the pagers + disks (every thread,
    ZeroMQ's I/O threads included)."""
    out = {"kernel": 0.0, "pagers_disks": 0.0}
    for svc in system.services.values():
        if svc.kind in ("kernel", "pager", "disk") and svc.proc.poll() is None:
            out["kernel" if svc.kind == "kernel" else "pagers_disks"] += _cpu_s(svc.proc.pid)
    return out


def _cpu_s(pid: int) -> float:
    """CPU seconds of process `pid`: nanoseconds from /proc/PID/task/*/schedstat (Linux),
    else psutil's clock-tick counts (10 ms steps: too coarse for one page-in)."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    ns = 0
    for task in tasks:
        try:
            ns += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass                                # a thread that just ended
    return ns / 1e9


def page_ins_us(proc: SealedProcess, system: System, frames: int, down: int,
                at_rest: dict[str, float] | None = None,
                cpu: dict[str, float] | None = None) -> list[float]:
    """Latency (us) of page-ins with a free frame after `down` pagers (the last ones) were
    killed for good: fill A, push it to swap with B (all pagers up), free B, kill, read A.
    at_rest, if given, gets device_storage() while A is on swap; cpu, if given, adds the
    CPU seconds (cpu_s) spent during the reads and the number of reads ("reads")."""
    a, npages, b = fill_and_push(proc, frames)
    _wait("pages swapped",
          lambda: (system.process(proc.name) or {}).get("swapped_pages", 0) >= npages)
    if at_rest is not None:
        at_rest.update(device_storage(system))
    proc.unmap(b, frames)
    n = system.config.pagers
    for m in range(n - down, n):
        svc = system.services[f"pager{m}"]
        svc.restart = False
        os.kill(svc.proc.pid, signal.SIGKILL)
    if down:
        _wait("pagers down", lambda: sum(not p["up"] for p in
                                         system.stats()["kernel"]["pagers"]) >= down)
    before = cpu_s(system)
    reads = time_reads_us(proc, a, npages)
    if cpu is not None:
        for kind, spent in cpu_s(system).items():
            cpu[kind] = cpu.get(kind, 0.0) + spent - before[kind]
        cpu["reads"] = cpu.get("reads", 0) + npages
    return reads


def payload(config: Config) -> dict[str, float]:
    """What one 4 KiB page needs: a copy per mirror, or K+R fragments with their MACs."""
    if config.code:
        k, r = parse_code(config.code)
        return {"payload_bytes": (k + r) * (Coder(k, r).frag_bytes + MAC_BYTES)}
    return {"payload_bytes": config.pagers * PAGE_SIZE}


def device_storage(system: System) -> dict[str, float]:
    """Bytes the disks really hold per stored page: every disk's STATS (used blocks x block
    size), summed, over the pages stored (slots on the fullest disk)."""
    used, pages = 0, 0
    for m in range(system.config.pagers):
        name = f"disk{m}"
        with Client(system.services[name].addr or "", keys=system.keys, server=name) as disk:
            st = disk.call(Op.STATS)
        used += st["used_blocks"] * st["block_size"]
        pages = max(pages, st["slots_stored"])
    return {"device_bytes": round(used / max(pages, 1), 1), "pages_stored": pages}


def measure(config: Config, rounds: int, degraded: list[int]) -> dict[str, Any]:
    """One configuration: healthy page-ins, throughput, then degraded page-ins per count."""
    out: dict[str, Any] = {"storage": payload(config)}
    with System(config) as system:
        with system.connect_sealed("memstress", "bench") as proc:
            major: list[float] = []
            cpu: dict[str, float] = {}
            for i in range(rounds):
                major += page_ins_us(proc, system, config.frames, 0,
                                     out["storage"] if i == 0 else None, cpu)
            out["page_in_us"] = percentiles(major)
            out["cpu_us_per_page_in"] = {kind: round(spent / cpu["reads"] * 1e6, 1)
                                         for kind, spent in cpu.items() if kind != "reads"}
            out["pages_per_s"] = round(throughput_pages_s(proc, system, config.frames), 1)
    for down in degraded:
        with System(config) as system:
            with system.connect_sealed("memstress", "bench") as proc:
                out[f"degraded_{down}_us"] = percentiles(page_ins_us(proc, system,
                                                                     config.frames, down))
                out[f"degraded_{down}_verified"] = system.stats()["kernel"].get(
                    "ec_unrecoverable", 0) == 0
    return out


def compare(code: str, frames: int, rounds: int, console: Console) -> dict[str, Any]:
    """Mirrored (2 pagers) and erasure-coded (K+R) in the same run, with ratios."""
    k, r = parse_code(code)
    runs: dict[str, Any] = {}
    console.print("measuring mirrored (--pagers 2) ...")
    runs["mirrored"] = measure(Config(frames=frames, disk_size_mib=16, pagers=2, prefetch="off"),
                               rounds, [1])
    console.print(f"measuring erasure-coded (--pagers {k + r} --code {code}) ...")
    runs[f"ec_{code}"] = measure(Config(frames=frames, disk_size_mib=16, pagers=k + r, code=code,
                                        prefetch="off"), rounds, [1, 2] if r >= 2 else [1])
    m, e = runs["mirrored"], runs[f"ec_{code}"]
    ratios = {"page_in_p50_ec_vs_mirrored": round(e["page_in_us"]["p50"] /
                                                  m["page_in_us"]["p50"], 2),
              "throughput_ec_vs_mirrored": round(e["pages_per_s"] / m["pages_per_s"], 2),
              "payload_bytes_vs_page": round(e["storage"]["payload_bytes"] / PAGE_SIZE, 2),
              "device_bytes_vs_page": round(e["storage"]["device_bytes"] / PAGE_SIZE, 2),
              "mirrored_bytes_vs_page": round(m["storage"]["device_bytes"] / PAGE_SIZE, 2)}
    return {"code": code, "tolerates": {"mirrored": 1, f"ec_{code}": r}, "runs": runs,
            "ratios": ratios, "reference": HYDRA}


def print_report(result: dict[str, Any], console: Console) -> None:
    """The two configurations side by side, the ratios and the Hydra reference."""
    runs = result["runs"]
    table = Table(title=f"sealedos bench paging --code {result['code']}")
    table.add_column("figure")
    for key in runs:
        table.add_column(key, justify="right")

    def cell(r: dict[str, Any], key: str, q: str) -> str:
        return str(r[key][q]) if key in r else "n/a"
    Row = tuple[str, Callable[[dict[str, Any]], str]]
    rows: list[Row] = [
            ("page-in p50 (us)", lambda r: cell(r, "page_in_us", "p50")),
            ("page-in p99 (us)", lambda r: cell(r, "page_in_us", "p99")),
            ("paging throughput (pages/s)", lambda r: str(r["pages_per_s"])),
            ("degraded read p50, 1 pager down (us)", lambda r: cell(r, "degraded_1_us", "p50")),
            ("degraded read p99, 1 pager down (us)", lambda r: cell(r, "degraded_1_us", "p99")),
            ("degraded read p50, 2 pagers down (us)", lambda r: cell(r, "degraded_2_us", "p50")),
            ("degraded read p99, 2 pagers down (us)", lambda r: cell(r, "degraded_2_us", "p99")),
            ("CPU per page-in, kernel (us)", lambda r: str(r["cpu_us_per_page_in"]["kernel"])),
            ("CPU per page-in, pagers + disks (us)",
             lambda r: str(r["cpu_us_per_page_in"]["pagers_disks"])),
            ("device bytes per page", lambda r: str(r["storage"]["device_bytes"])),
            ("payload bytes per page", lambda r: str(r["storage"]["payload_bytes"]))]
    for label, get in rows:
        table.add_row(label, *[get(r) for r in runs.values()])
    table.add_row("pagers that may lie or die", *[str(v) for v in result["tolerates"].values()])
    console.print(table)
    for name, value in result["ratios"].items():
        console.print(f"  {name}: {value}x")
    console.print(f"reference: {result['reference']}")
    console.print("note: device bytes are what the disks report in use (blocks x block size) "
                  "over the pages they hold; the disks pack fragments below a block, so they "
                  "approach the payload ((K+R)/K of the page + a MAC per fragment)")
