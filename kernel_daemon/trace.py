"""Tracing: each fault and each IPC call as Chrome trace-event JSON (Perfetto opens it).

A fault or call is an async slice (ph "b" ... "e", keyed by an id) with instant events
("n") for its steps: kernel received, pager asked, frame ready, disk read, verified,
installed.  Each sealed process is its own trace "process" (pid = its sealed pid, named
"NAME (spid N)"), because viewers group async slices by process: Perfetto and
chrome://tracing then show one group of fault and call rows per sealed process, and
overlapping slices stay apart because each has its own id.  The file is written when the
kernel stops (and on demand by flush()).

Contract: every "b" in the file has exactly one matching "e" (same cat and id).  end() of a
slice that is not open is ignored, steps of a closed slice are dropped, end_track() closes
whatever a dying process left open, and flush() closes the slices still open at that moment
(args.outcome "unfinished") in the file it writes without closing them in memory.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

#: Keep at most this many begin/step/instant events (a long run keeps its first ones);
#: the end of a recorded begin is always kept.
MAX_EVENTS: int = 2_000_000


class Tracer:
    """Collects trace events in memory; a Tracer with no path records nothing."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self.enabled = self.path is not None
        self.events: list[dict[str, Any]] = []
        self._t0 = time.perf_counter()
        self._named: set[int] = set()
        self._open: dict[tuple[str, int], tuple[str, int]] = {}    # (cat, key) -> (name, tid)

    def _us(self) -> float:
        """Microseconds since the tracer started."""
        return round((time.perf_counter() - self._t0) * 1e6, 1)

    def _add(self, ev: dict[str, Any]) -> bool:
        """Append ev unless the cap is reached; True when it was kept."""
        if len(self.events) < MAX_EVENTS:
            self.events.append(ev)
            return True
        return False

    def name_track(self, tid: int, name: str) -> None:
        """Label track `tid` (a sealed pid: a trace process and its one thread) with `name`."""
        if self.enabled and tid not in self._named:
            self._named.add(tid)
            for kind in ("process_name", "thread_name"):
                self._add({"ph": "M", "name": kind, "pid": tid, "tid": tid,
                           "args": {"name": name}})

    def is_open(self, cat: str, key: int) -> bool:
        """True while slice (cat, key) has begun and not ended."""
        return (cat, key) in self._open

    def begin(self, cat: str, name: str, key: int, tid: int, **args: Any) -> None:
        """Open an async slice `key` on track `tid` (a second begin of an open key is ignored)."""
        if not self.enabled or (cat, key) in self._open:
            return
        if self._add({"ph": "b", "cat": cat, "name": name, "id": key, "pid": tid,
                      "tid": tid, "ts": self._us(), "args": args}):
            self._open[(cat, key)] = (name, tid)

    def step(self, cat: str, name: str, key: int, tid: int, step: str, **args: Any) -> None:
        """Mark one step inside open slice `key` (dropped when the slice is not open)."""
        if self.enabled and (cat, key) in self._open:
            self._add({"ph": "n", "cat": cat, "name": step, "id": key, "pid": tid,
                       "tid": tid, "ts": self._us(), "args": args})

    def end(self, cat: str, name: str, key: int, tid: int, **args: Any) -> None:
        """Close async slice `key`; a no-op when it is not open (so ends may be repeated)."""
        if not self.enabled:
            return
        opened = self._open.pop((cat, key), None)
        if opened is not None:
            self.events.append({"ph": "e", "cat": cat, "name": opened[0], "id": key,
                                "pid": opened[1], "tid": opened[1], "ts": self._us(),
                                "args": args})

    def end_track(self, tid: int, **args: Any) -> int:
        """Close every slice still open on track `tid` (its process is gone); how many."""
        keys = [ck for ck, (_, t) in self._open.items() if t == tid]
        for cat, key in keys:
            self.end(cat, "", key, tid, **args)
        return len(keys)

    def instant(self, cat: str, name: str, tid: int, **args: Any) -> None:
        """A zero-length event on track `tid` (a fault refused before any work: SEGV, PROT)."""
        if self.enabled:
            self._add({"ph": "i", "s": "t", "cat": cat, "name": name, "pid": tid,
                       "tid": tid, "ts": self._us(), "args": args})

    def flush(self) -> None:
        """Write every event so far to the trace file (atomically), open slices closed; an
        unwritable path is reported on stderr, not raised."""
        if self.path is None:
            return
        now = self._us()
        closing = [{"ph": "e", "cat": cat, "name": name, "id": key, "pid": tid,
                    "tid": tid, "ts": now, "args": {"outcome": "unfinished"}}
                   for (cat, key), (name, tid) in self._open.items()]
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        try:
            with open(tmp, "w") as out:
                json.dump({"traceEvents": self.events + closing, "displayTimeUnit": "ms"}, out,
                          separators=(",", ":"))
            tmp.replace(self.path)
        except OSError as exc:             # the kernel is stopping: say so, do not crash
            print(f"kernel: cannot write the trace to {self.path}: {exc}", file=sys.stderr)


def slice_key(spid: int, rid: int) -> int:
    """The trace id of request `rid` of process `spid` (unique while rids stay below 2**32)."""
    return spid << 32 | rid & 0xFFFFFFFF


def us_field(value: Any) -> float | None:
    """A peer-reported duration in microseconds, or None unless it is a plausible number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e9:
        return float(value)
    return None
