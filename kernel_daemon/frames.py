"""The one global pool of physical frames, shared by every sealed process.

A frame is a number; its bytes live in the bank of the process it is lent to (the kernel
keeps only who holds it).  The pool knows, for each frame, its owner (spid, vpn) or that it
is free; which frame to take back is the replacement policy's business (policy.py).
"""
from __future__ import annotations

from collections import deque

from wire.server import Panic

FREE: tuple[int, int] = (-1, -1)


class FramePool:
    """Frames 0..n-1: a free list and an owner table."""

    def __init__(self, nframes: int) -> None:
        if nframes < 1:
            raise ValueError("the pool needs at least one frame")
        self.nframes = nframes
        self.owner: list[tuple[int, int]] = [FREE] * nframes
        self._free: deque[int] = deque(range(nframes))

    @property
    def free_count(self) -> int:
        """How many frames are free."""
        return len(self._free)

    def alloc(self, spid: int, vpn: int) -> int | None:
        """Lend a free frame to (spid, vpn); None when none is free."""
        if not self._free:
            return None
        frame = self._free.popleft()
        if self.owner[frame] != FREE:
            raise Panic(f"frame {frame} on the free list is owned by {self.owner[frame]}")
        self.owner[frame] = (spid, vpn)
        return frame

    def release(self, frame: int) -> None:
        """Return a lent frame to the free list; freeing a free frame panics."""
        if self.owner[frame] == FREE:
            raise Panic(f"double free of frame {frame}")
        self.owner[frame] = FREE
        self._free.append(frame)
