"""memstress: churn an int64 array several times larger than physical memory, then prove
that paging lost nothing.

    sealedos run memstress [--pages 256] [--seed 1] [--passes 3] [--duration S]

The array spans --pages pages (512 int64 per page) in one region.  It is filled from numpy's
generator seeded with --seed, one page-sized chunk at a time through the VM, and then each
pass transforms it through the VM:

1. a *sweep* over the chunks (forwards on even passes, backwards on odd ones): each chunk is
   sorted, xor-ed with the pass's key, and shifted by a carry -- the last element of the
   chunk processed before it -- so every chunk depends on every earlier one;
2. a *mirror* step: chunk c ^= chunk (n-1-c) reversed, for the lower half, so two distant
   pages are live at once.

At the end the array is read back through the VM and its sha256 compared with one computed
independently, in plain numpy, with whole-array operations (no per-chunk loop, no VM).  The
verdict is REPORTed ({checksum: verified|failed, passes, pages}) and is the exit status
(0 verified, 1 failed).  Progress is REPORTed about twice a second.

With --duration S > 0 the passes repeat until S seconds have passed (at least one pass).
With --wait-for NAME it first waits (registered, nothing mapped) until a file NAME exists in
its private directory: the supervisor's start gate, so that many processes page at once
(`sealedos bench paging --scale`).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from apps.runtime import PAGE_SIZE, SealedProcess
from apps.runtime.app import app_parser
from wire.host import PRIVATE_DIR_ENV

CHUNK: int = PAGE_SIZE // 8                 # int64 elements per page
PROGRESS_EVERY_S: float = 0.5
#: ... and only once the fraction done has grown this much since the last REPORT: a process
#: slowed down (hundreds of them sharing two cores) reports per work done, not per second.
PROGRESS_STEP: float = 0.02
#: How often a process waiting at the start gate (--wait-for) looks for its file.
GATE_POLL_S: float = 0.05
_I64 = np.iinfo(np.int64)


# -- the workload, as pure functions of (seed, pages, pass) ----------------------------------
def fill_chunks(seed: int, pages: int) -> Any:
    """The initial contents, one page-sized chunk at a time (a generator)."""
    rng = np.random.default_rng(seed)
    for _ in range(pages):
        yield rng.integers(_I64.min, _I64.max, size=CHUNK, dtype=np.int64, endpoint=True)


def pass_key(seed: int, p: int) -> np.int64:
    """The xor key of pass p."""
    k = (seed * 0x9E3779B97F4A7C15 + (p + 1) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    return np.int64(k - (1 << 64) if k >= 1 << 63 else k)


def sweep_order(pages: int, p: int) -> range:
    """The chunk order of pass p's sweep."""
    return range(pages) if p % 2 == 0 else range(pages - 1, -1, -1)


# -- the passes through the VM --------------------------------------------------------------
def vm_pass(v: Any, pages: int, key: np.int64, p: int, tick: Callable[[], None]) -> None:
    """One pass over the VArray v, chunk by chunk (every access goes through the MMU)."""
    carry = np.zeros(1, dtype=np.int64)
    for c in sweep_order(pages, p):
        s = slice(c * CHUNK, (c + 1) * CHUNK)
        x = (np.sort(v[s]) ^ key) + carry
        v[s] = x
        carry = x[-1:]
        tick()
    for c in range(pages // 2):
        lo = slice(c * CHUNK, (c + 1) * CHUNK)
        hi = slice((pages - 1 - c) * CHUNK, (pages - c) * CHUNK)
        v[lo] = v[lo] ^ v[hi][::-1]
        tick()


# -- the independent reference ----------------------------------------------------------------
def reference_digest(seed: int, pages: int, passes: int) -> str:
    """sha256 of the final array, computed in plain numpy with whole-array operations."""
    a = np.stack(list(fill_chunks(seed, pages))) if pages else np.zeros((0, CHUNK), np.int64)
    h = pages // 2
    for p in range(passes):
        t = np.sort(a, axis=1) ^ pass_key(seed, p)
        order = np.array(sweep_order(pages, p), dtype=np.int64)
        lasts = np.cumsum(t[order, -1])                        # carry after each chunk
        carries = np.concatenate([np.zeros(1, np.int64), lasts[:-1]])
        t[order] += carries[:, None]
        a = t
        if h:
            a[:h] ^= a[pages - h:][::-1, ::-1]
    return hashlib.sha256(a.tobytes()).hexdigest()


# -- the app -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """memstress's flags."""
    p = app_parser("memstress", __doc__)
    p.add_argument("--pages", type=int, default=256, help="pages the array spans")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--duration", type=float, default=0.0,
                   help="seconds to keep passing (0: just --passes)")
    p.add_argument("--wait-for", metavar="NAME",
                   help="start once file NAME exists in the private directory (a start gate)")
    return p


def wait_for(name: str) -> None:
    """Block until file `name` exists in this process's private directory."""
    path = os.path.join(os.environ.get(PRIVATE_DIR_ENV, "."), os.path.basename(name))
    while not os.path.exists(path):
        time.sleep(GATE_POLL_S)


class Progress:
    """Counts work units and REPORTs the fraction done at most every PROGRESS_EVERY_S, once
    it has grown by PROGRESS_STEP."""

    def __init__(self, proc: SealedProcess, total: int, duration_s: float) -> None:
        self.proc, self.total, self.duration_s = proc, max(1, total), duration_s
        self.done = 0
        self.t0 = self.last = time.monotonic()
        self.reported = 0.0

    def tick(self) -> None:
        """One unit of work done."""
        self.done += 1
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S:
            fraction = self.fraction(now)
            if fraction - self.reported >= PROGRESS_STEP:
                self.last, self.reported = now, fraction
                self.proc.report(progress=round(fraction, 3))

    def fraction(self, now: float) -> float:
        """The fraction done: by work, or by time when running for a duration."""
        if self.duration_s > 0:
            return min(0.99, (now - self.t0) / self.duration_s)
        return min(0.99, self.done / self.total)


def run(proc: SealedProcess, pages: int, seed: int, passes: int, duration_s: float) -> int:
    """Fill, pass, verify; REPORT and return the exit status."""
    addr = proc.map(pages)
    v = proc.view(addr, np.int64, pages * CHUNK)
    progress = Progress(proc, pages * (2 + passes) + passes * (pages // 2), duration_s)
    for c, chunk in enumerate(fill_chunks(seed, pages)):
        v[c * CHUNK:(c + 1) * CHUNK] = chunk
        progress.tick()
    done = 0
    t0 = time.monotonic()
    while True:
        vm_pass(v, pages, pass_key(seed, done), done, progress.tick)
        done += 1
        if duration_s > 0:
            if time.monotonic() - t0 >= duration_s:
                break
        elif done >= passes:
            break
    digest = hashlib.sha256()
    for c in range(pages):
        digest.update(v[c * CHUNK:(c + 1) * CHUNK].tobytes())
        progress.tick()
    verdict = "verified" if digest.hexdigest() == reference_digest(seed, pages, done) else "failed"
    proc.report(progress=1.0, checksum=verdict, passes=done, pages=pages,
                **proc.counters())
    return 0 if verdict == "verified" else 1


def main(argv: list[str]) -> int:
    """`sealedos run memstress ...`"""
    args = build_parser().parse_args(argv)
    if args.pages < 1 or args.passes < 1 and args.duration <= 0:
        print("memstress: --pages and --passes must be at least 1", file=sys.stderr)
        return 2
    with SealedProcess.connect(args.kernel) as proc:
        if args.wait_for:
            wait_for(args.wait_for)
        status = run(proc, args.pages, args.seed, args.passes, args.duration)
        proc.close(status)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
