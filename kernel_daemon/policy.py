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

from array import array
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
    """First in, first out: evict the frame that became resident longest ago.

    The queue is a circular doubly linked list over frame numbers (`_next`, `_prev`, with a
    member and a referenced byte per frame): a few bytes a frame, grown as frame numbers
    are seen, instead of a node object per resident frame.  `_head` is the front (-1:
    empty); the back is just behind it."""
    name = "fifo"

    def __init__(self) -> None:
        self._next = array("i")
        self._prev = array("i")
        self._member = bytearray()
        self._ref = bytearray()                 # the referenced bits (clock)
        self._head = -1

    def insert(self, frame: int) -> None:
        """frame became resident: it goes to the back of the queue (bit clear)."""
        if frame >= len(self._member):
            grow = frame + 1 - len(self._member)
            self._next.extend([-1] * grow)
            self._prev.extend([-1] * grow)
            self._member.extend(bytes(grow))
            self._ref.extend(bytes(grow))
        self._ref[frame] = 0
        if self._member[frame]:
            return
        self._member[frame] = 1
        head, nxt, prv = self._head, self._next, self._prev
        if head < 0:
            nxt[frame] = prv[frame] = self._head = frame
        else:                                   # at the back: just behind the head
            tail = prv[head]
            nxt[tail], prv[frame], nxt[frame], prv[head] = frame, tail, head, frame

    def insert_cold(self, frame: int) -> None:
        """frame became resident speculatively (fault-around, vm.py): it goes where the next
        victim is taken (the front: oldest, least recently used, under the hand; bit clear)."""
        self.remove(frame)
        self.insert(frame)                      # at the back: just behind the head ...
        self._head = frame                      # ... so as the head it is the front

    def remove(self, frame: int) -> None:
        """frame is no longer a candidate."""
        if 0 <= frame < len(self._member) and self._member[frame]:
            self._member[frame] = 0
            self._unlink(frame)

    def touch(self, frame: int) -> None:
        """FIFO ignores references."""

    def victim(self) -> int | None:
        """The oldest resident frame, or None."""
        return None if self._head < 0 else self._head

    def _unlink(self, frame: int) -> None:
        """Take frame out of the list."""
        nxt, prv = self._next[frame], self._prev[frame]
        if nxt == frame:
            self._head = -1
            return
        self._next[prv], self._prev[nxt] = nxt, prv
        if self._head == frame:
            self._head = nxt


class Lru(Fifo):
    """Least recently used: a reference moves the frame to the back."""
    name = "lru"

    def touch(self, frame: int) -> None:
        """A real access: frame becomes the most recently used."""
        if 0 <= frame < len(self._member) and self._member[frame]:
            if frame == self._head:
                self._head = self._next[frame]       # the back is just behind the head
            elif self._next[frame] != self._head:
                self.remove(frame)
                self.insert(frame)


class ClockPolicy(Fifo):
    """Second chance: a hand sweeps the frames in load order (the queue: a new frame is
    placed just behind the hand); a referenced frame has its bit cleared and is passed over
    once."""
    name = "clock"

    def touch(self, frame: int) -> None:
        """A real access sets the referenced bit."""
        if 0 <= frame < len(self._member) and self._member[frame]:
            self._ref[frame] = 1

    def victim(self) -> int | None:
        """Advance the hand until an unreferenced frame is found (clearing bits on the way)."""
        while self._head >= 0:
            frame = self._head
            if not self._ref[frame]:
                return frame
            self._ref[frame] = 0                 # the hand passes: second chance
            self._head = self._next[frame]
        return None


POLICIES: dict[str, Callable[[], Policy]] = {"fifo": Fifo, "clock": ClockPolicy, "lru": Lru}


def make_policy(name: str) -> Policy:
    """A new policy by name; ValueError for an unknown one."""
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}") from None
