"""Prometheus metrics for the kernel: its counters read at scrape time, plus latency histograms.

Enabled by `sealedos kernel --metrics-port PORT` (bound to --metrics-host, default 127.0.0.1);
off by default.  prometheus_client serves /metrics from its own thread, so everything here
that runs at scrape time only READS the kernel's state, and reads it by copying containers
in one C-level step (dict(), list()) so the single-threaded kernel never sees a writer and
the scrape never sees a dict change size under it.  Counters the kernel already keeps are
not counted twice: a custom collector turns them into metric families when scraped.  Only
what the kernel does not keep is recorded here: latency histograms and per-endpoint IPC
counts, fed by the hooks observe_fault, observe_call and observe_disk_read (each guarded by
`if kernel.metrics is not None` at the call site).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from kernel_daemon.kernel import Kernel

log = logging.getLogger("sealedos.metrics")

#: Latency buckets (seconds): from a TLB refill (~50 µs) to a pager restart (seconds).
LATENCY_BUCKETS_S: tuple[float, ...] = (
    50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3,
    0.5, 1.0, 2.5, 5.0, 10.0)
#: At most this many distinct endpoint labels; later endpoints are counted as "other".
MAX_ENDPOINT_LABELS: int = 64
OTHER_ENDPOINT: str = "other"

#: kernel stats key -> (metric name without _total, help, label value or None).
FAULT_KINDS: dict[str, str] = {
    "minor_faults": "minor", "major_faults": "major", "soft_faults": "soft",
    "segfaults": "segv", "protection_faults": "prot"}
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
#: stats keys that are configuration, or are exported above under another shape.
NOT_COUNTERS: frozenset[str] = frozenset(
    {"policy", "nframes", "sealed", "mirrors", "integrity_failures"} | set(FAULT_KINDS)
    | set(KERNEL_COUNTERS))


class KernelCollector(Collector):
    """Turns the kernel's own counters into metric families at scrape time (read-only)."""

    def __init__(self, kernel: Kernel) -> None:
        self.k = kernel

    def collect(self) -> Iterator[Metric]:
        """Yield every kernel-wide, per-pager and per-process family from one snapshot."""
        stats = self.k.stats.as_dict()                   # one C-level copy: consistent enough
        yield from self._kernel(stats)
        yield from self._pagers()
        yield from self._processes()

    def _kernel(self, stats: dict[str, Any]) -> Iterator[Metric]:
        """Faults by kind, paging counters, integrity failures, frames, configuration."""
        faults = CounterMetricFamily("sealedos_faults", "Page faults served or refused, by kind",
                                     labels=["kind"])
        for key, kind in FAULT_KINDS.items():
            faults.add_metric([kind], _num(stats.get(key)))
        yield faults
        for key, (name, help_) in KERNEL_COUNTERS.items():
            yield CounterMetricFamily(name, help_, value=_num(stats.get(key)))
        integrity = CounterMetricFamily(
            "sealedos_integrity_failures", "Pager answers that failed verification, by check",
            labels=["kind"])
        for kind, n in dict(stats.get("integrity_failures") or {}).items():
            integrity.add_metric([str(kind)], _num(n))
        yield integrity
        yield CounterMetricFamily("sealedos_bad_messages", "Malformed or unexpected messages",
                                  value=_num(self.k.bad_messages))
        other = GaugeMetricFamily("sealedos_kernel_stat",
                                  "Every other numeric kernel counter, by name", labels=["name"])
        for key, value in stats.items():
            if key not in NOT_COUNTERS and isinstance(value, (int, float)) \
                    and not isinstance(value, bool):
                other.add_metric([key], float(value))
        yield other
        pool = self.k.vm.pool
        yield GaugeMetricFamily("sealedos_frames", "Frames in the global pool", value=pool.nframes)
        yield GaugeMetricFamily("sealedos_frames_free", "Free frames", value=pool.free_count)
        yield InfoMetricFamily("sealedos_kernel", "Kernel configuration", value={
            "policy": str(stats.get("policy")), "sealed": str(stats.get("sealed")).lower(),
            "mirrors": str(stats.get("mirrors"))})

    def _pagers(self) -> Iterator[Metric]:
        """Each mirror slot's health."""
        up = GaugeMetricFamily("sealedos_pager_up", "1 when the slot has a live pager",
                               labels=["mirror"])
        inflight = GaugeMetricFamily("sealedos_pager_inflight", "Requests awaiting the pager",
                                     labels=["mirror"])
        backlog = GaugeMetricFamily("sealedos_pager_backlog",
                                    "Requests queued for a slot with no live pager", labels=["mirror"])
        joins = CounterMetricFamily("sealedos_pager_joins", "Pager instances that joined the slot",
                                    labels=["mirror"])
        for h in [s.health() for s in list(self.k.pagers.slots)]:
            m = [str(h["mirror"])]
            up.add_metric(m, 1.0 if h["up"] else 0.0)
            inflight.add_metric(m, h["inflight"])
            backlog.add_metric(m, h["backlog"])
            joins.add_metric(m, h["joins"])
        yield from (up, inflight, backlog, joins)

    def _processes(self) -> Iterator[Metric]:
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
        procs = list(self.k.procs.by_spid.values())
        yield GaugeMetricFamily("sealedos_processes", "Live sealed processes", value=len(procs))
        yield GaugeMetricFamily("sealedos_resident_pages", "Resident pages, all processes",
                                value=sum(p.resident for p in procs))
        yield GaugeMetricFamily("sealedos_swapped_pages", "Swapped pages, all processes",
                                value=sum(p.swapped for p in procs))
        for p in procs:
            ids = [str(p.spid), p.name]
            counters = dict(p.counters)
            resident.add_metric(ids, p.resident)
            swapped.add_metric(ids, p.swapped)
            faults.add_metric(ids + ["minor"], _num(counters.get("minor_faults")))
            faults.add_metric(ids + ["major"], _num(counters.get("major_faults")))
            calls.add_metric(ids + ["out"], _num(counters.get("ipc_calls_out")))
            calls.add_metric(ids + ["in"], _num(counters.get("ipc_calls_in")))
        yield from (resident, swapped, faults, calls)


class Metrics:
    """The kernel's metrics: a private registry, the latency hooks, and the HTTP server."""

    def __init__(self, kernel: Kernel, host: str, port: int, serve: bool = True) -> None:
        """Build the registry; when serve, listen on host:port (raises OSError if taken)."""
        _no_created_series()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(KernelCollector(kernel))
        self.fault_seconds = Histogram(
            "sealedos_fault_seconds", "Fault service time, kernel received to reply, by kind",
            ["kind"], registry=self.registry, buckets=LATENCY_BUCKETS_S)
        self.disk_read_seconds = Histogram(
            "sealedos_disk_read_seconds", "Disk read time of a page-in, as its pager reports it",
            registry=self.registry, buckets=LATENCY_BUCKETS_S)
        self.call_seconds = Histogram(
            "sealedos_ipc_call_seconds", "IPC call time, call to reply, by endpoint",
            ["endpoint"], registry=self.registry, buckets=LATENCY_BUCKETS_S)
        self.calls = Counter("sealedos_ipc_calls", "IPC calls completed, by endpoint",
                             ["endpoint"], registry=self.registry)
        self.call_bytes = Counter("sealedos_ipc_bytes", "IPC payload bytes (call + reply), by endpoint",
                                  ["endpoint"], registry=self.registry)
        self._endpoints: set[str] = set()
        self.server: Any = None
        if serve:
            from prometheus_client import start_http_server
            started = start_http_server(port, addr=host, registry=self.registry)
            self.server = started[0] if isinstance(started, tuple) else None
            log.info("metrics on http://%s:%d/metrics", host, port)

    # -- hooks (called on the kernel thread) ------------------------------------------------
    def observe_fault(self, kind: str, seconds: float) -> None:
        """One fault of `kind` (minor, major) served in `seconds`."""
        self.fault_seconds.labels(kind).observe(max(0.0, seconds))

    def observe_call(self, endpoint: str, nbytes: int, seconds: float) -> None:
        """One IPC call on `endpoint` completed: `nbytes` of payload both ways, in `seconds`."""
        label = self._endpoint_label(endpoint)
        self.calls.labels(label).inc()
        self.call_bytes.labels(label).inc(max(0, int(nbytes)))
        self.call_seconds.labels(label).observe(max(0.0, seconds))

    def observe_disk_read(self, seconds: float) -> None:
        """One page-in's disk read took `seconds` (the pager's claim: untrusted, display only)."""
        self.disk_read_seconds.observe(max(0.0, seconds))

    def _endpoint_label(self, endpoint: Any) -> str:
        """The label for `endpoint`: its name, or "other" past MAX_ENDPOINT_LABELS names."""
        name = str(endpoint)[:64] or "?"
        if name in self._endpoints:
            return name
        if len(self._endpoints) >= MAX_ENDPOINT_LABELS:
            return OTHER_ENDPOINT
        self._endpoints.add(name)
        return name

    # -- exposition ------------------------------------------------------------------------
    def render(self) -> bytes:
        """The text exposition format, as a scrape would get it."""
        return generate_latest(self.registry)

    def close(self) -> None:
        """Stop the HTTP server (if any)."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def _no_created_series() -> None:
    """Drop the *_created series prometheus_client adds by default (noise for this exporter)."""
    import prometheus_client
    disable = getattr(prometheus_client, "disable_created_metrics", None)
    if disable is not None:
        disable()


def _num(value: Any) -> float:
    """A counter value as a float (0 for a missing or non-numeric one)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0

