"""Resync: bring a mirror that was down back up to date with every page it missed.

With mirrored pagers (`--pagers 2`) the kernel does not wait for a mirror that is down: a
page-out completes on the mirrors that are up, and the page's `pte.mirrors` records which
of them hold its current version.  Page-ins only read mirrors whose bit is set, so nothing
is ever read from a stale copy -- but until the returning mirror is repaired, the page has
one copy fewer than it should, and losing the other mirror then would lose it.

So when a mirror (re)joins -- a new pager instance says hello, or a silent one is heard
again -- or a page-out completes without one of the mirrors that are up, the kernel starts a
*resync pass*: it collects every page whose swap copy is current (`swap_valid`) and whose
`mirrors` lacks that mirror's bit, and for each, in the background, RESYNC_WINDOW at a time:

1. reads the sealed page from a mirror that holds it (the same path as a major fault:
   mirrors that are up and have not failed lately first, the answer verified against the
   version and tag the kernel keeps; a mirror that answers wrongly is repaired on the way);
2. writes the verified ciphertext to the returning mirror (PAGE_OUT, same handle-relative
   slot, same version: nothing is resealed);
3. on the acknowledgement, if the page still has that version, sets the mirror's bit.

Races (the hard part).  The page lives on while its copy is in flight: it may be faulted
in, dirtied, evicted and written back under a new version, unmapped, or its process may die.
Step 2 therefore only starts if the PTE is still the process's and still at the version that
was read, and while the resync's write is in flight it holds the PTE's write-back slot
(`wb_version`): vm.write_back then queues behind it (`wb_again`) exactly as it queues behind
its own writes, so two writes of one slot are never in flight together and an old copy can
never land on top of a newer one.  When the write is answered, the slot is released and a
queued write-back is started.  A PTE that vanished meanwhile is simply forgotten (its slot
was freed with it; a late write to a closed handle is refused by the disk).

A pager that rejoins with a wiped or new disk (its device file lost: a new host) holds
none of the pages its bits claim.  A pass therefore first OPENs, on each mirror it resyncs,
the handle of every space with a swap copy that is not open there yet (pagers.py); a disk
that answers `created` for a handle it had opened before has lost it (pagers.on_lost ->
lost_handle).  That clears the mirror's bit in every page stored under the handle at once,
so the copies the pass queues rebuild the whole disk, and the masks (the durability rule's,
and `pages_short` in STATS) tell the truth.  A pager can hide a wipe only
by answering OPEN falsely: it is then a lying pager, caught by the checks of its next reads.

Counters: `resynced` (pages copied), `resync_failed` (no verified source, or the write
failed), `resync_passes`, `resync_pending` (copies queued or in flight now); `pages_short`
(pages whose current swap copy some pager lacks) is counted at each STATS.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

from kernel_daemon.pagers import FanIn
from kernel_daemon.pagetable import PageState, Pte
from kernel_daemon.proc import Proc
from kernel_daemon.vm import SwapCopy

if TYPE_CHECKING:
    from kernel_daemon.kernel import Kernel

#: How many page copies a resync keeps in flight at once (it must not crowd out faults).
RESYNC_WINDOW: int = 4
#: A pass starts this long after the first kick, so a burst of kicks makes one pass.
RESYNC_DELAY_MS: int = 200

Copy = tuple[Proc, int, Pte, int]          # (process, vpn, its PTE, the mirror to copy to)


class Resync:
    """Background copying of pages to mirrors that missed them."""

    def __init__(self, kernel: Kernel) -> None:
        self.k = kernel
        self.wanted: set[int] = set()          # mirrors kicked since the last pass began
        self.queue: deque[Copy] = deque()
        self.inflight = 0
        self.scheduled = False
        self.stats = kernel.stats

    # -- triggers ---------------------------------------------------------------------------
    def kick(self, mirror: int) -> None:
        """Mirror `mirror` may lack pages: make sure a pass looks for them soon."""
        if self.k.pagers.nmirrors < 2:
            return
        self.wanted.add(mirror)
        self._schedule()

    def kick_missing(self, mask: int) -> None:
        """A page-out completed on `mask` only: look for the mirrors it missed."""
        for m in range(self.k.pagers.nmirrors):
            if not mask >> m & 1:
                self.kick(m)

    def lost_handle(self, mirror: int, handle: bytes) -> None:
        """Mirror's disk lost every block of `handle`: clear the bits now (a copy acknowledged
        after this, e.g. the very write whose EBADHANDLE found the loss, keeps its bit), then
        copy (a pass)."""
        bit = 1 << mirror
        for _p, _v, pte in self._ptes():
            if pte.space is not None and pte.space.handles.get(mirror) == handle:
                pte.mirrors &= ~bit
        self.kick(mirror)

    def _schedule(self) -> None:
        if not self.scheduled and not self.busy:
            self.scheduled = True
            self.k.call_later(RESYNC_DELAY_MS, self._pass)

    @property
    def busy(self) -> bool:
        """Is a pass still copying?"""
        return bool(self.queue) or self.inflight > 0

    # -- a pass -------------------------------------------------------------------------------
    def _pass(self) -> None:
        """OPEN every swap space's handle on the wanted, live mirrors (a wiped disk shows);
        then collect every page those mirrors lack."""
        self.scheduled = False
        mirrors = {m for m in self.wanted if self.k.pagers.slots[m].up}
        self.wanted.clear()            # a mirror that is down is kicked again when it joins
        if not mirrors:
            return
        self.stats.resync_passes += 1
        pagers = self.k.pagers
        spaces = {pte.space for _p, _v, pte in self._ptes() if _copyable(pte) and pte.space}
        probes = [(m, s.handles[m], s.label[:32]) for s in spaces for m in mirrors
                  if m in s.handles and not pagers.is_open(m, s.handles[m])]
        self.inflight += 1             # busy (and pending, in STATS) until collected
        self.stats.resync_pending = len(self.queue) + self.inflight
        fan = FanIn(len(probes) + 1, lambda: self._collect(mirrors))
        for m, handle, label in probes:
            pagers.open(m, handle, label, lambda _r, _w: fan.one())
        fan.one()

    def _collect(self, mirrors: set[int]) -> None:
        """Queue a copy of every page a mirror in `mirrors` lacks; start copying."""
        self.inflight -= 1
        self.queue.extend((proc, vpn, pte, m) for proc, vpn, pte in self._ptes() if _copyable(pte)
                          for m in mirrors if not pte.mirrors >> m & 1)
        self._pump()

    def _ptes(self) -> Iterator[tuple[Proc, int, Pte]]:
        """Every live process's page-table entries, as (process, vpn, PTE), one at a time."""
        return ((proc, vpn, pte) for proc in list(self.k.procs.by_spid.values())
                for vpn, pte in proc.aspace.items())

    def short(self) -> int:
        """How many pages have a current swap copy that some pager lacks (STATS).  None with
        one pager (a copy is on it or nowhere): no scan of every page table then."""
        full = (1 << self.k.pagers.nmirrors) - 1
        if full == 1:
            return 0
        return sum(_copyable(p) and p.mirrors != full for _p, _v, p in self._ptes())

    def _pump(self) -> None:
        """Keep up to RESYNC_WINDOW copies in flight; when all are done, run a pass that was
        asked for meanwhile."""
        while self.queue and self.inflight < RESYNC_WINDOW:
            self.inflight += 1
            self._copy(*self.queue.popleft())
        self.stats.resync_pending = len(self.queue) + self.inflight
        if not self.busy and self.wanted:
            self._schedule()

    def _finished(self, ok: bool | None) -> None:
        """A copy ended: done (True), failed (False) or skipped (None: nothing to copy)."""
        self.inflight -= 1
        self.stats.resynced += ok is True
        self.stats.resync_failed += ok is False
        self._pump()

    # -- one page -----------------------------------------------------------------------------
    def _copy(self, proc: Proc, vpn: int, pte: Pte, mirror: int) -> None:
        """Read a verified copy of the page from the mirrors holding it (as a major fault
        does: Vm.read_verified); write it (with --code: its fragment) to `mirror`."""
        if not self._current(proc, vpn, pte, pte.version) or pte.mirrors >> mirror & 1:
            self._finished(None)
            return
        copy = SwapCopy.of(pte)
        vm, pagers, ec = self.k.vm, self.k.pagers, self.k.ec

        def read(handles: list[bytes]) -> None:
            mask = pte.mirrors & ~(1 << mirror)
            if not self._current(proc, vpn, pte, copy.version) or \
                    mask.bit_count() < (ec.k if ec is not None else 1):
                self._finished(None)                 # changed meanwhile, or no source
                return
            vm.read_verified(proc, vpn, pte, copy, handles, mask, on_read, resync=True)

        def on_read(plain: bytes | None, sealed: bytes, _f: list[tuple[int, str, str]]) -> None:
            if plain is None:
                self._finished(False)
                return
            if ec is not None:                       # erasure-coded: its fragment only
                sealed = ec.coder.split(sealed, copy.space.swap_id, copy.seal_vpn,
                                        copy.version, [mirror])[mirror]
            pagers.with_handles(copy.space, lambda handles: write(handles, sealed))

        def write(handles: list[bytes], data: bytes) -> None:
            if not self._current(proc, vpn, pte, copy.version) or pte.wb_version:
                self._finished(None)                 # changed meanwhile: nothing to copy
                return
            pte.wb_version = copy.version            # hold the slot's write (vm.write_back waits)
            pagers.write_all([mirror], lambda m: {"handle": handles[m], "slot": copy.slot,
                                                  "data": data}, written)

        def written(mask: int, _why: str) -> None:
            if not (proc.alive and pte.live()):
                self._finished(bool(mask))           # the page is gone; its slot went with it
                return
            pte.wb_version = 0
            if mask and pte.version == copy.version:
                pte.mirrors |= mask
            if pte.wb_again:                         # a write-back queued behind ours
                pte.wb_again = False
                if pte.held is not None:
                    vm.write_back(proc, vpn, pte)
            self._finished(bool(mask))

        pagers.with_handles(copy.space, read)

    @staticmethod
    def _current(proc: Proc, vpn: int, pte: Pte, version: int) -> bool:
        """Is pte still proc's page vpn, with a current swap copy at `version`?"""
        return (proc.alive and pte.live() and _copyable(pte)
                and pte.version == version)


def _copyable(pte: Pte) -> bool:
    """Does pte have a current swap copy on some mirror, with no write of it in flight?"""
    return (pte.swap_valid and pte.slot >= 0 and pte.space is not None and pte.mirrors != 0
            and not pte.wb_version and pte.state != PageState.HELD)
