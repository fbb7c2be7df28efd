"""Process records for STATS and PS, bounded: no process's record can make the reply too big.

A record is the kernel's view of one process (proc.py: Proc.record), including the values it
REPORTed.  Each report is bounded by the process's quota, but there may be many processes and
up to EXITED_KEEP exited ones, so the list as a whole is bounded too: when the records add up
to more than RECORDS_MAX_BYTES, the reports of exited processes are cut down to their
checksum first, then the oldest exited records are left out, then live processes' reports are
cut down, and last the list itself is cut.  A cut report says so (``report: {"checksum":
..., "omitted": n}``) and the kernel counts records left out (``records_omitted`` in stats).
"""
from __future__ import annotations

from typing import Any

from wire.protocol import MAX_FRAME_BYTES, encode

#: The most the process records of one STATS or PS reply may take, encoded (the rest of the
#: reply -- counters, pager health, endpoints -- stays well within the frame limit beside it).
RECORDS_MAX_BYTES: int = MAX_FRAME_BYTES // 2


def _size(record: dict[str, Any]) -> int:
    """One record's encoded size."""
    return len(encode(record))


def _slim(record: dict[str, Any]) -> dict[str, Any]:
    """The record with its report cut down to the checksum verdict."""
    report = record.get("report") or {}
    if len(report) <= 1 and "checksum" in report or not report:
        return record
    out = dict(record)
    out["report"] = {"checksum": report.get("checksum"), "omitted": len(report)}
    return out


def bounded_records(live: list[dict[str, Any]], exited: list[dict[str, Any]],
                    max_bytes: int = RECORDS_MAX_BYTES) -> tuple[list[dict[str, Any]], int]:
    """(live + exited records (oldest exited first), how many were left out), cut as the
    module docstring says so that they encode to at most about max_bytes."""
    sizes_live = [_size(r) for r in live]
    sizes_exited = [_size(r) for r in exited]
    total = sum(sizes_live) + sum(sizes_exited)
    if total <= max_bytes:
        return live + exited, 0
    exited = [_slim(r) for r in exited]
    sizes_exited = [_size(r) for r in exited]
    total = sum(sizes_live) + sum(sizes_exited)
    dropped = 0
    while exited and total > max_bytes:
        total -= sizes_exited[dropped]
        dropped += 1
        if dropped == len(exited):
            break
    exited = exited[dropped:]
    if total > max_bytes:
        live = [_slim(r) for r in live]
        total = sum(_size(r) for r in live)
    kept_live = live
    if total > max_bytes:                      # even slim live records do not fit: cut the list
        kept_live, total = [], 0
        for r in live:
            size = _size(r)
            if total + size > max_bytes:
                break
            kept_live.append(r)
            total += size
    return kept_live + exited, dropped + len(live) - len(kept_live)
