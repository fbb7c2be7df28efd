"""refstring: touch pages in the order of a textbook reference string.

    sealedos run refstring --pages 7,0,1,2,0,3,0,4,2,3,0,3,2

One region of (max page + 1) pages is mapped; reference i to page p reads the byte at p's
start, checks it is the byte last written there (0 if never), and writes ``i mod 251`` there,
so every referenced page is dirty and every page-in is checked against what was paged out.
Nothing else is touched -- no other page, no second access kind per reference that could
fault -- so the kernel's fault count for this process is the textbook count for its policy.

(The read comes first so that a page is faulted in by a read; the store that follows is the
runtime's local dirty trap, not a second fault.)

At the end the pages still in the TLB are checked once more without faulting; with
--check-all every referenced page is read back, which faults the evicted ones in (after the
textbook count has been REPORTed as ``faults``).  REPORT {checksum: verified|failed,
references: n, faults: n}; exit 0 on verified, 1 on failed.
"""
from __future__ import annotations

import argparse
import sys
import time

from apps.runtime import PAGE_SIZE, SealedProcess
from apps.runtime.app import app_parser

PROGRESS_EVERY_S: float = 0.5


def parse_refs(text: str) -> list[int]:
    """'7,0,1' -> [7, 0, 1]; ValueError unless every item is a non-negative int."""
    refs = [int(tok) for tok in text.replace(" ", "").split(",") if tok != ""]
    if not refs or min(refs) < 0:
        raise ValueError("the reference string needs at least one page number, none negative")
    return refs


def build_parser() -> argparse.ArgumentParser:
    """refstring's flags."""
    p = app_parser("refstring", __doc__)
    p.add_argument("--pages", required=True,
                   help="the reference string: page numbers, comma-separated")
    p.add_argument("--check-all", action="store_true",
                   help="at the end read back every page, faulting evicted ones in")
    return p


def touch_all(proc: SealedProcess, base: int, refs: list[int]) -> tuple[dict[int, int], list[str]]:
    """Apply the reference string; return (page -> last byte written, mismatches seen)."""
    last: dict[int, int] = {}
    bad: list[str] = []
    t_report = time.monotonic()
    for i, page in enumerate(refs):
        addr = base + page * PAGE_SIZE
        seen = proc.read(addr, 1)[0]
        if seen != last.get(page, 0):
            bad.append(f"reference {i}: page {page} holds {seen}, expected {last.get(page, 0)}")
        proc.write(addr, bytes([i % 251]))
        last[page] = i % 251
        if time.monotonic() - t_report >= PROGRESS_EVERY_S:
            t_report = time.monotonic()
            proc.report(progress=round(i / len(refs), 3))
    return last, bad


def check_end(proc: SealedProcess, base: int, last: dict[int, int],
              fault_in: bool) -> tuple[int, list[str]]:
    """Check each page's last byte (only TLB-resident pages unless fault_in); return
    (pages checked, mismatches)."""
    checked, bad = 0, []
    for page, want in sorted(last.items()):
        addr = base + page * PAGE_SIZE
        got = proc.read(addr, 1) if fault_in else proc.try_read(addr, 1)
        if got is None:
            continue
        checked += 1
        if got[0] != want:
            bad.append(f"at the end: page {page} holds {got[0]}, expected {want}")
    return checked, bad


def main(argv: list[str]) -> int:
    """`sealedos run refstring --pages ...`"""
    args = build_parser().parse_args(argv)
    try:
        refs = parse_refs(args.pages)
    except ValueError as exc:
        print(f"refstring: bad --pages: {exc}", file=sys.stderr)
        return 2
    with SealedProcess.connect(args.kernel) as proc:
        base = proc.map(max(refs) + 1)
        last, bad = touch_all(proc, base, refs)
        faults = proc.counters()["tlb_misses"]
        proc.report(references=len(refs), faults=faults)
        checked, bad_end = check_end(proc, base, last, args.check_all)
        bad += bad_end
        for line in bad[:10]:
            print(f"refstring: {line}", file=sys.stderr)
        verdict = "failed" if bad else "verified"
        proc.report(progress=1.0, checksum=verdict, references=len(refs), faults=faults,
                    checked_at_end=checked)
        status = 0 if verdict == "verified" else 1
        proc.close(status)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
