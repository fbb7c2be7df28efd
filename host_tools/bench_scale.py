"""`sealedos bench paging --scale`: many sealed processes paging on a 1 GiB device.

    sealedos bench paging --scale [--scale-procs 256] [--scale-pages 256] [--json]

Runs `sealedos up`'s shape at scale: N memstress processes (one pass over --scale-pages
pages each, every one verified by its checksum) on 1024 frames and a 1 GiB device, and, in
the same run, the same shape at BASELINE_PROCS processes with as many frames per process
(1024 * 16 / N), so the two see the same paging pressure per process.  Every process is
started, held at a start gate (memstress --wait-for: registered, nothing mapped) until the
last one has started, and then let go at once, so all N page together.  For each run:

* start time per process: from the launcher's spawn to the moment the process has taken
  its credential from the inherited descriptor (interpreter up, runtime imported, confined;
  REGISTER follows at once), p50/p99/max, and what the launcher itself took per spawn;
* memory per process: PSS (/proc/PID/smaps_rollup, psutil's memory_full_info) of every
  process at the gate;
* the kernel's CPU: per start (until the gate opens), and per fault from the gate on (the
  kernel process's CPU time, every thread, over the faults it served, minor + major); the
  N-process figure over the baseline's is the scale ratio (issue 13: within 1.3x), and the
  part of it spent in the kernel's main thread (Python: routing, paging, its timers; the
  rest is ZeroMQ's I/O thread: the connections, CURVE);
* then, on one process, the kernel's memory per resident and per swapped page from its RSS
  growth.  The kernel also keeps bounded records per fault (its fault log, its latency
  rings: a few MiB when full); the process first takes RING_FAULTS demand-zero faults on
  pages it unmaps again, so those records are full and their growth is not counted as
  memory per page; the swap phase is paced (PACE_PAGES), so that write-backs in flight
  (4 KiB each, and the pager is slower than the faults) do not pile up into a transient peak
  that the allocator keeps and RSS counts as memory per page, and each reading waits for
  every write-back to end (their page bytes are not memory per page); and the bytes per
  swapped page are the growth over its second half, once the allocator's and the transport's
  buffers (ZeroMQ's, in its I/O thread) have reached what this traffic needs (the first
  half's figure is printed beside it).  The pages pushed out are as many as one process may
  map, and that growth is the least-squares slope of RSS over swapped pages read every
  READ_EVERY_PAGES (each reading once every write-back has ended), not the difference of
  two readings: RSS moves by a few hundred KiB either way between readings (the allocator
  reuses freed heap, and gives back its top), and one reading at either end swung the
  figure by +-15 B per page over 16,384 pages (48-81 B in four runs).

Processes are started at most START_WINDOW at a time (a new one when an earlier one has
taken its credential), and run at SCALE_NICE, below the services (at SERVICE_NICE when
root: 256 apps at nice 19 still outweigh one service at 0): 256 Python interpreters
starting at once on 2 cores starve the kernel and the pager (a pager that cannot answer in
its timeout is killed and restarted, and a process that cannot REGISTER within the
kernel's admission TTL is refused).  The pacing watches /proc/PID/fd (the supervisor's own
children); where it may not look (not root, non-dumpable children), it does not pace.
"""
from __future__ import annotations

import gc
import os
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

from apps.runtime import PAGE_SIZE, SealedProcess
from host_tools.system import Config, Service, System
from kernel_daemon.faultlog import FAULT_LOG_CAPACITY
from kernel_daemon.frames import FramePool
from kernel_daemon.pagetable import CHUNK_PAGES, TAG_BYTES, AddressSpace, PageState, SwapSpace
from kernel_daemon.policy import make_policy
from kernel_daemon.quota import Limits
from kernel_daemon.vm import LATENCY_KEEP
from wire.credential import CRED_FD_ENV
from wire.protocol import PROT_R, PROT_W

#: The process count the scale figures are compared against.
BASELINE_PROCS: int = 16
#: Frames of the N-process run (the baseline gets as many per process).
SCALE_FRAMES: int = 1024
#: Processes starting (spawned, credential not yet taken) at once.
START_WINDOW: int = 8
#: CPU priority of the scale run's sealed processes, and of its services (when root).
SCALE_NICE: int = 19
SERVICE_NICE: int = -10
#: The start gate: memstress --wait-for this file in its private directory.
GATE_FILE: str = "go"
#: How often the pacing looks at the starting processes.
START_POLL_S: float = 0.01
#: How many failed processes' last log lines a run keeps.
FAILURES_SHOWN: int = 3
#: Faults that fill the kernel's bounded per-fault records before pages are counted.
RING_FAULTS: int = max(FAULT_LOG_CAPACITY, LATENCY_KEEP)
#: Pages mapped (then unmapped) at a time to take them.
FILL_PAGES: int = 64
#: The memory measurement's swap phase lets at most about this many evicted pages wait for
#: their write-backs at once.
PACE_PAGES: int = 32
#: How often it looks.
PACE_POLL_S: float = 0.005
#: Frames of the memory measurement, and the pages it pushes out to swap: as many as one
#: process may map beside them (the more pages, the less the allocator's reuse of freed
#: heap, a few hundred KiB either way, weighs per page).
MEMORY_FRAMES: int = 4096
MEMORY_SWAPPED_PAGES: int = Limits().pages - MEMORY_FRAMES
#: The measured half reads the kernel's RSS (all write-backs done) every this many pages.
READ_EVERY_PAGES: int = CHUNK_PAGES
#: A run's time limit: a floor plus this much per process.
RUN_TIMEOUT_S: float = 600.0
RUN_TIMEOUT_PER_PROC_S: float = 5.0


@dataclass
class Starting:
    """A process the pacing waits on: its service, its credential's descriptor number, and
    when it was spawned (monotonic)."""
    svc: Service
    cred_fd: int | None
    spawned_s: float


@dataclass
class Point:
    """One scale run's figures."""
    processes: int
    pages_each: int
    frames: int
    device_mib: int = 1024
    seconds: float = 0.0
    verified: int = 0
    failed_exits: int = 0
    start_s: dict[str, float] = field(default_factory=dict)
    spawn_ms: dict[str, float] = field(default_factory=dict)
    pss_mib: dict[str, float] = field(default_factory=dict)
    kernel_start_ms: float = 0.0
    kernel_cpu_s: float = 0.0
    faults: int = 0
    major_faults: int = 0
    page_outs: int = 0
    pager_timeouts: int = 0
    pager_kills: int = 0
    kernel_cpu_us_per_fault: float = 0.0
    kernel_main_us_per_fault: float = 0.0
    kernel_main_sys_us_per_fault: float = 0.0
    kernel_main_switches_per_fault: dict[str, float] = field(default_factory=dict)
    heartbeats: int = 0
    failures: list[str] = field(default_factory=list)


def quantiles(values: list[float], digits: int = 2) -> dict[str, float]:
    """n, p50, p99 and max of `values` (empty: n 0)."""
    data = sorted(values)
    if not data:
        return {"n": 0}
    return {"n": len(data), "p50": round(data[len(data) // 2], digits),
            "p99": round(data[min(len(data) - 1, int(0.99 * len(data)))], digits),
            "max": round(data[-1], digits)}


def cred_fd_of(pid: int) -> int | None:
    """The descriptor number child `pid` was told its credential is on (None: unknown)."""
    try:
        value = psutil.Process(pid).environ().get(CRED_FD_ENV, "")
    except psutil.Error:
        return None
    return int(value) if value.isdigit() else None


def has_started(s: Starting) -> bool:
    """Has the process taken its credential (closed the descriptor), or exited?  True when
    it cannot be told (the supervisor may not look into the child's /proc)."""
    if s.svc.proc.poll() is not None or s.cred_fd is None:
        return True
    try:
        os.stat(f"/proc/{s.svc.pid}/fd/{s.cred_fd}")
    except OSError:                   # gone (taken), or not ours to see
        return True
    return False


def settle(starting: list[Starting], started_s: list[float], room: int) -> None:
    """Wait until fewer than `room` processes are starting; record each one's start time."""
    while True:
        now = time.monotonic()
        for s in [s for s in starting if has_started(s)]:
            starting.remove(s)
            started_s.append(now - s.spawned_s)
        if len(starting) < room:
            return
        time.sleep(START_POLL_S)


def failure_lines(system: System, codes: dict[str, int | None]) -> list[str]:
    """The last log line of up to FAILURES_SHOWN processes that did not exit 0."""
    failed = [name for name, code in codes.items() if code != 0][:FAILURES_SHOWN]
    return [f"{name} ({codes[name]}): " + system.log_tail(name, 1).splitlines()[-1]
            for name in failed]


def pss_mib(services: list[Service]) -> list[float]:
    """PSS (MiB) of every process in `services` that is still alive."""
    out = []
    for svc in services:
        if svc.proc.poll() is not None:
            continue
        try:
            out.append(psutil.Process(svc.pid).memory_full_info().pss / 2**20)
        except psutil.Error:
            continue
    return out


def kernel_cpu_s(kernel: psutil.Process) -> tuple[float, float, float]:
    """CPU seconds (user + system) the kernel process has used: every thread's, its main
    thread's (the one whose id is the pid), and the part of that spent in the host's kernel
    (system calls: sends, receives, the wake-ups they cause)."""
    t = kernel.cpu_times()
    main = [th for th in kernel.threads() if th.id == kernel.pid]
    if not main:
        return float(t.user + t.system), 0.0, 0.0
    return (float(t.user + t.system), float(main[0].user_time + main[0].system_time),
            float(main[0].system_time))


def main_thread_switches(pid: int) -> tuple[int, int]:
    """Context switches of process `pid`'s main thread so far: (voluntary: it waited for a
    message; involuntary: it was preempted); (0, 0) where /proc does not say."""
    counts = {"voluntary_ctxt_switches": 0, "nonvoluntary_ctxt_switches": 0}
    try:
        with open(f"/proc/{pid}/task/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in counts:
                    counts[key] = int(value)
    except (OSError, ValueError):
        pass
    return counts["voluntary_ctxt_switches"], counts["nonvoluntary_ctxt_switches"]


def faults_of(k: dict[str, Any]) -> int:
    """Minor + major faults in a STATS reply's kernel counters."""
    return int(k["minor_faults"] + k["major_faults"])


def start_all(system: System, nprocs: int, pages: int
              ) -> tuple[list[Service], list[float], list[float]]:
    """Spawn nprocs memstress processes held at their start gate, at most START_WINDOW
    starting at once; (their services, start times in s, the launcher's spawn times in ms)."""
    apps: list[Service] = []
    starting: list[Starting] = []
    started_s: list[float] = []
    spawn_ms: list[float] = []
    for i in range(nprocs):
        settle(starting, started_s, START_WINDOW)
        t = time.monotonic()
        svc = system.spawn_app("memstress", ["--pages", str(pages), "--passes", "1",
                                             "--seed", str(i), "--wait-for", GATE_FILE],
                               f"memstress.{i + 1}", nice=SCALE_NICE)
        spawn_ms.append((time.monotonic() - t) * 1000)
        apps.append(svc)
        starting.append(Starting(svc, cred_fd_of(svc.pid), t))
    settle(starting, started_s, 1)
    return apps, started_s, spawn_ms


def open_gate(system: System, apps: list[Service]) -> None:
    """Let every process held at the start gate go (its file in its private directory)."""
    for svc in apps:
        (system.private_dir(svc.name) / GATE_FILE).touch()


def run_point(nprocs: int, pages: int, frames: int) -> Point:
    """nprocs memstress processes (paced, niced, then let go at once) on one fresh system;
    their figures.  The kernel's CPU per fault is counted from the gate's opening on."""
    point = Point(nprocs, pages, frames)
    with System(Config(frames=frames, disk_size_mib=point.device_mib,
                       service_nice=SERVICE_NICE)) as system:
        kernel = psutil.Process(system.services["kernel"].pid)
        t0, (cpu0, _, _) = time.monotonic(), kernel_cpu_s(kernel)
        apps, started_s, spawn_ms = start_all(system, nprocs, pages)
        pss = pss_mib(apps)
        k0, (cpu1, main1, sys1) = system.stats()["kernel"], kernel_cpu_s(kernel)
        sw1 = main_thread_switches(kernel.pid)
        open_gate(system, apps)
        codes = system.wait_apps(RUN_TIMEOUT_S + RUN_TIMEOUT_PER_PROC_S * nprocs)
        point.seconds = round(time.monotonic() - t0, 1)
        cpu2, main2, sys2 = kernel_cpu_s(kernel)
        sw2 = main_thread_switches(kernel.pid)
        cpu, main = cpu2 - cpu1, main2 - main1
        stats = system.stats()
        point.failures = failure_lines(system, codes)
    k = stats["kernel"]
    point.verified = sum(p["checksum"] == "verified" for p in stats["processes"]
                         if p["program"] == "memstress")
    point.failed_exits = sum(code != 0 for code in codes.values())
    point.start_s, point.spawn_ms = quantiles(started_s), quantiles(spawn_ms, 1)
    point.pss_mib = {**quantiles(pss, 1), "sum": round(sum(pss), 1)}
    point.kernel_start_ms = round((cpu1 - cpu0) / nprocs * 1000, 2)
    point.kernel_cpu_s, point.faults = round(cpu, 2), faults_of(k) - faults_of(k0)
    point.heartbeats = k["heartbeats"] - k0["heartbeats"]
    point.major_faults, point.page_outs = k["major_faults"], k["page_outs"]
    point.pager_timeouts, point.pager_kills = k["pager_timeouts"], k["pager_kills"]
    point.kernel_cpu_us_per_fault = round(cpu / max(1, point.faults) * 1e6, 1)
    point.kernel_main_us_per_fault = round(main / max(1, point.faults) * 1e6, 1)
    point.kernel_main_sys_us_per_fault = round((sys2 - sys1) / max(1, point.faults) * 1e6, 1)
    point.kernel_main_switches_per_fault = {
        kind: round((b - a) / max(1, point.faults), 2)
        for kind, a, b in zip(("voluntary", "involuntary"), sw1, sw2, strict=True)}
    return point


# -- kernel memory per page -------------------------------------------------------------------
def kernel_rss(system: System) -> int:
    """The kernel process's resident set size in bytes."""
    return int(psutil.Process(system.services["kernel"].pid).memory_info().rss)


def wait_settled(system: System, name: str, swapped: int, poll_s: float = 0.2) -> None:
    """Wait until `name` has at least `swapped` pages on swap (its write-backs acknowledged)."""
    deadline = time.monotonic() + 300
    while _swapped(system, name) < swapped and time.monotonic() < deadline:
        time.sleep(poll_s)


def _swapped(system: System, name: str) -> int:
    rec = system.process(name)
    return int(rec["swapped_pages"]) if rec else 0


def fill_fault_rings(proc: SealedProcess, frames: int, faults: int) -> None:
    """Take `faults` demand-zero faults on pages unmapped again (no page stays, nothing is
    evicted), so the kernel's bounded per-fault records are full.  FILL_PAGES at a time: the
    page-table memory freed by the last unmap is reused by the pages measured next."""
    npages = max(1, min(frames // 2, FILL_PAGES))
    for _ in range(-(-faults // npages)):
        addr = proc.map(npages)
        for i in range(npages):
            proc.store_u64(addr + i * PAGE_SIZE, i)
        proc.unmap(addr, npages)


def push_out(system: System, proc: SealedProcess, addr: int, first: int, stop: int,
             frames: int, readings: list[tuple[int, int]] | None = None) -> int:
    """Write pages first..stop-1 of the region at addr (each evicts an older page: `frames`
    frames), paced (PACE_PAGES); wait for all their write-backs (none in flight: the bytes a
    write-back holds are not memory per page); the process's swapped pages.  With
    `readings`, also wait for every write-back each READ_EVERY_PAGES pages and append
    (swapped pages, kernel RSS) there."""
    for start in range(first, stop, PACE_PAGES):
        end = min(stop, start + PACE_PAGES)
        for i in range(start, end):
            proc.store_u64(addr + i * PAGE_SIZE, i)
        if readings is not None and (end - first) % READ_EVERY_PAGES == 0:
            wait_settled(system, "scale", end - frames, PACE_POLL_S)
            readings.append((_swapped(system, "scale"), kernel_rss(system)))
        else:
            wait_settled(system, "scale", end - frames - PACE_PAGES, PACE_POLL_S)
    wait_settled(system, "scale", stop - frames)
    return _swapped(system, "scale")


def slope(points: list[tuple[int, int]]) -> float:
    """The least-squares slope of y over x through `points` (0.0 with fewer than two x)."""
    n = len(points)
    mx, my = sum(x for x, _ in points) / max(1, n), sum(y for _, y in points) / max(1, n)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0


def kernel_memory_per_page(frames: int, swapped: int) -> dict[str, float]:
    """Growth of the kernel's RSS per resident page (filling `frames` frames) and per
    swapped page (then pushing `swapped` more pages out, in two halves: the first brings the
    allocator and the transport's buffers to the high-water mark this traffic needs, the
    second is measured), on a 1 GiB device, once the kernel's bounded per-fault records are
    full (fill_fault_rings)."""
    with System(Config(frames=frames, disk_size_mib=1024)) as system:
        with system.connect_sealed("memstress", "scale") as proc:
            fill_fault_rings(proc, frames, RING_FAULTS)
            warm = frames // 8
            addr = proc.map(frames + swapped)
            for i in range(warm):
                proc.store_u64(addr + i * PAGE_SIZE, i)
            r0 = kernel_rss(system)
            for i in range(warm, frames):
                proc.store_u64(addr + i * PAGE_SIZE, i)
            r1 = kernel_rss(system)
            half = frames + swapped // 2
            s2 = push_out(system, proc, addr, frames, half, frames)
            r2 = kernel_rss(system)
            readings = [(s2, r2)]
            s3 = push_out(system, proc, addr, half, frames + swapped, frames, readings)
            r3 = kernel_rss(system)
            readings.append((s3, r3))
            rec = system.process("scale")
            if rec is None:
                raise RuntimeError("bench: the kernel has no process 'scale'")
            return {"bytes_per_resident_page": round((r1 - r0) / (frames - warm), 1),
                    "bytes_per_swapped_page": round(slope(readings), 1),
                    "bytes_per_swapped_page_endpoints": round((r3 - r2) / max(1, s3 - s2), 1),
                    "rss_readings": len(readings),
                    "bytes_per_swapped_page_first_half": round((r2 - r1) / max(1, s2), 1),
                    "swapped_pages": rec["swapped_pages"], "resident_pages": rec["resident_pages"]}


def _traced_bytes_per_page(npages: int, fill: Callable[[], None]) -> float:
    """Python memory `fill` leaves allocated (tracemalloc), per page."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fill()
        return round((tracemalloc.get_traced_memory()[0] - before) / npages, 1)
    finally:
        tracemalloc.stop()


def page_table_bytes(npages: int = 16 * CHUNK_PAGES) -> dict[str, float]:
    """The kernel's own structures per page, counted by tracemalloc in this process (RSS
    growth cannot see below the allocator's reuse): a swapped page's entry (space, slot,
    version, tag, mirrors, flags) and a resident page's entry with its frame's owner record
    and its replacement-policy node."""
    swapped_as, space = AddressSpace(), SwapSpace(b"s" * 16, "bench")
    base = swapped_as.map(0, npages, PROT_R | PROT_W)

    def swap_all() -> None:
        for vpn in range(base, base + npages):
            p = swapped_as.pte(vpn)
            if p is None:
                raise RuntimeError(f"bench: vpn {vpn:#x} has no entry")
            p.space, p.slot, p.seal_vpn = space, space.alloc_slot(), vpn
            p.version, p.tag, p.mirrors = 1 << 40 | vpn, vpn.to_bytes(TAG_BYTES, "big"), 3
            p.swap_valid = True
            p.replace_state(PageState.SWAPPED)

    resident_as = AddressSpace()
    rbase = resident_as.map(0, npages, PROT_R | PROT_W)
    kept: list[object] = []

    def make_resident() -> None:
        pool, policy = FramePool(npages), make_policy("clock")
        kept.extend((pool, policy))
        for vpn in range(rbase, rbase + npages):
            p, frame = resident_as.pte(vpn), pool.alloc(1, vpn)
            if p is None or frame is None:
                raise RuntimeError(f"bench: vpn {vpn:#x} has no entry or frame")
            p.frame, p.zero_content = frame, True
            p.replace_state(PageState.RESIDENT)
            policy.insert(frame)

    return {"swapped": _traced_bytes_per_page(npages, swap_all),
            "resident": _traced_bytes_per_page(npages, make_resident)}


# -- the whole benchmark ----------------------------------------------------------------------
def scale(nprocs: int, pages: int, frames: int = SCALE_FRAMES, memory: bool = True
          ) -> dict[str, Any]:
    """The baseline run (BASELINE_PROCS, as many frames per process) when nprocs is larger,
    the nprocs run, their CPU-per-fault ratio, and (memory) the kernel's memory per page."""
    base = None
    if nprocs > BASELINE_PROCS:
        base = run_point(BASELINE_PROCS, pages, max(16, frames * BASELINE_PROCS // nprocs))
    top = run_point(nprocs, pages, frames)
    out: dict[str, Any] = asdict(top)
    if base is not None:
        out["baseline"] = asdict(base)
        out["cpu_per_fault_vs_baseline"] = round(
            top.kernel_cpu_us_per_fault / max(0.1, base.kernel_cpu_us_per_fault), 2)
        out["main_per_fault_vs_baseline"] = round(
            top.kernel_main_us_per_fault / max(0.1, base.kernel_main_us_per_fault), 2)
    if memory:
        out["kernel_memory"] = kernel_memory_per_page(MEMORY_FRAMES, MEMORY_SWAPPED_PAGES)
        out["page_table_bytes"] = page_table_bytes()
    return out


def _point_text(p: dict[str, Any]) -> str:
    """One run's figures as three lines."""
    s, sp, m = p["start_s"], p["spawn_ms"], p["pss_mib"]
    sw, faults = p["kernel_main_switches_per_fault"], max(1, p["faults"])
    return (f"{p['processes']} sealed processes x {p['pages_each']} pages, {p['frames']} frames, "
            f"{p['device_mib']} MiB device: {p['verified']}/{p['processes']} verified in "
            f"{p['seconds']} s ({p['faults']} faults, {p['major_faults']} major, "
            f"{p['page_outs']} page-outs, {p['heartbeats']} heartbeats, {p['pager_timeouts']} "
            f"pager timeouts, {p['pager_kills']} pager kills)\n"
            f"  start per process: p50 {s.get('p50')} s, p99 {s.get('p99')} s, max "
            f"{s.get('max')} s (the launcher's spawn: p50 {sp.get('p50')} ms); PSS per process: "
            f"p50 {m.get('p50')} MiB, max {m.get('max')} MiB ({m.get('n')} sampled, "
            f"{m.get('sum')} MiB in all)\n"
            f"  kernel CPU: {p['kernel_start_ms']} ms per start; from the gate on "
            f"{p['kernel_cpu_s']} s, {p['kernel_cpu_us_per_fault']} us per fault "
            f"({p['kernel_main_us_per_fault']} us in its main thread, "
            f"{p['kernel_main_sys_us_per_fault']} of them in system calls; it waited "
            f"{sw.get('voluntary')} and was preempted {sw.get('involuntary')} times per fault); "
            f"{round(p['heartbeats'] / faults, 4)} heartbeats per fault"
            + "".join(f"\n  failed: {line}" for line in p["failures"]))


def scale_text(r: dict[str, Any]) -> str:
    """The report of scale()."""
    lines = []
    if "baseline" in r:
        lines.append(_point_text(r["baseline"]))
    lines.append(_point_text(r))
    if "baseline" in r:
        lines.append(f"kernel CPU per fault, {r['processes']} over {BASELINE_PROCS} processes: "
                     f"{r['cpu_per_fault_vs_baseline']}x (target <= 1.3x); its main thread "
                     f"alone {r['main_per_fault_vs_baseline']}x")
    m = r.get("kernel_memory")
    if m:
        lines.append(f"kernel memory (RSS growth): {m['bytes_per_resident_page']} bytes per "
                     f"resident page, {m['bytes_per_swapped_page']} bytes per swapped page "
                     f"(measured over {m['resident_pages']} resident, {m['swapped_pages']} "
                     f"swapped; the slope over {m.get('rss_readings')} readings in the second "
                     f"half of the swap phase, its two ends alone "
                     f"{m.get('bytes_per_swapped_page_endpoints')}; the first half, with the "
                     f"allocator's and transport's high-water, "
                     f"{m.get('bytes_per_swapped_page_first_half')})")
    t = r.get("page_table_bytes")
    if t:
        lines.append(f"kernel structures per page (tracemalloc): {t['swapped']} bytes per "
                     f"swapped page (target <= 64), {t['resident']} per resident page with "
                     f"its frame and policy records (target <= 128)")
    return "\n".join(lines)
