"""Latency histograms as plain counters: fixed bucket bounds and a list of ints per series.

The kernel only counts (one observation is a bisect and three additions); STATS carries the
counts, and the Prometheus exporter, an observer outside the trusted base
(host_tools/metrics.py), serves them as histograms.  No thread, no socket, no library here.
"""
from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from typing import Any

#: Bucket upper bounds (µs, inclusive) from a TLB refill (~50 µs) to a pager restart
#: (seconds); one more bucket counts everything slower.
BOUNDS_US: tuple[float, ...] = (
    50, 100, 250, 500, 1e3, 2.5e3, 5e3, 1e4, 2.5e4, 5e4, 1e5, 2.5e5, 5e5, 1e6, 2.5e6, 5e6, 1e7)
#: At most this many labels per family; observations under later labels count as OTHER.
MAX_LABELS: int = 64
OTHER: str = "other"


@dataclass(slots=True)
class Series:
    """One histogram: observations per bucket, their sum, and the payload bytes they moved."""
    counts: list[int]
    sum_us: float = 0.0
    nbytes: int = 0


class Histograms:
    """A family of histograms by label (fault kind, endpoint contract), at most MAX_LABELS."""

    def __init__(self) -> None:
        self.series: dict[str, Series] = {}

    def observe(self, label: str, us: float, nbytes: int = 0) -> None:
        """Count one observation of `us` microseconds (moving `nbytes`) under `label`."""
        s = self.series.get(label)
        if s is None:
            label = label if len(self.series) < MAX_LABELS else OTHER
            s = self.series.setdefault(label, Series([0] * (len(BOUNDS_US) + 1)))
        s.counts[bisect_left(BOUNDS_US, us)] += 1
        s.sum_us += us
        s.nbytes += nbytes

    def record(self) -> dict[str, dict[str, Any]]:
        """Every series as one JSON-able map (STATS): label -> {counts, sum_us, bytes}."""
        return {label: {"counts": list(s.counts), "sum_us": s.sum_us, "bytes": s.nbytes}
                for label, s in self.series.items()}
