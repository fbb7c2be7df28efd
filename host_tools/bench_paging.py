"""`sealedos bench paging`: fault latency and paging throughput, each against its floor.

    sealedos bench paging [--frames N] [--rounds R] [--json] [--transports ipc,tcp] [--scale]
    sealedos bench paging --code 4+2 [--frames N] [--rounds R] [--json]   (bench_ec.py)

This process becomes a sealed process of a freshly started system and measures, through its
own MMU: a TLB hit; minor faults (first touch, a free frame waiting); major faults (a page on
swap, a free frame waiting: the pure page-in path app -> kernel -> pager -> disk and back);
and paging throughput (a write scan over 4x the frames: every fault evicts, every eviction
writes back).  It does so sealed and --no-seal (the cost of sealing), on each transport, and
with CURVE on every connection (the default) and --insecure (NULL): the cost of transport
security, ``curve_vs_null_*`` (``--security secure|insecure|both``, default both).

In the same run it measures the floors those figures stand on, and prints each ratio:
a bare ZeroMQ round trip on the same transport (small frame, and with a 4 KiB payload), a
bare 4 KiB memmap block read+write, a bare dict lookup + struct read.  Targets: minor fault
<= 1.5x one bare round trip; major fault <= 1.5x (3 bare 4 KiB round trips + one block
read+write); TLB hit <= 2x dict lookup + struct read; sealing adds <= 5% to a major fault.

--scale runs `sealedos up`'s shape at scale instead: 64 sealed processes on a 1 GiB device,
and reports the kernel's memory per resident and per swapped page.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import zmq
from rich.console import Console
from rich.table import Table

from apps.runtime import PAGE_SIZE, SealedProcess
from host_tools.system import Config, System
from launcher import spawn
from wire import sockets

WAIT_SWAPPED_S: float = 30.0


def percentiles(samples_us: list[float]) -> dict[str, float]:
    """p50/p99/mean of a list of microsecond samples."""
    data = sorted(samples_us)
    if not data:
        return {"n": 0, "p50": 0.0, "p99": 0.0, "mean": 0.0}
    pick = lambda q: data[min(len(data) - 1, int(q * len(data)))]  # noqa: E731
    return {"n": len(data), "p50": round(pick(0.5), 1), "p99": round(pick(0.99), 1),
            "mean": round(sum(data) / len(data), 1)}


# -- floors ------------------------------------------------------------------------------
_ECHO = """
import sys, zmq
ctx = zmq.Context(); s = ctx.socket(zmq.ROUTER); s.bind(sys.argv[1])
print("ready", flush=True)
while True:
    f = s.recv_multipart()
    if f[1] == b"quit": break
    s.send_multipart(f)
"""


def bare_round_trip_us(addr: str, size: int, n: int) -> float:
    """Median round trip (us) of a `size`-byte frame to a bare ROUTER echo process at addr."""
    echo = subprocess.Popen([sys.executable, "-c", _ECHO, addr], stdout=subprocess.PIPE, text=True)
    try:
        echo.stdout.readline()
        sock = sockets.dealer(zmq.Context.instance(), addr, None, None)
        frame = os.urandom(size)
        for _ in range(200):
            sock.send(frame)
            sock.recv()
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            sock.send(frame)
            sock.recv()
            samples.append((time.perf_counter() - t0) * 1e6)
        sock.send(b"quit")
        sock.close(0)
        return percentiles(samples)["p50"]
    finally:
        echo.wait(5)


def bare_block_us(path: Path, n: int) -> float:
    """Median time (us) of one 4 KiB write + read on a numpy.memmap file."""
    mm = np.memmap(path, dtype=np.uint8, mode="w+", shape=(1024 * PAGE_SIZE,))
    block = np.frombuffer(os.urandom(PAGE_SIZE), dtype=np.uint8)
    samples = []
    for i in range(n):
        off = (i * 7919 % 1024) * PAGE_SIZE
        t0 = time.perf_counter()
        mm[off:off + PAGE_SIZE] = block
        data = mm[off:off + PAGE_SIZE].tobytes()
        samples.append((time.perf_counter() - t0) * 1e6)
    assert len(data) == PAGE_SIZE
    del mm
    path.unlink()
    return percentiles(samples)["p50"]


def bare_lookup_ns(n: int) -> float:
    """Time (ns) of a dict lookup + struct read, the TLB hit's floor."""
    buf = memoryview(bytearray(64 * PAGE_SIZE))
    tlb = {v: v * PAGE_SIZE for v in range(64)}
    u64 = struct.Struct("<Q")
    t0 = time.perf_counter()
    for i in range(n):
        u64.unpack_from(buf, tlb.get(i & 63) + 8)
    return (time.perf_counter() - t0) / n * 1e9


# -- measurements inside a sealed process --------------------------------------------------
def tlb_hit_ns(proc: SealedProcess, n: int) -> float:
    """Time (ns) of load_u64 on a resident page (a TLB hit)."""
    addr = proc.map(1)
    proc.store_u64(addr, 1)
    t0 = time.perf_counter()
    for i in range(n):
        proc.load_u64(addr + 8)
    return (time.perf_counter() - t0) / n * 1e9


def minor_faults_us(proc: SealedProcess, npages: int) -> list[float]:
    """Latency (us) of first touches (demand-zero faults with a free frame)."""
    addr = proc.map(npages)
    out = []
    for i in range(npages):
        t0 = time.perf_counter()
        proc.store_u64(addr + i * PAGE_SIZE, i)
        out.append((time.perf_counter() - t0) * 1e6)
    proc.unmap(addr, npages)
    return out


def major_faults_us(proc: SealedProcess, system: System, frames: int) -> list[float]:
    """Latency (us) of page-ins with a free frame: fill A, push it to swap with B, free B,
    read A back."""
    a, npages, b = fill_and_push(proc, frames)
    deadline = time.monotonic() + WAIT_SWAPPED_S
    while system.process(proc.name)["swapped_pages"] < npages and time.monotonic() < deadline:
        time.sleep(0.02)                       # write-backs acknowledged: pages are SWAPPED
    proc.unmap(b, frames)
    return time_reads_us(proc, a, npages)


def fill_and_push(proc: SealedProcess, frames: int) -> tuple[int, int, int]:
    """Fill region A (frames - 4 pages of random bytes), then write region B (frames pages)
    so that A is pushed out to swap; return (A's address, A's pages, B's address)."""
    npages = frames - 4
    a = proc.map(npages)
    for i in range(npages):
        proc.write(a + i * PAGE_SIZE, os.urandom(64) * (PAGE_SIZE // 64))
    b = proc.map(frames)
    for i in range(frames):
        proc.store_u64(b + i * PAGE_SIZE, i)
    return a, npages, b


def time_reads_us(proc: SealedProcess, a: int, npages: int) -> list[float]:
    """Latency (us) of reading one word of each of the npages pages at a; then unmap them."""
    out = []
    for i in range(npages):
        t0 = time.perf_counter()
        proc.load_u64(a + i * PAGE_SIZE)
        out.append((time.perf_counter() - t0) * 1e6)
    proc.unmap(a, npages)
    return out


def throughput_pages_s(proc: SealedProcess, system: System, frames: int) -> float:
    """Pages moved (in + out) per second in a write scan over 4x the frames, two passes."""
    npages = 4 * frames
    addr = proc.map(npages)
    before = system.process(proc.name)
    t0 = time.perf_counter()
    for rnd in range(2):
        for i in range(npages):
            proc.store_u64(addr + i * PAGE_SIZE, rnd)
    dt = time.perf_counter() - t0
    after = system.process(proc.name)
    proc.unmap(addr, npages)
    moved = (after["page_ins"] - before["page_ins"]) + (after["page_outs"] - before["page_outs"])
    return moved / dt


def measure(config: Config, rounds: int) -> dict[str, Any]:
    """All sealed-process measurements on one fresh system."""
    with System(config) as system:
        with system.connect_sealed("memstress", "bench") as proc:
            minor: list[float] = []
            major: list[float] = []
            for _ in range(rounds):
                minor += minor_faults_us(proc, config.frames - 4)
                major += major_faults_us(proc, system, config.frames)
            return {"tlb_hit_ns": round(tlb_hit_ns(proc, 200_000), 1),
                    "minor_fault_us": percentiles(minor), "major_fault_us": percentiles(major),
                    "pages_per_s": round(throughput_pages_s(proc, system, config.frames), 1)}


# -- scale ---------------------------------------------------------------------------------
def kernel_rss(system: System) -> int:
    """The kernel process's resident set size in bytes."""
    return psutil.Process(system.services["kernel"].pid).memory_info().rss


def wait_settled(system: System, name: str, swapped: int) -> None:
    """Wait until `name` has at least `swapped` pages on swap (its write-backs acknowledged)."""
    deadline = time.monotonic() + 300
    while system.process(name)["swapped_pages"] < swapped and time.monotonic() < deadline:
        time.sleep(0.2)


def kernel_memory_per_page(frames: int, swapped: int) -> dict[str, float]:
    """Growth of the kernel's RSS per resident page (filling `frames` frames) and per
    swapped page (then pushing `swapped` more pages out), on a 1 GiB device."""
    with System(Config(frames=frames, disk_size_mib=1024)) as system:
        with system.connect_sealed("memstress", "scale") as proc:
            warm = frames // 8
            addr = proc.map(frames + swapped)
            for i in range(warm):
                proc.store_u64(addr + i * PAGE_SIZE, i)
            r0 = kernel_rss(system)
            for i in range(warm, frames):
                proc.store_u64(addr + i * PAGE_SIZE, i)
            r1 = kernel_rss(system)
            for i in range(frames, frames + swapped):
                proc.store_u64(addr + i * PAGE_SIZE, i)
            wait_settled(system, "scale", swapped - frames // 8)
            r2 = kernel_rss(system)
            rec = system.process("scale")
            return {"bytes_per_resident_page": round((r1 - r0) / (frames - warm), 1),
                    "bytes_per_swapped_page": round((r2 - r1) / max(1, rec["swapped_pages"]), 1),
                    "swapped_pages": rec["swapped_pages"], "resident_pages": rec["resident_pages"]}


def scale(nprocs: int, pages: int, frames: int) -> dict[str, Any]:
    """nprocs memstress processes on a 1 GiB device (all must verify), and the kernel's
    memory per resident and per swapped page."""
    with System(Config(frames=frames, disk_size_mib=1024)) as system:
        t0 = time.monotonic()
        for i in range(nprocs):
            system.spawn_app("memstress", ["--pages", str(pages), "--passes", "1",
                                           "--seed", str(i)], f"memstress.{i + 1}")
        system.wait_apps(900)
        elapsed = time.monotonic() - t0
        k = system.stats()
        procs = [p for p in k["processes"] if p["program"] == "memstress"]
        run = {"processes": nprocs, "pages_each": pages, "device_mib": 1024, "frames": frames,
               "seconds": round(elapsed, 1),
               "verified": sum(p["checksum"] == "verified" for p in procs),
               "major_faults": k["kernel"]["major_faults"], "page_outs": k["kernel"]["page_outs"],
               "pager_timeouts": k["kernel"]["pager_timeouts"]}
    run["kernel_memory"] = kernel_memory_per_page(4096, 16384)
    return run


# -- report --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """`sealedos bench paging` flags."""
    p = argparse.ArgumentParser(prog="sealedos bench paging", description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3, help="rounds of minor + major samples")
    p.add_argument("--transports", default="ipc,tcp", help="kernel transports to measure")
    p.add_argument("--security", choices=("secure", "insecure", "both"), default="both",
                   help="CURVE (secure), NULL (insecure), or both side by side (the cost)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--scale", action="store_true", help="64 processes on a 1 GiB device instead")
    p.add_argument("--scale-procs", type=int, default=64)
    p.add_argument("--scale-pages", type=int, default=256)
    p.add_argument("--code", metavar="K+R",
                   help="erasure-coded pagers K+R against mirrored --pagers 2 (bench_ec.py)")
    return p


def main(argv: list[str]) -> int:
    """Run the benchmark and print figures with their ratios to the floors."""
    args = build_parser().parse_args(argv)
    console = Console(stderr=True, quiet=args.json)
    if args.code:
        from host_tools import bench_ec
        result = bench_ec.compare(args.code, args.frames, args.rounds, console)
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            bench_ec.print_report(result, Console())
        return 0
    if args.scale:
        result = scale(args.scale_procs, args.scale_pages, 1024)
        print(json.dumps(result, indent=2) if args.json else _scale_text(result))
        return 0
    rundir = spawn.make_rundir("sealedos-bench-")
    try:
        floors = {"rt_ipc_us": bare_round_trip_us(f"ipc://{rundir}/echo.sock", 64, 3000),
                  "rt4k_ipc_us": bare_round_trip_us(f"ipc://{rundir}/echo4k.sock", PAGE_SIZE, 3000),
                  "rt_tcp_us": bare_round_trip_us(f"tcp://127.0.0.1:{_port()}", 64, 3000),
                  "block_rw_us": bare_block_us(rundir / "block.img", 3000),
                  "lookup_ns": round(bare_lookup_ns(200_000), 1)}
    finally:
        spawn.remove_rundir(rundir)
    runs: dict[str, Any] = {}
    securities = {"secure": [False], "insecure": [True], "both": [False, True]}[args.security]
    for transport in args.transports.split(","):
        for insecure in securities:
            for sealed in (True, False):
                if (transport != "ipc" or insecure) and not sealed:
                    continue
                key = f"{transport}_{'sealed' if sealed else 'unsealed'}" + (
                    "_null" if insecure and args.security == "both" else "")
                console.print(f"measuring {key} ...")
                runs[key] = measure(Config(frames=args.frames, disk_size_mib=16,
                                           no_seal=not sealed, transport=transport,
                                           insecure=insecure), args.rounds)
    result = {"floors": floors, "runs": runs, "ratios": ratios(floors, runs)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result, Console())
    return 0


def ratios(floors: dict[str, float], runs: dict[str, Any]) -> dict[str, float]:
    """Each headline figure over its floor (and sealed over unsealed)."""
    out: dict[str, float] = {}
    r = runs.get("ipc_sealed")
    if r:
        major_floor = 3 * floors["rt4k_ipc_us"] + floors["block_rw_us"]
        out["minor_fault_vs_round_trip"] = round(r["minor_fault_us"]["p50"] / floors["rt_ipc_us"], 2)
        out["major_fault_vs_hops"] = round(r["major_fault_us"]["p50"] / major_floor, 2)
        out["tlb_hit_vs_lookup"] = round(r["tlb_hit_ns"] / floors["lookup_ns"], 2)
    u = runs.get("ipc_unsealed")
    if r and u:
        out["sealed_vs_unsealed_major_p50"] = round(r["major_fault_us"]["p50"] / u["major_fault_us"]["p50"], 3)
        out["sealed_vs_unsealed_throughput"] = round(r["pages_per_s"] / u["pages_per_s"], 3)
    for transport in ("ipc", "tcp"):                 # what CURVE costs over NULL
        c, n = runs.get(f"{transport}_sealed"), runs.get(f"{transport}_sealed_null")
        if c and n:
            for fig in ("minor_fault_us", "major_fault_us"):
                out[f"curve_vs_null_{transport}_{fig[:5]}_p50"] = round(
                    c[fig]["p50"] / n[fig]["p50"], 3)
            out[f"curve_vs_null_{transport}_throughput"] = round(c["pages_per_s"] / n["pages_per_s"], 3)
    t = runs.get("tcp_sealed")
    if r and t:
        out["tcp_vs_ipc_major_p50"] = round(t["major_fault_us"]["p50"] / r["major_fault_us"]["p50"], 2)
        out["tcp_vs_ipc_minor_p50"] = round(t["minor_fault_us"]["p50"] / r["minor_fault_us"]["p50"], 2)
    return out


def print_report(result: dict[str, Any], console: Console) -> None:
    """The runs side by side, then the floors and ratios."""
    runs = result["runs"]
    table = Table(title="sealedos bench paging")
    table.add_column("figure")
    for key in runs:
        table.add_column(key, justify="right")
    rows = [("TLB hit (ns)", lambda r: r["tlb_hit_ns"]),
            ("minor fault p50 (us)", lambda r: r["minor_fault_us"]["p50"]),
            ("minor fault p99 (us)", lambda r: r["minor_fault_us"]["p99"]),
            ("major fault p50 (us)", lambda r: r["major_fault_us"]["p50"]),
            ("major fault p99 (us)", lambda r: r["major_fault_us"]["p99"]),
            ("paging throughput (pages/s)", lambda r: r["pages_per_s"])]
    for label, get in rows:
        table.add_row(label, *[str(get(r)) for r in runs.values()])
    console.print(table)
    f = result["floors"]
    console.print(f"floors: bare round trip ipc {f['rt_ipc_us']} us (4 KiB {f['rt4k_ipc_us']} us), "
                  f"tcp {f['rt_tcp_us']} us; memmap 4 KiB write+read {f['block_rw_us']} us; "
                  f"dict lookup + struct read {f['lookup_ns']} ns")
    for name, value in result["ratios"].items():
        console.print(f"  {name}: {value}x")


def _scale_text(r: dict[str, Any]) -> str:
    m = r["kernel_memory"]
    return (f"{r['processes']} sealed processes x {r['pages_each']} pages on a {r['device_mib']} "
            f"MiB device, {r['frames']} frames: {r['verified']}/{r['processes']} verified in "
            f"{r['seconds']} s ({r['major_faults']} major faults, {r['page_outs']} page-outs, "
            f"{r['pager_timeouts']} pager timeouts)\n"
            f"kernel memory (RSS growth): {m['bytes_per_resident_page']} bytes per resident page, "
            f"{m['bytes_per_swapped_page']} bytes per swapped page "
            f"(measured over {m['resident_pages']} resident, {m['swapped_pages']} swapped)")


def _port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
