"""The MMU: a software TLB over the bank, filled only by the kernel's FAULT replies.

Translation
-----------
A virtual address is ``vpn << PAGE_SHIFT | offset``.  The TLB is three dicts from vpn to the
bank byte offset of the page's frame, one per kind of access, so a hit is one dict lookup:

* ``_r``: pages installed readable;
* ``_w``: pages installed writable AND already dirty;
* ``_x``: pages installed executable (``exec_read`` fetches through it).

An entry appears only when a FAULT reply installs it (or the local dirty trap below promotes
one), and leaves on a SHOOTDOWN, an UNMAP or a PROTECT.  A hit never talks to the kernel.

The hot word entries
--------------------
``load_u64``/``store_u64`` are the accesses a program makes most, so they get a TLB of one
entry each, of plain attributes: ``_rkey``/``_wkey`` is the *last referenced* page's base
address (``vpn << PAGE_SHIFT``, or ``_COLD``) while it has an ``_r``/``_w`` entry, and
``_rdelta``/``_wdelta`` what to add to an address in it to get its bank offset.  A hit is one
mask and one compare: ``addr & _WORD_KEY`` clears the word-offset bits 3..11 only, so it
equals the key only for an *aligned, non-negative* address in that page, and the reference
record needs no compare (the page is already ``_last``).  Anything else takes the slow path,
which looks in the dicts, records the reference, and heats the entry for the next access.
Two rules keep the entries true:

* A hot entry stands for ``_last``: whatever makes another page ``_last`` cools both
  (``_reference``; an install drops its page's entries first, which cools them).
* It stands for a dict entry: ``_drop_tlb_locked`` cools both (whatever page it drops: one
  store, no compare), so a shootdown, UNMAP or PROTECT makes the next access slow, and
  faults if the page is gone.  Only the main thread heats, and it re-reads the dict entry
  *after* heating (``_heat_r``/``_heat_w``): a drop racing the heat is seen either by that
  re-read or, coming later, cools the entry itself.

The dirty bit
-------------
The kernel installs a writable page *clean*: it goes into ``_r`` but not ``_w``.  The first
store finds no ``_w`` entry and traps, locally: the trap sees the page is installed writable,
marks it dirty and adds it to ``_w`` (no kernel trip).  So ``_dirty`` is exactly the set of
pages stored to since they were installed, and a SHOOTDOWN of a clean page need not send its
bytes.  The dirty bit outlives a PROTECT (the page stays resident, only the TLB entry goes)
and dies with a SHOOTDOWN or UNMAP.  A fault taken *for* a store installs the page dirty at
once, since the store follows.

Reference record
----------------
The kernel's LRU and clock need the real accesses, and only the runtime sees TLB hits.  Every
hit appends its vpn to ``_refs`` when it differs from the last vpn appended (one compare in
the fast path).  The list is handed over, in access order, with every FAULT (its ``refs``) and
every HEARTBEAT (skipped while faults hand it over: with hundreds of processes, heartbeats
would cost the kernel as much as their faults).  A fault's own vpn is not appended: the
fault is its own reference.

Heartbeat and fault go on two connections, so the kernel could see a heartbeat's refs *after*
a fault that the same accesses preceded, and pick the wrong LRU victim.  So while a heartbeat
carrying refs is unanswered, a fault waits (briefly) for its answer before it is sent.

Locking
-------
The fast paths (TLB hits) take no lock.  Every slow path (a fault, an install, the local
dirty trap, UNMAP/PROTECT invalidation) and the shootdown handler take ``_lock``; the kernel
is never waited for with the lock held (it may shoot down our pages while serving our fault).
"""
from __future__ import annotations

import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from apps.runtime.bank import ZERO_PAGE, Bank
from apps.runtime.errors import KernelProtocolError
from apps.runtime.syscall import KernelLink
from wire.protocol import (
    ACCESS_EXEC,
    ACCESS_PROT,
    ACCESS_READ,
    ACCESS_WRITE,
    FILL_DATA,
    FILL_KEEP,
    FILL_ZERO,
    PAGE_SHIFT,
    PAGE_SIZE,
    PROT_R,
    PROT_W,
    PROT_X,
)

PAGE_MASK: int = PAGE_SIZE - 1
U64_MASK: int = (1 << 64) - 1
_U64 = struct.Struct("<Q")
_unpack_u64: Callable[[memoryview, int], tuple[int]] = _U64.unpack_from
_pack_u64 = _U64.pack_into
_LAST_WORD: int = PAGE_SIZE - 8
_monotonic = time.monotonic
#: addr & _WORD_KEY is the base address of addr's page when addr is aligned and non-negative,
#: else no page's (bits 0..2 or the sign stay): the key of the hot word entries.
_WORD_KEY: int = ~(PAGE_MASK & ~7)
#: The key of a cold (empty) hot word entry: no address masks to it.
_COLD: int = -1

#: A ref list longer than this is compacted to each page's last reference (LRU order kept).
REFS_LIMIT: int = 4096
#: How long a fault waits for the answer to a heartbeat that carried refs.
HEARTBEAT_REFS_WAIT_S: float = 1.0
#: How long a shootdown of a page being installed waits for the install (see the essay).
DEFER_WAIT_S: float = 2.0


def _take(parked: list[_Deferred], vpn: int, frame: int) -> _Deferred | None:
    """Remove and return the parked shootdown of (vpn, frame), if any."""
    for d in parked:
        if d.vpn == vpn and d.frame == frame:
            parked.remove(d)
            return d
    return None


def compact_refs(refs: list[int], limit: int = REFS_LIMIT) -> list[int]:
    """refs as they are when short; else each vpn once, at its last reference, in order."""
    if len(refs) <= limit:
        return refs
    last_first = list(dict.fromkeys(reversed(refs)))
    return last_first[:limit][::-1]


@dataclass(slots=True)
class _Deferred:
    """A shootdown that arrived before the install it revokes (see the essay)."""
    vpn: int
    frame: int
    want: bool
    answer: dict[str, Any] | None = None
    released: bool = False          # the reply came and did not install (vpn, frame)


class Mmu:
    """Translation, the dirty bit, the reference record and shootdowns for one process."""

    def __init__(self, kernel: KernelLink, bank: Bank) -> None:
        self._k = kernel
        self.bank = bank
        self._buf = bank.buf
        self._words = bank.words                        # native words: aligned u64 hits
        self._nframes = bank.nframes
        if sys.byteorder != "little":                   # ... little-endian only
            self.load_u64 = self._load_u64_slow         # type: ignore[method-assign]
            self.store_u64 = self._store_u64_slow       # type: ignore[method-assign]
        # The TLB, read without the lock (see the module docstring).
        self._r: dict[int, int] = {}
        self._w: dict[int, int] = {}
        self._x: dict[int, int] = {}
        # Slow-path state, under _lock.
        self._entry: dict[int, tuple[int, int]] = {}   # vpn -> (offset, prot) per TLB entry
        self._resident: dict[int, int] = {}            # vpn -> frame lent to us, TLB or not
        self._dirty: set[int] = set()
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._inflight: int | None = None              # vpn of the FAULT awaiting its reply
        self._revoked = False                          # ... whose old residency was shot down
        self._parked: list[_Deferred] = []
        self._hb_refs_unanswered = False
        # The reference record: appended by the main thread only.
        self._refs: list[int] = []
        self._last = -1
        # The hot word entries (see the module docstring): heated by the main thread only.
        self._rkey = self._wkey = _COLD
        self._rdelta = self._wdelta = 0
        #: When a FAULT last handed the record over (monotonic): the heartbeat leaves the
        #: references since to the next fault unless none comes within a heartbeat.
        self.refs_faulted_s = 0.0
        # Counters.
        self.tlb_hits = 0
        self.tlb_misses = 0
        self.local_dirty_traps = 0
        self.shootdowns = 0
        self.store_races = 0
        self.install_races = 0

    # -- loads ---------------------------------------------------------------------------
    def read_into(self, addr: int, dst: memoryview) -> None:
        """Copy len(dst) bytes from virtual address addr into dst, faulting pages in."""
        self._load(addr, dst, self._r, ACCESS_READ)

    def read(self, addr: int, n: int) -> bytes:
        """n bytes at virtual address addr."""
        out = bytearray(n)
        self._load(addr, memoryview(out), self._r, ACCESS_READ)
        return bytes(out)

    def exec_read(self, addr: int, n: int) -> bytes:
        """n bytes at addr fetched for execution (needs PROT_X)."""
        out = bytearray(n)
        self._load(addr, memoryview(out), self._x, ACCESS_EXEC)
        return bytes(out)

    def _load(self, addr: int, dst: memoryview, tlb: dict[int, int], access: str) -> None:
        """Copy page by page through `tlb`; a miss faults with `access`.

        Safe against a concurrent shootdown without a lock: a frame's bank bytes are only
        ever reused by this (the main) thread, on a later fault, so bytes read after the
        entry vanished are still the page's last contents."""
        dst = memoryview(dst).cast("B")
        n, pos, buf = len(dst), 0, self._buf
        if addr < 0:
            self._fault(-1, access)                  # the kernel answers ESEGV
        while pos < n:
            a = addr + pos
            vpn, o = a >> PAGE_SHIFT, a & PAGE_MASK
            take = min(n - pos, PAGE_SIZE - o)
            base = tlb.get(vpn)
            if base is None:
                base = self._fault(vpn, access)
            else:
                self.tlb_hits += 1
                if vpn != self._last:
                    self._reference(vpn)
            dst[pos:pos + take] = buf[base + o:base + o + take]
            pos += take

    def load_u64(self, addr: int) -> int:
        """The little-endian unsigned 64-bit integer at addr.

        The TLB-hit path is the one every word access takes, so an aligned hit on the last
        referenced page is a mask, a compare and an index into the bank's words (see "The
        hot word entries"; word hits are not counted in tlb_hits: counting would double
        their cost).  Anything else takes _load_u64_slow."""
        if addr & _WORD_KEY == self._rkey:
            return self._words[(self._rdelta + addr) >> 3]
        return self._load_u64_slow(addr)

    def _load_u64_slow(self, addr: int) -> int:
        """load_u64 through the TLB dict, a fault, or a byte read (across a page); an aligned
        access heats the hot entry for the next."""
        o = addr & PAGE_MASK
        if o > _LAST_WORD or addr < 0:
            return int.from_bytes(self.read(addr, 8), "little")
        vpn = addr >> PAGE_SHIFT
        base = self._r.get(vpn)
        if base is None:
            base = self._fault(vpn, ACCESS_READ)     # the fault is the reference
        elif vpn != self._last:
            self._reference(vpn)
        if not addr & 7:
            self._heat_r(vpn, base)
        return _unpack_u64(self._buf, base + o)[0]

    def _heat_r(self, vpn: int, base: int) -> None:
        """Make (vpn, base) the hot read entry, unless vpn is not _last or its _r entry is
        not base any more (dropped: a drop racing this either shows in the re-read or
        cools the entry after it)."""
        key = vpn << PAGE_SHIFT
        self._rdelta = base - key
        self._rkey = key
        if self._r.get(vpn) != base or self._last != vpn:
            self._rkey = _COLD

    def _reference(self, vpn: int) -> None:
        """Record a TLB hit on vpn, a page other than _last; this cools the hot entries."""
        self._refs.append(vpn)
        self._last = vpn
        self._rkey = self._wkey = _COLD

    def try_read(self, addr: int, n: int) -> bytes | None:
        """n bytes at addr if every page is in the TLB, else None; never faults."""
        out = bytearray(n)
        dst, pos = memoryview(out), 0
        while pos < n:
            a = addr + pos
            vpn, o = a >> PAGE_SHIFT, a & PAGE_MASK
            take = min(n - pos, PAGE_SIZE - o)
            base = self._r.get(vpn)
            if base is None:
                return None
            self.tlb_hits += 1
            if vpn != self._last:
                self._reference(vpn)
            dst[pos:pos + take] = self._buf[base + o:base + o + take]
            pos += take
        return bytes(out)

    # -- stores: the shootdown race ------------------------------------------------------
    #
    # A store is three steps: look up the page's ``_w`` entry, copy the bytes into the bank,
    # and nothing else -- no lock, so a hit costs a dict lookup and a memcpy.  But the
    # control thread may answer a SHOOTDOWN of that very page at any moment, and a shootdown
    # is a capture: it takes the lock, drops the entry, copies the frame's bytes into its
    # reply and from then on the kernel, not us, holds the page.  If it runs between our
    # lookup and our copy, the copy lands in a frame that is no longer ours, *after* the
    # bytes were captured: the store would be silently lost.
    #
    # Preventing the interleaving would need the lock on every store.  Instead we detect
    # it, after the fact, cheaply: once the copy is done we look the entry up again.
    #
    # * Still there (the same offset): the shootdown, if any comes, comes after our copy,
    #   and its capture includes the store.  Nothing can have removed and re-added the entry
    #   meanwhile, because only this thread installs entries.
    # * Gone: a shootdown ran somewhere in the window, before or after the copy -- we cannot
    #   tell which, and need not.  We redo the store through the slow path: fault the page
    #   back (the kernel hands us the bytes it captured, with or without our store) and store
    #   again.  A store is idempotent, so doing it twice is harmless, and after the redo the
    #   page holds it for certain.
    #
    # The stray copy itself does no harm.  The frame's bank bytes belong to nothing the
    # kernel will read: the capture is already sent, and the frame is reused only when a
    # later fault of ours installs a page there, which fills it first (FILL_KEEP only ever
    # returns a page to the frame it sat in, and then the stray bytes are our own store).
    # A torn capture -- the shootdown copying while our memcpy is half done -- is covered
    # the same way: the entry is gone when we check, and the redo rewrites the whole range.
    #
    # Loads need none of this: reading a frame after it was taken back reads the bytes the
    # page had when it was captured, which is a read that happened just before the capture.

    def write(self, addr: int, data: Any) -> None:
        """Store the bytes of `data` (any contiguous buffer) at virtual address addr."""
        src = memoryview(data).cast("B")
        n, pos, buf, w = len(src), 0, self._buf, self._w
        if addr < 0:
            self._fault(-1, ACCESS_WRITE)
        while pos < n:
            a = addr + pos
            vpn, o = a >> PAGE_SHIFT, a & PAGE_MASK
            take = min(n - pos, PAGE_SIZE - o)
            base = w.get(vpn)
            if base is None:
                base = self._fault(vpn, ACCESS_WRITE)   # or the dirty trap
            else:
                self.tlb_hits += 1
                if vpn != self._last:
                    self._reference(vpn)
            buf[base + o:base + o + take] = src[pos:pos + take]
            if w.get(vpn) != base:                   # shot down under us: store again
                self.store_races += 1
                continue
            pos += take

    def store_u64(self, addr: int, value: int) -> None:
        """Store value (mod 2**64) as a little-endian 64-bit integer at addr (an aligned hit
        on the last referenced page: as load_u64's, then the store race check below; word
        hits are not counted in tlb_hits)."""
        key = addr & _WORD_KEY
        if key == self._wkey:
            delta = self._wdelta
            self._words[(delta + addr) >> 3] = value & U64_MASK
            if self._wkey == key or self._w.get(key >> PAGE_SHIFT) == delta + key:
                return                               # (cooled for another page's drop)
            self.store_races += 1                    # shot down under us: store again
        self._store_u64_slow(addr, value)

    def _store_u64_slow(self, addr: int, value: int) -> None:
        """store_u64 through the TLB dict, the dirty trap or a fault, or a byte write (across
        a page); an aligned access heats the hot entry for the next."""
        value &= U64_MASK
        o = addr & PAGE_MASK
        if o > _LAST_WORD or addr < 0:
            self.write(addr, value.to_bytes(8, "little"))
            return
        vpn, w = addr >> PAGE_SHIFT, self._w
        while True:
            base = w.get(vpn)
            if base is None:
                base = self._fault(vpn, ACCESS_WRITE)   # or the dirty trap
            elif vpn != self._last:
                self._reference(vpn)
            _pack_u64(self._buf, base + o, value)
            if w.get(vpn) == base:
                if not addr & 7:
                    self._heat_w(vpn, base)
                return
            self.store_races += 1                    # shot down under us: store again

    def _heat_w(self, vpn: int, base: int) -> None:
        """Make (vpn, base) the hot write entry (as _heat_r, against _w)."""
        key = vpn << PAGE_SHIFT
        self._wdelta = base - key
        self._wkey = key
        if self._w.get(vpn) != base or self._last != vpn:
            self._wkey = _COLD

    def _dirty_trap_locked(self, vpn: int) -> int | None:
        """The local dirty trap: vpn's offset if it is installed writable (now marked dirty
        and put in _w), else None (a write fault is needed)."""
        base = self._w.get(vpn)
        if base is not None:
            return base
        entry = self._entry.get(vpn)
        if entry is None or not entry[1] & PROT_W:
            return None
        base = entry[0]
        self._dirty.add(vpn)
        self._w[vpn] = base
        self.local_dirty_traps += 1
        if vpn != self._last:
            self._reference(vpn)
        return base

    # -- faults and installs: the install race ---------------------------------------------
    #
    # The FAULT reply comes on the call connection, a SHOOTDOWN on the control connection,
    # and the kernel may send the second right after the first: it thinks the page resident
    # the moment it replies, and another process's fault may choose it as the victim.  The
    # control thread can then see the shootdown *before* the main thread has installed the
    # page (or even received the reply), and answering it from the TLB would be wrong twice:
    # it would hand back a frame not yet filled, and the install that follows would leave a
    # TLB entry for a page the kernel has taken back.
    #
    # While a fault on vpn is in flight, a shootdown of vpn is one of two things:
    #
    # * It revokes the page's *old* residency (the kernel processed it before our fault).
    #   Then we still hold the page at the shot-down frame: ``_resident[vpn] == frame``
    #   (a PROTECT dropped the TLB entry but not the page, or a store faulted on a page
    #   installed read-only).  We answer at once from the bank and mark the fault
    #   ``_revoked``: if its reply then says FILL_KEEP we cannot tell whether the kernel
    #   sent it before or after the shootdown, so we install nothing and fault again.
    # * It revokes the install we are about to do (the kernel replied first).  Then
    #   ``_resident`` does not hold vpn at that frame.  The answer depends on the reply's
    #   fill, so the handler parks the request (``_deferred``) and waits; the main thread,
    #   on receiving the reply, fills the frame, writes the answer, installs nothing and
    #   faults again.  The wait cannot deadlock: the kernel has already sent the reply.
    #   (If no reply comes within DEFER_WAIT_S the shootdown was about something else and
    #   is answered from the bank as usual.)
    #
    # A reply may also install pages the fault did not name (fault-around: its ``around``),
    # and the kernel may shoot one of those down before we have the reply, too.  So while a
    # fault is in flight, a shootdown of *any* page we do not hold is parked until the reply
    # is applied: if the reply installs that page at that frame, the frame is filled, the
    # page is not installed and the shootdown is answered (clean: it was never ours to
    # write); else it is released and answered the usual way.  The price is in one rare
    # case only: a stale shootdown of a page we unmapped (the control thread late) that
    # arrives during a later fault waits for that fault's reply, at most DEFER_WAIT_S if the
    # kernel waits for its answer to serve the fault.

    def _fault(self, vpn: int, access: str) -> int:
        """Ask the kernel for vpn and install it; return the offset for `access` (a store
        first tries the local dirty trap, under the same lock).

        Raises the mapped SealedError (SegmentationFault, ProtectionFault, ...)."""
        while True:
            with self._lock:
                if access == ACCESS_WRITE and vpn in self._entry:     # (_w is in _entry)
                    base = self._dirty_trap_locked(vpn)
                    if base is not None:
                        return base
                if self._hb_refs_unanswered:
                    if not self._cv.wait_for(lambda: not self._hb_refs_unanswered,
                                             HEARTBEAT_REFS_WAIT_S):
                        self._hb_refs_unanswered = False
                refs = self._refs
                if len(refs) > REFS_LIMIT:
                    refs = compact_refs(refs)
                self._refs = []
                self.refs_faulted_s = _monotonic()
                self._inflight, self._revoked = vpn, False
            self.tlb_misses += 1
            reply: dict[str, Any] | None = None
            try:
                reply = self._k.fault(vpn, access, refs)
            finally:
                with self._lock:
                    base = self._complete_locked(vpn, access, reply)
            if base is not None:
                return base
            self.install_races += 1

    def _complete_locked(self, vpn: int, access: str, reply: dict[str, Any] | None) -> int | None:
        """Apply a FAULT reply (None: the fault failed); return the offset, or None when a
        shootdown overtook it and the fault must be asked again.  The fault-around pages the
        reply carries are installed first (those a parked shootdown revoked are not).

        Only a parked shootdown waits on the condition while a fault is in flight (a fault
        waiting for a heartbeat's answer is this thread), so with none parked -- the usual
        case -- nobody is woken."""
        self._inflight = None
        parked = self._parked
        if parked:
            self._parked = []
        try:
            if reply is None:
                return None
            frame, prot, fill, data = self._check_reply(vpn, access, reply)
            if fill != FILL_KEEP:
                off = frame * PAGE_SIZE
                self._buf[off:off + PAGE_SIZE] = ZERO_PAGE if data is None else data
            if "around" in reply:
                self._apply_around_locked(vpn, frame, reply["around"], parked)
            if parked:
                d = _take(parked, vpn, frame)
                if d is not None:                        # revoked before installed
                    self._answer_deferred_locked(d, fill == FILL_KEEP and vpn in self._dirty)
                    self._forget_locked(vpn)
                    return None
            if self._revoked and fill == FILL_KEEP:
                return None
            return self._install_locked(vpn, frame, prot, fill, access)
        finally:
            if parked:
                for d in parked:                         # not about this reply: answered
                    d.released = True                    # the usual way, by their thread
                self._cv.notify_all()

    def _apply_around_locked(self, vpn: int, frame: int, around: object,
                             parked: list[_Deferred]) -> None:
        """Fill and install the fault-around pages of the reply to a fault on (vpn, frame),
        except those a parked shootdown revoked before they were installed (answered)."""
        last = self._last
        for v, fr, pr, page in self._check_around(vpn, frame, around):
            self.bank.fill(fr, page)
            d = _take(parked, v, fr) if parked else None
            if d is None:
                self._install_locked(v, fr, pr, FILL_DATA, ACCESS_READ)
            else:                                        # revoked before installed
                self._answer_deferred_locked(d, dirty=False)
        self._last = last                                # installed, not yet referenced

    def _answer_deferred_locked(self, d: _Deferred, dirty: bool) -> None:
        """Write the answer of a parked shootdown and wake the control thread."""
        d.answer = {"dirty": dirty, "data": self.bank.page(d.frame) if (dirty or d.want) else None}
        self._cv.notify_all()

    def _check_around(self, vpn: int, frame: int, around: object
                      ) -> list[tuple[int, int, int, bytes]]:
        """The fault-around installs of a FAULT reply ([vpn, frame, prot, data] each: pages
        distinct from each other and from the fault's, frames likewise, whole pages);
        KernelProtocolError if malformed."""
        if around is None:
            return []
        if not isinstance(around, list):
            raise KernelProtocolError(f"fault on page {vpn:#x}: around is not a list")
        out: list[tuple[int, int, int, bytes]] = []
        vpns, frames = {vpn}, {frame}
        for item in around:
            if not (isinstance(item, list) and len(item) == 4):
                raise KernelProtocolError(f"fault on page {vpn:#x}: bad around entry")
            v, fr, pr, page = item
            if type(v) is not int or v in vpns or not self.bank.valid(fr) or fr in frames \
                    or type(pr) is not int or not 0 <= pr <= PROT_R | PROT_W | PROT_X \
                    or not isinstance(page, bytes) or len(page) != PAGE_SIZE:
                raise KernelProtocolError(f"fault on page {vpn:#x}: bad around entry for "
                                          f"page {v!r}")
            vpns.add(v)
            frames.add(fr)
            out.append((v, fr, pr, page))
        return out

    def _check_reply(self, vpn: int, access: str,
                     reply: dict[str, Any]) -> tuple[int, int, str, bytes | None]:
        """(frame, prot, fill, data) of a FAULT reply; KernelProtocolError if malformed."""
        frame, prot, fill = reply.get("frame"), reply.get("prot"), reply.get("fill")
        data = reply.get("data")
        if reply.get("vpn", vpn) != vpn:
            raise KernelProtocolError(f"fault on page {vpn:#x} answered for page {reply['vpn']!r}")
        if frame.__class__ is not int or not 0 <= frame < self._nframes:    # (bank.valid)
            raise KernelProtocolError(f"fault on page {vpn:#x}: bad frame {frame!r}")
        if not isinstance(prot, int) or not prot & ACCESS_PROT[access]:
            raise KernelProtocolError(f"fault on page {vpn:#x}: installed with prot {prot!r} "
                                      f"that does not allow {access}")
        if fill == FILL_DATA:
            if not isinstance(data, bytes) or len(data) != PAGE_SIZE:
                raise KernelProtocolError(f"fault on page {vpn:#x}: fill data is not one page")
        elif fill == FILL_ZERO or fill == FILL_KEEP:
            data = None
        else:
            raise KernelProtocolError(f"fault on page {vpn:#x}: unknown fill {fill!r}")
        return frame, prot, str(fill), data

    def _install_locked(self, vpn: int, frame: int, prot: int, fill: str, access: str) -> int:
        """Insert vpn's TLB entries; return the offset for `access`."""
        base = frame * PAGE_SIZE
        if vpn in self._entry:                           # (every TLB entry has an _entry)
            self._drop_tlb_locked(vpn)
        else:
            self._rkey = self._wkey = _COLD
        if fill != FILL_KEEP:
            self._dirty.discard(vpn)                     # a freshly filled page is clean
        self._resident[vpn] = frame
        self._entry[vpn] = (base, prot)
        if prot & PROT_R:
            self._r[vpn] = base
        if prot & PROT_X:
            self._x[vpn] = base
        if prot & PROT_W and (access == ACCESS_WRITE or vpn in self._dirty):
            self._dirty.add(vpn)
            self._w[vpn] = base
        self._last = vpn
        return base

    # -- invalidation ----------------------------------------------------------------------
    def _drop_tlb_locked(self, vpn: int) -> None:
        """Remove vpn's TLB entries (the page stays resident, its dirty bit stays) and cool
        the hot word entries, whichever page they hold."""
        self._rkey = self._wkey = _COLD
        self._r.pop(vpn, None)
        self._w.pop(vpn, None)
        self._x.pop(vpn, None)
        self._entry.pop(vpn, None)

    def _forget_locked(self, vpn: int) -> None:
        """vpn is no longer ours: drop its TLB entries, residency and dirty bit."""
        self._drop_tlb_locked(vpn)
        self._resident.pop(vpn, None)
        self._dirty.discard(vpn)

    def _vpns_in(self, addr: int, npages: int) -> list[int]:
        """The resident vpns in [addr, addr + npages pages)."""
        lo = addr >> PAGE_SHIFT
        hi = lo + npages
        if npages <= len(self._resident):            # (TLB entries are all resident pages)
            return [v for v in range(lo, hi) if v in self._resident]
        return [v for v in self._resident if lo <= v < hi]

    def unmapped(self, addr: int, npages: int) -> None:
        """The kernel removed the range: forget its pages and their dirty bits."""
        with self._lock:
            for vpn in self._vpns_in(addr, npages):
                self._forget_locked(vpn)

    def protected(self, addr: int, npages: int) -> None:
        """The range's permissions changed: drop its TLB entries (they refill by fault)."""
        with self._lock:
            for vpn in self._vpns_in(addr, npages):
                self._drop_tlb_locked(vpn)

    # -- the control thread's side -----------------------------------------------------------
    def shootdown(self, vpn: int, frame: int, want: bool,
                  until: float | None = None) -> dict[str, Any]:
        """Give page vpn (in `frame`) back to the kernel: drop it from the TLB and return the
        SHOOTDOWN reply {dirty, data}, data being the page when dirty or wanted.  A parked
        shootdown waits until `until` (time.monotonic(); None: DEFER_WAIT_S from now): the
        pages of one message share one wait, which must end before the kernel's timeout."""
        if until is None:
            until = time.monotonic() + DEFER_WAIT_S
        if not self.bank.valid(frame):
            raise ValueError(f"frame {frame!r} is outside the bank's {self.bank.nframes} frames")
        with self._lock:
            self.shootdowns += 1
            if self._inflight is not None and (
                    vpn not in self._resident
                    or vpn == self._inflight and self._resident[vpn] != frame):
                parked = _Deferred(vpn, frame, want)
                self._parked.append(parked)
                self._cv.wait_for(lambda: parked.answer is not None or parked.released,
                                  max(0.0, until - time.monotonic()))
                if parked in self._parked:
                    self._parked.remove(parked)
                if parked.answer is not None:
                    return parked.answer
            if vpn == self._inflight:
                self._revoked = True
            if self._resident.get(vpn, frame) != frame:
                # Stale: it revokes an older residency of vpn (unmapped and mapped again
                # since, the control thread late); the page now at another frame is not its.
                return {"dirty": False, "data": self.bank.page(frame) if want else None}
            dirty = vpn in self._dirty
            self._forget_locked(vpn)
            return {"dirty": dirty, "data": self.bank.page(frame) if (dirty or want) else None}

    def shootdown_more(self, more: list[Any], until: float | None = None
                       ) -> list[dict[str, Any]]:
        """The answers to a SHOOTDOWN's further pages ([vpn, frame, want] each), in order,
        parked at most until `until` in all (shootdown)."""
        if until is None:
            until = time.monotonic() + DEFER_WAIT_S
        out = []
        for item in more:
            if not (isinstance(item, list) and len(item) == 3 and type(item[0]) is int
                    and type(item[2]) is bool):
                raise ValueError(f"shootdown entry {item!r} is not [vpn, frame, want]")
            out.append(self.shootdown(item[0], item[1], item[2], until))
        return out

    def harvest_refs(self) -> list[int]:
        """Take the references recorded since the last hand-over (for a HEARTBEAT)."""
        with self._lock:
            refs = self._refs
            n = len(refs)
            out = refs[:n]
            del refs[:n]                 # the main thread may append meanwhile: keep those
            if out:
                self._hb_refs_unanswered = True
        return compact_refs(out)

    def heartbeat_answered(self) -> None:
        """The kernel has applied the last heartbeat's refs: faults may go."""
        with self._lock:
            self._hb_refs_unanswered = False
            self._cv.notify_all()

    # -- observation -------------------------------------------------------------------------
    def resident_vpns(self) -> list[int]:
        """The vpns the kernel has lent us, in no order."""
        with self._lock:
            return list(self._resident)

    def counters(self) -> dict[str, int]:
        """The MMU's counters."""
        return {"tlb_hits": self.tlb_hits, "tlb_misses": self.tlb_misses,
                "local_dirty_traps": self.local_dirty_traps, "shootdowns": self.shootdowns,
                "store_races": self.store_races, "install_races": self.install_races}
