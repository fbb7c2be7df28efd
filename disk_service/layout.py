"""The on-device format of a sealedos disk: geometry, superblock, record types, and their checks.

A disk file is an array of BLOCK_SIZE-byte blocks, laid out like a small file system::

    block 0                      superblock  (magic, version, geometry, CRC32)
    blocks 1 .. 1+HT-1           handle table (max_handles records of HANDLE_DTYPE)
    blocks MAP .. MAP+MB-1       block map    (one MAP_DTYPE record per data block)
    blocks FIRST .. total-1      data blocks

Every integer is little-endian.  Block numbers are absolute (block 0 is the superblock), so
data block b is described by block-map record b - first_data_block.  This module only
describes and checks the format; device.py reads and writes it.

**Records smaller than a block.**  A handle is opened with a record size (`block_size`,
MIN_RECORD_BYTES .. BLOCK_SIZE; BLOCK_SIZE unless said otherwise).  Its slot s is the byte
range [s * size, (s + 1) * size) of the handle's own sparse address space, which is backed
by data blocks on demand: the map record of a data block names its owner and which BLOCK_SIZE
piece of that space it holds (its "virtual block").  Records are packed back to back and may
straddle two virtual blocks, so a handle of 1040-byte erasure-code fragments stores about
1040 bytes per slot, not a whole block.  Which slots hold data is the `live` mask of the
virtual block where the slot *starts* (bit j: the j-th slot starting in it; at most
BLOCK_SIZE / MIN_RECORD_BYTES = 16 do), and a live slot's every virtual block is mapped.
With the default size a slot is exactly one block, as in format 2.
"""
from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass, fields
from typing import Final

import numpy as np

from wire.protocol import BLOCK_SIZE

MAGIC: Final[bytes] = b"SEALDISK"
#: 2: the handle table stores a hash of each token, never the token (tokens are minted by
#: the kernel and are the only credential for a handle's blocks).
#: 3: handles have a record size; map records carry a virtual block and a live-slot mask.
FORMAT_VERSION: Final[int] = 3
DEFAULT_SIZE_MIB: Final[int] = 64
DEFAULT_MAX_HANDLES: Final[int] = 4096
TOKEN_BYTES: Final[int] = 16
LABEL_MAX_BYTES: Final[int] = 32
FREE_OWNER: Final[int] = -1
SLOT_LIMIT: Final[int] = 1 << 32          # a slot is a uint32: 0 <= slot < SLOT_LIMIT
MAX_HANDLES_LIMIT: Final[int] = 1 << 20   # sanity bound on the superblock's max_handles
#: Smallest record size a handle may be opened with: at most 16 records start in one block,
#: one bit each in the 16-bit `live` mask of its map record.
MIN_RECORD_BYTES: Final[int] = 256

#: The superblock, at offset 0 of block 0.  `crc` is CRC32 over every byte before it.
SUPERBLOCK_DTYPE: Final[np.dtype] = np.dtype([
    ("magic", "S8"),
    ("version", "<u4"),
    ("block_size", "<u4"),
    ("total_blocks", "<u8"),
    ("max_handles", "<u8"),
    ("handle_table_block", "<u8"),
    ("handle_table_blocks", "<u8"),
    ("map_block", "<u8"),
    ("map_blocks", "<u8"),
    ("first_data_block", "<u8"),
    ("data_blocks", "<u8"),
    ("crc", "<u4"),
])


def _field_offset(dtype: np.dtype[np.void], name: str) -> int:
    """The byte offset of field `name` of the structured `dtype`."""
    fields = dtype.fields
    if fields is None:
        raise TypeError(f"{dtype} is not a structured dtype")
    return int(fields[name][1])


SUPERBLOCK_CRC_OFFSET: Final[int] = _field_offset(SUPERBLOCK_DTYPE, "crc")

#: One handle-table record (64 bytes).  `in_use` is written last on open and cleared last
#: on close, so it is the commit point of a handle.  `token_hash` is token_hash(token): a
#: reader of the file learns no token from it.  `block_size`: the handle's record size.
HANDLE_DTYPE: Final[np.dtype] = np.dtype({
    "names": ["in_use", "label_len", "block_size", "token_hash", "label"],
    "formats": ["u1", "u1", "<u4", ("u1", (TOKEN_BYTES,)), ("u1", (LABEL_MAX_BYTES,))],
    "offsets": [0, 1, 4, 16, 32],
    "itemsize": 64,
})

#: One block-map record (12 bytes) per data block.  `owner` is the handle index, or
#: FREE_OWNER; it is written after `slot` (the virtual block: which piece of the handle's space it
#: holds), `live` (cleared) and the block's (zeroed) data, so it is the commit point of a
#: block.  `live` bit j set is the commit point of the j-th slot starting in this block.
MAP_DTYPE: Final[np.dtype] = np.dtype([("owner", "<i4"), ("slot", "<u4"), ("live", "<u2"),
                                       ("pad", "<u2")])


def first_slot(vblock: int, size: int) -> int:
    """The first slot of record size `size` that starts in virtual block `vblock`."""
    return -(-vblock * BLOCK_SIZE // size)


def slot_span(slot: int, size: int) -> tuple[int, int, int]:
    """(first virtual block, last virtual block, live bit) of slot `slot` of size `size`."""
    start = slot * size
    v0 = start // BLOCK_SIZE
    return v0, (start + size - 1) // BLOCK_SIZE, slot - first_slot(v0, size)


def slots_touching(vblock: int, size: int) -> range:
    """Every slot of size `size` with a byte in virtual block `vblock`."""
    return range(vblock * BLOCK_SIZE // size, ((vblock + 1) * BLOCK_SIZE - 1) // size + 1)


def token_hash(token: bytes) -> bytes:
    """The TOKEN_BYTES-byte hash under which a handle's token is stored and looked up."""
    return hashlib.blake2b(token, digest_size=TOKEN_BYTES, person=b"sealedos-handle").digest()


class DeviceError(Exception):
    """The device file cannot be used (not a sealedos disk, corrupt, locked, too small)."""


@dataclass(frozen=True, slots=True)
class Geometry:
    """Where everything lives on one device, in blocks."""
    total_blocks: int
    max_handles: int
    handle_table_block: int
    handle_table_blocks: int
    map_block: int
    map_blocks: int
    first_data_block: int
    data_blocks: int

    @property
    def size_bytes(self) -> int:
        """The exact size of the device file."""
        return self.total_blocks * BLOCK_SIZE


def _blocks_for(nbytes: int) -> int:
    """How many whole blocks hold `nbytes` bytes (rounded up)."""
    return -(-nbytes // BLOCK_SIZE)


def plan(total_blocks: int, max_handles: int = DEFAULT_MAX_HANDLES) -> Geometry:
    """The layout of a device of `total_blocks` blocks; raise DeviceError if nothing fits."""
    if not 1 <= max_handles <= MAX_HANDLES_LIMIT:
        raise DeviceError(f"max_handles {max_handles} outside [1, {MAX_HANDLES_LIMIT}]")
    ht_blocks = _blocks_for(max_handles * HANDLE_DTYPE.itemsize)
    rest = total_blocks - 1 - ht_blocks
    map_blocks = _blocks_for(max(rest, 0) * MAP_DTYPE.itemsize)
    data_blocks = rest - map_blocks
    if data_blocks < 1:
        raise DeviceError(f"a device of {total_blocks} blocks has no room for data blocks "
                          f"after its metadata ({1 + ht_blocks + map_blocks} blocks)")
    return Geometry(total_blocks, max_handles, 1, ht_blocks, 1 + ht_blocks, map_blocks,
                    1 + ht_blocks + map_blocks, data_blocks)


def pack_superblock(geo: Geometry) -> np.ndarray:
    """The superblock record of `geo`, CRC included, as a 1-element structured array."""
    sb = np.zeros(1, dtype=SUPERBLOCK_DTYPE)
    sb["magic"] = MAGIC
    sb["version"] = FORMAT_VERSION
    sb["block_size"] = BLOCK_SIZE
    for name in ("total_blocks", "max_handles", "handle_table_block", "handle_table_blocks",
                 "map_block", "map_blocks", "first_data_block", "data_blocks"):
        sb[name] = getattr(geo, name)
    sb["crc"] = superblock_crc(sb.tobytes())
    return sb


def superblock_crc(raw: bytes) -> int:
    """CRC32 of the superblock fields that precede the crc field in `raw`."""
    return zlib.crc32(raw[:SUPERBLOCK_CRC_OFFSET]) & 0xFFFFFFFF


def check_superblock(raw: bytes, file_bytes: int) -> Geometry:
    """The geometry recorded in superblock bytes `raw`; raise DeviceError naming any problem."""
    if file_bytes < BLOCK_SIZE or len(raw) < SUPERBLOCK_DTYPE.itemsize:
        raise DeviceError(f"not a sealedos disk (file of {file_bytes} bytes is smaller "
                          f"than one {BLOCK_SIZE}-byte block)")
    if raw[:len(MAGIC)] != MAGIC:
        raise DeviceError("not a sealedos disk (bad magic)")
    sb = np.frombuffer(raw[:SUPERBLOCK_DTYPE.itemsize], dtype=SUPERBLOCK_DTYPE)[0]
    if int(sb["version"]) != FORMAT_VERSION:
        raise DeviceError(f"unsupported sealedos disk format version {int(sb['version'])} "
                          f"(this build reads version {FORMAT_VERSION})")
    if superblock_crc(raw) != int(sb["crc"]):
        raise DeviceError("corrupt sealedos disk (superblock checksum mismatch)")
    if int(sb["block_size"]) != BLOCK_SIZE:
        raise DeviceError(f"sealedos disk has block size {int(sb['block_size'])}, "
                          f"this build uses {BLOCK_SIZE}")
    total = int(sb["total_blocks"])
    if total * BLOCK_SIZE != file_bytes:
        raise DeviceError(f"sealedos disk size mismatch (superblock says {total} blocks = "
                          f"{total * BLOCK_SIZE} bytes, file is {file_bytes} bytes)")
    geo = plan(total, int(sb["max_handles"]))
    for name in (f.name for f in fields(Geometry)):
        if int(sb[name]) != getattr(geo, name):
            raise DeviceError(f"corrupt sealedos disk (superblock field {name} is "
                              f"{int(sb[name])}, expected {getattr(geo, name)})")
    return geo
