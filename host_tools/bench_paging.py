"""`sealedos bench paging`: fault latency and paging throughput, each against its floor.

    sealedos bench paging [--samples N] [--repeat R] [--frames N] [--json] [--quick]
                          [--transports ipc,tcp] [--security secure|insecure|both] [--scale]
    sealedos bench paging --code 4+2 [--frames N] [--rounds R] [--json]   (bench_ec.py)

This process becomes a sealed process of a freshly started system and measures, through its
own MMU, ``--samples`` samples (default 2,000) of each headline figure: a TLB hit (timed in
batches of TLB_BATCH loads, one sample per batch); minor faults (first touch, a free frame
waiting); major faults (a page on swap, a free frame waiting: the pure page-in path app ->
kernel -> pager -> disk and back).  Beside each, in the same run and with as many samples,
its floor: a bare ZeroMQ round trip on the same transport (64 bytes, and 4 KiB for the major
fault's three hops; with the kernel's security: CURVE beside a CURVE kernel, NULL beside a
NULL one), a bare 4 KiB memmap block write+read, a bare dict
lookup + struct read (batched as the TLB hit).  A round of faults runs before every
``frames - 4`` floor round trips, so that a figure and its floor see the same machine load.
The headline run (ipc://, sealed, CURVE) is repeated ``--repeat`` times (default 3) and each
ratio is printed as its median with the min..max of the per-run p50 ratios (the spread), and
at p99.

Then, with fewer samples (COMPARE_DIVISOR), the comparisons: sealed against --no-seal, CURVE
against NULL (``curve_vs_null_*``), tcp:// against ipc://, and paging throughput (a write
scan over 4x the frames: every fault evicts, every eviction writes back).  ``--quick``: few
samples, one run, no comparisons (a smoke run).  Targets (issue 13): minor fault <= 1.2x one
bare round trip; major fault <= 1.2x its hops (3 bare 4 KiB round trips + one block
write+read); TLB hit <= 1.5x dict lookup + struct read; sealing adds <= 5% to a major fault.

Beside the ratios it prints where the time goes: each process's CPU per operation (its main
thread, the Python loop, and its other threads: ZeroMQ's I/O thread, where CURVE runs), for a
minor fault (this process and the kernel), a major fault (and the pager and the disk) and the
floors' round trips (this process and the echo), from /proc/PID/task/*/schedstat over the
timed loops alone.

--scale runs `sealedos up`'s shape at scale instead (bench_scale.py): N sealed processes on a
1 GiB device beside a 16-process baseline -- start time and PSS per process, the kernel's CPU
per fault at both -- and the kernel's memory per resident and per swapped page.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from rich.console import Console
from rich.table import Table

from apps.runtime import PAGE_SIZE, SealedProcess
from host_tools.system import Config, System
from launcher import spawn
from wire import sockets
from wire.keys import Keypair

WAIT_SWAPPED_S: float = 30.0


#: Loads per TLB-hit sample, and lookups per floor sample: one clock pair per batch (a clock
#: read costs about as much as the hit itself).
TLB_BATCH: int = 100
#: The comparison runs (unsealed, NULL, tcp) take samples // COMPARE_DIVISOR of each figure.
COMPARE_DIVISOR: int = 4
#: Samples of each headline figure and floor per run, and runs (--samples, --repeat).
SAMPLES: int = 2000
REPEAT: int = 3
#: --quick: samples per figure (one run, no comparisons).
QUICK_SAMPLES: int = 300


def percentiles(samples_us: list[float]) -> dict[str, float]:
    """n, p50, p99 and mean of a list of samples (any unit)."""
    data = sorted(samples_us)
    if not data:
        return {"n": 0, "p50": 0.0, "p99": 0.0, "mean": 0.0}

    def pick(q: float) -> float:
        return data[min(len(data) - 1, int(q * len(data)))]
    return {"n": len(data), "p50": round(pick(0.5), 1), "p99": round(pick(0.99), 1),
            "mean": round(sum(data) / len(data), 1)}


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of one ratio over repeated runs."""
    data = sorted(values)
    return {"median": round(data[len(data) // 2], 3), "min": round(data[0], 3),
            "max": round(data[-1], 3)}


# -- CPU by role ---------------------------------------------------------------------------
def thread_cpu_us(pid: int) -> tuple[float, float]:
    """CPU microseconds process `pid` has used so far: (its main thread, its other threads),
    from /proc/PID/task/*/schedstat (nanoseconds); (0, 0) once it is gone."""
    main = other = 0.0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0, 0.0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                us = int(f.read().split()[0]) / 1000.0
        except (OSError, ValueError, IndexError):
            continue                            # the thread ended meanwhile
        if int(tid) == pid:
            main += us
        else:
            other += us
    return main, other


class CpuMeter:
    """The CPU each role's process spends per operation over the windows measured with it
    (start() ... stop(n)): where a figure's time goes beside its floor's.  Roles name
    processes ("app": this one); each is split into its main thread (the Python loop) and
    the rest (ZeroMQ's I/O thread, where CURVE runs; the runtime's control thread)."""

    def __init__(self, roles: dict[str, int]) -> None:
        self.roles = roles
        self.total = {f"{r}_{t}": 0.0 for r in roles for t in ("main", "other")}
        self.ops = 0
        self._t0: dict[str, tuple[float, float]] = {}

    def start(self) -> None:
        """Open a window."""
        self._t0 = {r: thread_cpu_us(pid) for r, pid in self.roles.items()}

    def stop(self, ops: int) -> None:
        """Close the window opened by start(), which held `ops` operations."""
        for r, pid in self.roles.items():
            main, other = thread_cpu_us(pid)
            self.total[f"{r}_main"] += main - self._t0[r][0]
            self.total[f"{r}_other"] += other - self._t0[r][1]
        self.ops += ops

    def per_op(self) -> dict[str, float]:
        """Microseconds of CPU per operation, by role and thread kind."""
        return {k: round(v / max(1, self.ops), 1) for k, v in self.total.items()}


# -- floors ------------------------------------------------------------------------------
_ECHO = """
import os, sys, zmq
ctx = zmq.Context(); s = ctx.socket(zmq.ROUTER)
if os.environ.get("ECHO_SECRET"):       # a CURVE server, as the kernel is (no ZAP: anyone)
    s.curve_server = True
    s.curve_publickey = os.environ["ECHO_PUBLIC"].encode()
    s.curve_secretkey = os.environ["ECHO_SECRET"].encode()
s.bind(sys.argv[1])
print("ready", flush=True)
while True:
    f = s.recv_multipart()
    if f[1] == b"quit": break
    s.send_multipart(f)
"""


def bare_round_trip_us(addr: str, size: int, n: int, between: Callable[[], None] | None = None,
                       every: int = 0, secure: bool = False,
                       cpu: dict[str, float] | None = None) -> list[float]:
    """n round trips (us) of a `size`-byte frame to a bare ROUTER echo process at addr (CURVE
    if `secure`, as the kernel's connections are, else NULL); with `between`, it runs before
    every `every` samples (interleaving a figure's rounds with its floor's, so that both see
    the same machine load).  With `cpu`, it gets the CPU per round trip of this process and
    of the echo (CpuMeter.per_op, roles app and echo), `between`'s rounds left out."""
    server = Keypair(*zmq.curve_keypair()) if secure else None
    env = dict(os.environ)
    if server is not None:
        env["ECHO_PUBLIC"], env["ECHO_SECRET"] = server.public_text, server.secret.decode()
    echo = subprocess.Popen([sys.executable, "-c", _ECHO, addr], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert echo.stdout is not None            # stdout=PIPE
        echo.stdout.readline()
        sock = sockets.dealer(zmq.Context.instance(), addr,
                              Keypair(*zmq.curve_keypair()) if server else None,
                              server.public if server else None)
        frame = os.urandom(size)
        for _ in range(200):
            sock.send(frame)
            sock.recv()
        samples: list[float] = []
        meter = CpuMeter({"app": os.getpid(), "echo": echo.pid})
        meter.start()
        for i in range(n):
            if between is not None and i % every == 0:
                meter.stop(i - meter.ops)
                between()
                meter.start()
            t0 = time.perf_counter()
            sock.send(frame)
            sock.recv()
            samples.append((time.perf_counter() - t0) * 1e6)
        meter.stop(n - meter.ops)
        if cpu is not None:
            cpu.update(meter.per_op())
        sock.send(b"quit")
        sock.close(0)
        return samples
    finally:
        echo.wait(5)


def bare_block_us(path: Path, n: int) -> list[float]:
    """n times (us) of one 4 KiB write + read on a numpy.memmap file."""
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
    return samples


def bare_lookup_ns(n: int) -> list[float]:
    """n samples of the TLB hit's floor, a dict lookup + struct read: ns each, averaged over
    a batch of TLB_BATCH."""
    buf = memoryview(bytearray(64 * PAGE_SIZE))
    tlb = {v: v * PAGE_SIZE for v in range(64)}
    u64 = struct.Struct("<Q")
    clock, out = time.perf_counter, []
    for _ in range(n):
        t0 = clock()
        for i in range(TLB_BATCH):
            u64.unpack_from(buf, tlb.get(i & 63) + 8)  # type: ignore[operator]  # always hit
        out.append((clock() - t0) / TLB_BATCH * 1e9)
    return out


def floors(samples: int, tcp: bool, minor: Callable[[], None] | None = None,
           major: Callable[[], None] | None = None, every: int = 0, secure: bool = False,
           cpu: dict[str, dict[str, float]] | None = None) -> dict[str, dict[str, float]]:
    """Every floor, `samples` samples each, its sockets CURVE if `secure` (like the kernel's
    in the same run) else NULL; the round trip's samples interleaved with `minor`'s rounds,
    the 4 KiB round trip's with `major`'s.  `cpu` gets the round trips' CPU per round trip
    (round_trip, round_trip_4k: CpuMeter.per_op)."""
    rundir = spawn.make_rundir("sealedos-bench-")
    cpu = cpu if cpu is not None else {}
    cpu["round_trip"], cpu["round_trip_4k"] = {}, {}
    try:
        out = {"rt_ipc_us": bare_round_trip_us(f"ipc://{rundir}/echo.sock", 64, samples,
                                               minor, every, secure, cpu["round_trip"]),
               "rt4k_ipc_us": bare_round_trip_us(f"ipc://{rundir}/echo4k.sock", PAGE_SIZE,
                                                 samples, major, every, secure,
                                                 cpu["round_trip_4k"]),
               "block_rw_us": bare_block_us(rundir / "block.img", samples),
               "lookup_ns": bare_lookup_ns(samples)}
        if tcp:
            out["rt_tcp_us"] = bare_round_trip_us(f"tcp://127.0.0.1:{_port()}", 64, samples,
                                                  secure=secure)
    finally:
        spawn.remove_rundir(rundir)
    return {k: percentiles(v) for k, v in out.items()}


# -- measurements inside a sealed process --------------------------------------------------
def tlb_hit_ns(proc: SealedProcess, n: int) -> list[float]:
    """n samples of load_u64 on a resident page (a TLB hit): ns each, averaged over a batch
    of TLB_BATCH."""
    addr = proc.map(1)
    proc.store_u64(addr, 1)
    load, clock, out = proc.load_u64, time.perf_counter, []
    for _ in range(n):
        t0 = clock()
        for _ in range(TLB_BATCH):
            load(addr + 8)
        out.append((clock() - t0) / TLB_BATCH * 1e9)
    proc.unmap(addr, 1)
    return out


def minor_faults_us(proc: SealedProcess, npages: int, cpu: CpuMeter | None = None
                    ) -> list[float]:
    """Latency (us) of first touches (demand-zero faults with a free frame); their CPU
    into `cpu`."""
    addr = proc.map(npages)
    out = []
    if cpu is not None:
        cpu.start()
    for i in range(npages):
        t0 = time.perf_counter()
        proc.store_u64(addr + i * PAGE_SIZE, i)
        out.append((time.perf_counter() - t0) * 1e6)
    if cpu is not None:
        cpu.stop(npages)
    proc.unmap(addr, npages)
    return out


def major_faults_us(proc: SealedProcess, system: System, frames: int,
                    cpu: CpuMeter | None = None) -> list[float]:
    """Latency (us) of page-ins with a free frame: fill A, push it to swap with B, free B,
    read A back (the reads' CPU into `cpu`)."""
    a, npages, b = fill_and_push(proc, frames)
    deadline = time.monotonic() + WAIT_SWAPPED_S
    while _record(system, proc.name)["swapped_pages"] < npages and time.monotonic() < deadline:
        time.sleep(0.02)                       # write-backs acknowledged: pages are SWAPPED
    proc.unmap(b, frames)
    return time_reads_us(proc, a, npages, cpu)


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


def time_reads_us(proc: SealedProcess, a: int, npages: int, cpu: CpuMeter | None = None
                  ) -> list[float]:
    """Latency (us) of reading one word of each of the npages pages at a (their CPU into
    `cpu`); then unmap them."""
    out = []
    if cpu is not None:
        cpu.start()
    for i in range(npages):
        t0 = time.perf_counter()
        proc.load_u64(a + i * PAGE_SIZE)
        out.append((time.perf_counter() - t0) * 1e6)
    if cpu is not None:
        cpu.stop(npages)
    proc.unmap(a, npages)
    return out


def throughput_pages_s(proc: SealedProcess, system: System, frames: int) -> float:
    """Pages moved (in + out) per second in a write scan over 4x the frames, two passes."""
    npages = 4 * frames
    addr = proc.map(npages)
    before = _record(system, proc.name)
    t0 = time.perf_counter()
    for rnd in range(2):
        for i in range(npages):
            proc.store_u64(addr + i * PAGE_SIZE, rnd)
    dt = time.perf_counter() - t0
    after = _record(system, proc.name)
    proc.unmap(addr, npages)
    moved = (after["page_ins"] - before["page_ins"]) + (after["page_outs"] - before["page_outs"])
    return float(moved / dt)


def figures(proc: SealedProcess, system: System, frames: int, n: int, tcp: bool = False
            ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]],
                       dict[str, dict[str, float]]]:
    """(floors, figures, CPU per operation): at least n samples of each headline figure and
    of each floor, a round of minor (major) faults before every frames - 4 samples of the
    bare (4 KiB) round trip, the rounds that are still missing afterwards; the CPU each
    process spent per minor fault, per major fault and per round trip of each floor."""
    minor: list[float] = []
    major: list[float] = []
    services: dict[str, int] = {name: system.services[name].pid for name in
                                ("kernel", "pager0", "disk0") if name in system.services}
    minor_cpu = CpuMeter({"app": os.getpid(), "kernel": services.get("kernel", 0)})
    major_cpu = CpuMeter({"app": os.getpid(), **services})

    def minor_round() -> None:
        if len(minor) < n:
            minor.extend(minor_faults_us(proc, frames - 4, minor_cpu))

    def major_round() -> None:
        if len(major) < n:
            major.extend(major_faults_us(proc, system, frames, major_cpu))
    cpu: dict[str, dict[str, float]] = {}
    f = floors(n, tcp, minor_round, major_round, frames - 4, not system.config.insecure, cpu)
    while len(minor) < n or len(major) < n:
        minor_round()
        major_round()
    cpu["minor_fault"], cpu["major_fault"] = minor_cpu.per_op(), major_cpu.per_op()
    return f, {"tlb_hit_ns": percentiles(tlb_hit_ns(proc, n)),
               "minor_fault_us": percentiles(minor), "major_fault_us": percentiles(major)}, cpu


def headline_ratios(f: dict[str, dict[str, float]], fig: dict[str, dict[str, float]]
                    ) -> dict[str, float]:
    """One run's figures over their floors, at p50 and at p99."""
    out: dict[str, float] = {}
    for q in ("p50", "p99"):
        hops = 3 * f["rt4k_ipc_us"][q] + f["block_rw_us"][q]
        sfx = "" if q == "p50" else "_p99"
        out["minor_fault_vs_round_trip" + sfx] = round(fig["minor_fault_us"][q]
                                                       / f["rt_ipc_us"][q], 3)
        out["major_fault_vs_hops" + sfx] = round(fig["major_fault_us"][q] / hops, 3)
        out["tlb_hit_vs_lookup" + sfx] = round(fig["tlb_hit_ns"][q] / f["lookup_ns"][q], 3)
    return out


def headline(config: Config, samples: int, repeat: int, tcp: bool, console: Console
             ) -> dict[str, Any]:
    """The headline configuration `repeat` times on one system, floors and figures
    alternating; each run's ratios and their spread; then its paging throughput."""
    runs: list[dict[str, Any]] = []
    with System(config) as system:
        with system.connect_sealed("memstress", "bench") as proc:
            for r in range(repeat):
                console.print(f"headline run {r + 1}/{repeat}: {samples} samples per figure "
                              f"and floor, interleaved ...")
                f, fig, cpu = figures(proc, system, config.frames, samples, tcp)
                runs.append({"floors": f, "figures": fig, "ratios": headline_ratios(f, fig),
                             "cpu_us_per_op": cpu})
            pages_per_s = round(throughput_pages_s(proc, system, config.frames), 1)
    names = list(runs[0]["ratios"])
    return {"runs": runs, "pages_per_s": pages_per_s,
            "spread": {k: spread([run["ratios"][k] for run in runs]) for k in names}}


def measure(config: Config, samples: int) -> dict[str, Any]:
    """A comparison run on one fresh system: p50/p99 of each figure, and throughput."""
    with System(config) as system:
        with system.connect_sealed("memstress", "bench") as proc:
            f, fig, cpu = figures(proc, system, config.frames, samples)
            out: dict[str, Any] = {**fig, "floors": f, "cpu_us_per_op": cpu}
            out["pages_per_s"] = round(throughput_pages_s(proc, system, config.frames), 1)
            return out


def _record(system: System, name: str) -> dict[str, Any]:
    """The kernel's record of process `name`; RuntimeError if it has none."""
    rec = system.process(name)
    if rec is None:
        raise RuntimeError(f"bench: the kernel has no process {name!r}")
    return rec


# -- report --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """`sealedos bench paging` flags."""
    p = argparse.ArgumentParser(prog="sealedos bench paging", description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--samples", type=int,
                   help="samples of each headline figure and of each floor, per run "
                        f"(default {SAMPLES}; {QUICK_SAMPLES} with --quick)")
    p.add_argument("--repeat", type=int,
                   help="headline runs, ratios printed with their min..max over the runs "
                        f"(default {REPEAT}; 1 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="few samples, one run, no comparisons (a smoke run)")
    p.add_argument("--rounds", type=int, default=3, help="(--code) rounds of page-in samples")
    p.add_argument("--transports", default="ipc,tcp", help="kernel transports to measure")
    p.add_argument("--security", choices=("secure", "insecure", "both"), default="both",
                   help="CURVE (secure), NULL (insecure), or both side by side (the cost)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--scale", action="store_true",
                   help="--scale-procs processes on a 1 GiB device instead (bench_scale.py)")
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
        from host_tools import bench_scale
        result = bench_scale.scale(args.scale_procs, args.scale_pages)
        print(json.dumps(result, indent=2) if args.json else bench_scale.scale_text(result))
        return 0
    if args.samples is None:
        args.samples = QUICK_SAMPLES if args.quick else SAMPLES
    if args.repeat is None:
        args.repeat = 1 if args.quick else REPEAT
    if args.samples < 1 or args.repeat < 1:
        print("sealedos bench paging: --samples and --repeat >= 1", file=sys.stderr)
        return 2
    transports = args.transports.split(",")
    t0 = time.monotonic()
    # prefetch off: the major-fault figure times faults, not reads served ahead of them
    head = headline(Config(frames=args.frames, disk_size_mib=16, prefetch="off",
                           insecure=args.security == "insecure"),
                    args.samples, args.repeat, "tcp" in transports, console)
    runs: dict[str, Any] = {}
    if not args.quick:
        runs = comparisons(args, transports, max(1, args.samples // COMPARE_DIVISOR), console)
    result = {"samples": args.samples, "repeat": args.repeat, "headline": head, "runs": runs,
              "ratios": ratios(head, runs), "seconds": round(time.monotonic() - t0, 1)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result, args, Console())
    return 0


def comparisons(args: argparse.Namespace, transports: list[str], samples: int,
                console: Console) -> dict[str, Any]:
    """Unsealed, NULL and tcp runs (those --transports and --security ask for)."""
    runs: dict[str, Any] = {}
    securities = {"secure": [False], "insecure": [True], "both": [False, True]}[args.security]
    for transport in transports:
        for insecure in securities:
            for sealed in (True, False):
                if (transport != "ipc" or insecure) and not sealed:
                    continue
                if transport == "ipc" and sealed and insecure == (args.security == "insecure"):
                    continue                                     # the headline's own shape
                key = f"{transport}_{'sealed' if sealed else 'unsealed'}" + (
                    "_null" if insecure and args.security == "both" else "")
                console.print(f"comparison {key}: {samples} samples per figure ...")
                runs[key] = measure(Config(frames=args.frames, disk_size_mib=16,
                                           prefetch="off", no_seal=not sealed, transport=transport,
                                           insecure=insecure), samples)
    return runs


def ratios(head: dict[str, Any], runs: dict[str, Any]) -> dict[str, float]:
    """The headline ratios (median over the runs), then the comparisons' ratios (p50s)."""
    out: dict[str, float] = {k: v["median"] for k, v in head["spread"].items()}
    r = head["runs"][-1]["figures"]
    u = runs.get("ipc_unsealed")
    if u:
        out["sealed_vs_unsealed_major_p50"] = round(r["major_fault_us"]["p50"]
                                                    / u["major_fault_us"]["p50"], 3)
        out["sealed_vs_unsealed_throughput"] = round(head["pages_per_s"] / u["pages_per_s"], 3)
    n = runs.get("ipc_sealed_null")
    if n:                     # like with like: NULL kernel over its run's (NULL) floors
        nf = n["floors"]
        hops = 3 * nf["rt4k_ipc_us"]["p50"] + nf["block_rw_us"]["p50"]
        out["null_minor_fault_vs_round_trip"] = round(n["minor_fault_us"]["p50"]
                                                      / nf["rt_ipc_us"]["p50"], 3)
        out["null_major_fault_vs_hops"] = round(n["major_fault_us"]["p50"] / hops, 3)
    for transport in ("ipc", "tcp"):                 # what CURVE costs over NULL
        c = r if transport == "ipc" else runs.get("tcp_sealed")
        n = runs.get(f"{transport}_sealed_null")
        if c and n:
            for fig in ("minor_fault_us", "major_fault_us"):
                out[f"curve_vs_null_{transport}_{fig[:5]}_p50"] = round(
                    c[fig]["p50"] / n[fig]["p50"], 3)
    t = runs.get("tcp_sealed")
    if t:
        out["tcp_vs_ipc_major_p50"] = round(t["major_fault_us"]["p50"]
                                            / r["major_fault_us"]["p50"], 2)
        out["tcp_vs_ipc_minor_p50"] = round(t["minor_fault_us"]["p50"]
                                            / r["minor_fault_us"]["p50"], 2)
    return out


#: Headline rows: label, figure key, floor key(s), ratio key, target.
_HEADLINE = (("minor fault (us)", "minor_fault_us", "1 bare round trip",
              "minor_fault_vs_round_trip", 1.2),
             ("major fault (us)", "major_fault_us", "3 bare 4 KiB round trips + block r/w",
              "major_fault_vs_hops", 1.2),
             ("TLB hit (ns)", "tlb_hit_ns", "dict lookup + struct read", "tlb_hit_vs_lookup", 1.5))


def _floor_of(f: dict[str, dict[str, float]], fig: str, q: str) -> float:
    """The floor of headline figure `fig` at quantile q in one run."""
    if fig == "minor_fault_us":
        return f["rt_ipc_us"][q]
    if fig == "major_fault_us":
        return round(3 * f["rt4k_ipc_us"][q] + f["block_rw_us"][q], 1)
    return f["lookup_ns"][q]


def print_report(result: dict[str, Any], args: argparse.Namespace, console: Console) -> None:
    """The headline figures beside their floors with the runs' spread; then the comparisons."""
    head = result["headline"]
    last = head["runs"][-1]
    t = Table(title=f"sealedos bench paging: ipc://, sealed, "
                    f"{'NULL' if args.security == 'insecure' else 'CURVE'}; {result['samples']} "
                    f"samples per figure and floor, {result['repeat']} run(s) "
                    f"({result['seconds']:.0f} s in all)")
    for col in ("figure", "p50", "p99", "floor p50", "floor p99"):
        t.add_column(col, justify="left" if col == "figure" else "right")
    r = Table(title="ratios to the floors (p50: median over the runs, and their range)")
    for col in ("figure", "ratio p50", "runs", "ratio p99", "target"):
        r.add_column(col, justify="left" if col == "figure" else "right")
    for label, fig, _, key, target in _HEADLINE:
        sp, p99 = head["spread"][key], head["spread"][key + "_p99"]
        t.add_row(label, str(last["figures"][fig]["p50"]), str(last["figures"][fig]["p99"]),
                  str(_floor_of(last["floors"], fig, "p50")),
                  str(_floor_of(last["floors"], fig, "p99")))
        r.add_row(label, f"{sp['median']:.2f}x", f"{sp['min']:.2f}..{sp['max']:.2f}",
                  f"{p99['median']:.2f}x", f"<={target}x")
    console.print(t)
    console.print(r)
    console.print("floors: " + "; ".join(f"{label.split(' (')[0]}: {floor}"
                                         for label, _, floor, _, _ in _HEADLINE))
    console.print("(p50/p99 and floors: the last run's; ratios: median over the runs, min..max "
                  "of the runs' p50 ratios.  The floors' sockets have the kernel's security: "
                  "like with like.)")
    console.print("paging throughput (write scan over 4x the frames): "
                  f"{head['pages_per_s']} pages/s")
    print_cpu(last["cpu_us_per_op"], console)
    runs = result["runs"]
    if runs:
        table = Table(title=f"comparisons ({max(1, result['samples'] // COMPARE_DIVISOR)} "
                            f"samples per figure)")
        table.add_column("figure")
        for key in runs:
            table.add_column(key, justify="right")
        rows: list[tuple[str, Callable[[dict[str, Any]], float]]] = [
                ("TLB hit p50 (ns)", lambda r: r["tlb_hit_ns"]["p50"]),
                ("minor p50 (us)", lambda r: r["minor_fault_us"]["p50"]),
                ("minor p99 (us)", lambda r: r["minor_fault_us"]["p99"]),
                ("major p50 (us)", lambda r: r["major_fault_us"]["p50"]),
                ("major p99 (us)", lambda r: r["major_fault_us"]["p99"]),
                ("pages/s (scan)", lambda r: r["pages_per_s"])]
        for label, get in rows:
            table.add_row(label, *[str(get(r)) for r in runs.values()])
        console.print(table)
    for name, value in result["ratios"].items():
        console.print(f"  {name}: {value}x")


#: The CPU report's lines: label, CpuMeter.per_op key, roles.
_CPU_ROWS = (("minor fault", "minor_fault", ("app", "kernel")),
             ("bare round trip", "round_trip", ("app", "echo")),
             ("major fault", "major_fault", ("app", "kernel", "pager0", "disk0")),
             ("bare 4 KiB round trip", "round_trip_4k", ("app", "echo")))


def print_cpu(cpu: dict[str, dict[str, float]], console: Console) -> None:
    """Where the time goes: each process's CPU per operation (main thread + the others)."""
    console.print("CPU per operation, us (main thread + other threads; the last run):")
    for label, key, roles in _CPU_ROWS:
        per = cpu.get(key, {})
        parts = [f"{r.removesuffix('0')} {per.get(r + '_main', 0.0):g}+"
                 f"{per.get(r + '_other', 0.0):g}" for r in roles]
        console.print(f"  {label}: " + ", ".join(parts[:2]))
        if parts[2:]:
            console.print(f"  {' ' * len(label)}  " + ", ".join(parts[2:]))


def _port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
