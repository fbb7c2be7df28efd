"""Tracing: each fault and each IPC call as Chrome trace-event JSON (Perfetto opens it).

A fault or call is an async slice (ph "b" ... "e", keyed by an id) on its process's track,
with instant events ("n") for its steps: kernel received, pager asked, disk read, verified,
installed.  Overlapping faults of different processes stay apart because each slice has
its own id.  The file is written when the kernel stops (and on demand by flush()).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

#: Keep at most this many events (a long run keeps its first ones).
MAX_EVENTS: int = 2_000_000


class Tracer:
    """Collects trace events in memory; a Tracer with no path records nothing."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self.enabled = self.path is not None
        self.events: list[dict[str, Any]] = []
        self._t0 = time.perf_counter()
        self._pid = os.getpid()
        self._named: set[int] = set()

    def _us(self) -> float:
        return round((time.perf_counter() - self._t0) * 1e6, 1)

    def _add(self, ev: dict[str, Any]) -> None:
        if len(self.events) < MAX_EVENTS:
            self.events.append(ev)

    def name_track(self, tid: int, name: str) -> None:
        """Label track `tid` (a sealed pid, or a service) with `name`."""
        if self.enabled and tid not in self._named:
            self._named.add(tid)
            self._add({"ph": "M", "name": "thread_name", "pid": self._pid, "tid": tid,
                       "args": {"name": name}})

    def begin(self, cat: str, name: str, key: int, tid: int, **args: Any) -> None:
        """Open an async slice `key` on track `tid`."""
        if self.enabled:
            self._add({"ph": "b", "cat": cat, "name": name, "id": key, "pid": self._pid,
                       "tid": tid, "ts": self._us(), "args": args})

    def step(self, cat: str, name: str, key: int, tid: int, step: str, **args: Any) -> None:
        """Mark one step inside slice `key`."""
        if self.enabled:
            self._add({"ph": "n", "cat": cat, "name": step, "id": key, "pid": self._pid,
                       "tid": tid, "ts": self._us(), "args": args})

    def end(self, cat: str, name: str, key: int, tid: int, **args: Any) -> None:
        """Close async slice `key`."""
        if self.enabled:
            self._add({"ph": "e", "cat": cat, "name": name, "id": key, "pid": self._pid,
                       "tid": tid, "ts": self._us(), "args": args})

    def flush(self) -> None:
        """Write every event so far to the trace file (atomically)."""
        if self.path is None:
            return
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps({"traceEvents": self.events, "displayTimeUnit": "ms"}))
        tmp.replace(self.path)
