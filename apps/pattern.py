"""pattern: write a known plaintext into pages, force them to swap, read them back.

    sealedos run pattern --text SECRET --pages 8 --churn 64

Used to show what a pager and a disk can learn: with sealing on, the text never appears in the
device files nor in anything the pager received; with --no-seal it does.  The churn region is
written after the pattern pages so that they are evicted (written out) under memory pressure.
REPORT {checksum: verified|failed}.
"""
from __future__ import annotations

import argparse

from apps.runtime import PAGE_SIZE, SealedProcess
from apps.runtime.app import app_parser


def build_parser() -> argparse.ArgumentParser:
    """pattern's flags."""
    p = app_parser("pattern", __doc__)
    p.add_argument("--text", default="SEALEDOS-KNOWN-PLAINTEXT")
    p.add_argument("--pages", type=int, default=8, help="pages filled with the text")
    p.add_argument("--churn", type=int, default=64, help="pages written afterwards to evict them")
    return p


def page_of(text: str) -> bytes:
    """One page filled with `text` repeated."""
    raw = text.encode()
    return (raw * (PAGE_SIZE // len(raw) + 1))[:PAGE_SIZE]


def main(argv: list[str]) -> int:
    """Write the pattern, churn, verify; exit 0 when every pattern page reads back intact."""
    args = build_parser().parse_args(argv)
    page = page_of(args.text)
    with SealedProcess.connect(args.kernel) as proc:
        base = proc.map(args.pages)
        for i in range(args.pages):
            proc.write(base + i * PAGE_SIZE, page)
        churn = proc.map(args.churn)
        for i in range(args.churn):
            proc.write(churn + i * PAGE_SIZE, bytes([i % 256]) * PAGE_SIZE)
        ok = all(proc.read(base + i * PAGE_SIZE, PAGE_SIZE) == page for i in range(args.pages))
        proc.report(checksum="verified" if ok else "failed")
    return 0 if ok else 1
