"""The kernel's counters: one typed record shared by vm, pagers, ecpages, resync and ipc.

A counter is a named field, so a misspelled one is a type error, not a new key.  STATS sends
the record as the flat map it always was (as_dict): configuration, every counter, and
`integrity_failures` as {check kind: count}; the erasure-coding counters and `code` only
with --code.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(slots=True)
class KernelStats:
    """Configuration and every kernel-wide counter."""
    policy: str
    nframes: int
    sealed: bool
    mirrors: int
    code: str | None = None              # "K+R" with erasure-coded pagers
    prefetch: str = "off"                # off, trend or readahead (prefetch.py)
    # vm.py
    minor_faults: int = 0
    major_faults: int = 0
    page_ins: int = 0
    page_outs: int = 0
    page_out_requests: int = 0          # PAGE_OUT requests sent (clustered: several pages each)
    evictions: int = 0
    clean_drops: int = 0
    soft_faults: int = 0
    writeback_failures: int = 0
    segfaults: int = 0
    protection_faults: int = 0
    pages_granted: int = 0
    prefetches: int = 0                  # pages read ahead (issued)
    prefetch_hits: int = 0               # ... later used: faults avoided
    prefetch_drops: int = 0              # ... dropped unused (over the bound), no I/O
    prefetch_failures: int = 0           # ... whose read no mirror verified (nobody stopped)
    fault_around: int = 0                # ... installed alongside a fault on their stream
    integrity_failures: Counter[str] = field(default_factory=Counter)   # check kind -> count
    # pagers.py
    pager_timeouts: int = 0
    pager_slow: int = 0
    pager_restarts: int = 0
    pager_kills: int = 0
    pager_retries: int = 0
    pager_transient_errors: int = 0
    repairs: int = 0
    handle_reopens: int = 0
    handles_lost: int = 0                # OPENs a disk answered `created` for a handle it had
    # ecpages.py (reported with --code only)
    ec_page_outs: int = 0
    ec_short_writes: int = 0
    ec_page_ins: int = 0
    ec_degraded_reads: int = 0
    ec_fragments_read: int = 0
    ec_repairs: int = 0
    ec_fragments_lost: int = 0
    ec_late_failures: int = 0
    ec_unrecoverable: int = 0
    # resync.py
    resynced: int = 0
    resync_failed: int = 0
    resync_passes: int = 0
    resync_pending: int = 0
    # ipc.py
    ipc_calls: int = 0
    ipc_replies: int = 0
    ipc_bytes_copied: int = 0
    ipc_contract_violations: int = 0
    ipc_peer_died: int = 0
    ipc_caps_transferred: int = 0
    ipc_grants: int = 0
    # kernel.py
    heartbeats: int = 0                  # HEARTBEATs served (per-process periodic work)
    quota_refusals: int = 0
    records_omitted: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The record as STATS sends it (integrity_failures a plain map)."""
        out = asdict(self)
        out["integrity_failures"] = dict(self.integrity_failures)
        if self.code is None:
            out = {k: v for k, v in out.items() if k != "code" and not k.startswith("ec_")}
        return out
