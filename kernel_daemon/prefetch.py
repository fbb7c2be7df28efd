"""Prefetch policy: which swapped pages to read before a process faults on them.

One :class:`Trend` per process, in the spirit of Leap (Maruf & Chowdhury, USENIX ATC '20):
it keeps the last HISTORY faulting vpns (major faults and first uses of prefetched pages) and
finds the stream they follow by a Boyer-Moore majority vote over their deltas, first over the
most recent ones, then over ever more (a new stream is found after three faults, an old one
survives a stray fault).  A majority delta d (+1 sequential, +d strided) predicts the next
`depth` pages along it; no majority, no prediction.  ``readahead`` predicts the next `depth`
pages after the fault whatever the history (the naive policy, for comparison).

`depth` adapts: a prefetched page used (a hit) deepens it by one, a major fault halves it.
Pure: no kernel state; vm.py acts on the vpns (and, for fault-around, on `step`: a fault on a
prefetched page installs up to FAULT_AROUND of the already verified pages that follow it
along the stream in the same reply).
"""
from __future__ import annotations

from collections import deque
from itertools import pairwise

MODES: tuple[str, ...] = ("off", "trend", "readahead")
#: What `sealedos kernel` and `sealedos up` run with unless told (README: the measurements).
DEFAULT_MODE: str = "trend"
#: Faults remembered (Leap's window: deltas are voted on over its most recent 2, 4, 8).
HISTORY: int = 9
MIN_DEPTH: int = 1
MAX_DEPTH: int = 16
#: Most prefetched pages a fault installs beside its own (`sealedos kernel --fault-around`).
FAULT_AROUND: int = 16


def majority(deltas: list[int]) -> int | None:
    """The value more than half of `deltas` hold (Boyer-Moore vote, then a count), or None."""
    cand, count = 0, 0
    for d in deltas:
        if count == 0:
            cand = d
        count += 1 if d == cand else -1
    return cand if deltas and deltas.count(cand) * 2 > len(deltas) else None


class Trend:
    """One process's recent faults and how far ahead to read (see the module docstring)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode                            # one of MODES (the kernel's flag checks)
        self.vpns: deque[int] = deque(maxlen=HISTORY)
        self.depth = MIN_DEPTH

    def stride(self) -> int | None:
        """The stream's delta: the majority over the last 2, then 4, then 8 deltas."""
        deltas = [b - a for a, b in pairwise(self.vpns)]
        for n in (2, 4, 8):
            d = majority(deltas[-n:]) if len(deltas) >= n else None
            if d:                                   # 0 (the same page again) is no stream
                return d
        return None

    def step(self) -> int | None:
        """The delta the next pages are predicted along (None: no stream, or mode off)."""
        return 1 if self.mode == "readahead" else self.stride() if self.mode == "trend" else None

    def continues(self, vpn: int) -> int | None:
        """The stream's delta if a fault on vpn continues it (the last page seen plus the
        delta), else None.  Fault-around installs pages only then, and only then are they
        fed back as seen: a stale stream must not confirm itself with its own pages."""
        d = self.step()
        return d if d and self.vpns and vpn == self.vpns[-1] + d else None

    def fault(self, vpn: int, hit: bool) -> list[int]:
        """A fault on vpn (hit: on a prefetched page); return the vpns to prefetch next."""
        self.vpns.append(vpn)
        self.depth = min(MAX_DEPTH, self.depth + 1) if hit else max(MIN_DEPTH, self.depth // 2)
        d = self.step()
        return [vpn + d * i for i in range(1, self.depth + 1)] if d else []
