"""Page tables: one address space per sealed process, its regions and its page-table entries.

A region is a run of virtual pages created by MAP with one protection; a page-table entry
(PTE) exists for a page once it has been touched.  The kernel owns all of it; a process only
ever sees the answers to its faults.

A PTE moves through these states (the fault and eviction code in vm.py is the only writer):

    ZERO ──fault──▶ RESIDENT ──evict──▶ EVICTING ──captured──▶ HELD ──written──▶ SWAPPED
      ▲                ▲  ▲                                      │                  │
      └─clean zero page┘  └──────────────fault (no I/O)──────────┘     fault ──▶ PAGING_IN
                          └───────────────────────────────── page-in verified ◀────┘

HELD means the kernel holds the page's bytes (a write-back in flight, a granted page in
transit, or a page read ahead: SWAPPED -> PAGING_IN -> HELD with no frame, vm.py); SWAPPED
means only the pagers hold it, sealed, and the kernel keeps its version and tag.

How the entries are stored
--------------------------
A PTE is not a Python object.  An object per page costs a header, a slot per field, a boxed
int per large field and a dict entry in the table: about 500 bytes resident and more once
swapped (its tag), for every page of every process, on swap too.  So the table is a two-level
radix tree, as a hardware page table is: `AddressSpace.chunks` maps vpn >> CHUNK_SHIFT to a
Chunk, and a Chunk holds the entries of that aligned run of CHUNK_PAGES (512) pages as
columns, one array per field (a bytearray for the byte-sized ones, an array.array for each
integer, one bytearray of 16-byte tags).  A chunk is made when the first page in it is touched
and dropped when its last entry goes, so an entry is one row across the columns: ROW_BYTES
(51) bytes whatever its state, the columns' headers (about 1 KiB) shared by 512 rows.  A
sparse address space pays a whole chunk (26 KiB) per touched run, as a hardware table pays a
page-table page; a process can touch at most about regions + pages / 512 chunks (both under
its quota), no more than one object per page cost at the same quota.  array.array, not
numpy: indexing an array.array yields a plain int cheaply, and numpy scalars are slow to make
and would leak into msgpack replies.

The swap space a page is sealed under is an index into the address space's own small table of
spaces (`_spaces`: one reference-counted entry per distinct space its pages are stored in --
its own, and those of pages granted to it), not a reference per page; SwapSpace.pages still
counts the pages holding a slot in a space, in any address space, and keeps it open.  What
only a page in flight has -- kernel-held bytes, the version of a write-back in flight and
whether it must be redone, the faults waiting on the page -- lives in its chunk's `side` dict,
which has an entry only while the page has some of it: bounded by what is in flight, not by
the pages.  Likewise the vpn bound into a page's seal has no column: it is set with the
page's first swap slot, to the page's own vpn, and differs from it only once a grant has
moved the page; so a flag bit says whether there is one, and the chunk's `moved` dict holds
it for moved pages only.

`Pte` is a handle, (chunk, row, generation), made on demand (`AddressSpace.pte`, `get`, the
range operations) with properties named as the fields, so vm.py reads `pte.state` and writes
`pte.frame = f` as it would a record.  Nothing keeps a handle per page; work in flight holds
the handles of its pages.

Why a generation replaces object identity
-----------------------------------------
The eviction, write-back, page-in, prefetch, grant and resync callbacks run long after they
started, and each must first ask: is this still the page I started with?  Meanwhile the page
may have been unmapped -- and the vpn mapped again and touched: a new page at the same
address, in the same row -- granted away, or its process may have exited.  With one object
per PTE the question was `aspace.ptes.get(vpn) is pte`: an entry made later was another
object.  Rows are reused, so each row has a generation counter (`gen`), bumped whenever its
entry is removed (unmap, grant, exit); a handle remembers the generation it was made at, and
`pte.live()` is `gen[row] == handle.gen`.  A handle made before a removal is never live again,
even when the row is refilled at once (until the 32-bit counter wraps: 2**32 unmaps of one
page while one I/O of it is in flight, which the message rate rules out).  A dropped chunk's
rows were all removed first, so a handle on it stays dead too.  Two handles are equal (`==`)
when they name the same row at the same generation: what `is` meant of two references.

Removing an entry takes two steps, because whoever removes entries (vm.release_pages, a
grant) must still read them: `unmap`, `clear` detach the range's entries -- out of the table,
generation bumped, so every callback in flight sees them gone at once -- and return handles
that still read and write the detached rows; `Pte.release` frees a detached row, and `adopt`
moves one into a (possibly other) address space.  The kernel releases or adopts every
detached row before it returns to its loop.
"""
from __future__ import annotations

import bisect
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum

from wire import entropy
from wire.protocol import PAGE_SHIFT, PROT_R, PROT_W, PROT_X, Err, ServiceError
from wire.server import Panic

#: Largest virtual page number (a 48-bit address space, as x86-64).
MAX_VPN: int = (1 << (48 - PAGE_SHIFT)) - 1
#: Most pages one MAP may create.
MAX_MAP_PAGES: int = 1 << 20
#: Where the kernel places regions when the caller lets it choose.
MMAP_BASE_VPN: int = 0x10000
#: A chunk holds the entries of an aligned run of CHUNK_PAGES pages (module docstring).
CHUNK_SHIFT: int = 9
CHUNK_PAGES: int = 1 << CHUNK_SHIFT
#: Bytes of an authentication tag (AES-GCM); a page sealed with sealing off has none (b"").
TAG_BYTES: int = 16
#: Mirrors a page's mirror bits can name (a 32-bit column).
MAX_MIRRORS: int = 32
#: Bytes of one entry across its columns.
ROW_BYTES: int = 3 + 4 + 4 + 8 + 4 + 8 + 4 + TAG_BYTES

_ROW_MASK = CHUNK_PAGES - 1
_GEN_MASK = 0xFFFFFFFF
# A row's flag bits.
_PRESENT = 1            # in the table: touched and not removed
_DETACHED = 2           # removed by unmap/clear, not yet released or adopted
_ZERO_CONTENT = 4       # installed by zero-fill and clean since
_SWAP_VALID = 8         # the swap copy at `version` equals the current content
_TAGGED = 16            # the row's tag bytes hold a tag (sealing on)
_STALE = 32             # released: the other columns still hold the last entry's values
_SEALED = 64            # the row has a seal vpn: its own vpn, or the chunk's `moved` says


class PageState(IntEnum):
    """Where a page's contents are."""
    ZERO = 0        # never written (or written back to all-zero and dropped): demand-zero
    RESIDENT = 1    # in a frame, in the owner's bank
    EVICTING = 2    # a shootdown is in flight; the frame is not yet free
    HELD = 3        # bytes held by the kernel (write-back in flight, in transit, read ahead)
    SWAPPED = 4     # sealed on the pagers' disks only
    PAGING_IN = 5   # a page-in is in flight into a reserved frame


@dataclass(slots=True, eq=False)
class SwapSpace:
    """The identity and disk handles that pages are sealed and stored under.

    Each process has one; a page granted to another process keeps pointing at it, so a
    space outlives its process until the last page stored in it is gone."""
    swap_id: bytes                                   # bound into every seal (16 bytes)
    label: str
    handles: dict[int, bytes] = field(default_factory=dict)   # mirror -> disk handle (minted)
    next_slot: int = 0
    pages: int = 0                                   # PTEs anywhere holding a slot here
    owner_alive: bool = True

    def handle(self, mirror: int) -> bytes:
        """This space's disk handle on `mirror`: 16 random bytes the kernel mints (once per
        mirror) and the disk only ever stores a hash of."""
        token = self.handles.get(mirror)
        if token is None:
            token = self.handles[mirror] = entropy.token_bytes(16)
        return token

    def alloc_slot(self) -> int:
        """A fresh swap slot (slots are never reused, so a late FREE cannot hit new data)."""
        self.next_slot += 1
        self.pages += 1
        return self.next_slot - 1


_STATES: tuple[PageState, ...] = tuple(PageState)


class Side:
    """What only a page in flight has (module docstring); a row has one only while some
    field differs from its default."""
    __slots__ = ("held", "wb_version", "wb_again", "waiters")

    def __init__(self) -> None:
        self.held: bytes | None = None     # kernel-held bytes (HELD, or write-back in flight)
        self.wb_version = 0                # version of an in-flight write-back of `held`
        self.wb_again = False              # `held` changed while that write-back was in flight
        self.waiters: list[Callable[[], None]] = []    # faults waiting for the page to settle

    def idle(self) -> bool:
        """Is every field at its default (the entry can go)?"""
        return self.held is None and not self.wb_version and not self.wb_again \
            and not self.waiters


class Chunk:
    """The entries of CHUNK_PAGES consecutive pages of one address space, as columns."""
    __slots__ = ("aspace", "key", "used", "state", "prot", "flags", "mirrors", "frame", "slot",
                 "space", "version", "gen", "tags", "side", "moved")

    def __init__(self, aspace: AddressSpace, key: int) -> None:
        n = CHUNK_PAGES
        self.aspace, self.key = aspace, key      # its address space; its first vpn >> SHIFT
        self.used = 0                            # rows present or detached
        self.state = bytearray(n)                # PageState
        self.prot = bytearray(n)
        self.flags = bytearray(n)                # _PRESENT, _DETACHED, _ZERO_CONTENT, ...
        self.mirrors = array("I", [0]) * n       # bit m set: mirror m holds `version`
        self.frame = array("i", [-1]) * n
        self.slot = array("q", [-1]) * n         # swap slot (handle-relative block), -1 = none
        self.space = array("I", [0]) * n         # index into aspace's spaces (0 = none)
        self.version = array("q", [0]) * n       # version of the swap copy (0 = none)
        self.gen = array("I", [0]) * n           # bumped when the entry is removed
        self.tags = bytearray(TAG_BYTES * n)     # the swap copy's authentication tag
        self.side: dict[int, Side] = {}          # row -> state of a page in flight
        self.moved: dict[int, int] = {}          # row -> its seal vpn, when not its own vpn


class Pte:
    """A handle on one page-table entry: (chunk, row, the generation it was made at).  Its
    properties read and write the row; see the module docstring, and the state diagram."""
    __slots__ = ("c", "i", "gen")

    def __init__(self, c: Chunk, i: int, gen: int) -> None:
        self.c, self.i, self.gen = c, i, gen

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pte) and other.c is self.c and other.i == self.i \
            and other.gen == self.gen

    def __hash__(self) -> int:
        return hash((id(self.c), self.i, self.gen))

    def live(self) -> bool:
        """Is the entry still in its address space (not removed since this handle was made)?"""
        return self.c.gen[self.i] == self.gen

    def release(self) -> None:
        """Free a detached entry's row (it must come from unmap or clear)."""
        self.c.aspace.drop_row(self.c, self.i)

    @property
    def state(self) -> PageState:
        return _STATES[self.c.state[self.i]]

    def replace_state(self, value: PageState) -> PageState:
        """Set the state; return the one it replaces."""
        column = self.c.state
        old = column[self.i]
        column[self.i] = value
        return _STATES[old]

    @property
    def prot(self) -> int:
        return self.c.prot[self.i]

    @prot.setter
    def prot(self, value: int) -> None:
        self.c.prot[self.i] = value

    @property
    def frame(self) -> int:
        return self.c.frame[self.i]

    @frame.setter
    def frame(self, value: int) -> None:
        self.c.frame[self.i] = value

    @property
    def slot(self) -> int:
        return self.c.slot[self.i]

    @slot.setter
    def slot(self, value: int) -> None:
        self.c.slot[self.i] = value

    @property
    def seal_vpn(self) -> int:
        """The vpn bound into the page's seal (-1: none yet): where its slot was allocated,
        which is its own vpn unless a grant moved the page (Chunk.moved, module docstring)."""
        c, i = self.c, self.i
        return c.moved.get(i, c.key << CHUNK_SHIFT | i) if c.flags[i] & _SEALED else -1

    @seal_vpn.setter
    def seal_vpn(self, value: int) -> None:
        c, i = self.c, self.i
        if value < -1:
            raise Panic(f"seal vpn {value}")
        c.flags[i] = c.flags[i] | _SEALED if value >= 0 else c.flags[i] & ~_SEALED
        if value in (-1, c.key << CHUNK_SHIFT | i):
            c.moved.pop(i, None)
        else:
            c.moved[i] = value

    @property
    def version(self) -> int:
        return self.c.version[self.i]

    @version.setter
    def version(self, value: int) -> None:
        self.c.version[self.i] = value

    @property
    def mirrors(self) -> int:
        return self.c.mirrors[self.i]

    @mirrors.setter
    def mirrors(self, value: int) -> None:
        self.c.mirrors[self.i] = value

    @property
    def zero_content(self) -> bool:
        return bool(self.c.flags[self.i] & _ZERO_CONTENT)

    @zero_content.setter
    def zero_content(self, value: bool) -> None:
        flags = self.c.flags
        flags[self.i] = flags[self.i] | _ZERO_CONTENT if value else flags[self.i] & ~_ZERO_CONTENT

    @property
    def swap_valid(self) -> bool:
        return bool(self.c.flags[self.i] & _SWAP_VALID)

    @swap_valid.setter
    def swap_valid(self, value: bool) -> None:
        flags = self.c.flags
        flags[self.i] = flags[self.i] | _SWAP_VALID if value else flags[self.i] & ~_SWAP_VALID

    @property
    def tag(self) -> bytes:
        if not self.c.flags[self.i] & _TAGGED:
            return b""
        at = self.i * TAG_BYTES
        return bytes(self.c.tags[at:at + TAG_BYTES])

    @tag.setter
    def tag(self, value: bytes) -> None:
        if len(value) not in (0, TAG_BYTES):
            raise Panic(f"a tag of {len(value)} bytes")
        flags = self.c.flags
        if value:
            self.c.tags[self.i * TAG_BYTES:(self.i + 1) * TAG_BYTES] = value
        flags[self.i] = flags[self.i] | _TAGGED if value else flags[self.i] & ~_TAGGED

    @property
    def space(self) -> SwapSpace | None:
        return self.c.aspace.spaces[self.c.space[self.i]]

    @space.setter
    def space(self, value: SwapSpace | None) -> None:
        self.c.aspace.set_space(self.c, self.i, value)

    @property
    def held(self) -> bytes | None:
        side = self.c.side.get(self.i)
        return None if side is None else side.held

    @held.setter
    def held(self, value: bytes | None) -> None:
        self._set_side("held", value)

    @property
    def wb_version(self) -> int:
        side = self.c.side.get(self.i)
        return 0 if side is None else side.wb_version

    @wb_version.setter
    def wb_version(self, value: int) -> None:
        self._set_side("wb_version", value)

    @property
    def wb_again(self) -> bool:
        side = self.c.side.get(self.i)
        return False if side is None else side.wb_again

    @wb_again.setter
    def wb_again(self, value: bool) -> None:
        self._set_side("wb_again", value)

    def wait(self, fn: Callable[[], None]) -> None:
        """Run fn when the page settles (whoever settles it calls take_waiters)."""
        side = self.c.side.get(self.i)
        if side is None:
            side = self.c.side[self.i] = Side()
        side.waiters.append(fn)

    def take_waiters(self) -> list[Callable[[], None]]:
        """The functions waiting for the page, which no longer wait."""
        side = self.c.side.get(self.i)
        if side is None or not side.waiters:
            return []
        waiters, side.waiters = side.waiters, []
        if side.idle():
            del self.c.side[self.i]
        return waiters

    def _set_side(self, name: str, value: object) -> None:
        """Set a field of the row's Side, making it on demand and dropping it when idle."""
        side = self.c.side.get(self.i)
        if side is None:
            if not value:
                return
            side = self.c.side[self.i] = Side()
        setattr(side, name, value)
        if side.idle():
            del self.c.side[self.i]


@dataclass(slots=True)
class Region:
    """A run of virtual pages with one protection."""
    start: int      # first vpn
    npages: int
    prot: int

    @property
    def end(self) -> int:
        """One past the last vpn."""
        return self.start + self.npages


def check_prot(prot: int) -> None:
    """Refuse a protection that is not R/W/X bits or that is writable and executable (W^X)."""
    if prot & ~(PROT_R | PROT_W | PROT_X) or prot < 0:
        raise ServiceError(Err.INVAL, f"protection {prot} has bits other than R, W, X")
    if prot & PROT_W and prot & PROT_X:
        raise ServiceError(Err.PERM, "W^X: a page may not be writable and executable at once")


class AddressSpace:
    """The regions and PTEs of one sealed process."""

    def __init__(self) -> None:
        self.regions: list[Region] = []        # sorted by start, non-overlapping
        self.chunks: dict[int, Chunk] = {}     # vpn >> CHUNK_SHIFT -> its entries
        self.spaces: list[SwapSpace | None] = [None]   # a row's space index -> space (0: none)
        self._space_refs: list[int] = [0]      # rows naming each index
        self._space_index: dict[SwapSpace, int] = {}
        self._free_spaces: list[int] = []      # indices no row names
        self._next_vpn = MMAP_BASE_VPN

    def region_of(self, vpn: int) -> Region | None:
        """The region containing vpn, or None."""
        i = bisect.bisect_right(self.regions, vpn, key=lambda r: r.start) - 1
        if i >= 0 and self.regions[i].start <= vpn < self.regions[i].end:
            return self.regions[i]
        return None

    def get(self, vpn: int) -> Pte | None:
        """The PTE of vpn if it has been touched (nothing is created)."""
        c = self.chunks.get(vpn >> CHUNK_SHIFT)
        i = vpn & _ROW_MASK
        if c is None or not c.flags[i] & _PRESENT:
            return None
        return Pte(c, i, c.gen[i])

    def pte(self, vpn: int) -> Pte | None:
        """The PTE of vpn, created on first touch; None when vpn is outside every region."""
        c = self.chunks.get(vpn >> CHUNK_SHIFT)
        i = vpn & _ROW_MASK
        if c is None or not c.flags[i] & _PRESENT:
            region = self.region_of(vpn)
            if region is None:
                return None
            if c is None:
                c = self.chunks[vpn >> CHUNK_SHIFT] = Chunk(self, vpn >> CHUNK_SHIFT)
            if c.flags[i] & _DETACHED:
                raise Panic(f"page {vpn:#x} touched before its old entry was released")
            if c.flags[i] & _STALE:
                c.state[i] = c.mirrors[i] = c.version[i] = 0
                c.frame[i] = c.slot[i] = -1
            c.flags[i] = _PRESENT
            c.prot[i] = region.prot
            c.used += 1
        return Pte(c, i, c.gen[i])

    def map(self, vpn: int, npages: int, prot: int) -> int:
        """Create a region (vpn 0 = kernel chooses); return its first vpn; refuse overlaps."""
        check_prot(prot)
        if not 0 < npages <= MAX_MAP_PAGES:
            raise ServiceError(Err.INVAL, f"npages {npages} out of range 1..{MAX_MAP_PAGES}")
        if vpn == 0:
            vpn = self._next_vpn
        if not 0 < vpn or vpn + npages > MAX_VPN:
            raise ServiceError(Err.INVAL, f"region at vpn {vpn:#x} is outside the address space")
        for r in self.regions:
            if r.start < vpn + npages and vpn < r.end:
                raise ServiceError(Err.INVAL, f"region at vpn {vpn:#x} overlaps one at "
                                              f"{r.start:#x}")
        bisect.insort(self.regions, Region(vpn, npages, prot), key=lambda r: r.start)
        self._next_vpn = max(self._next_vpn, vpn + npages + 1)   # leave a guard page
        return vpn

    def edges_inside(self, vpn: int, npages: int) -> int:
        """How many of the range's two edges fall strictly inside a region (each one a split
        would cut: the most regions a protect of the range can add)."""
        inside = 0
        for edge in (vpn, vpn + npages):
            r = self.region_of(edge)
            inside += r is not None and r.start < edge
        return inside

    def split(self, vpn: int, npages: int) -> list[Region]:
        """Cut regions at the range's edges; return the regions inside it; refuse holes."""
        end = vpn + npages
        out: list[Region] = []
        covered = vpn
        for r in list(self.regions):
            if r.end <= vpn or r.start >= end:
                continue
            if r.start > covered:
                break
            self.regions.remove(r)
            pieces = [Region(r.start, vpn - r.start, r.prot)] if r.start < vpn else []
            lo, hi = max(r.start, vpn), min(r.end, end)
            inside = Region(lo, hi - lo, r.prot)
            pieces.append(inside)
            if r.end > end:
                pieces.append(Region(end, r.end - end, r.prot))
            for p in pieces:
                bisect.insort(self.regions, p, key=lambda x: x.start)
            out.append(inside)
            covered = hi
        if covered < end:
            raise ServiceError(Err.SEGV, f"range at vpn {vpn:#x}+{npages} is not all mapped")
        return out

    def unmap(self, vpn: int, npages: int) -> list[tuple[int, Pte]]:
        """Remove the range's regions; detach its PTEs and return them as (vpn, PTE) pairs
        (the caller releases or adopts each: module docstring)."""
        for r in self.split(vpn, npages):
            self.regions.remove(r)
        return [(v, self._detach(p)) for v, p in list(self.items(vpn, npages))]

    def clear(self) -> list[tuple[int, Pte]]:
        """Remove every region and detach every PTE (exit); as unmap."""
        self.regions.clear()
        return [(v, self._detach(p)) for v, p in list(self.items())]

    def protect(self, vpn: int, npages: int, prot: int) -> list[tuple[int, Pte]]:
        """Change the range's protection; return the touched (vpn, PTE) pairs in it."""
        check_prot(prot)
        for r in self.split(vpn, npages):
            r.prot = prot
        touched = list(self.items(vpn, npages))
        for _, p in touched:
            p.prot = prot
        return touched

    def items(self, vpn: int = 0, npages: int = MAX_VPN + 1) -> Iterator[tuple[int, Pte]]:
        """The touched (vpn, PTE) pairs in the range (all of them by default), by vpn, one
        at a time (a walk over every page holds no list of them)."""
        end = vpn + npages
        for key in sorted(self.chunks):
            base = key << CHUNK_SHIFT
            c = self.chunks.get(key)
            if c is None or base + CHUNK_PAGES <= vpn or base >= end:
                continue
            flags, gen = c.flags, c.gen
            for i in range(max(vpn, base) - base, min(end, base + CHUNK_PAGES) - base):
                if flags[i] & _PRESENT:
                    yield base + i, Pte(c, i, gen[i])

    def adopt(self, vpn: int, src: Pte) -> Pte:
        """Move the detached entry `src` (of this or another address space) to vpn, which
        must be in a region and untouched; release src's row; return the new PTE."""
        dst = self.pte(vpn)
        if dst is None or dst.c.flags[dst.i] != _PRESENT or not src.c.flags[src.i] & _DETACHED:
            raise Panic(f"page {vpn:#x} cannot adopt a PTE (no region there, or the PTE is "
                        "not detached)")
        s, d, i, j = src.c, dst.c, src.i, dst.i
        for name in ("state", "prot", "mirrors", "frame", "slot", "version"):
            getattr(d, name)[j] = getattr(s, name)[i]
        d.flags[j] = s.flags[i] & ~_DETACHED | _PRESENT
        dst.seal_vpn = src.seal_vpn
        d.tags[j * TAG_BYTES:(j + 1) * TAG_BYTES] = s.tags[i * TAG_BYTES:(i + 1) * TAG_BYTES]
        dst.space = src.space
        side = s.side.pop(i, None)
        if side is not None:
            d.side[j] = side
        src.release()
        return dst

    def _detach(self, p: Pte) -> Pte:
        """Take p's entry out of the table (a new generation: p is no longer live)."""
        c, i = p.c, p.i
        c.gen[i] = (c.gen[i] + 1) & _GEN_MASK
        c.flags[i] = c.flags[i] & ~_PRESENT | _DETACHED
        return p

    def drop_row(self, c: Chunk, i: int) -> None:
        """Free a detached row (Pte.release; its columns are reset when it is next touched);
        the chunk goes when its last row does."""
        if not c.flags[i] & _DETACHED:
            raise Panic(f"release of page {(c.key << CHUNK_SHIFT) + i:#x}, not detached")
        if c.space[i]:
            self.set_space(c, i, None)
        c.side.pop(i, None)
        c.moved.pop(i, None)
        c.flags[i] = _STALE
        c.used -= 1
        if not c.used and self.chunks.get(c.key) is c:
            del self.chunks[c.key]

    # -- the swap spaces rows name ----------------------------------------------------------
    def set_space(self, c: Chunk, i: int, space: SwapSpace | None) -> None:
        """Make row i of c name `space` (None: no space), keeping the references counted."""
        old = c.space[i]
        new = 0
        if space is not None:
            new = self._space_index.get(space, 0)
            if not new:
                new = self._free_spaces.pop() if self._free_spaces else len(self.spaces)
                if new == len(self.spaces):
                    self.spaces.append(None)
                    self._space_refs.append(0)
                self.spaces[new], self._space_index[space] = space, new
            self._space_refs[new] += 1
        c.space[i] = new
        if old:
            self._space_refs[old] -= 1
            if not self._space_refs[old]:
                gone = self.spaces[old]
                if gone is not None:
                    del self._space_index[gone]
                self.spaces[old] = None
                self._free_spaces.append(old)
