"""touchload: minor faults and TLB hits that never need the pager, for `sealedos chaos`.

    sealedos run touchload [--pages 4] [--duration 20] [--stop-file F]

Each round maps --pages fresh pages, writes a word into each (one demand-zero *minor* fault
per page: the kernel finds a frame, evicting someone else's page if it must, and replies
``fill: zero``), reads every word back 16 times (TLB hits: the kernel never hears of them),
checks the values and unmaps the pages (their frames go back to the pool).  None of this
ever waits on a page-in: a dirty page evicted to make room is held by the kernel until its
write-back is acknowledged, so the evicting side never waits on the pager either.  While
the pager is down, touchload's minor faults keep being served -- the kernel's fault log
shows them in the outage windows.

REPORTs ``rounds`` about four times a second, and at the end ``checksum: verified`` (every
word read back was the one written) or ``failed``.  Stops after --duration seconds or when
--stop-file exists.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from apps.runtime import PAGE_SIZE, SealedProcess
from apps.runtime.app import app_parser, run_reporting

REPORT_EVERY_S: float = 0.25
READS_PER_ROUND: int = 16


def run(proc: SealedProcess, args: argparse.Namespace) -> int:
    """Map, touch, read back, unmap until the time is up; REPORT; return the exit status."""
    t0 = time.monotonic()
    end = t0 + args.duration
    rounds = wrong = 0
    last = 0.0
    while (now := time.monotonic()) < end:
        addr = proc.map(args.pages)
        for i in range(args.pages):
            proc.store_u64(addr + i * PAGE_SIZE, rounds * 1000 + i)
        for _ in range(READS_PER_ROUND):
            for i in range(args.pages):
                wrong += proc.load_u64(addr + i * PAGE_SIZE) != rounds * 1000 + i
        proc.unmap(addr, args.pages)
        rounds += 1
        if now - last >= REPORT_EVERY_S:
            last = now
            proc.report(rounds=rounds, progress=round(min(0.99, (now - t0) / args.duration), 3))
            if args.stop_file and os.path.exists(args.stop_file):
                break
    verdict = "verified" if wrong == 0 else "failed"
    proc.report(rounds=rounds, wrong=wrong, checksum=verdict, progress=1.0)
    return 0 if verdict == "verified" else 1


def build_parser() -> argparse.ArgumentParser:
    """`sealedos run touchload` flags."""
    p = app_parser("touchload", __doc__)
    p.add_argument("--pages", type=int, default=4, help="fresh pages per round")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of rounds")
    p.add_argument("--stop-file", help="stop early once this file exists")
    return p


def main(argv: list[str]) -> int:
    """`sealedos run touchload ...`"""
    args = build_parser().parse_args(argv)
    with SealedProcess.connect(args.kernel) as proc:
        return run_reporting(proc, lambda: run(proc, args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
