"""`sealedos bench scan`: scans of swapped memory with prefetch off, trend and readahead.

    sealedos bench scan [--frames 64] [--pages 512] [--stride 8] [--repeat 3]
                        [--modes off,trend,readahead] [--fault-around 16] [--json]
    sealedos bench scan --dirty [--frames 256] [--pages 2048] [--repeat 3] [--json]

For each prefetch mode a fresh system is started (`sealedos kernel --prefetch MODE`) and this
process becomes one of its sealed processes.  It fills three regions of --pages pages each
(page i of a region holds a pattern of its own), so that all of them are pushed out to swap,
waits until every write-back is acknowledged, and then reads each region once, whole pages,
checking every byte: region one sequentially, region two strided (every --stride-th page,
then the next offset, ...), region three in a random order (seeded: the same in every
mode).  A scan's figure is pages per second; beside it the kernel's prefetch counters over
that scan: issued, used (a fault on a prefetched page, or a prefetched page installed beside
a fault: fault-around, --fault-around pages at most; accuracy = used / issued) and coverage
(pages served by a prefetched page / those + major faults).  Beside pages/s, the CPU each
page cost (kernel, pagers, disks and this process, all threads): on a loaded machine pages/s
follow it.  The modes run --repeat times, interleaved (off, trend, readahead, off, ...), so
every mode sees the same load; the median run is printed, and the ratio of each mode to off
over the same repetitions.  Targets (issue 13): sequential >=
4x off with trend, random within 5% of off.

--dirty measures page-outs instead (clustered page-outs, kernel_daemon/pagers.py): a fresh
system per run writes every byte of --pages pages with --frames frames, and waits until
all but the frames' worth are acknowledged on swap, so page-outs dominate.  The kernel's
default --cluster (several pages per pager request, evicted together) and --cluster 1 (one
page per request, one victim per fault: the path before clustering) run interleaved in the
same repetitions; printed are pages/s, the same-repetition ratio to --cluster 1, pages per
PAGE_OUT request and CPU per page.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from apps.runtime import PAGE_SIZE, SealedProcess
from host_tools.system import Config, System
from kernel_daemon.pagers import CLUSTER_PAGES
from kernel_daemon.prefetch import FAULT_AROUND, MODES

SCANS: tuple[str, ...] = ("sequential", "strided", "random")
WAIT_SWAPPED_S: float = 120.0
RANDOM_SEED: int = 13
#: Pages mapped and never touched between the regions (more than any prefetch reaches).
GAP_PAGES: int = 1024


@dataclass
class ScanResult:
    """One scan of one region in one mode."""
    pages_per_s: float
    major_faults: int
    prefetches: int
    prefetch_hits: int              # faults on a prefetched page (soft)
    fault_around: int               # prefetched pages installed beside a fault (no fault)
    prefetch_drops: int
    wrong_pages: int
    cpu_us_per_page: float          # kernel + pagers + disks + this process, all threads

    @property
    def accuracy(self) -> float | None:
        """Prefetched pages later used (faulted on or installed around a fault) / prefetched
        pages (None: none issued)."""
        return self.used / self.prefetches if self.prefetches else None

    @property
    def used(self) -> int:
        """Prefetched pages that served the scan."""
        return self.prefetch_hits + self.fault_around

    @property
    def coverage(self) -> float:
        """Pages served by a prefetched page / (those + major faults)."""
        served = self.used + self.major_faults
        return self.used / served if served else 0.0


def pattern(region: int, i: int) -> bytes:
    """The contents of page i of region `region`: recognisable, different for every page."""
    word = (region << 32 | i).to_bytes(8, "little")
    return word * (PAGE_SIZE // 8)


def order(scan: str, npages: int, stride: int) -> list[int]:
    """The page order of a scan."""
    if scan == "sequential":
        return list(range(npages))
    if scan == "strided":
        return [i for start in range(stride) for i in range(start, npages, stride)]
    pages = list(range(npages))
    random.Random(RANDOM_SEED).shuffle(pages)
    return pages


def counters(system: System) -> dict[str, int]:
    """The kernel's fault and prefetch counters now."""
    k = system.stats()["kernel"]
    return {f: int(k[f]) for f in ("major_faults", "prefetches", "prefetch_hits",
                                   "fault_around", "prefetch_drops")}


def fill(proc: SealedProcess, system: System, name: str, npages: int) -> list[int]:
    """Map and fill len(SCANS) regions, then wait until they are all on swap (but what
    the frames hold); their addresses."""
    regions = []
    for _ in SCANS:                     # an untouched gap after each: no prefetch crosses it
        regions.append(proc.map(npages))
        proc.map(GAP_PAGES)
    for r, base in enumerate(regions):
        for i in range(npages):
            proc.write(base + i * PAGE_SIZE, pattern(r, i))
    want = len(SCANS) * npages - system.config.frames
    deadline = time.monotonic() + WAIT_SWAPPED_S
    while (rec := system.process(name)) is not None and rec["swapped_pages"] < want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {rec['swapped_pages']} of {want} pages reached swap")
        time.sleep(0.05)
    return regions


def cpu_s(system: System) -> float:
    """CPU seconds so far of the kernel, pagers and disks (all threads) and of this process."""
    procs = [psutil.Process()] + [psutil.Process(svc.pid) for svc in system.services.values()
                                   if svc.kind in ("kernel", "pager", "disk")]
    return float(sum(t.user + t.system for t in (p.cpu_times() for p in procs)))


def scan_once(proc: SealedProcess, system: System, region: int, base: int,
              pages: list[int]) -> ScanResult:
    """Read `pages` of the region at base in order, whole, checking every byte."""
    before = counters(system)
    wrong = 0
    c0, t0 = cpu_s(system), time.perf_counter()
    for i in pages:
        wrong += proc.read(base + i * PAGE_SIZE, PAGE_SIZE) != pattern(region, i)
    dt, cpu = time.perf_counter() - t0, cpu_s(system) - c0
    after = counters(system)
    d = {f: after[f] - before[f] for f in after}
    return ScanResult(round(len(pages) / dt, 1), d["major_faults"], d["prefetches"],
                      d["prefetch_hits"], d["fault_around"], d["prefetch_drops"], wrong,
                      round(cpu / len(pages) * 1e6, 1))


def run_mode(mode: str, frames: int, npages: int, stride: int,
             fault_around: int = FAULT_AROUND) -> dict[str, ScanResult]:
    """Every scan on a fresh system with --prefetch mode (and --fault-around)."""
    config = Config(frames=frames, prefetch=mode, disk_size_mib=max(16, 3 * npages // 200),
                    fault_around=fault_around)
    with System(config) as system, system.connect_sealed("memstress", "scan") as proc:
        regions = fill(proc, system, "scan", npages)
        return {scan: scan_once(proc, system, r, regions[r], order(scan, npages, stride))
                for r, scan in enumerate(SCANS)}


def measure(modes: list[str], frames: int, npages: int, stride: int, repeat: int,
            console: Console, fault_around: int = FAULT_AROUND) -> dict[str, Any]:
    """The modes' runs interleaved `repeat` times; medians and same-repetition ratios."""
    runs: dict[str, list[dict[str, ScanResult]]] = {m: [] for m in modes}
    for rep in range(repeat):
        for mode in modes:
            console.print(f"repetition {rep + 1}/{repeat}: prefetch {mode} ...")
            runs[mode].append(run_mode(mode, frames, npages, stride, fault_around))
    out: dict[str, Any] = {"frames": frames, "pages": npages, "stride": stride,
                           "repeat": repeat, "fault_around": fault_around, "modes": {},
                           "ratios_vs_off": {}}
    for mode, results in runs.items():
        out["modes"][mode] = {scan: _median(scan, results) for scan in SCANS}
        if mode != "off" and "off" in runs:
            out["ratios_vs_off"][mode] = {scan: round(statistics.median(
                r[scan].pages_per_s / o[scan].pages_per_s for r, o in zip(
                    results, runs["off"], strict=True)), 2) for scan in SCANS}
    out["verified"] = all(r[s].wrong_pages == 0 for res in runs.values() for r in res
                          for s in SCANS)
    return out


def _median(scan: str, results: list[dict[str, ScanResult]]) -> dict[str, Any]:
    """The repetition with the median pages/s of `scan`, with its accuracy and coverage."""
    ranked = sorted((r[scan] for r in results), key=lambda s: s.pages_per_s)
    mid = ranked[len(ranked) // 2]
    acc = mid.accuracy
    return dict(asdict(mid), accuracy=None if acc is None else round(acc, 3),
                coverage=round(mid.coverage, 3),
                pages_per_s_all=[s.pages_per_s for s in ranked])


def print_report(result: dict[str, Any], console: Console) -> None:
    """One row per scan and mode (so it fits 80 columns): pages/s, the same-repetition ratio
    to off, CPU per page, accuracy and coverage."""
    table = Table(title=f"sealedos bench scan: {result['pages']} pages per scan, "
                        f"{result['frames']} frames, fault-around {result['fault_around']}, "
                        f"median of {result['repeat']}")
    for name in ("scan", "prefetch", "pages/s", "x off", "CPU us/page", "accuracy",
                 "coverage"):
        table.add_column(name, justify="left" if name in ("scan", "prefetch") else "right")
    for scan in SCANS:
        for mode, scans in result["modes"].items():
            s = scans[scan]
            ratio = result["ratios_vs_off"].get(mode, {}).get(scan)
            acc = "-" if mode == "off" or s["accuracy"] is None else f"{s['accuracy']:.2f}"
            cov = "-" if mode == "off" else f"{s['coverage']:.2f}"
            table.add_row(scan if mode == next(iter(result["modes"])) else "", mode,
                          f"{s['pages_per_s']:,.0f}", "-" if ratio is None else f"{ratio}x",
                          f"{s['cpu_us_per_page']:,.0f}", acc, cov)
    console.print(table)
    console.print("x off: the median of same-repetition ratios to prefetch off")
    console.print(f"every byte verified: {result['verified']}")


def dirty_once(frames: int, npages: int, cluster: int) -> dict[str, float]:
    """Write every byte of npages pages on a fresh system with --cluster `cluster`; wait for
    their write-backs; pages/s, pages per page-out request, CPU us per page."""
    config = Config(frames=frames, disk_size_mib=max(16, 2 * npages // 200),
                    kernel_args=[f"--cluster={cluster}"])
    with System(config) as system, system.connect_sealed("memstress", "dirty") as proc:
        base = proc.map(npages)
        k0, c0, t0 = system.stats()["kernel"], cpu_s(system), time.perf_counter()
        for i in range(npages):
            proc.write(base + i * PAGE_SIZE, pattern(0, i))
        deadline = time.monotonic() + WAIT_SWAPPED_S
        while (rec := system.process("dirty")) is not None and \
                rec["swapped_pages"] < npages - frames:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {rec['swapped_pages']} pages reached swap")
            time.sleep(0.01)
        dt, cpu, k1 = time.perf_counter() - t0, cpu_s(system) - c0, system.stats()["kernel"]
    outs, requests = (k1[f] - k0[f] for f in ("page_outs", "page_out_requests"))
    return {"pages_per_s": round(npages / dt, 1),
            "pages_per_request": round(outs / requests, 2) if requests else 0.0,
            "cpu_us_per_page": round(cpu / npages * 1e6, 1), "page_outs": outs,
            "requests": requests}


def measure_dirty(frames: int, npages: int, repeat: int, console: Console) -> dict[str, Any]:
    """The dirty scan with the default --cluster and with --cluster 1, interleaved `repeat`
    times; the median run of each and the median same-repetition ratio."""
    runs: dict[int, list[dict[str, float]]] = {CLUSTER_PAGES: [], 1: []}
    for rep in range(repeat):
        for cluster in runs:
            console.print(f"repetition {rep + 1}/{repeat}: dirty scan, --cluster {cluster} ...")
            runs[cluster].append(dirty_once(frames, npages, cluster))
    out: dict[str, Any] = {"frames": frames, "pages": npages, "repeat": repeat,
                           "dirty": {}}
    for cluster, results in runs.items():
        ranked = sorted(results, key=lambda r: r["pages_per_s"])
        out["dirty"][str(cluster)] = dict(ranked[len(ranked) // 2],
                                          pages_per_s_all=[r["pages_per_s"] for r in ranked])
    out["ratio_vs_cluster_1"] = round(statistics.median(
        c["pages_per_s"] / o["pages_per_s"] for c, o in zip(runs[CLUSTER_PAGES], runs[1],
                                                            strict=True)), 2)
    return out


def print_dirty(result: dict[str, Any], console: Console) -> None:
    """One row per --cluster setting: pages/s, ratio, pages per request, CPU per page."""
    table = Table(title=f"sealedos bench scan --dirty: {result['pages']} pages written, "
                        f"{result['frames']} frames, median of {result['repeat']}")
    for name in ("cluster", "pages/s", "x cluster 1", "pages/request", "CPU us/page"):
        table.add_column(name, justify="right")
    for cluster, r in result["dirty"].items():
        ratio = result["ratio_vs_cluster_1"] if cluster != "1" else 1.0
        table.add_row(cluster, f"{r['pages_per_s']:,.0f}", f"{ratio}x",
                      f"{r['pages_per_request']:.2f}", f"{r['cpu_us_per_page']:,.0f}")
    console.print(table)
    console.print("x cluster 1: the median of same-repetition ratios to --cluster 1")


def build_parser() -> argparse.ArgumentParser:
    """`sealedos bench scan` flags."""
    p = argparse.ArgumentParser(prog="sealedos bench scan", description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=None, help="default 64 (--dirty: 256)")
    p.add_argument("--pages", type=int, default=None,
                   help="pages per scanned region, default 512 (--dirty: pages written, 2048)")
    p.add_argument("--stride", type=int, default=8, help="the strided scan's step in pages")
    p.add_argument("--repeat", type=int, default=3, help="runs of every mode, interleaved")
    p.add_argument("--modes", default=",".join(MODES), help="prefetch modes, comma-separated")
    p.add_argument("--fault-around", type=int, default=FAULT_AROUND,
                   help="most prefetched pages a fault installs beside its own (0: none)")
    p.add_argument("--dirty", action="store_true",
                   help="measure page-outs: clustered vs --cluster 1 (default --frames 256, "
                        "--pages 2048)")
    p.add_argument("--json", action="store_true")
    return p


def main(argv: list[str]) -> int:
    """Run the scans and print pages/s per mode with the ratios to off."""
    args = build_parser().parse_args(argv)
    if args.dirty:
        return dirty_main(args)
    args.frames, args.pages = args.frames or 64, args.pages or 512
    modes = args.modes.split(",")
    if any(m not in MODES for m in modes) or args.pages < 2 * args.frames or args.repeat < 1:
        print(f"sealedos bench scan: --modes from {','.join(MODES)}, --pages >= 2 x --frames, "
              f"--repeat >= 1", file=sys.stderr)
        return 2
    result = measure(modes, args.frames, args.pages, args.stride, args.repeat,
                     Console(stderr=True, quiet=args.json), args.fault_around)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result, Console())
    return 0 if result["verified"] else 1


def dirty_main(args: argparse.Namespace) -> int:
    """`sealedos bench scan --dirty`: the page-out figure (see the module docstring)."""
    frames, npages = args.frames or 256, args.pages or 2048
    if npages < 2 * frames or args.repeat < 1:
        print("sealedos bench scan --dirty: --pages >= 2 x --frames, --repeat >= 1",
              file=sys.stderr)
        return 2
    result = measure_dirty(frames, npages, args.repeat, Console(stderr=True, quiet=args.json))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_dirty(result, Console())
    return 0
