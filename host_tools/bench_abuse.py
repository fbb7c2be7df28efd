"""`sealedos bench abuse`: what 32 hostile processes cost a bystander and the kernel.

    sealedos bench abuse [--abusers 32] [--seconds 10] [--frames 64] [--json]

One system.  A bystander (this process, registered as a sealed process) pings the kernel and
pages (it cycles through more pages than there are frames) for --seconds alone (quiet), then
again while --abusers processes (host_tools/abuser.py) each push every kernel resource to its
quota and then flood the kernel with refused requests.  Printed: the bystander's ping and page
p50/p99 in both phases and their ratio (target: abuse p99 <= 3x quiet), and the kernel's RSS
after each phase.  A benchmark, not a test: nothing asserts.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import psutil

from apps.runtime import PAGE_SIZE, SealedProcess
from host_tools.bench_paging import percentiles
from host_tools.system import APP_NICE, Config, System
from wire.client import Client
from wire.protocol import Op

#: The target: the bystander's p99 under abuse at most this many times its quiet p99.
P99_TARGET_RATIO: float = 3.0


def bystander(system: System, proc: SealedProcess, addr: int, npages: int,
              seconds: float) -> dict[str, Any]:
    """Ping and touch pages for `seconds`; latency percentiles of each (microseconds)."""
    pings: list[float] = []
    pages: list[float] = []
    deadline = time.monotonic() + seconds
    i = 0
    with Client(system.kernel_addr, keys=system.keyring("observer")) as c:
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            c.call(Op.PING)
            t1 = time.perf_counter()
            proc.store_u64(addr + (i % npages) * PAGE_SIZE, i)
            t2 = time.perf_counter()
            pings.append((t1 - t0) * 1e6)
            pages.append((t2 - t1) * 1e6)
            i += 1
    return {"ping_us": percentiles(pings), "page_us": percentiles(pages)}


def wait_at_quota(system: System, abusers: int, timeout_s: float = 300.0) -> None:
    """Wait until every abuser has filled its region quota (its last filling step)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        full = [p for p in system.stats()["processes"] if p["program"] == "abuser"
                and p["state"] == "running"
                and p["quota"]["regions"][0] >= p["quota"]["regions"][1]]
        if len(full) >= abusers:
            return
        time.sleep(0.2)


def kernel_rss_mib(system: System) -> float:
    """The kernel's resident set size in MiB."""
    rss_bytes: int = psutil.Process(system.services["kernel"].pid).memory_info().rss
    return round(rss_bytes / (1 << 20), 1)


def run(abusers: int, seconds: float, frames: int) -> dict[str, Any]:
    """The quiet phase, then the abuse phase, in one system; the figures as one map."""
    with System(Config(frames=frames, disk_size_mib=64)) as system:
        with system.connect_sealed("memstress", "bystander") as proc:
            npages = frames + frames // 2
            addr = proc.map(npages)
            bystander(system, proc, addr, npages, 1.0)              # warm up: swap in use
            quiet = bystander(system, proc, addr, npages, seconds)
            quiet["kernel_rss_mib"] = kernel_rss_mib(system)
            procs = []
            stop = system.rundir / "abusers.stop"
            for i in range(abusers):
                log = system.rundir / f"abuser.{i}.log"
                cmd = [sys.executable, "-m", "host_tools.abuser", "--kernel",
                       system.kernel_addr, "--name", f"abuser.{i}",
                       "--duration", "600", "--stop-file", str(stop)]
                assert system.launcher is not None
                procs.append(system.launcher.start(           # admitted as program "abuser"
                    "memstress", f"abuser.{i}", [], log, nice=APP_NICE, cmd=cmd,
                    program="abuser", module="host_tools.abuser"))
            t0 = time.monotonic()
            wait_at_quota(system, abusers)          # every one has filled its quotas: flooding
            filled_s = round(time.monotonic() - t0, 1)
            abuse = bystander(system, proc, addr, npages, seconds)
            abuse["kernel_rss_mib"] = kernel_rss_mib(system)
            abuse["seconds_to_fill_quotas"] = filled_s
            stop.touch()
            for p in procs:
                p.wait(60)
            reports = []
            for i in range(abusers):
                lines = (system.rundir / f"abuser.{i}.log").read_text().strip().splitlines()
                if lines and lines[-1].startswith("{"):
                    reports.append(json.loads(lines[-1]))
            stats = system.stats()["kernel"]
    ratio = {k: round(abuse[k]["p99"] / max(quiet[k]["p99"], 1e-9), 2)
             for k in ("ping_us", "page_us")}
    return {"abusers": abusers, "seconds": seconds, "frames": frames, "quiet": quiet,
            "abuse": abuse, "p99_ratio": ratio, "target_p99_ratio": P99_TARGET_RATIO,
            "within_target": all(r <= P99_TARGET_RATIO for r in ratio.values()),
            "abusers_finished": len(reports), "sample_abuser": reports[0] if reports else None,
            "callback_errors": stats.get("callback_errors"),
            "bad_messages": stats.get("bad_messages")}


def main(argv: list[str]) -> int:
    """Run the benchmark; print a summary (or --json)."""
    p = argparse.ArgumentParser(prog="sealedos bench abuse", description=__doc__.split("\n")[0])
    p.add_argument("--abusers", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    r = run(args.abusers, args.seconds, args.frames)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    for phase in ("quiet", "abuse"):
        f = r[phase]
        print(f"{phase:6s} ping p50 {f['ping_us']['p50']:8.1f} us  "
              f"p99 {f['ping_us']['p99']:8.1f} us"
              f"   page p50 {f['page_us']['p50']:8.1f} us  p99 {f['page_us']['p99']:8.1f} us"
              f"   kernel RSS {f['kernel_rss_mib']} MiB")
    print(f"p99 abuse/quiet: ping {r['p99_ratio']['ping_us']}x, page {r['p99_ratio']['page_us']}x "
          f"(target <= {P99_TARGET_RATIO}x: {'met' if r['within_target'] else 'NOT met'}); "
          f"{r['abusers_finished']}/{r['abusers']} abusers finished; "
          f"callback_errors {r['callback_errors']}")
    if r["sample_abuser"]:
        print(f"one abuser: {json.dumps(r['sample_abuser'])}")
    return 0
