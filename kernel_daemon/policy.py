"""Global page-replacement policies: which resident frame to take back when none is free.

Every policy sees the same four events: a frame became resident (`insert`, or `insert_cold`
for a page installed before it was asked for, which goes to the victim end), a frame stopped
being a candidate (`remove`: evicted, freed or pinned), the owner's MMU reported a real
access to it (`touch`), and the kernel needs a victim (`victim`).  Reference information comes
from the processes' MMUs: the runtime records the pages it actually touches and hands the
list to the kernel with every fault and heartbeat, in access order, so LRU and clock see real
accesses, not only fault order.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol


class Policy(Protocol):
    """What the fault code needs of a replacement policy."""
    name: str

    def insert(self, frame: int) -> None: ...
    def insert_cold(self, frame: int) -> None: ...
    def remove(self, frame: int) -> None: ...
    def touch(self, frame: int) -> None: ...
    def victim(self) -> int | None: ...


class Fifo:
    """First in, first out: evict the frame that became resident longest ago."""
    name = "fifo"

    def __init__(self) -> None:
        self._q: OrderedDict[int, bool] = OrderedDict()     # frame -> referenced (clock)

    def insert(self, frame: int) -> None:
        """frame became resident: it goes to the back of the queue (bit clear)."""
        self._q[frame] = False

    def insert_cold(self, frame: int) -> None:
        """frame became resident speculatively (fault-around, vm.py): it goes where the next
        victim is taken (the front: oldest, least recently used, under the hand; bit clear)."""
        self._q[frame] = False
        self._q.move_to_end(frame, last=False)

    def remove(self, frame: int) -> None:
        """frame is no longer a candidate."""
        self._q.pop(frame, None)

    def touch(self, frame: int) -> None:
        """FIFO ignores references."""

    def victim(self) -> int | None:
        """The oldest resident frame, or None."""
        return next(iter(self._q), None)


class Lru(Fifo):
    """Least recently used: a reference moves the frame to the back."""
    name = "lru"

    def touch(self, frame: int) -> None:
        """A real access: frame becomes the most recently used."""
        if frame in self._q:
            self._q.move_to_end(frame)


class ClockPolicy(Fifo):
    """Second chance: a hand sweeps the frames in load order (the queue: a new frame is
    placed just behind the hand); a referenced frame has its bit cleared and is passed over
    once."""
    name = "clock"

    def touch(self, frame: int) -> None:
        """A real access sets the referenced bit."""
        if frame in self._q:
            self._q[frame] = True

    def victim(self) -> int | None:
        """Advance the hand until an unreferenced frame is found (clearing bits on the way)."""
        while self._q:
            frame, referenced = next(iter(self._q.items()))
            if not referenced:
                return frame
            self._q.move_to_end(frame)             # the hand passes: second chance
            self._q[frame] = False
        return None


POLICIES: dict[str, Callable[[], Policy]] = {"fifo": Fifo, "clock": ClockPolicy, "lru": Lru}


def make_policy(name: str) -> Policy:
    """A new policy by name; ValueError for an unknown one."""
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}") from None
