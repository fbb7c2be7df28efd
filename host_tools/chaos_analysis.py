"""What a chaos run measured, as pure functions of what it recorded: the kernel's fault
records, the kill times and the echo clients' throughput bins.  No processes here, so every
definition can be read (and tested) on its own.

Definitions
-----------
* **Recovery** after a kill at time k: the end of the first *major* fault that *began* at or
  after k, minus k.  A fault that began after the kill needed a page-in request sent after
  the kill, which the killed (or stopped) component cannot have answered, so its completion
  proves that a replacement serves; faults begun before the kill may have been answered just
  before it and prove nothing.  (If every process is blocked in a fault begun before the
  kill, they are answered together with the first ones the replacement serves, and the next
  fault begins microseconds later: the bound is tight.)  No such fault before the end of
  the record: not recovered (None).
* **Outage** i: [kill_i, kill_i + recovery_i]; unrecovered, it lasts to the next kill or the
  end of the run.
* **Fault latency before / during / after**: major faults that ended before the first kill;
  those whose [begin, end] overlaps an outage (they waited on the dead component); the rest.
* **IPC throughput**: completed echo calls per second, summed over the clients, in bins on
  the host's monotonic clock; *before* is the mean over the bins between the moment every
  client was running and the first kill, *during* the mean over the bins that lie inside an
  outage.
"""
from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: One kernel fault record: (end time s, kind, latency us, spid) -- faultlog.FaultRecord.
Fault = Sequence[Any]
#: Bins before this many seconds after the last client started are warm-up, not "before".
IPC_WARMUP_S: float = 0.5


@dataclass(frozen=True)
class Outage:
    """One kill and how long its component was out."""
    kill_s: float
    end_s: float
    recovered: bool


def fault_begin_s(f: Fault) -> float:
    """When fault f began (its end minus its latency)."""
    return float(f[0]) - float(f[2]) / 1e6


def recovery_s(majors: Sequence[Fault], kill_s: float) -> float | None:
    """Seconds from kill_s to the end of the first major fault begun at or after it (majors
    sorted by end time); None if there is none."""
    ends = [f[0] for f in majors]
    for f in majors[bisect.bisect_left(ends, kill_s):]:
        if fault_begin_s(f) >= kill_s:
            return float(f[0]) - kill_s
    return None


def outages(kills_s: Sequence[float], recoveries_s: Sequence[float | None],
            end_s: float) -> list[Outage]:
    """The outage window of each kill (see the module docstring)."""
    out = []
    for i, (k, r) in enumerate(zip(kills_s, recoveries_s, strict=True)):
        if r is not None:
            out.append(Outage(k, k + r, True))
        else:
            nxt = kills_s[i + 1] if i + 1 < len(kills_s) else end_s
            out.append(Outage(k, max(k, nxt), False))
    return out


def percentiles(values_us: Sequence[float]) -> dict[str, float]:
    """{n, p50, p99, max} of latencies in microseconds ({n: 0} when there are none)."""
    data = sorted(values_us)
    if not data:
        return {"n": 0}

    def pick(q: float) -> float:
        """The q-quantile (nearest rank), to 0.1 µs."""
        return round(data[min(len(data) - 1, int(q * len(data)))], 1)
    return {"n": len(data), "p50": pick(0.5), "p99": pick(0.99), "max": round(data[-1], 1)}


def latency_windows(majors: Sequence[Fault], kills_s: Sequence[float],
                    windows: Sequence[Outage]) -> dict[str, dict[str, float]]:
    """Major-fault latency percentiles before the first kill, during outages, and after."""
    first_kill = kills_s[0] if kills_s else float("inf")
    groups: dict[str, list[float]] = {"before": [], "during": [], "after": []}
    for f in majors:
        begin, end = fault_begin_s(f), f[0]
        if end < first_kill:
            groups["before"].append(f[2])
        elif any(begin <= w.end_s and end >= w.kill_s for w in windows):
            groups["during"].append(f[2])
        else:
            groups["after"].append(f[2])
    return {k: percentiles(v) for k, v in groups.items()}


def in_outage(t_s: float, windows: Sequence[Outage]) -> bool:
    """Does time t_s lie inside an outage?"""
    return any(w.kill_s <= t_s <= w.end_s for w in windows)


def ipc_series(loads: Sequence[dict[str, Any]]) -> tuple[list[float], list[float], float]:
    """Sum the clients' bins onto one grid: (bin start times s, calls/s per bin, the time
    every client was running).  Each load is echoload's --out document."""
    loads = [d for d in loads if d.get("counts")]
    if not loads:
        return [], [], 0.0
    bin_s = min(d["bin_s"] for d in loads)
    start = min(d["t0"] for d in loads)
    all_running = max(d["t0"] for d in loads)
    n = max(int((d["t0"] - start) / bin_s) + len(d["counts"]) for d in loads) + 1
    totals = [0.0] * n
    for d in loads:
        for i, c in enumerate(d["counts"]):
            t = d["t0"] + i * d["bin_s"]
            totals[int((t - start) / bin_s)] += c
    times = [start + i * bin_s for i in range(n)]
    rates = [c / bin_s for c in totals]
    last = max(i for i, c in enumerate(totals) if c) if any(totals) else 0
    return times[:last], rates[:last], all_running      # the last bin is partial


def ipc_rates(times: Sequence[float], rates: Sequence[float], all_running_s: float,
              kills_s: Sequence[float], windows: Sequence[Outage]) -> dict[str, float | None]:
    """Mean calls/s before the first kill (every client running) and during outages."""
    if not times:
        return {"before": None, "during": None}
    step = times[1] - times[0] if len(times) > 1 else 0.0
    first_kill = kills_s[0] if kills_s else float("inf")
    before = [r for t, r in zip(times, rates, strict=True)
              if t >= all_running_s + IPC_WARMUP_S and t + step <= first_kill]
    during = [r for t, r in zip(times, rates, strict=True) if in_outage(t + step / 2, windows)]

    def mean(xs: list[float]) -> float | None:
        """The mean to 0.1, or None for no samples."""
        return round(sum(xs) / len(xs), 1) if xs else None
    return {"before": mean(before), "during": mean(during)}


def event_rates(times_s: Sequence[float], start_s: float, kills_s: Sequence[float],
                windows: Sequence[Outage]) -> dict[str, float | None]:
    """Events per second (e.g. one process's minor faults) from start_s to the first kill,
    and inside outages (their total length)."""
    first_kill = kills_s[0] if kills_s else None
    before = during = None
    if first_kill is not None and first_kill > start_s:
        n = sum(1 for t in times_s if start_s <= t < first_kill)
        before = round(n / (first_kill - start_s), 1)
    span = sum(w.end_s - w.kill_s for w in windows)
    if span > 0:
        n = sum(1 for t in times_s if in_outage(t, windows))
        during = round(n / span, 1)
    return {"before": before, "during": during}
