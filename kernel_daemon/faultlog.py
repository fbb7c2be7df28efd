"""The kernel's fault log: a bounded ring of the most recent faults, read since a cursor.

Counters and percentiles (STATS) say how the system did on the whole; they cannot say *when*
the pager died or how long the first fault after it waited.  The fault log keeps, for each of
the last FAULT_LOG_CAPACITY faults served, when it ended, its kind (minor or major), its
latency as the kernel measured it (request received -> reply sent) and the faulting spid.

A reader (``sealedos chaos``, a plot) asks ``fault_log {cursor}`` and gets every record with
a sequence number >= cursor that is still in the ring, plus the cursor to ask with next time;
records that fell off the ring before it asked are counted in ``dropped``, never silently
skipped.  Times are the kernel host's CLOCK_MONOTONIC seconds (time.monotonic()), so a
reader on the same host can put its own events (a kill) on the same axis.

Cost: one tuple per fault (about 100 bytes of Python objects), so at most a few MiB at the
default capacity; appending is O(1) and never blocks the loop.
"""
from __future__ import annotations

from collections import deque
from itertools import islice
from typing import NamedTuple

#: How many faults the ring remembers.
FAULT_LOG_CAPACITY: int = 65536
#: The most records one fault_log reply carries (keeps a reply well under a frame's limit).
FAULT_LOG_MAX_REPLY: int = 8192


class FaultRecord(NamedTuple):
    """One served fault: when it ended, what kind it was, how long it took, whose it was."""
    t_s: float              # CLOCK_MONOTONIC seconds when the reply was built
    kind: str               # "minor" or "major"
    latency_us: float       # request received -> reply built, as the kernel measured it
    spid: int


class FaultLog:
    """A bounded ring of FaultRecords with monotonically numbered entries."""

    def __init__(self, capacity: int = FAULT_LOG_CAPACITY) -> None:
        self.ring: deque[FaultRecord] = deque(maxlen=capacity)
        self.next_seq = 0                        # the sequence number the next record gets

    def add(self, t_s: float, kind: str, latency_us: float, spid: int) -> None:
        """Append one record (the oldest falls off when the ring is full)."""
        self.ring.append(FaultRecord(t_s, kind, round(latency_us, 1), spid))
        self.next_seq += 1

    def since(self, cursor: int, limit: int = FAULT_LOG_MAX_REPLY
              ) -> tuple[list[FaultRecord], int, int]:
        """(records numbered >= cursor, oldest first, at most `limit`; the next cursor; how
        many records numbered >= cursor were already gone).  A cursor beyond the newest
        record, or negative, is read as "from the oldest still kept" / "nothing new"."""
        first_kept = self.next_seq - len(self.ring)
        cursor = min(max(cursor, 0), self.next_seq)
        dropped = max(0, first_kept - cursor)
        start = max(cursor, first_kept)
        newer = self.next_seq - start            # records from `start` to the newest
        tail = list(islice(reversed(self.ring), newer))[::-1]      # O(newer), not O(ring)
        records = tail[:limit]
        return records, start + len(records), dropped
