"""`sealedos metrics`: the Prometheus exporter, an observer outside the trusted base.

    sealedos metrics --port 9100 [--host 127.0.0.1] [--kernel ADDR | --rundir DIR] [--once]

The kernel serves no HTTP: an HTTP listener inside the trusted base is exactly what the base
must not hold.  This process connects to the kernel as the ``observer`` principal (the keys
and address rules are snapshot.py's) and, at every scrape, asks it for STATS once and turns
the reply into metric families: the kernel's counters, pager slots and live processes, and
the latency histograms the kernel keeps as plain bucket counts (kernel_daemon/histogram.py).
A scrape the kernel does not answer yields ``sealedos_kernel_up 0`` and nothing else.
`sealedos up --metrics-port P` runs it next to the kernel; so does the compose file.
--once prints one scrape's text to stdout and exits (status 2 when no kernel answers).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any, Protocol, TypedDict, TypeGuard

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from host_tools.snapshot import NoKernel, add_target_args, observer_for
from wire.protocol import Op

log = logging.getLogger("sealedos.metrics")

#: Exit status when no kernel answers or the port cannot be bound.
FAILED_STATUS: int = 2
#: STATS key -> label value of sealedos_faults_total{kind}.
FAULT_KINDS: dict[str, str] = {
    "minor_faults": "minor", "major_faults": "major", "soft_faults": "soft",
    "segfaults": "segv", "protection_faults": "prot"}
#: STATS key -> (counter name without _total, help).
KERNEL_COUNTERS: dict[str, tuple[str, str]] = {
    "page_ins": ("sealedos_page_ins", "Pages read back from a pager and installed"),
    "page_outs": ("sealedos_page_outs", "Pages written back to the pagers (acknowledged)"),
    "evictions": ("sealedos_evictions", "Frames taken back from their owner"),
    "clean_drops": ("sealedos_clean_drops", "Evictions that needed no write-back"),
    "writeback_failures": ("sealedos_writeback_failures", "Write-backs no mirror acknowledged"),
    "pager_restarts": ("sealedos_pager_restarts", "New pager instances that took over a slot"),
    "pager_timeouts": ("sealedos_pager_timeouts", "Pager requests that timed out"),
    "pager_kills": ("sealedos_pager_kills", "Hung local pagers the kernel killed"),
    "pager_retries": ("sealedos_pager_retries", "Pager requests sent again after a timeout"),
    "repairs": ("sealedos_pager_repairs", "Mirror copies rewritten after a failed check"),
    "pages_granted": ("sealedos_pages_granted", "Pages moved between processes by grants"),
}
#: STATS keys that are configuration, or are exported by another family.
NOT_KERNEL_STATS: frozenset[str] = frozenset(
    {"policy", "nframes", "sealed", "mirrors", "integrity_failures", "free_frames",
     "resident_pages", "swapped_pages", "live_processes", "bad_messages"}
    | set(FAULT_KINDS) | set(KERNEL_COUNTERS))
#: Process states whose records are history, not live processes.
GONE_STATES: frozenset[str] = frozenset({"exited", "killed"})
#: The kernel's histogram families (STATS histograms.vm / .ipc) -> what they become.
FAULT_KIND_LABELS: tuple[str, ...] = ("minor", "major")
DISK_READ: str = "disk_read"


class SeriesRecord(TypedDict):
    """One kernel histogram (histogram.py's Series.record): bucket counts, sum, bytes."""
    counts: list[int]
    sum_us: float
    bytes: int


class HistogramsRecord(TypedDict):
    """STATS' histograms: the bucket bounds (µs) and the families by label."""
    bounds_us: list[float]
    vm: dict[str, SeriesRecord]
    ipc: dict[str, SeriesRecord]


class StatsSource(Protocol):
    """Whatever answers the kernel's STATS (an Observer; a canned reply in unit tests)."""

    def kernel_call(self, op: Op) -> dict[str, Any]:
        """The kernel's reply to `op`; NoKernel when it does not answer."""
        ...


class KernelCollector(Collector):
    """Every family from one STATS reply per scrape (the one kernel connection is locked)."""

    def __init__(self, observer: StatsSource) -> None:
        self.observer = observer
        self.lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        """sealedos_kernel_up, then (when the kernel answered) every other family."""
        try:
            with self.lock:
                stats = self.observer.kernel_call(Op.STATS)
        except NoKernel as exc:
            log.warning("%s", exc)
            yield GaugeMetricFamily("sealedos_kernel_up", "1 when the kernel answered", value=0)
            return
        yield GaugeMetricFamily("sealedos_kernel_up", "1 when the kernel answered", value=1)
        yield from kernel_families(stats["kernel"])
        yield from pager_families(stats["kernel"].get("pagers") or [])
        yield from process_families([r for r in stats["processes"]
                                     if r.get("state") not in GONE_STATES])
        if "histograms" in stats:
            yield from histogram_families(stats["histograms"])


def kernel_families(stats: dict[str, Any]) -> Iterator[Metric]:
    """Faults by kind, paging counters, integrity failures, frames, configuration."""
    faults = CounterMetricFamily("sealedos_faults", "Page faults served or refused, by kind",
                                 labels=["kind"])
    for key, kind in FAULT_KINDS.items():
        faults.add_metric([kind], num(stats.get(key)))
    yield faults
    for key, (name, help_) in KERNEL_COUNTERS.items():
        yield CounterMetricFamily(name, help_, value=num(stats.get(key)))
    integrity = CounterMetricFamily(
        "sealedos_integrity_failures", "Pager answers that failed verification, by check",
        labels=["kind"])
    for kind, n in dict(stats.get("integrity_failures") or {}).items():
        integrity.add_metric([str(kind)], num(n))
    yield integrity
    yield CounterMetricFamily("sealedos_bad_messages", "Malformed or unexpected messages",
                              value=num(stats.get("bad_messages")))
    other = GaugeMetricFamily("sealedos_kernel_stat",
                              "Every other numeric kernel counter, by name", labels=["name"])
    for key, value in stats.items():
        if key not in NOT_KERNEL_STATS and is_number(value):
            other.add_metric([key], float(value))
    yield other
    yield GaugeMetricFamily("sealedos_frames", "Frames in the global pool",
                            value=num(stats.get("nframes")))
    yield GaugeMetricFamily("sealedos_frames_free", "Free frames",
                            value=num(stats.get("free_frames")))
    yield InfoMetricFamily("sealedos_kernel", "Kernel configuration", value={
        "policy": str(stats.get("policy")), "sealed": str(stats.get("sealed")).lower(),
        "mirrors": str(stats.get("mirrors"))})


def pager_families(pagers: list[dict[str, Any]]) -> Iterator[Metric]:
    """Each mirror slot's health."""
    labels = ["mirror"]
    up = GaugeMetricFamily("sealedos_pager_up", "1 when the slot has a live pager", labels=labels)
    inflight = GaugeMetricFamily("sealedos_pager_inflight", "Requests awaiting the pager",
                                 labels=labels)
    backlog = GaugeMetricFamily("sealedos_pager_backlog",
                                "Requests queued for a slot with no live pager", labels=labels)
    joins = CounterMetricFamily("sealedos_pager_joins", "Pager instances that joined the slot",
                                labels=labels)
    for h in pagers:
        m = [str(h.get("mirror"))]
        up.add_metric(m, 1.0 if h.get("up") else 0.0)
        inflight.add_metric(m, num(h.get("inflight")))
        backlog.add_metric(m, num(h.get("backlog")))
        joins.add_metric(m, num(h.get("joins")))
    yield from (up, inflight, backlog, joins)


def process_families(procs: list[dict[str, Any]]) -> Iterator[Metric]:
    """Live processes: pages, faults and IPC calls (series vanish when a process exits)."""
    labels = ["spid", "name"]
    resident = GaugeMetricFamily("sealedos_process_resident_pages",
                                 "Pages of the process in frames", labels=labels)
    swapped = GaugeMetricFamily("sealedos_process_swapped_pages",
                                "Pages of the process on swap", labels=labels)
    faults = CounterMetricFamily("sealedos_process_faults", "Faults served, by kind",
                                 labels=labels + ["kind"])
    calls = CounterMetricFamily("sealedos_process_ipc_calls", "IPC calls, by direction",
                                labels=labels + ["direction"])
    yield GaugeMetricFamily("sealedos_processes", "Live sealed processes", value=len(procs))
    yield GaugeMetricFamily("sealedos_resident_pages", "Resident pages, all processes",
                            value=sum(num(p.get("resident_pages")) for p in procs))
    yield GaugeMetricFamily("sealedos_swapped_pages", "Swapped pages, all processes",
                            value=sum(num(p.get("swapped_pages")) for p in procs))
    for p in procs:
        ids = [str(p.get("spid")), str(p.get("name"))]
        resident.add_metric(ids, num(p.get("resident_pages")))
        swapped.add_metric(ids, num(p.get("swapped_pages")))
        faults.add_metric(ids + ["minor"], num(p.get("minor_faults")))
        faults.add_metric(ids + ["major"], num(p.get("major_faults")))
        calls.add_metric(ids + ["out"], num(p.get("ipc_calls_out")))
        calls.add_metric(ids + ["in"], num(p.get("ipc_calls_in")))
    yield from (resident, swapped, faults, calls)


def histogram_families(hist: HistogramsRecord) -> Iterator[Metric]:
    """The kernel's bucket counts as Prometheus histograms (seconds) and IPC counters."""
    bounds = hist["bounds_us"]
    faults = HistogramMetricFamily(
        "sealedos_fault_seconds", "Fault service time, kernel received to reply, by kind",
        labels=["kind"])
    disk = HistogramMetricFamily(
        "sealedos_disk_read_seconds", "Disk read time of a page-in, as its pager reports it")
    for label, s in hist["vm"].items():
        if label in FAULT_KIND_LABELS:
            faults.add_metric([label], buckets(bounds, s["counts"]), s["sum_us"] / 1e6)
        elif label == DISK_READ:
            disk.add_metric([], buckets(bounds, s["counts"]), s["sum_us"] / 1e6)
    yield from (faults, disk)
    labels = ["endpoint"]
    seconds = HistogramMetricFamily("sealedos_ipc_call_seconds",
                                    "IPC call time, call to reply, by endpoint", labels=labels)
    calls = CounterMetricFamily("sealedos_ipc_calls", "IPC calls completed, by endpoint",
                                labels=labels)
    nbytes = CounterMetricFamily("sealedos_ipc_bytes",
                                 "IPC payload bytes (call + reply), by endpoint", labels=labels)
    for label, s in hist["ipc"].items():
        seconds.add_metric([label], buckets(bounds, s["counts"]), s["sum_us"] / 1e6)
        calls.add_metric([label], float(sum(s["counts"])))
        nbytes.add_metric([label], float(s["bytes"]))
    yield from (seconds, calls, nbytes)


def buckets(bounds_us: list[float], counts: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts (the last past every bound) as Prometheus' cumulative (le, count)
    pairs in seconds, ending with +Inf."""
    out: list[tuple[str, float]] = []
    total = 0
    for bound_us, n in zip(bounds_us, counts, strict=False):
        total += n
        out.append((repr(bound_us / 1e6), float(total)))
    out.append(("+Inf", float(sum(counts))))
    return out


def is_number(value: object) -> TypeGuard[int | float]:
    """True for an int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def num(value: object) -> float:
    """A counter value as a float (0 for a missing or non-numeric one)."""
    return float(value) if is_number(value) else 0.0


class Exporter:
    """A private registry holding one KernelCollector, rendered or served over HTTP."""

    def __init__(self, observer: StatsSource) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(KernelCollector(observer))

    def render(self) -> bytes:
        """The text exposition format, as a scrape would get it."""
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> None:
        """Listen on host:port in a daemon thread (OSError if the port is taken)."""
        start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", host, port)


def build_parser() -> argparse.ArgumentParser:
    """`sealedos metrics` flags (target flags as ps/stats/top)."""
    env = os.environ.get
    p = argparse.ArgumentParser(prog="sealedos metrics",
                                description="serve the kernel's metrics to Prometheus")
    add_target_args(p)
    p.add_argument("--port", type=int, default=int(env("SEALEDOS_METRICS_PORT", "9100")),
                   help="port to serve /metrics on (env SEALEDOS_METRICS_PORT; default 9100)")
    p.add_argument("--host", default=env("SEALEDOS_METRICS_HOST", "127.0.0.1"),
                   help="address to listen on (env SEALEDOS_METRICS_HOST; default 127.0.0.1)")
    p.add_argument("--once", action="store_true", help="print one scrape to stdout and exit")
    return p


def main(argv: list[str]) -> int:
    """Serve /metrics until SIGTERM/SIGINT (or print one scrape with --once)."""
    args = build_parser().parse_args(argv)
    try:
        observer = observer_for(args)
    except NoKernel as exc:
        print(f"sealedos metrics: {exc}", file=sys.stderr)
        return FAILED_STATUS
    exporter = Exporter(observer)
    try:
        if args.once:
            text = exporter.render().decode()
            sys.stdout.write(text)
            return 0 if "sealedos_kernel_up 1.0" in text else FAILED_STATUS
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        try:
            exporter.serve(args.host, args.port)
        except OSError as exc:
            print(f"sealedos metrics: cannot listen on {args.host}:{args.port}: {exc}",
                  file=sys.stderr)
            return FAILED_STATUS
        print(f"metrics: serving http://{args.host}:{args.port}/metrics for "
              f"{observer.target.addr}", file=sys.stderr, flush=True)
        while not stop.wait(1.0):
            pass
        return 0
    finally:
        observer.close()
