"""Process records for STATS and PS, bounded: no process's record can make the reply too big.

What a process REPORTs is kept in its record (apply_report): at most REPORT_MAX_KEYS scalar
values of at most REPORT_VALUE_MAX_BYTES each, and their bytes are charged to its quota
(report_bytes).

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

from kernel_daemon.proc import Proc
from kernel_daemon.quota import Resource
from wire.protocol import MAX_FRAME_BYTES, Err, ServiceError, encode

REPORT_MAX_KEYS: int = 64
#: Longest REPORT value kept (a str's UTF-8 bytes; a number counts as 8).
REPORT_VALUE_MAX_BYTES: int = 1024

#: The most the process records of one STATS or PS reply may take, encoded (the rest of the
#: reply -- counters, pager health, endpoints -- stays well within the frame limit beside it).
RECORDS_MAX_BYTES: int = MAX_FRAME_BYTES // 2


def _value_bytes(value: Any) -> int:
    """What one REPORT value costs: a str its UTF-8 bytes, anything else 8."""
    return len(value.encode("utf-8", "replace")) if isinstance(value, str) else 8


def _report_bytes(report: dict[str, Any]) -> int:
    """What a whole report costs (keys and values), charged as report_bytes."""
    return sum(len(k.encode("utf-8", "replace")) + _value_bytes(v) for k, v in report.items())


def apply_report(proc: Proc, data: dict[Any, Any]) -> None:
    """Merge a REPORT's scalar values into proc's report; EINVAL for too many keys or a
    value too long, EQUOTA past its report_bytes (nothing changes then)."""
    if len(data) > REPORT_MAX_KEYS:
        raise ServiceError(Err.INVAL, f"report: at most {REPORT_MAX_KEYS} keys")
    clean = {str(k)[:64]: v for k, v in data.items()
             if isinstance(v, (int, float, str, bool, type(None)))}
    for key, value in clean.items():
        if _value_bytes(value) > REPORT_VALUE_MAX_BYTES:
            raise ServiceError(Err.INVAL, f"report: value of {key!r} is {_value_bytes(value)} "
                                          f"bytes, over the {REPORT_VALUE_MAX_BYTES}-byte limit")
    merged = {**proc.report, **clean}
    if len(merged) > REPORT_MAX_KEYS:
        raise ServiceError(Err.INVAL, f"report: at most {REPORT_MAX_KEYS} keys")
    old, new = _report_bytes(proc.report), _report_bytes(merged)
    if new > old:
        proc.quota.charge(Resource.REPORT_BYTES, new - old)
    else:
        proc.quota.release(Resource.REPORT_BYTES, old - new)
    proc.report = merged


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
