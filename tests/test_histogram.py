"""The kernel's latency histograms (kernel_daemon/histogram.py) and what the exporter
(host_tools/metrics.py) makes of them: in-process, from canned STATS replies."""
from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from host_tools.metrics import Exporter, buckets
from host_tools.snapshot import NoKernel
from kernel_daemon.histogram import BOUNDS_US, MAX_LABELS, OTHER, Histograms
from wire.protocol import Op


def test_an_observation_lands_in_the_first_bucket_whose_bound_holds_it() -> None:
    h = Histograms()
    h.observe("major", 10.0)                 # below the first bound
    h.observe("major", BOUNDS_US[0])         # on a bound: bounds are inclusive (Prometheus le)
    h.observe("major", BOUNDS_US[0] + 1)
    h.observe("major", BOUNDS_US[-1] * 2)    # past every bound
    counts = h.record()["major"]["counts"]
    assert len(counts) == len(BOUNDS_US) + 1
    assert counts[0] == 2 and counts[1] == 1 and counts[-1] == 1 and sum(counts) == 4
    assert h.record()["major"]["sum_us"] == 10.0 + BOUNDS_US[0] * 2 + 1 + BOUNDS_US[-1] * 2


def test_labels_past_the_limit_are_counted_as_other() -> None:
    h = Histograms()
    for i in range(MAX_LABELS + 5):
        h.observe(f"ep{i}", 1.0, nbytes=10)
    h.observe("ep0", 1.0, nbytes=3)           # a known label keeps its own series
    rec = h.record()
    assert len(rec) == MAX_LABELS + 1 and f"ep{MAX_LABELS}" not in rec
    assert sum(rec[OTHER]["counts"]) == 5 and rec[OTHER]["bytes"] == 50
    assert sum(rec["ep0"]["counts"]) == 2 and rec["ep0"]["bytes"] == 13


def test_buckets_are_cumulative_seconds_ending_with_inf() -> None:
    assert buckets([50.0, 100.0], [1, 2, 3]) == [("5e-05", 1.0), ("0.0001", 3.0), ("+Inf", 6.0)]


class Canned:
    """A STATS source answering with one fixed reply (or NoKernel when it is None)."""

    def __init__(self, reply: dict[str, Any] | None) -> None:
        self.reply = reply

    def kernel_call(self, op: Op) -> dict[str, Any]:
        assert op == Op.STATS
        if self.reply is None:
            raise NoKernel("no kernel answers")
        return self.reply


def families(source: Canned) -> dict[str, Any]:
    """One scrape of an exporter over `source`, parsed: {family name: family}."""
    text = Exporter(source).render().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict[str, Any], sample: str, **labels: str) -> float:
    """The one sample called `sample` with exactly `labels`."""
    found = [s.value for f in fams.values() for s in f.samples
             if s.name == sample and s.labels == labels]
    assert len(found) == 1, (sample, labels, found)
    return float(found[0])


def test_a_stats_reply_becomes_counters_gauges_and_histograms() -> None:
    vm, ipc = Histograms(), Histograms()
    for us in (40.0, 300.0, 300.0):
        vm.observe("major", us)
    vm.observe("disk_read", 120.0)
    ipc.observe("kv", 200.0, nbytes=64)
    reply = {
        "kernel": {"policy": "clock", "nframes": 16, "sealed": True, "mirrors": 1,
                   "free_frames": 3, "major_faults": 3, "minor_faults": 7, "page_ins": 3,
                   "integrity_failures": {"tag": 2}, "bad_messages": 1, "resync_passes": 4,
                   "pagers": [{"mirror": 0, "up": True, "inflight": 1, "backlog": 0,
                               "joins": 2}]},
        "processes": [
            {"spid": 2, "name": "memstress.1", "state": "running", "resident_pages": 5,
             "swapped_pages": 9, "minor_faults": 7, "major_faults": 3, "ipc_calls_in": 0,
             "ipc_calls_out": 1},
            {"spid": 1, "name": "gone", "state": "exited", "resident_pages": 0}],
        "histograms": {"bounds_us": list(BOUNDS_US), "vm": vm.record(), "ipc": ipc.record()}}
    fams = families(Canned(reply))
    assert value(fams, "sealedos_kernel_up") == 1
    assert value(fams, "sealedos_faults_total", kind="major") == 3
    assert value(fams, "sealedos_faults_total", kind="minor") == 7
    assert value(fams, "sealedos_page_ins_total") == 3
    assert value(fams, "sealedos_integrity_failures_total", kind="tag") == 2
    assert value(fams, "sealedos_bad_messages_total") == 1
    assert value(fams, "sealedos_kernel_stat", name="resync_passes") == 4
    assert value(fams, "sealedos_frames") == 16 and value(fams, "sealedos_frames_free") == 3
    assert value(fams, "sealedos_pager_up", mirror="0") == 1
    assert value(fams, "sealedos_pager_joins_total", mirror="0") == 2
    assert value(fams, "sealedos_processes") == 1, "exited records are not live processes"
    assert value(fams, "sealedos_process_faults_total", spid="2", name="memstress.1",
                 kind="major") == 3
    assert value(fams, "sealedos_fault_seconds_count", kind="major") == 3
    assert value(fams, "sealedos_fault_seconds_bucket", kind="major", le="5e-05") == 1
    assert value(fams, "sealedos_fault_seconds_bucket", kind="major", le="0.0005") == 3
    assert value(fams, "sealedos_fault_seconds_sum", kind="major") == pytest.approx(640e-6)
    assert value(fams, "sealedos_disk_read_seconds_count") == 1
    assert value(fams, "sealedos_ipc_calls_total", endpoint="kv") == 1
    assert value(fams, "sealedos_ipc_bytes_total", endpoint="kv") == 64
    assert value(fams, "sealedos_ipc_call_seconds_bucket", endpoint="kv", le="0.00025") == 1


def test_a_silent_kernel_is_kernel_up_zero_and_nothing_else() -> None:
    fams = families(Canned(None))
    assert value(fams, "sealedos_kernel_up") == 0
    assert set(fams) == {"sealedos_kernel_up"}
