"""The bank: this process's private store for the contents of its resident pages.

The kernel owns the frames (which page sits in which frame, and when it leaves); the bytes of
a resident page live here, in a ``numpy.memmap`` private to the process, at offset
``frame * PAGE_SIZE``.  One bank spans all ``nframes`` global frames, so a frame number from
the kernel is also an offset, but only the frames the kernel lends this process are ever
touched (the file is sparse; untouched frames cost nothing).

The file behind the map is created in a private (0700) temporary directory and unlinked,
with its directory, right after mapping: nothing is left behind however the process ends,
and nothing assumes a filesystem shared with the kernel.  Page contents leave the bank only
as messages (a SHOOTDOWN reply).
"""
from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np

from wire.protocol import PAGE_SIZE

#: Prefer memory-backed storage for the bank file when the host has it.
SHM_DIR: str = "/dev/shm"

ZERO_PAGE: bytes = bytes(PAGE_SIZE)


def _private_dir() -> str:
    """A fresh 0700 directory, in /dev/shm when possible."""
    base = SHM_DIR if os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK) else None
    return tempfile.mkdtemp(prefix="sealedos-bank-", dir=base)


class Bank:
    """nframes page-sized frames of private memory; `buf` is a writable byte memoryview."""

    def __init__(self, nframes: int) -> None:
        if nframes <= 0:
            raise ValueError(f"a bank needs at least one frame, not {nframes}")
        self.nframes = nframes
        self.size_bytes = nframes * PAGE_SIZE
        tmp = _private_dir()
        try:
            path = os.path.join(tmp, "bank")
            self._mm = np.memmap(path, dtype=np.uint8, mode="w+", shape=(self.size_bytes,))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)       # unlinked: only the mapping remains
        #: The whole bank as bytes: slicing and struct.pack_into on it are plain memcpys.
        self.buf: memoryview = memoryview(self._mm)

    def offset(self, frame: int) -> int:
        """The byte offset of `frame` (contract: 0 <= frame < nframes)."""
        return frame * PAGE_SIZE

    def valid(self, frame: object) -> bool:
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
        """Release the mapping (the file was unlinked at creation; unmapped when collected)."""
        if self._mm is not None:
            try:
                self.buf.release()
            except BufferError:          # a slice of it is still alive; the GC will do it
                pass
            self._mm = None
