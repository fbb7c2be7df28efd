"""The kernel's counters record (kernel_daemon/stats.py) keeps STATS's flat map on the wire:
the keys observers, tests and host tools read, integrity failures as a plain {kind: n} map,
and the erasure-coding counters only with --code."""
from __future__ import annotations

from kernel_daemon.stats import KernelStats

#: The keys STATS's "kernel" map carried from the counters before they were a record (and
#: `heartbeats`, since).
WIRE_KEYS = {
    "policy", "nframes", "sealed", "mirrors", "heartbeats", "quota_refusals", "records_omitted",
    "minor_faults", "major_faults", "page_ins", "page_outs", "page_out_requests", "evictions",
    "clean_drops",
    "soft_faults", "writeback_failures", "segfaults", "protection_faults", "integrity_failures",
    "pages_granted", "pager_timeouts", "pager_restarts", "pager_kills", "pager_retries",
    "pager_transient_errors", "repairs", "handle_reopens", "handles_lost", "pager_slow", "resynced",
    "resync_failed", "resync_passes", "resync_pending", "ipc_calls", "ipc_replies",
    "ipc_bytes_copied", "ipc_contract_violations", "ipc_peer_died", "ipc_caps_transferred",
    "ipc_grants", "prefetch", "prefetches", "prefetch_hits", "prefetch_drops", "prefetch_failures",
    "fault_around"}
EC_KEYS = {"code", "ec_page_outs", "ec_short_writes", "ec_page_ins", "ec_degraded_reads",
           "ec_fragments_read", "ec_repairs", "ec_fragments_lost", "ec_late_failures",
           "ec_unrecoverable"}


def test_mirrored_stats_have_the_wire_keys_and_no_erasure_counters() -> None:
    stats = KernelStats("clock", 8, True, 2)
    stats.major_faults += 3
    stats.integrity_failures["tag"] += 2
    out = stats.as_dict()
    assert set(out) == WIRE_KEYS
    assert out["major_faults"] == 3 and out["policy"] == "clock" and out["mirrors"] == 2
    assert out["integrity_failures"] == {"tag": 2}
    assert type(out["integrity_failures"]) is dict       # msgpack-encodable as a plain map


def test_coded_stats_add_the_code_and_the_erasure_counters() -> None:
    stats = KernelStats("lru", 8, True, 6, code="4+2")
    stats.ec_page_ins += 1
    out = stats.as_dict()
    assert set(out) == WIRE_KEYS | EC_KEYS
    assert out["code"] == "4+2" and out["ec_page_ins"] == 1


def test_the_map_is_a_copy() -> None:
    stats = KernelStats("fifo", 1, False, 1)
    out = stats.as_dict()
    out["integrity_failures"]["tag"] = 9
    out["page_ins"] = 9
    assert stats.integrity_failures == {} and stats.page_ins == 0
