"""The one global pool of physical frames, shared by every sealed process.

A frame is a number; its bytes live in the bank of the process it is lent to (the kernel
keeps only who holds it).  The pool knows, for each frame, its owner (spid, vpn) or that it
is free; which frame to take back is the replacement policy's business (policy.py).  The
owner table is two arrays made once (12 bytes a frame), not a tuple per lent frame.
"""
from __future__ import annotations

from array import array
from collections import deque

from wire.server import Panic

FREE: tuple[int, int] = (-1, -1)


class FramePool:
    """Frames 0..n-1: a free list and an owner table."""

    def __init__(self, nframes: int) -> None:
        if nframes < 1:
            raise ValueError("the pool needs at least one frame")
        self.nframes = nframes
        self._spid = array("i", [-1]) * nframes     # owner's spid, -1 = free
        self._vpn = array("q", [-1]) * nframes      # owner's vpn
        self._free: deque[int] = deque(range(nframes))

    @property
    def free_count(self) -> int:
        """How many frames are free."""
        return len(self._free)

    def owner(self, frame: int) -> tuple[int, int]:
        """Who holds frame: (spid, vpn), or FREE."""
        return self._spid[frame], self._vpn[frame]

    def alloc(self, spid: int, vpn: int) -> int | None:
        """Lend a free frame to (spid, vpn); None when none is free."""
        if not self._free:
            return None
        frame = self._free.popleft()
        if self._spid[frame] != -1:
            raise Panic(f"frame {frame} on the free list is owned by {self.owner(frame)}")
        self._spid[frame], self._vpn[frame] = spid, vpn
        return frame

    def release(self, frame: int) -> None:
        """Return a lent frame to the free list; freeing a free frame panics."""
        if self._spid[frame] == -1:
            raise Panic(f"double free of frame {frame}")
        self._spid[frame] = self._vpn[frame] = -1
        self._free.append(frame)
