"""The bank: this process's private store for the contents of its resident pages.

The kernel owns the frames (which page sits in which frame, and when it leaves); the bytes of
a resident page live here, in private anonymous memory (an ``mmap`` with no file behind it),
at offset ``frame * PAGE_SIZE``.  One bank spans all ``nframes`` global frames, so a frame
number from the kernel is also an offset, but only the frames the kernel lends this process
are ever touched (untouched frames cost nothing).

No file, no name: nothing is left behind however the process ends, no other process can open
it, and the process needs no writable directory (a confined sealed process has none but its
own).  Page contents leave the bank only as messages (a SHOOTDOWN reply).
"""
from __future__ import annotations

import mmap
from typing import TypeGuard

from wire.protocol import PAGE_SIZE

ZERO_PAGE: bytes = bytes(PAGE_SIZE)


class Bank:
    """nframes page-sized frames of private memory; `buf` is a writable byte memoryview."""

    def __init__(self, nframes: int) -> None:
        if nframes <= 0:
            raise ValueError(f"a bank needs at least one frame, not {nframes}")
        self.nframes = nframes
        self.size_bytes = nframes * PAGE_SIZE
        self._mm: mmap.mmap | None = mmap.mmap(-1, self.size_bytes,
                                               flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        #: The whole bank as bytes: slicing and struct.pack_into on it are plain memcpys.
        self.buf: memoryview = memoryview(self._mm)
        #: The same bytes as native 64-bit words (the MMU's aligned word access on a
        #: little-endian host: an index, not a struct call).
        self.words: memoryview = self.buf.cast("Q")

    def offset(self, frame: int) -> int:
        """The byte offset of `frame` (contract: 0 <= frame < nframes)."""
        return frame * PAGE_SIZE

    def valid(self, frame: object) -> TypeGuard[int]:
        """True when `frame` is a frame number of this bank."""
        return isinstance(frame, int) and not isinstance(frame, bool) and 0 <= frame < self.nframes

    def page(self, frame: int) -> bytes:
        """A copy of frame `frame`'s contents."""
        off = frame * PAGE_SIZE
        return bytes(self.buf[off:off + PAGE_SIZE])

    def fill(self, frame: int, data: bytes | None) -> None:
        """Overwrite frame `frame` with data (exactly PAGE_SIZE bytes), or zeros if None."""
        off = frame * PAGE_SIZE
        self.buf[off:off + PAGE_SIZE] = ZERO_PAGE if data is None else data

    def close(self) -> None:
        """Release the mapping (unmapped now, or when the last slice of it is collected)."""
        if self._mm is not None:
            try:
                self.words.release()
                self.buf.release()
                self._mm.close()
            except BufferError:          # a slice of it is still alive; the GC will do it
                pass
            self._mm = None
