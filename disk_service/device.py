"""The block device: one file, accessed only through a numpy.memmap of uint8.

The file's format is described in layout.py.  Everything needed to find every handle and
every block lives in the file; the in-memory indexes (token hash -> handle, (handle, virtual
block) -> block, live slots, free blocks) are rebuilt from it on open, so a disk service
restarted on the same file, even after SIGKILL, serves every handle and block as before.
A handle's slots are records of its own size (layout.py: several to a block, packed).

Write ordering (the crash contract; a SIGKILL can stop us between any two stores):

* a new block: zeroed data first, then the map record's virtual block and cleared live
  mask, then its owner (the commit point of the block);
* a new slot: its blocks exist first, then its bytes, then its live bit (the commit point),
  so a live slot never points at bytes that were not written;
* a rewrite of a live slot: the data is overwritten in place;
* open: token hash, label and record size first, then in_use (the commit point);
* free: the live bit is cleared first, then blocks no live slot touches are released;
  close: map owners are cleared first, then in_use, so no block is ever owned by a closed
  handle; its token hash stays (a tombstone: a late OPEN of it is refused), and a CLOSE of
  a token not held writes one into a free record (in_use stays 0).  (A crash between the
  steps of a write or a free can leave a block owned but unused: it is freed when its
  handle is closed.)

A file that exists but fails any check is refused with DeviceError and is never written:
it is checked through a read-only mapping and reopened writable only once it passed.
Durability across power loss is flush()'s job (msync); the page cache survives SIGKILL.
"""
from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from disk_service.layout import (
    DEFAULT_MAX_HANDLES,
    DEFAULT_SIZE_MIB,
    FREE_OWNER,
    HANDLE_DTYPE,
    LABEL_MAX_BYTES,
    MAP_DTYPE,
    MIN_RECORD_BYTES,
    SLOT_LIMIT,
    SUPERBLOCK_DTYPE,
    TOKEN_BYTES,
    DeviceError,
    Geometry,
    check_superblock,
    first_slot,
    pack_superblock,
    plan,
    slot_span,
    slots_touching,
    token_hash,
)
from wire import entropy
from wire.protocol import BLOCK_SIZE, Err, ServiceError
from wire.server import Panic

__all__ = ["Device", "DeviceError", "DeviceStats", "format_device"]

MIB: int = 1 << 20
#: A device file is readable and writable by its disk's uid only.
DEVICE_MODE: int = 0o600


# -- creating and checking a device file -------------------------------------------------

def format_device(path: Path, size_mib: int, max_handles: int = DEFAULT_MAX_HANDLES) -> None:
    """Create and format a new device file at `path`; never touches an existing file."""
    if not isinstance(size_mib, int) or size_mib < 1:
        raise DeviceError(f"device size must be a positive number of MiB, got {size_mib!r}")
    geo = plan(size_mib * MIB // BLOCK_SIZE, max_handles)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.formatting")
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, DEVICE_MODE)
        with open(fd, "wb") as f:
            os.fchmod(fd, DEVICE_MODE)                       # whatever the umask: the disk's only
            f.truncate(geo.size_bytes)                       # sparse: only metadata is written
        mm = np.memmap(tmp, dtype=np.uint8, mode="r+")
        _map_view(mm, geo)["owner"] = FREE_OWNER
        mm[:SUPERBLOCK_DTYPE.itemsize] = pack_superblock(geo).view(np.uint8)
        mm.flush()
        del mm
        _publish(tmp, path)
    except OSError as exc:
        raise DeviceError(f"cannot create device file: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _publish(tmp: Path, path: Path) -> None:
    """Give formatted file `tmp` the name `path` atomically, never clobbering an existing file."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        return                                  # someone else created it first: check theirs
    except OSError:                             # no hard links here: rename (checked absent above)
        if not path.exists():
            os.rename(tmp, path)


def _handle_view(mm: np.ndarray, geo: Geometry) -> np.ndarray:
    """The handle table of mapping `mm`, as max_handles HANDLE_DTYPE records."""
    start = geo.handle_table_block * BLOCK_SIZE
    return mm[start:start + geo.max_handles * HANDLE_DTYPE.itemsize].view(HANDLE_DTYPE)


def _map_view(mm: np.ndarray, geo: Geometry) -> np.ndarray:
    """The block map of mapping `mm`, as data_blocks MAP_DTYPE records."""
    start = geo.map_block * BLOCK_SIZE
    return mm[start:start + geo.data_blocks * MAP_DTYPE.itemsize].view(MAP_DTYPE)


class _Index:
    """The in-memory indexes rebuilt from one device's metadata."""

    def __init__(self) -> None:
        self.tokens: dict[bytes, int] = {}              # token_hash(token) -> handle index
        self.slots: dict[int, dict[int, int]] = {}      # handle index -> virtual block -> block
        self.live: dict[int, set[int]] = {}             # handle index -> slots holding data
        self.size: dict[int, int] = {}                  # handle index -> record size (bytes)
        self.free_blocks: list[int] = []                # pop() gives the lowest free block
        self.free_handles: list[int] = []               # pop() gives the lowest free index
        #: Closed handles whose slot still holds their token hash (a tombstone: a late OPEN
        #: of that token is refused), oldest first; reused only when no slot is free.
        self.closed: dict[bytes, int] = {}


def _scan_handles(ht: np.ndarray, idx: _Index) -> np.ndarray:
    """Fill idx.tokens/free_handles from handle table `ht`; return in_use as bools."""
    in_use = np.array(ht["in_use"])
    bad = np.flatnonzero(in_use > 1)
    if bad.size:
        raise DeviceError(f"corrupt sealedos disk (handle {bad[0]} has in-use flag "
                          f"{in_use[bad[0]]})")
    used = np.flatnonzero(in_use)
    long_labels = used[np.array(ht["label_len"])[used] > LABEL_MAX_BYTES]
    if long_labels.size:
        raise DeviceError(f"corrupt sealedos disk (handle {long_labels[0]} has a label longer "
                          f"than {LABEL_MAX_BYTES} bytes)")
    hashes = np.array(ht["token_hash"])[used]
    sizes = np.array(ht["block_size"])[used]
    for h, raw, size in zip(used.tolist(), hashes, sizes.tolist(), strict=True):
        key = raw.tobytes()
        if key in idx.tokens:
            raise DeviceError(f"corrupt sealedos disk (handles {idx.tokens[key]} and {h} "
                              f"share one token)")
        if not MIN_RECORD_BYTES <= size <= BLOCK_SIZE:
            raise DeviceError(f"corrupt sealedos disk (handle {h} has record size {size})")
        idx.tokens[key] = h
        idx.slots[h], idx.live[h], idx.size[h] = {}, set(), size
    unused = np.flatnonzero(in_use == 0)
    tombs = np.array(ht["token_hash"])[unused].any(axis=1)
    idx.closed = {np.array(ht["token_hash"])[h].tobytes(): int(h) for h in unused[tombs]}
    idx.free_handles = unused[~tombs][::-1].tolist()
    return in_use.astype(bool)


def _scan_map(bmap: np.ndarray, in_use: np.ndarray, geo: Geometry, idx: _Index) -> None:
    """Fill idx.slots/free_blocks from block map `bmap` (vectorised); raise on inconsistency."""
    owner = np.array(bmap["owner"]).astype(np.int64)
    slot = np.array(bmap["slot"]).astype(np.int64)
    bad = np.flatnonzero((owner < FREE_OWNER) | (owner >= geo.max_handles))
    if bad.size:
        raise DeviceError(f"corrupt sealedos disk (block {bad[0] + geo.first_data_block} has "
                          f"owner {owner[bad[0]]}, outside the handle table)")
    used = owner >= 0
    orphan = np.flatnonzero(used & ~in_use[np.where(used, owner, 0)])
    if orphan.size:
        raise DeviceError(f"corrupt sealedos disk (block {orphan[0] + geo.first_data_block} "
                          f"belongs to closed handle {owner[orphan[0]]})")
    blocks = np.flatnonzero(used)
    order = np.argsort(owner[blocks], kind="stable")
    blocks, owners, slots = blocks[order], owner[blocks][order], slot[blocks][order]
    keys = np.sort((owners << 32) | slots)
    dup = np.flatnonzero(keys[1:] == keys[:-1])
    if dup.size:
        k = int(keys[dup[0]])
        raise DeviceError(f"corrupt sealedos disk (handle {k >> 32} maps slot "
                          f"{k & 0xFFFFFFFF} to two blocks)")
    handles, starts = np.unique(owners, return_index=True)
    ends = np.append(starts[1:], owners.size)           # one too many when no block is used
    absolute = blocks + geo.first_data_block
    for h, a, z in zip(handles.tolist(), starts.tolist(), ends.tolist(), strict=False):
        idx.slots[h] = dict(zip(slots[a:z].tolist(), absolute[a:z].tolist(), strict=True))
    idx.free_blocks = (np.flatnonzero(~used)[::-1] + geo.first_data_block).tolist()
    live = np.array(bmap["live"]).astype(np.int64)
    marked = np.flatnonzero(used & (live != 0))
    for rec in marked.tolist():
        _scan_live(int(owner[rec]), int(slot[rec]), int(live[rec]),
                   rec + geo.first_data_block, idx)


def _scan_live(h: int, vblock: int, mask: int, block: int, idx: _Index) -> None:
    """Add the live slots of `mask` (of handle h's virtual block `vblock`) to idx.live;
    raise unless each is a slot starting there whose every virtual block is mapped."""
    size, first = idx.size[h], first_slot(vblock, idx.size[h])
    count = first_slot(vblock + 1, size) - first
    if mask >> count:
        raise DeviceError(f"corrupt sealedos disk (block {block} marks slots that do not "
                          f"start in it live)")
    for bit in range(count):
        if mask >> bit & 1:
            slot = first + bit
            if slot >= SLOT_LIMIT or slot_span(slot, size)[1] not in idx.slots[h]:
                raise DeviceError(f"corrupt sealedos disk (handle {h}'s slot {slot} is live "
                                  f"but not all its blocks are mapped)")
            idx.live[h].add(slot)


def check_device(path: Path) -> tuple[Geometry, _Index]:
    """Check the device file at `path` read-only; return its geometry and rebuilt indexes."""
    try:
        file_bytes = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(BLOCK_SIZE)
    except OSError as exc:
        raise DeviceError(f"cannot read device file: {exc.strerror or exc}") from None
    geo = check_superblock(raw, file_bytes)
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    try:
        idx = _Index()
        in_use = _scan_handles(_handle_view(mm, geo), idx)
        _scan_map(_map_view(mm, geo), in_use, geo, idx)
    finally:
        del mm
    return geo, idx


def _lock(path: Path) -> int:
    """Take the exclusive advisory lock of `path` (one service per file); return its fd."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise DeviceError(f"cannot open device file: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise DeviceError("device file is in use by another disk service (locked)") from None
    return fd


# -- the device --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DeviceStats:
    """A device's geometry and usage, as the disk's stats reply reports them."""
    nblocks: int
    used_blocks: int
    slots_stored: int
    free_blocks: int
    handles: int
    max_handles: int
    block_size: int
    total_blocks: int
    first_data_block: int
    path: str


class Device:
    """One open block device: handles, slots and blocks over a memmapped file."""

    def __init__(self, path: str | os.PathLike[str], size_mib: int = DEFAULT_SIZE_MIB,
                 max_handles: int = DEFAULT_MAX_HANDLES, create: bool = True) -> None:
        """Open the device at `path`, creating it (size_mib, max_handles) if it does not exist."""
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise DeviceError("device file does not exist")
            format_device(self.path, size_mib, max_handles)
        self._lock_fd: int | None = _lock(self.path)
        try:
            self.geo, self._idx = check_device(self.path)
            self._mm: np.memmap | None = np.memmap(self.path, dtype=np.uint8, mode="r+")
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._handles = _handle_view(self._mm, self.geo)
        self._map = _map_view(self._mm, self.geo)
        self._blocks = self._mm.reshape(self.geo.total_blocks, BLOCK_SIZE)
        self.dirty = False

    # -- checks ------------------------------------------------------------------------
    def _handle(self, token: Any) -> int:
        """The handle index of `token`; ServiceError(BADHANDLE) if it is not an open handle."""
        if self._mm is None:
            raise Panic("device used after close()")
        h = self._idx.tokens.get(token_hash(token)) if isinstance(token, bytes) else None
        if h is None:
            raise ServiceError(Err.BADHANDLE, "unknown or closed handle")
        return h

    @staticmethod
    def _check_slot(slot: Any) -> int:
        """`slot` if it is an int in [0, 2**32); ServiceError(INVAL) otherwise."""
        if not isinstance(slot, int) or isinstance(slot, bool) or not 0 <= slot < SLOT_LIMIT:
            raise ServiceError(Err.INVAL, f"slot {slot!r} is not an integer in [0, 2**32)")
        return slot

    @staticmethod
    def _check_data(data: Any, size: int = BLOCK_SIZE) -> np.ndarray:
        """`data` as a uint8 array if it is exactly `size` bytes; ServiceError(INVAL) else."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ServiceError(Err.INVAL, f"data must be bytes, got {type(data).__name__}")
        buf = np.frombuffer(data, dtype=np.uint8)
        if buf.size != size:
            raise ServiceError(Err.INVAL, f"data must be exactly {size} bytes (this handle's "
                                          f"block size), got {buf.size}")
        return buf

    @staticmethod
    def _check_size(size: Any) -> int:
        """`size` if it is a record size a handle may have; ServiceError(INVAL) otherwise."""
        if not isinstance(size, int) or isinstance(size, bool) \
                or not MIN_RECORD_BYTES <= size <= BLOCK_SIZE:
            raise ServiceError(Err.INVAL, f"block size {size!r} is not an integer in "
                                          f"[{MIN_RECORD_BYTES}, {BLOCK_SIZE}]")
        return size

    def _owned(self, h: int, block: Any) -> int:
        """`block` if handle `h` owns it; INVAL if out of range, PERM if not h's."""
        if not isinstance(block, int) or isinstance(block, bool) \
                or not 0 <= block < self.geo.total_blocks:
            raise ServiceError(Err.INVAL, f"block {block!r} is not an integer in "
                                          f"[0, {self.geo.total_blocks})")
        if block < self.geo.first_data_block or int(self._map["owner"][self._rec(block)]) != h:
            raise ServiceError(Err.PERM, f"block {block} does not belong to this handle")
        return block

    def _rec(self, block: int) -> int:
        """The block-map record index of data block `block`."""
        return block - self.geo.first_data_block

    # -- handles -----------------------------------------------------------------------
    def knows(self, token: object) -> bool:
        """Is the handle named by `token` open on this device?"""
        return isinstance(token, bytes) and token_hash(token) in self._idx.tokens

    def open_handle(self, label: str = "", token: bytes | None = None,
                    block_size: int = BLOCK_SIZE) -> bytes:
        """Open the handle named by `token` (TOKEN_BYTES bytes, minted by the caller; None:
        a fresh random one), labelled `label` (<= 32 bytes UTF-8, else INVAL), whose slots
        hold `block_size` bytes each; return the token.  Idempotent: opening a token that
        is already open with the same block size changes nothing (another size: INVAL).
        Only the token's hash is stored."""
        if self._mm is None:
            raise Panic("device used after close()")
        if token is not None and (not isinstance(token, bytes) or len(token) != TOKEN_BYTES):
            raise ServiceError(Err.INVAL, f"a handle is {TOKEN_BYTES} bytes")
        block_size = self._check_size(block_size)
        if token is not None and token_hash(token) in self._idx.tokens:
            if self._idx.size[self._idx.tokens[token_hash(token)]] != block_size:
                raise ServiceError(Err.INVAL, "that handle is open with another block size")
            return token
        if token is not None and token_hash(token) in self._idx.closed:
            # A handle is opened once: an OPEN arriving after its CLOSE (delayed, retried,
            # reordered) must not make it again, or its blocks would never be freed.
            raise ServiceError(Err.BADHANDLE, "that handle was closed; it cannot be reopened")
        if not isinstance(label, str):
            raise ServiceError(Err.INVAL, f"label must be a string, got {type(label).__name__}")
        try:
            raw = label.encode("utf-8")
        except UnicodeEncodeError:
            raise ServiceError(Err.INVAL, "label is not encodable as UTF-8") from None
        if len(raw) > LABEL_MAX_BYTES:
            raise ServiceError(Err.INVAL, f"label is {len(raw)} bytes of UTF-8, "
                                          f"at most {LABEL_MAX_BYTES} are allowed")
        if not self._idx.free_handles and not self._idx.closed:
            raise ServiceError(Err.NOSPC,
                               f"handle table full ({self.geo.max_handles} handles open)")
        while token is None or token_hash(token) in self._idx.tokens \
                or token_hash(token) in self._idx.closed:
            token = entropy.token_bytes(TOKEN_BYTES)
        key = token_hash(token)
        if self._idx.free_handles:
            h = self._idx.free_handles.pop()
        else:                                               # the oldest tombstone goes
            oldest = next(iter(self._idx.closed))
            h = self._idx.closed.pop(oldest)
        rec = self._handles[h:h + 1]
        if int(rec["in_use"][0]) != 0:
            raise Panic(f"free handle list holds handle {h}, which is in use")
        rec["token_hash"] = np.frombuffer(key, dtype=np.uint8)
        rec["label"] = np.frombuffer(raw.ljust(LABEL_MAX_BYTES, b"\0"), dtype=np.uint8)
        rec["label_len"] = len(raw)
        rec["block_size"] = block_size
        rec["in_use"] = 1                                   # commit point
        self._idx.tokens[key] = h
        self._idx.slots[h], self._idx.live[h], self._idx.size[h] = {}, set(), block_size
        self.dirty = True
        return token

    def close_handle(self, token: bytes) -> int:
        """Close handle `token`, freeing all its blocks; return how many were freed.

        A CLOSE is final, even of a token this device does not hold: its OPEN may not have
        landed yet (sent to a hung instance of this disk, it can sit in the pager's queue
        through a restart and arrive after the CLOSE; sim seed 131958005), so such a token
        is buried (a tombstone, as for a closed handle) before BADHANDLE is answered, and
        that OPEN is refused when it comes."""
        if isinstance(token, bytes) and len(token) == TOKEN_BYTES and not self.knows(token):
            self._bury(token_hash(token))
        h = self._handle(token)
        blocks = sorted(self._idx.slots[h].values(), reverse=True)
        self._release(blocks)
        self._handles["in_use"][h] = 0                      # commit point (hash kept: a tomb)
        key = token_hash(token)
        del self._idx.tokens[key], self._idx.slots[h], self._idx.live[h], self._idx.size[h]
        self._idx.closed[key] = h
        self.dirty = True
        return len(blocks)

    def _bury(self, key: bytes) -> None:
        """Leave a tombstone for token hash `key` in a free handle record (else in the oldest
        tombstone's): a late OPEN of it is refused.  Best effort: with every record open
        there is no room, and none is taken from an open handle."""
        if self._mm is None:
            raise Panic("device used after close()")
        if key in self._idx.closed:
            return
        if self._idx.free_handles:
            h = self._idx.free_handles.pop()
        elif self._idx.closed:
            h = self._idx.closed.pop(next(iter(self._idx.closed)))
        else:
            return
        rec = self._handles[h:h + 1]
        rec["label"], rec["label_len"], rec["block_size"] = 0, 0, 0
        rec["token_hash"] = np.frombuffer(key, dtype=np.uint8)   # in_use stays 0: a tomb
        self._idx.closed[key] = h
        self.dirty = True

    def label(self, token: bytes) -> str:
        """The label handle `token` was opened with."""
        rec = self._handles[self._handle(token)]
        return bytes(rec["label"][:int(rec["label_len"])]).decode("utf-8", "replace")

    def _release(self, blocks: list[int]) -> None:
        """Mark `blocks` free on the device (owner first), then in the free list."""
        recs = np.asarray(blocks, dtype=np.int64) - self.geo.first_data_block
        self._map["owner"][recs] = FREE_OWNER
        self._idx.free_blocks.extend(blocks)

    # -- slots -------------------------------------------------------------------------
    def write(self, token: bytes, slot: int, data: bytes) -> int:
        """Store `data` (exactly the handle's block size) at `slot` of handle `token`;
        return the (first) block it landed in."""
        h = self._handle(token)
        size = self._idx.size[h]
        slot, buf = self._check_slot(slot), self._check_data(data, size)
        v0, v1, bit = slot_span(slot, size)
        mine = self._idx.slots[h]
        new = [v for v in dict.fromkeys((v0, v1)) if v not in mine]
        if len(new) > len(self._idx.free_blocks):
            raise ServiceError(Err.NOSPC,
                               f"device full ({self.geo.data_blocks} data blocks in use)")
        for v in new:
            self._allocate(h, v)
        self._store(mine, slot * size, buf)
        live = self._idx.live[h]
        if slot not in live:
            self._map["live"][self._rec(mine[v0])] |= 1 << bit   # commit point of the slot
            live.add(slot)
        self.dirty = True
        return mine[v0]

    def read(self, token: bytes, slot: int) -> bytes:
        """The data at `slot` of handle `token`; ServiceError(NOENT) if never written."""
        h = self._handle(token)
        if self._check_slot(slot) not in self._idx.live[h]:
            raise ServiceError(Err.NOENT, f"slot {slot} holds no block of this handle")
        size = self._idx.size[h]
        start, mine = slot * size, self._idx.slots[h]
        v0, off = divmod(start, BLOCK_SIZE)
        if off + size <= BLOCK_SIZE:
            return self._blocks[mine[v0], off:off + size].tobytes()
        return (self._blocks[mine[v0], off:].tobytes()
                + self._blocks[mine[v0 + 1], :off + size - BLOCK_SIZE].tobytes())

    def free(self, token: bytes, slots: Iterable[int]) -> int:
        """Drop the data at `slots` of handle `token` (unwritten slots are skipped) and
        release the blocks no live slot touches any more; return how many slots held data."""
        h = self._handle(token)
        wanted = [self._check_slot(s) for s in slots]        # check all before freeing any
        size, mine, live = self._idx.size[h], self._idx.slots[h], self._idx.live[h]
        dropped = [s for s in dict.fromkeys(wanted) if s in live]
        touched: set[int] = set()
        for s in dropped:
            v0, v1, bit = slot_span(s, size)
            self._map["live"][self._rec(mine[v0])] &= ~(1 << bit) & 0xFFFF
            live.discard(s)
            touched.update((v0, v1))
        unused = [v for v in sorted(touched)
                  if not any(t in live for t in slots_touching(v, size))]
        self._release([mine.pop(v) for v in unused])
        self.dirty = self.dirty or bool(dropped)
        return len(dropped)

    def _allocate(self, h: int, vblock: int) -> None:
        """Give handle h a zeroed free block as its virtual block `vblock` (caller checked
        that one is free)."""
        block = self._idx.free_blocks.pop()
        rec = self._rec(block)
        if int(self._map["owner"][rec]) != FREE_OWNER:
            raise Panic(f"free list holds block {block}, owned by handle {self._map['owner'][rec]}")
        self._blocks[block] = 0                             # 1. data (no other handle's bytes)
        self._map["slot"][rec] = vblock                     # 2. which piece of h's space
        self._map["live"][rec] = 0
        self._map["owner"][rec] = h                         # 3. owner: commit point
        self._idx.slots[h][vblock] = block

    def _store(self, mine: dict[int, int], start: int, buf: np.ndarray) -> None:
        """Write `buf` at byte `start` of a handle's space (virtual blocks -> blocks `mine`)."""
        v0, off = divmod(start, BLOCK_SIZE)
        head = min(buf.size, BLOCK_SIZE - off)
        self._blocks[mine[v0], off:off + head] = buf[:head]
        if head < buf.size:
            self._blocks[mine[v0 + 1], :buf.size - head] = buf[head:]

    # -- raw blocks --------------------------------------------------------------------
    def read_block(self, token: bytes, block: int) -> bytes:
        """The data of absolute block `block`, which handle `token` must own (else PERM)."""
        data: bytes = self._blocks[self._owned(self._handle(token), block)].tobytes()
        return data

    def write_block(self, token: bytes, block: int, data: bytes) -> int:
        """Overwrite absolute block `block`, which handle `token` must own; return block."""
        h = self._handle(token)
        buf = self._check_data(data)
        self._blocks[self._owned(h, block)] = buf
        self.dirty = True
        return block

    # -- housekeeping ------------------------------------------------------------------
    def stats(self) -> DeviceStats:
        """Counters and geometry as one record."""
        free = len(self._idx.free_blocks)
        return DeviceStats(nblocks=self.geo.data_blocks, used_blocks=self.geo.data_blocks - free,
                           slots_stored=sum(len(live) for live in self._idx.live.values()),
                           free_blocks=free, handles=len(self._idx.tokens),
                           max_handles=self.geo.max_handles, block_size=BLOCK_SIZE,
                           total_blocks=self.geo.total_blocks,
                           first_data_block=self.geo.first_data_block, path=str(self.path))

    def flush(self) -> None:
        """Write every dirty page of the mapping to the file (msync)."""
        if self._mm is not None:
            self._mm.flush()
            self.dirty = False

    def close(self) -> None:
        """Flush, unmap and unlock; later calls raise Panic (safe to call twice)."""
        if self._mm is None:
            return
        self.flush()
        self._handles = self._map = self._blocks = None     # type: ignore[assignment]
        self._mm = None                                     # the last view: unmapped when freed
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def closed(self) -> bool:
        """True after close()."""
        return self._mm is None

    def __enter__(self) -> Device:
        """The device itself (closed on exit)."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the device."""
        self.close()
