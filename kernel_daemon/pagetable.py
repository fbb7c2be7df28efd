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
"""
from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from wire import entropy
from wire.protocol import PAGE_SHIFT, PROT_R, PROT_W, PROT_X, Err, ServiceError

#: Largest virtual page number (a 48-bit address space, as x86-64).
MAX_VPN: int = (1 << (48 - PAGE_SHIFT)) - 1
#: Most pages one MAP may create.
MAX_MAP_PAGES: int = 1 << 20
#: Where the kernel places regions when the caller lets it choose.
MMAP_BASE_VPN: int = 0x10000


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


@dataclass(slots=True)
class Pte:
    """One page-table entry; see the state diagram in the module docstring."""
    prot: int
    state: PageState = PageState.ZERO
    frame: int = -1
    zero_content: bool = False      # installed by zero-fill and clean since
    swap_valid: bool = False        # the swap copy at `version` equals the current content
    slot: int = -1                  # swap slot (handle-relative block number), -1 = none
    space: SwapSpace | None = None  # the space `slot` lives in (the sealing process's)
    seal_vpn: int = -1              # the vpn bound into the seal (a granted page moves)
    version: int = 0                # version of the swap copy (0 = none)
    tag: bytes = b""                # its authentication tag
    mirrors: int = 0                # bit m set: mirror m holds `version`
    held: bytes | None = None       # kernel-held bytes (HELD, or write-back in flight)
    wb_version: int = 0             # version of an in-flight write-back of `held`
    wb_again: bool = False          # `held` changed while that write-back was in flight
    waiters: list[Callable[[], None]] = field(default_factory=list)


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
        self.ptes: dict[int, Pte] = {}
        self._next_vpn = MMAP_BASE_VPN

    def region_of(self, vpn: int) -> Region | None:
        """The region containing vpn, or None."""
        i = bisect.bisect_right(self.regions, vpn, key=lambda r: r.start) - 1
        if i >= 0 and self.regions[i].start <= vpn < self.regions[i].end:
            return self.regions[i]
        return None

    def pte(self, vpn: int) -> Pte | None:
        """The PTE of vpn, created on first touch; None when vpn is outside every region."""
        pte = self.ptes.get(vpn)
        if pte is None:
            region = self.region_of(vpn)
            if region is None:
                return None
            pte = self.ptes[vpn] = Pte(prot=region.prot)
        return pte

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
        """Remove the range's regions; return the (vpn, PTE) pairs removed with them."""
        for r in self.split(vpn, npages):
            self.regions.remove(r)
        gone = [(v, p) for v, p in self.ptes.items() if vpn <= v < vpn + npages]
        for v, _ in gone:
            del self.ptes[v]
        return gone

    def protect(self, vpn: int, npages: int, prot: int) -> list[tuple[int, Pte]]:
        """Change the range's protection; return the touched (vpn, PTE) pairs in it."""
        check_prot(prot)
        for r in self.split(vpn, npages):
            r.prot = prot
        touched = [(v, p) for v, p in self.ptes.items() if vpn <= v < vpn + npages]
        for _, p in touched:
            p.prot = prot
        return touched
