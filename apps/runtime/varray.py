"""VArray: a typed, numpy-flavoured window onto a range of a sealed process's virtual memory.

Nothing is cached: every ``v[i]`` or ``v[a:b]`` goes through the MMU, page by page, so each
page is faulted in when (and only when) it is touched, and the reference record sees the
accesses in order.  Reads copy out into a fresh numpy array; writes copy in.  Only integer
indices and slices of step 1 are supported (a strided access would touch pages in an order
the caller did not write down).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from apps.runtime.process import SealedProcess


class VArray:
    """count elements of dtype at virtual address addr of `proc`."""

    def __init__(self, proc: SealedProcess, addr: int, dtype: Any, count: int) -> None:
        if count < 0:
            raise ValueError(f"a view needs a non-negative count, not {count}")
        self.proc = proc
        self.addr = addr
        self.dtype = np.dtype(dtype)
        self.count = count
        self.itemsize: int = self.dtype.itemsize

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"VArray(addr={self.addr:#x}, dtype={self.dtype}, count={self.count})"

    @property
    def nbytes(self) -> int:
        """The view's size in bytes."""
        return self.count * self.itemsize

    def _span(self, key: int | slice) -> tuple[int, int, bool]:
        """(start, stop, is_scalar) of an index or a step-1 slice, bounds-checked."""
        if isinstance(key, slice):
            start, stop, step = key.indices(self.count)
            if step != 1:
                raise IndexError("a VArray slice must have step 1")
            return start, max(start, stop), False
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            i = int(key)
            if i < 0:
                i += self.count
            if not 0 <= i < self.count:
                raise IndexError(f"index {int(key)} out of range for {self.count} elements")
            return i, i + 1, True
        raise TypeError(f"VArray indices must be ints or slices, not {type(key).__name__}")

    def _load(self, start: int, stop: int) -> np.ndarray:
        """Elements [start, stop) copied out of virtual memory."""
        out = np.empty(stop - start, dtype=self.dtype)
        if stop > start:
            self.proc.mmu.read_into(self.addr + start * self.itemsize, out.data.cast("B"))
        return out

    def __getitem__(self, key: int | slice) -> Any:
        start, stop, scalar = self._span(key)
        out = self._load(start, stop)
        return out[0] if scalar else out

    def __setitem__(self, key: int | slice, value: Any) -> None:
        start, stop, _ = self._span(key)
        n = stop - start
        src = np.asarray(value, dtype=self.dtype)
        if src.shape != (n,):
            src = np.ascontiguousarray(np.broadcast_to(src, (n,)))
        else:
            src = np.ascontiguousarray(src)
        if n:
            self.proc.mmu.write(self.addr + start * self.itemsize, src.data.cast("B"))

    def to_numpy(self) -> np.ndarray:
        """The whole view as a numpy array (a copy)."""
        return self._load(0, self.count)
