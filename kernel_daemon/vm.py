"""Virtual memory: page faults, eviction, write-back and page-in — the kernel's policy half.

The frames' bytes live in the processes' banks, so taking a frame back is a conversation:
the kernel shoots the victim's TLB entry down over the owner's control connection and the
owner's runtime hands the page back (only when it is dirty or the kernel has no valid copy).
None of this blocks the kernel: a fault that needs a frame or a page-in SUSPENDs and is
answered from a callback.

A fault, in this file: Vm.fault (the FAULT handler: checks, a Fault record) -> Vm._serve
(by page state) -> for a SWAPPED page a PageIn: PageIn.start asks for a frame (Vm._get_frame)
and reads the page (Vm.read_verified -> pagers.py or ecpages.py), PageIn.on_frame and
PageIn.on_data collect the two, PageIn.finish installs and replies (Vm._answer).

Eviction races (the hard part)
------------------------------
A page in flight is pinned in an intermediate state, and every path that meets it waits or
steps around it instead of guessing:

* EVICTING: the shootdown is in flight.  The frame is out of the policy (it cannot be chosen
  twice) but not free.  A fault on the page queues on the PTE and is re-served when the
  shootdown answers.  If the owner dies or the page is unmapped meanwhile, the answer's
  callback finds the PTE gone and just frees the frame.
* HELD: the kernel holds the bytes while a write-back is in flight.  A fault is served from
  those bytes at once (a minor fault, no I/O).  The write-back's acknowledgement then makes
  the swap copy valid for the content that was handed back; if the page is dirtied and
  evicted again before that, the second write-back is queued behind the first (never two
  writes of one slot in flight, so a retried old write can never land over a newer one).
* PAGING_IN: the page-in and the frame allocation run in parallel; the page is installed when
  both are done; faults on it queue on the PTE.
* A process that does not answer a shootdown within SHOOTDOWN_TIMEOUT_MS is killed: only it
  holds the bytes, and the kernel cannot take the frame back without it.

Prefetch races (the other hard part)
------------------------------------
A prefetch (`Vm._prefetch`, on what prefetch.py predicts) reads a SWAPPED page into HELD
without a frame, through the same `read_verified` as a fault, so it evicts nothing and the
page's later fault is a soft one.  It is the process's: `proc.prefetched` (oldest first)
holds its prefetched pages not yet used, counted against its quota (`prefetched`); over
the bound the oldest HELD one goes back to SWAPPED (its swap copy is current: no I/O).
While the read is out the page is PAGING_IN with no frame, and that pin is the whole story:

* a fault on it takes a frame meanwhile (as a PageIn would, in parallel with the read) and
  then waits on the PTE for the read (`Vm._prefetch_frame`): it is served from the verified
  bytes (HELD, a soft fault) or, if no mirror verified or the page was dropped meanwhile,
  gives the frame back and is served again as the major fault it then is -- a new PageIn
  that reads again and, failing, stops the process.  One read per prefetch, never two at
  once, never stale bytes, and a lie costs nobody anything until a real fault;
* it is not resident, so it cannot be written or evicted, and the policy never sees it;
  a grant waits for it to settle (PAGING_IN is busy there);
* unmap or exit release it (ZERO, slot freed); a fault waiting on it is woken there, finds
  the page gone and gives its frame back (SEGV if the process lives); the read's answer then
  finds the PTE gone (or another PTE at its vpn, or another entry in proc.prefetched) and is
  dropped.  The bytes are installed only if the PTE still names the version that was read.

Fault-around (a third)
----------------------
A fault on a prefetched page that continues its stream (Trend.continues) brings the pages
prefetched after it along the stream (up to fault_around of them) in the same reply
(`around`: [vpn, frame, prot, data] each): a scan then faults once per batch, not per page.
What it installs is only ever the process's own prefetched pages, verified like any page-in
and already charged to its `prefetched` quota; nothing the process says chooses them.

* Frames.  A Gather asks for a frame per page and evicts for all of them at once (`_reclaim`:
  the policy's own victims, one SHOOTDOWN per owner naming all of its pages, `more`).  The
  pages wait pinned (PAGING_IN) -- a page still being read stays the prefetch's until its
  read ends, and the batch waits for that read too.  A batch holds frames while it waits for
  others, so the batches together may hold at most a quarter of the frames (`around_held`):
  the rest can always be evicted for a fault that is not a batch, and no set of batches can
  wait on each other's frames forever.  A batch of a process that dies gives its frames back
  at once (its later frames never come: a dead process's waiters are skipped).
* Policy.  A page brought along was not asked for, so it is inserted at the policy's victim
  end (`insert_cold`: oldest for FIFO, least recent for LRU, under the hand with its bit
  clear for clock): unused, it is the first to go, before any page the policy keeps; used,
  the MMU's reference record promotes it like any page.  Its frame came from the policy's
  own victim, the page it would have taken for the next demand fault anyway; and a batch
  is at most a quarter of memory, so a scan cannot flush a working set at once.
* TLB coherence.  The kernel treats the pages as RESIDENT once it has replied, so another
  fault may choose one as a victim (at the victim end, that is likely) and its SHOOTDOWN, on
  the control connection, may reach the process before the reply that installs the page, on
  the call connection.  The runtime parks a shootdown of a page it does not hold while one
  of its faults is out, until that fault's reply is applied: if the reply installs that page
  at that frame, it fills the frame, does not install the page and answers (clean); else the
  shootdown is answered as usual (apps/runtime/mmu.py, the install race).  Unmapping in the
  reply itself (victims of the faulting process's own, no SHOOTDOWN at all) would save the
  eviction's round trip, but the kernel does not know which of them are dirty -- the dirty
  bit is the runtime's -- so a dirty victim's bytes would have to come back on a later
  request, with the page in limbo until then; one batched SHOOTDOWN per batch costs one round
  trip per batch and keeps the capture where it is.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from kernel_daemon.faultlog import FaultLog
from kernel_daemon.frames import FramePool
from kernel_daemon.histogram import Histograms
from kernel_daemon.pagers import ReadDone
from kernel_daemon.pagetable import MAX_VPN, PageState, Pte, SwapSpace
from kernel_daemon.policy import Policy
from kernel_daemon.prefetch import FAULT_AROUND, Trend
from kernel_daemon.proc import Proc, ProcState, caller
from kernel_daemon.quota import Resource
from kernel_daemon.seal import Sealer
from kernel_daemon.trace import slice_key, us_field
from wire.protocol import (
    ACCESS_PROT,
    FILL_DATA,
    FILL_KEEP,
    FILL_ZERO,
    PAGE_SHIFT,
    PAGE_SIZE,
    Err,
    Op,
    ServiceError,
    ok,
)
from wire.server import SUSPEND, Panic, Request, Suspend

if TYPE_CHECKING:
    from kernel_daemon.kernel import Kernel

SHOOTDOWN_TIMEOUT_MS: int = 5000
WRITEBACK_RETRY_MS: int = 500
#: An eviction takes at most 1/RECLAIM_SHARE of the frames at once (see _reclaim).
RECLAIM_SHARE: int = 16
GRANT_POLL_MS: int = 2
LATENCY_KEEP: int = 20000

S = PageState
_RUNNING = ProcState.RUNNING


@dataclass(slots=True, eq=False)
class Fault:
    """One TLB miss being served: whose, which page, and when the kernel received it."""
    proc: Proc
    req: Request
    vpn: int
    pte: Pte
    t0: float                 # clock seconds when the kernel received the FAULT
    key: int                  # its trace slice (trace.slice_key)

    def current(self) -> bool:
        """Is the page still the live process's (not unmapped, the process not gone)?"""
        return self.proc.alive and self.pte.live()


@dataclass(frozen=True, slots=True)
class Victim:
    """A frame being taken back: whose page it holds, and whether its bytes are wanted."""
    proc: Proc
    vpn: int
    pte: Pte
    frame: int
    want: bool


@dataclass(frozen=True, slots=True)
class SwapCopy:
    """Where a page's sealed copy lives and what it must verify as (taken from its PTE
    when a read starts: the PTE may be released or rewritten while the read is out)."""
    space: SwapSpace
    slot: int
    seal_vpn: int
    version: int
    tag: bytes

    @classmethod
    def of(cls, pte: Pte) -> SwapCopy:
        """The swap copy `pte` names (a Panic if it names none)."""
        if pte.space is None or pte.slot < 0:
            raise Panic(f"a page with no swap copy (state {pte.state.name}) was read")
        return cls(pte.space, pte.slot, pte.seal_vpn, pte.version, pte.tag)


class Vm:
    """Faults, frames, eviction and swap I/O for every process."""

    def __init__(self, kernel: Kernel, pool: FramePool, policy: Policy, sealer: Sealer,
                 prefetch: str = "off", fault_around: int = FAULT_AROUND) -> None:
        self.k = kernel
        self.prefetch = prefetch                  # off, trend or readahead (prefetch.py)
        self.fault_around = fault_around          # most pages a fault installs beside its own
        self.around_held = 0                      # frames lent to fault-around pages not yet in
        self.gathers: dict[int, Gather] = {}      # id -> a fault-around batch collecting
        self.pool = pool
        self.policy = policy
        self.sealer = sealer
        self.frame_waiters: deque[tuple[Proc, int, Callable[[int], None]]] = deque()
        self.evicting = 0
        self.shootdowns: dict[int, list[Victim]] = {}   # rid -> what it takes back
        self.stats = kernel.stats
        self.latency: dict[str, deque[float]] = {
            "minor": deque(maxlen=LATENCY_KEEP), "major": deque(maxlen=LATENCY_KEEP),
            "disk_read": deque(maxlen=LATENCY_KEEP)}
        self.histograms = Histograms()            # the same kinds, every one (metrics)
        self.fault_log = FaultLog()               # recent faults with their times (chaos, plots)

    # -- state bookkeeping --------------------------------------------------------------
    @staticmethod
    def set_state(proc: Proc, pte: Pte, new: PageState) -> None:
        """Move pte to `new`, keeping the process's resident/swapped counts true."""
        old = pte.replace_state(new)
        proc.resident += (new == S.RESIDENT) - (old == S.RESIDENT)
        proc.swapped += (new == S.SWAPPED) - (old == S.SWAPPED)

    def apply_refs(self, proc: Proc, refs: list[Any]) -> None:
        """Feed the MMU's reference record (vpns in access order) to the policy (at most the
        process's refs_per_message entries: the CPU a message can cost is bounded)."""
        aspace = proc.aspace
        for vpn in refs[:proc.quota.limits.refs_per_message]:
            pte = aspace.get(vpn) if isinstance(vpn, int) else None
            if pte is not None and pte.state == S.RESIDENT:
                self.policy.touch(pte.frame)

    @staticmethod
    def sync_space(proc: Proc) -> None:
        """Charge proc's regions and mapped pages as its address space now holds them."""
        q = proc.quota
        q.used[Resource.REGIONS] = len(proc.aspace.regions)
        q.used[Resource.PAGES] = sum(r.npages for r in proc.aspace.regions)

    # -- faults -------------------------------------------------------------------------
    def fault(self, req: Request) -> Any:
        """FAULT, a TLB miss (kernel.py's dispatch table points here): check it, then serve
        it: reply now, SUSPEND, or raise SEGV/PROT."""
        proc = caller(req)
        if proc.ctrl_peer is None:
            raise ServiceError(Err.PERM, "fault: attach the control connection first")
        vpn, access = req.msg["vpn"], req.msg["access"]
        need = ACCESS_PROT.get(access)
        if need is None:
            raise ServiceError(Err.INVAL, f"access {access[:8]!r} is not one of r, w, x")
        if refs := req.msg["refs"]:
            self.apply_refs(proc, refs)
        pte = proc.aspace.pte(vpn) if 0 <= vpn <= MAX_VPN else None
        if pte is None:
            self.stats.segfaults += 1
            self.k.tracer.instant("vm", "segfault", proc.spid, vpn=vpn, access=access)
            raise ServiceError(Err.SEGV, f"segmentation fault: {access} access at address "
                                         f"{vpn << 12:#x} (page {vpn:#x}) is outside every region")
        if not pte.prot & need:
            self.stats.protection_faults += 1
            self.k.tracer.instant("vm", "protection fault", proc.spid, vpn=vpn, access=access)
            raise ServiceError(Err.PROT, f"protection fault: {access} access to page {vpn:#x} "
                                         f"whose protection is {_prot_str(pte.prot)}")
        f = Fault(proc, req, vpn, pte, self.k.now(), slice_key(proc.spid, req.rid))
        if self.k.tracer.enabled:
            self.k.tracer.begin("vm", "fault", f.key, proc.spid, vpn=vpn, access=access)
            self.k.tracer.step("vm", "fault", f.key, proc.spid, "kernel received",
                               page=pte.state.name)
        try:
            return self._serve(f)
        except Exception as exc:      # the fault ends in an error reply (or a panic)
            self.k.tracer.end("vm", "fault", f.key, proc.spid, outcome=type(exc).__name__)
            raise

    def _serve(self, f: Fault) -> Any:
        """Serve a fault on a page in whatever state it is in."""
        pte, st = f.pte, f.pte.state
        if st == S.RESIDENT:
            self.policy.touch(pte.frame)
            return self._answer(f, FILL_KEEP, None, "minor")
        if st == S.ZERO or st == S.HELD:
            self._local(f, st, None)
            return SUSPEND
        if st == S.SWAPPED:
            PageIn(self, f).start()
            self._prefetch(f.proc, [f.vpn], False)
            return SUSPEND
        if f.proc.prefetched.get(f.vpn) == pte:       # its prefetch is in flight: take a
            self._get_frame(f.proc, f.vpn, lambda frame: self._prefetch_frame(f, frame))
            f.proc.state = ProcState.FAULT            # frame meanwhile, as a PageIn does
            return SUSPEND
        pte.wait(lambda: self._resume(f))             # EVICTING, PAGING_IN
        self.k.tracer.step("vm", "fault", f.key, f.proc.spid, "queued behind page in flight",
                           page=st.name)
        f.proc.state = ProcState.FAULT
        return SUSPEND

    def _local(self, f: Fault, st: PageState, frame: int | None) -> None:
        """Serve a fault on a ZERO or HELD page without I/O, in `frame` or one found now."""
        hit = st == S.HELD and self._unprefetch(f.proc, [(f.vpn, f.pte)])
        self.stats.soft_faults += st == S.HELD
        if hit:                                          # read from a pager, installed now
            self.stats.prefetch_hits += 1
            self.stats.page_ins += 1
            f.proc.counters["page_ins"] += 1
        elif frame is None:                              # the usual case: a free frame, no
            frame = self.pool.alloc(f.proc.spid, f.vpn)  # wait, so no pin (and the fault is
            if frame is not None:                        # current: nothing ran since its check)
                self._fill_local(f, frame, st)
                return
        self.set_state(f.proc, f.pte, S.PAGING_IN)       # pinned while it waits for a frame
        around = self._around(f) if hit else []
        if around:
            Gather(self, f, st, frame, around).start()
        elif frame is None:
            self._get_frame(f.proc, f.vpn, lambda fr: self._install_local(f, fr, st))
        else:
            self._install_local(f, frame, st)
        if hit:
            self._prefetch(f.proc, [f.vpn] + [vpn for vpn, _ in around], True)

    def _prefetch_frame(self, f: Fault, frame: int) -> None:
        """A frame for a fault that met its page's prefetch in flight: install from it once
        it is HELD; if it failed or the page went, give the frame back and serve again."""
        if f.current() and f.pte.state == S.PAGING_IN and f.proc.prefetched.get(f.vpn) == f.pte:
            f.pte.wait(lambda: self._prefetch_frame(f, frame))
        elif f.current() and f.pte.state == S.HELD:
            self._local(f, S.HELD, frame)
        else:
            self._free_frame(frame)
            self._resume(f)

    def _resume(self, f: Fault) -> None:
        """Re-serve a fault that waited on a page in flight."""
        if not f.current():
            self._abandon(f)
            return
        result = self._serve(f)
        if result is not SUSPEND:
            self.k.reply(f.req, **result)

    def _install_local(self, f: Fault, frame: int, was: PageState,
                       around: list[tuple[int, Pte, int, bool]] | None = None) -> None:
        """A frame arrived for a ZERO or HELD page: install it without I/O (and the
        fault-around pages with their frames, if any: `_install_around`)."""
        if not self._still_mine(f, frame):
            self._install_around(f.proc, around or [], False)
            return
        self._fill_local(f, frame, was, around)

    def _fill_local(self, f: Fault, frame: int, was: PageState,
                    around: list[tuple[int, Pte, int, bool]] | None = None) -> None:
        """Install a ZERO or HELD page of a current fault in `frame` and answer it."""
        pte = f.pte
        pte.frame = frame
        if was == S.ZERO:
            pte.zero_content = True
            fill, data = FILL_ZERO, None
        else:
            fill, data = FILL_DATA, pte.held
            if data is None:
                raise Panic(f"HELD page {f.vpn:#x} of spid {f.proc.spid} lost its bytes")
            if pte.swap_valid and not pte.wb_version:  # written back while we waited
                pte.held = None
        if around:                                   # the reply names the batch's pages
            self._make_resident(f.proc, pte, frame)
            self._answer(f, fill, data, "minor", self._install_around(f.proc, around, True))
        else:                                        # the reply first (nothing in between
            self._answer(f, fill, data, "minor")     # runs: one message at a time)
            self._make_resident(f.proc, pte, frame)

    def _make_resident(self, proc: Proc, pte: Pte, frame: int) -> None:
        self.set_state(proc, pte, S.RESIDENT)
        self.policy.insert(frame)
        self._wake(pte)

    def _answer(self, f: Fault, fill: str, data: bytes | None, kind: str,
                around: list[list[Any]] | None = None) -> Suspend:
        """Answer f with the install (fill, data, the fault-around pages), then count it
        (kind "minor" or "major"); SUSPEND (answered).  The reply goes before the bookkeeping:
        nothing after it can change what it says (the kernel serves one message at a time),
        and the process waits for it, not for the counters."""
        k, proc, pte, req = self.k, f.proc, f.pte, f.req
        reply = ok(req.rid, vpn=f.vpn, frame=pte.frame, prot=pte.prot, fill=fill)  # built once
        if data is not None:
            reply["data"] = data
        if around:
            reply["around"] = around
        now = k.now()
        k.send(req.sock, req.peer, reply)
        proc.counters["major_faults" if kind == "major" else "minor_faults"] += 1
        self.stats.major_faults += kind == "major"
        self.stats.minor_faults += kind == "minor"
        proc.state = _RUNNING
        us = (now - f.t0) * 1e6
        self.latency[kind].append(us)
        self.histograms.observe(kind, us)
        self.fault_log.add(now, kind, us, proc.spid)
        if k.tracer.enabled:
            k.tracer.end("vm", "fault", f.key, proc.spid, kind=kind, outcome="installed")
        return SUSPEND

    def _still_mine(self, f: Fault, frame: int) -> bool:
        """After a wait: is the page still wanted?  If not, give the frame back and end the
        fault (_abandon)."""
        if f.current():
            return True
        self._free_frame(frame)
        self._abandon(f)
        return False

    def _abandon(self, f: Fault) -> None:
        """A suspended fault whose page vanished meanwhile: close its trace slice; a live
        process gets SEGV (its page was unmapped), a dead one nothing."""
        alive = f.proc.alive
        self.k.tracer.end("vm", "fault", f.key, f.proc.spid,
                          outcome="segv" if alive else "process gone")
        if alive:
            self.k.fail(f.req, Err.SEGV, f"segmentation fault: page {f.vpn:#x} was unmapped")

    def _wake(self, pte: Pte) -> None:
        for w in pte.take_waiters():
            w()

    # -- reading a page back ------------------------------------------------------------
    def read_verified(self, proc: Proc, vpn: int, pte: Pte, copy: SwapCopy,
                      handles: list[bytes], mask: int, done: ReadDone,
                      answered: Callable[[int, dict[str, Any]], None] | None = None,
                      resync: bool = False) -> None:
        """Read `copy` of proc's page vpn from the mirrors in `mask` (fragments, with
        --code: ecpages.py; else whole pages: pagers.py), verify it against the version and
        tag the kernel kept, count every failed check, then done(plaintext, ciphertext,
        failures) or done(None, b"", failures).  Mirrors that failed are rewritten afterwards
        and pte.mirrors follows, if pte still has `copy`: rewritten bits are set; for a
        fault's read, fragments not rewritten are cleared and resynced later (a resync's own
        read does neither: two lying pagers would keep it busy forever)."""
        note = "(resync) " if resync else ""
        def verify(data: object) -> bytes:
            return self.sealer.open(copy.space.swap_id, copy.seal_vpn, copy.version, copy.tag,
                                    data)

        def checked(plain: bytes | None, sealed: bytes, failures: list[tuple[int, str, str]]
                    ) -> None:
            for m, kind, text in failures:
                self.integrity_failure(proc, vpn, m, kind, note + text)
            done(plain, sealed, failures)

        def repaired(ok: int, lost: int) -> None:
            if proc.alive and pte.live() and pte.version == copy.version:
                pte.mirrors |= ok
                if not resync:
                    pte.mirrors &= ~lost
                    self.k.resync.kick_missing(~lost)   # a fragment not rewritten: resync it

        ec = self.k.ec
        if ec is None:
            self.k.pagers.page_in(handles, copy.slot, mask, verify, checked, repaired, answered)
            return
        ec.page_in(handles, copy.slot, mask, (copy.space.swap_id, copy.seal_vpn, copy.version),
                   verify, checked, repaired, answered,
                   lambda m, kind, text: self.integrity_failure(
                       proc, vpn, m, kind, f"{note}(after decoding) {text}"))

    def integrity_failure(self, proc: Proc, vpn: int, mirror: int, kind: str, text: str) -> None:
        """Count one failed check of one mirror's answer."""
        self.stats.integrity_failures[kind] += 1
        proc.counters["integrity_failures"] += 1
        self.k.log.warning("page %#x of %s (spid %d): pager %d failed check %s: %s",
                           vpn, proc.name, proc.spid, mirror, kind, text)

    # -- prefetch (the races: module docstring) ------------------------------------------
    def _prefetch(self, proc: Proc, vpns: list[int], hit: bool) -> None:
        """Tell proc's trend detector of faults on vpns (a fault and the pages installed
        around it, in order); read what it predicts after the last into HELD."""
        if self.prefetch == "off":
            return
        trend = proc.trend = proc.trend or Trend(self.prefetch)
        for vpn in vpns[:-1]:
            trend.fault(vpn, hit)
        for v in trend.fault(vpns[-1], hit):
            pte = proc.aspace.get(v)
            if pte is not None and pte.state == S.SWAPPED and self._make_room(proc):
                self._read_ahead(proc, v, pte)

    def _read_ahead(self, proc: Proc, vpn: int, pte: Pte) -> None:
        """Pin a SWAPPED page (PAGING_IN, no frame) and read it as a fault would."""
        copy = SwapCopy.of(pte)
        self.set_state(proc, pte, S.PAGING_IN)
        proc.prefetched[vpn] = pte
        proc.quota.used[Resource.PREFETCHED] = len(proc.prefetched)
        self.stats.prefetches += 1
        self.k.pagers.with_handles(copy.space, lambda handles: self.read_verified(
            proc, vpn, pte, copy, handles, pte.mirrors,
            lambda plain, *_: self._prefetched(proc, vpn, pte, copy, plain)))

    def _prefetched(self, proc: Proc, vpn: int, pte: Pte, copy: SwapCopy,
                    plain: bytes | None) -> None:
        """A prefetch's read ended: hold the verified bytes, or the page is SWAPPED again."""
        if not proc.alive or proc.prefetched.get(vpn) != pte or pte.state != S.PAGING_IN:
            return                                      # unmapped or exited meanwhile
        if plain is None or pte.version != copy.version:
            self._unprefetch(proc, [(vpn, pte)])
            self.stats.prefetch_failures += 1
            self.set_state(proc, pte, S.SWAPPED)
        else:
            pte.held = plain
            self.set_state(proc, pte, S.HELD)
        self._wake(pte)

    def _make_room(self, proc: Proc) -> bool:
        """Keep proc under its bound of unused prefetched pages: drop the oldest back to
        SWAPPED (no I/O); False when it is still being read (then prefetch no more now)."""
        while len(proc.prefetched) >= proc.quota.limits.prefetched:
            vpn, pte = next(iter(proc.prefetched.items()), (0, None))
            if pte is None or pte.state != S.HELD:
                return False
            self._unprefetch(proc, [(vpn, pte)])
            pte.held = None
            self.set_state(proc, pte, S.SWAPPED)
            self.stats.prefetch_drops += 1
        return True

    # -- fault-around (the races: module docstring) --------------------------------------
    def _around(self, f: Fault) -> list[tuple[int, Pte]]:
        """The prefetched pages that follow f's page along its stream, at most fault_around
        and no more than a quarter of the frames for all batches at once.  Those verified
        (HELD) are taken out of the prefetched set and pinned (PAGING_IN) until their frames
        come; those still being read (PAGING_IN) stay the prefetch's until their read ends."""
        proc = f.proc
        d = proc.trend.continues(f.vpn) if proc.trend is not None else None
        room = min(self.fault_around, self.pool.nframes // 4 - self.around_held)
        out: list[tuple[int, Pte]] = []
        while d and len(out) < room:
            vpn = f.vpn + d * (len(out) + 1)
            pte = proc.prefetched.get(vpn)
            if pte is None or pte.state not in (S.HELD, S.PAGING_IN):
                break
            out.append((vpn, pte))
        self._unprefetch(proc, [(vpn, pte) for vpn, pte in out if pte.state == S.HELD])
        for _, pte in out:
            self.set_state(proc, pte, S.PAGING_IN)
        self.around_held += len(out)
        return out

    def _install_around(self, proc: Proc, around: list[tuple[int, Pte, int, bool]],
                        install: bool) -> list[list[Any]]:
        """Make the fault-around pages RESIDENT in their frames, at the policy's victim end
        (they were not asked for: the first to go if unused); return the reply's `around`
        ([vpn, frame, prot, data] each).  Only a page the batch pinned (its flag: Gather)
        is installed: a PAGING_IN page not prefetched may be another fault's pin.  Not
        `install` (the fault ended otherwise), or a page unmapped meanwhile or not pinned:
        its frame goes back, and a page still pinned back to SWAPPED (its swap copy is
        current: no I/O)."""
        out: list[list[Any]] = []
        freed: list[int] = []
        woken: list[Pte] = []
        for vpn, pte, frame, mine in around:
            self.around_held -= 1
            pinned = mine and proc.alive and pte.live() and pte.state == S.PAGING_IN
            if install and pinned and pte.held is not None:
                out.append([vpn, frame, pte.prot, pte.held])
                pte.frame, pte.held, pte.zero_content = frame, None, False
                self.set_state(proc, pte, S.RESIDENT)
                self.policy.insert_cold(frame)
                self.stats.fault_around += 1
                self.stats.page_ins += 1
                proc.counters["page_ins"] += 1
            else:
                freed.append(frame)
                if pinned:
                    pte.held = None
                    self.set_state(proc, pte, S.SWAPPED)
            if pinned:                    # (a page not ours: its waiters are another's)
                woken.append(pte)
        for frame in freed:               # as release_pages: the batch settled first
            self._free_frame(frame)
        for pte in woken:
            self._wake(pte)
        return out

    @staticmethod
    def _unprefetch(proc: Proc, ptes: list[tuple[int, Pte]]) -> bool:
        """These pages leave proc's prefetched-unused set (used, dropped, unmapped,
        granted); True if any was in it."""
        gone = [proc.prefetched.pop(v) for v, p in ptes
                if proc.prefetched and proc.prefetched.get(v) == p]
        proc.quota.used[Resource.PREFETCHED] = len(proc.prefetched)
        return bool(gone)

    # -- frames and eviction -------------------------------------------------------------
    def _get_frame(self, proc: Proc, vpn: int, then: Callable[[int], None],
                   reclaim: bool = True) -> None:
        """Lend a frame to (proc, vpn): now if one is free, else after an eviction (started
        now, or by the caller's `_reclaim` when it asks for several frames at once)."""
        frame = self.pool.alloc(proc.spid, vpn)
        if frame is not None:
            then(frame)
            return
        self.frame_waiters.append((proc, vpn, then))
        if reclaim:
            self._reclaim()

    def _reclaim(self) -> None:
        """Start an eviction for every frame waited for and not yet being freed (the
        policy's victims), with one SHOOTDOWN per owner naming all of its pages.  Evicting at
        all, evict a cluster: at least the pagers' cluster size, up to 1/RECLAIM_SHARE of the
        frames (the frames beyond the waiters' serve the next faults; the dirty pages go out
        in one page-out request)."""
        owners: dict[int, list[Victim]] = {}
        want = len(self.frame_waiters) - self.evicting
        if want > 0:
            want = max(want, min(self.k.pagers.cluster_pages, self.pool.nframes // RECLAIM_SHARE))
        for _ in range(want):
            victim = self.policy.victim()
            if victim is None:
                break                     # every frame is pinned; a finishing one will serve
            v = self._take(victim)
            owners.setdefault(v.proc.spid, []).append(v)
        for victims in owners.values():
            self._shoot(victims)

    def _free_frame(self, frame: int) -> None:
        """Return a frame to the pool and hand it to the first live waiter."""
        self.pool.release(frame)
        while self.frame_waiters and self.pool.free_count:
            proc, vpn, then = self.frame_waiters.popleft()
            lent = self.pool.alloc(proc.spid, vpn) if proc.alive else None
            if lent is not None:
                then(lent)

    def _evict(self, frame: int) -> None:
        """Start taking `frame` back from its owner (a TLB shootdown)."""
        self._shoot([self._take(frame)])

    def _take(self, frame: int) -> Victim:
        """Pin a resident frame for eviction (EVICTING, out of the policy)."""
        spid, vpn = self.pool.owner(frame)
        proc = self.k.procs.by_spid.get(spid)
        pte = proc.aspace.get(vpn) if proc else None
        if proc is None or pte is None or pte.state != S.RESIDENT or pte.frame != frame:
            raise Panic(f"policy chose frame {frame} owned by ({spid}, {vpn:#x}) in state "
                        f"{pte.state.name if pte else 'none'}")
        self.policy.remove(frame)
        self.set_state(proc, pte, S.EVICTING)
        self.evicting += 1
        want = not (pte.swap_valid or pte.zero_content or pte.held is not None)
        return Victim(proc, vpn, pte, frame, want)

    def _shoot(self, victims: list[Victim]) -> None:
        """One SHOOTDOWN for victims of one process: the first page in the request's own
        fields, the others in `more` ([vpn, frame, want] each; answers in the reply's `more`,
        in the same order)."""
        first = victims[0]
        fields: dict[str, Any] = {"vpn": first.vpn, "frame": first.frame, "want": first.want}
        if len(victims) > 1:
            fields["more"] = [[v.vpn, v.frame, v.want] for v in victims[1:]]
        rid = self.k.request(self.k.sock, first.proc.ctrl_peer, Op.SHOOTDOWN, fields,
                             self._answered, SHOOTDOWN_TIMEOUT_MS)
        self.shootdowns[rid] = victims

    def _answered(self, rid: int, reply: dict[str, Any] | None) -> None:
        """A shootdown's answer (or its timeout) arrived: settle each page it names (an
        answer for `more` that is not one dict per page is a wrong answer for each)."""
        victims = self.shootdowns.pop(rid, None) or []
        more = [None] * len(victims[1:]) if reply is None else reply.get("more", [])
        if not isinstance(more, list) or len(more) != len(victims[1:]):
            more = [{"err": "no answer in more"}] * len(victims[1:])
        for v, answer in zip(victims, [reply, *more], strict=False):
            ok = answer is None or type(answer) is dict
            self._evicted(v.proc, v.vpn, v.pte, v.frame, answer if ok else {"err": "not a map"})

    def cancel_shootdowns(self, proc: Proc) -> None:
        """proc is gone: its pending shootdowns will never be answered, and its fault-around
        batches will get no more frames (a dead process's waiters are skipped): free their
        frames now."""
        for g in [g for g in self.gathers.values() if g.f.proc is proc]:
            g.abort()
        for rid, victims in list(self.shootdowns.items()):
            if victims[0].proc is proc:
                self.k.forget(rid)
                del self.shootdowns[rid]
                for v in victims:
                    self._evicted(v.proc, v.vpn, v.pte, v.frame, None)

    def _evicted(self, proc: Proc, vpn: int, pte: Pte, frame: int,
                 reply: dict[str, Any] | None) -> None:
        """The owner answered a shootdown (or did not): settle the page, free the frame."""
        self.evicting -= 1
        if not proc.alive or not pte.live():
            self._free_frame(frame)
            return
        data = reply.get("data") if reply else None
        if reply is None or "err" in reply or not (data is None or (isinstance(data, bytes)
                                                                   and len(data) == PAGE_SIZE)):
            why = "did not answer" if reply is None else "answered wrongly"
            self.k.kill_proc(proc, f"{why} a TLB shootdown of page {vpn:#x}")
            self._free_frame(frame)
            return
        dirty = bool(reply.get("dirty"))
        proc.counters["evictions"] += 1
        self.stats.evictions += 1
        pte.frame = -1
        if not dirty and pte.zero_content:
            pte.zero_content = False
            self.set_state(proc, pte, S.ZERO)            # never written: demand-zero again
            self.stats.clean_drops += 1
        elif not dirty and pte.swap_valid:
            self.set_state(proc, pte, S.SWAPPED)         # clean, swap copy current: no I/O
            self.stats.clean_drops += 1
        elif not dirty and pte.held is not None:
            self.set_state(proc, pte, S.HELD)            # its write-back is in flight ...
            if not pte.wb_version:
                self.write_back(proc, vpn, pte)          # ... or is started now
        elif data is None:
            self.k.kill_proc(proc, f"gave no bytes for dirty page {vpn:#x}")
            self._free_frame(frame)
            return
        else:
            pte.held, pte.swap_valid, pte.zero_content = data, False, False
            self.set_state(proc, pte, S.HELD)
            self.write_back(proc, vpn, pte)
        self._free_frame(frame)
        self._wake(pte)

    # -- write-back ---------------------------------------------------------------------
    def write_back(self, proc: Proc, vpn: int, pte: Pte) -> None:
        """Seal the held bytes under a new version and send them to every mirror."""
        if pte.wb_version:
            pte.wb_again = True           # one write of a slot in flight at a time
            return
        if pte.held is None:
            raise Panic(f"write-back of page {vpn:#x} with no bytes held")
        version = self.sealer.next_version()
        pte.wb_version, pte.swap_valid = version, False   # the slot is unknown until acked
        if pte.slot < 0:
            pte.space, pte.seal_vpn = proc.space, vpn
            pte.slot = proc.space.alloc_slot()
        space = pte.space
        if space is None:
            raise Panic(f"page {vpn:#x} has a swap slot and no swap space")
        sealed, tag = self.sealer.seal(space.swap_id, pte.seal_vpn, version, pte.held)
        slot, seal_vpn = pte.slot, pte.seal_vpn

        def with_handles(handles: list[bytes]) -> None:
            if not pte.live():                     # unmapped meanwhile: its slot is freed
                return
            done = partial(self._written, proc, vpn, pte, version, tag)
            if self.k.ec is not None:              # erasure-coded: fragments (ecpages.py)
                self.k.ec.page_out(handles, slot, (space.swap_id, seal_vpn, version), sealed,
                                   done)
            else:
                self.k.pagers.page_out(handles, slot, sealed, done)
        self.k.pagers.with_handles(space, with_handles)

    def _written(self, proc: Proc, vpn: int, pte: Pte, version: int, tag: bytes, mask: int,
                 why: str) -> None:
        """The mirrors answered a write-back: the swap copy becomes valid, or we try again."""
        if not proc.alive or not pte.live():
            return
        pte.wb_version = 0
        if pte.wb_again:                  # the bytes changed while this was in flight
            pte.wb_again = False
            self.write_back(proc, vpn, pte)
            return
        if mask and self.k.ec is not None and mask != self.k.ec.full_mask:
            self.stats.ec_short_writes += 1   # durability rule: all K+R fragments, or HELD
            if self.stats.ec_short_writes & (self.stats.ec_short_writes - 1) == 0:
                self.k.log.warning("page %#x of %s stays HELD: only %d of %d fragments stored "
                                   "(%s); retrying (logged at powers of two)", vpn, proc.name,
                                   mask.bit_count(), self.k.ec.coder.n, why)
            self.k.call_later(WRITEBACK_RETRY_MS, lambda: self._retry_write(proc, vpn, pte))
            return
        if mask == 0:
            self.stats.writeback_failures += 1
            self.k.log.warning("write-back of page %#x of %s failed (%s); retrying", vpn,
                               proc.name, why)
            self.k.call_later(WRITEBACK_RETRY_MS, lambda: self._retry_write(proc, vpn, pte))
            return
        pte.version, pte.tag, pte.mirrors = version, tag, mask
        pte.swap_valid = True
        if mask != (1 << self.k.pagers.nmirrors) - 1:
            self.k.resync.kick_missing(mask)     # a mirror missed it: copy it there later
        proc.counters["page_outs"] += 1
        self.stats.page_outs += 1
        if pte.state == S.HELD:
            pte.held = None
            self.set_state(proc, pte, S.SWAPPED)
        elif pte.state != S.PAGING_IN:     # RESIDENT or EVICTING: the bytes are the process's
            pte.held = None                # (PAGING_IN: a local install still needs them)
        self._wake(pte)

    def _retry_write(self, proc: Proc, vpn: int, pte: Pte) -> None:
        """Write a failed write-back again, unless a later one has made the swap copy current
        meanwhile (held is then kept only for a local install: writing it again would leave
        the slot unknown if that write failed, with swap_valid still saying it is current)."""
        if proc.alive and pte.live() and pte.held is not None and not pte.wb_version \
                and not pte.swap_valid:
            self.write_back(proc, vpn, pte)

    # -- page grants --------------------------------------------------------------------
    def grant(self, src: Proc, vpn: int, npages: int, dst: Proc,
              then: Callable[[int | None, str], None]) -> None:
        """Move pages [vpn, vpn+npages) of src into a new region of dst (a page flip).

        then(address in dst, "") or then(None, why).  Resident pages are first shot down (the
        sender's TLB loses them) and settle like any eviction; pages on swap move without
        being read: a page keeps the swap space and vpn it was sealed under.
        """
        try:
            regions = src.aspace.split(vpn, npages)
        except ServiceError as exc:
            then(None, exc.msg)
            return
        prots = {r.prot for r in regions}
        if len(prots) != 1:
            then(None, "a grant must cover pages of one protection")
            return
        prot = next(iter(prots))
        ptes = [p for v in range(vpn, vpn + npages) if (p := src.aspace.pte(v)) is not None]
        if len(ptes) != npages:
            raise Panic(f"a split range at vpn {vpn:#x} has a page outside every region")

        def step() -> None:
            if not src.alive or not dst.alive:
                then(None, "a party to the grant died")
                return
            if not all(p.live() for p in ptes):
                then(None, "the granted range was unmapped meanwhile")
                return
            busy = False
            for p in ptes:
                if p.state == S.RESIDENT:
                    self._evict(p.frame)
                busy |= p.state in (S.EVICTING, S.PAGING_IN) or bool(p.wb_version)
            if busy:
                self.k.call_later(GRANT_POLL_MS, step)
                return
            try:                          # the receiver's space may be full: nothing moves
                dst.quota.check(Resource.REGIONS, 1)
                dst.quota.check(Resource.PAGES, npages)
                dvpn = dst.aspace.map(0, npages, prot)
            except ServiceError as exc:
                then(None, f"the receiver cannot take the pages: {exc.msg}")
                return
            src.aspace.unmap(vpn, npages)
            self._unprefetch(src, [(vpn + i, p) for i, p in enumerate(ptes)])
            self.sync_space(src)
            self.sync_space(dst)
            for i, p in enumerate(ptes):
                state = p.state
                self.set_state(src, p, S.ZERO)
                self.set_state(dst, dst.aspace.adopt(dvpn + i, p), state)
            src.counters["pages_granted"] += npages
            self.stats.pages_granted += npages
            then(dvpn << 12, "")

        step()

    # -- teardown -----------------------------------------------------------------------
    def release_pages(self, proc: Proc, ptes: list[tuple[int, Pte]]) -> None:
        """Drop pages (unmap or exit): free their frames and their swap slots.  Frames are
        handed on only once every page is out of the policy: a waiter given one may reclaim
        at once (Gather.start), and must not be offered a page that is already gone."""
        slots: dict[int, tuple[SwapSpace, list[int]]] = {}
        woken: list[Callable[[], None]] = []
        frames: list[int] = []
        self._unprefetch(proc, ptes)
        for _, pte in ptes:
            if pte.state == S.RESIDENT:
                self.policy.remove(pte.frame)
                frames.append(pte.frame)
            # EVICTING and PAGING_IN frames are freed by their callbacks, which find the PTE gone
            self.set_state(proc, pte, S.ZERO)
            woken += pte.take_waiters()   # faults waiting on it end (SEGV if alive), frames back
            if pte.space is not None and pte.slot >= 0:
                slots.setdefault(id(pte.space), (pte.space, []))[1].append(pte.slot)
                pte.space.pages -= 1
            pte.release()                 # held bytes, slot and space go with the row
        for space, freed in slots.values():
            self.k.pagers.free_slots(space, freed)
        for frame in frames:
            self._free_frame(frame)
        for w in woken:
            w()


def _prot_str(prot: int) -> str:
    return "".join(c if prot & b else "-" for c, b in (("r", 1), ("w", 2), ("x", 4)))


class PageIn:
    """A major fault (Vm._serve on a SWAPPED page): the page is read and verified while a
    frame is found, in parallel; when both are in it is installed and the fault answered.
    The methods run in the order they are written."""

    def __init__(self, vm: Vm, f: Fault) -> None:
        self.vm, self.k, self.f = vm, vm.k, f
        self.copy = SwapCopy.of(f.pte)       # the version and tag the answer must verify as
        self.mirrors = f.pte.mirrors         # where it is (if the page is gone when we read)
        self.frame: int | None = None        # the frame, once found
        self.plain: bytes | None = None      # the verified page, once read
        self.failed = False                  # no mirror verified: the process is stopped

    def start(self) -> None:
        """Pin the page (PAGING_IN); ask for a frame and, once its disk handles are open,
        for the page."""
        f = self.f
        self.vm.set_state(f.proc, f.pte, S.PAGING_IN)
        f.proc.state = ProcState.FAULT
        self.vm._get_frame(f.proc, f.vpn, self.on_frame)
        self.k.pagers.with_handles(self.copy.space, self.read)

    def read(self, handles: list[bytes]) -> None:
        """Read the page from the mirrors holding its current version."""
        f = self.f
        self._step("pager asked")
        mask = f.pte.mirrors if f.pte.live() else self.mirrors
        self.vm.read_verified(f.proc, f.vpn, f.pte, self.copy, handles, mask,
                              self.on_data, self.answered)

    def answered(self, mirror: int, reply: dict[str, Any]) -> None:
        """A pager answered: trace the disk time it reports (untrusted; display only)."""
        disk_us, pager_us = us_field(reply.get("disk_us")), us_field(reply.get("pager_us"))
        self._step("disk read", mirror=mirror, disk_us=disk_us, pager_us=pager_us)
        if disk_us is not None:
            self.vm.latency["disk_read"].append(disk_us)
            self.vm.histograms.observe("disk_read", disk_us)

    def on_frame(self, frame: int) -> None:
        """A frame is ours: install if the page is in; give it back if the read failed."""
        self.frame = frame
        self._step("frame ready", frame=frame)
        if self.plain is not None:
            self.finish(frame, self.plain)
        elif self.failed:
            self.vm._free_frame(frame)

    def on_data(self, plain: bytes | None, sealed: bytes,
                failures: list[tuple[int, str, str]]) -> None:
        """The read ended: install if the frame is in; if no mirror verified, stop the
        faulting process, and only it (EINTEGRITY)."""
        proc, vpn = self.f.proc, self.f.vpn
        if plain is None:
            self.failed = True
            if self.frame is not None:
                self.vm._free_frame(self.frame)
            self.k.tracer.end("vm", "fault", self.f.key, proc.spid, outcome="integrity",
                              failures=len(failures))
            checks = "; ".join(f"pager {m}: {kind}: {text}" for m, kind, text in failures)
            text = (f"page integrity lost: page {vpn:#x} (address {vpn << PAGE_SHIFT:#x}) of "
                    f"{proc.name} (spid {proc.spid}) failed verification: "
                    f"{checks or 'no mirror holds the page'}")
            self.k.log.error("%s", text)
            self.k.fail(self.f.req, Err.INTEGRITY, text)
            self.k.reclaim(proc, text, ProcState.KILLED)
            return
        self._step("verified")
        self.plain = plain
        if self.frame is not None:
            self.finish(self.frame, plain)

    def finish(self, frame: int, plain: bytes) -> None:
        """Frame and page are in: make the page RESIDENT and answer the fault."""
        f, pte = self.f, self.f.pte
        if not self.vm._still_mine(f, frame):
            return
        pte.frame = frame
        pte.swap_valid = True
        pte.zero_content = False
        self.vm._make_resident(f.proc, pte, frame)
        f.proc.counters["page_ins"] += 1
        self.vm.stats.page_ins += 1
        self._step("installed")
        self.vm._answer(f, FILL_DATA, plain, "major")

    def _step(self, step: str, **args: Any) -> None:
        if self.k.tracer.enabled:
            self.k.tracer.step("vm", "fault", self.f.key, self.f.proc.spid, step, **args)


class Gather:
    """A fault-around batch (Vm._local on a prefetched page that continues its stream): a
    frame for each page brought along and for the fault's own (unless it has one), and the
    end of the reads still out for some of them; then all are installed in one reply.

    Reads waited for are ones the process would wait for on its next faults anyway (a
    pager's timeout bounds them).  No frame is held waiting for one that cannot come: the
    batches hold at most a quarter of the frames (Vm._around), and a batch of a process
    that dies gives back what it holds (abort: its later frames never come)."""

    def __init__(self, vm: Vm, f: Fault, st: PageState, frame: int | None,
                 around: list[tuple[int, Pte]]) -> None:
        self.vm, self.f, self.st, self.around = vm, f, st, around
        self.frames = [-1] * len(around)
        self.mine = -1 if frame is None else frame
        self.pinned = [f.proc.prefetched.get(vpn) != pte for vpn, pte in around]
        self.left = len(around) + (frame is None) + self.pinned.count(False)
        self.over = False

    def start(self) -> None:
        """Wait for the reads; ask for the frames, evicting for all of them at once."""
        self.vm.gathers[id(self)] = self
        for i, (_, pte) in enumerate(self.around):
            if not self.pinned[i]:
                pte.wait(partial(self.read, i))
        for i, (vpn, _) in enumerate(self.around):
            self.vm._get_frame(self.f.proc, vpn, partial(self.frame, i), reclaim=False)
        if self.mine < 0:
            self.vm._get_frame(self.f.proc, self.f.vpn, partial(self.frame, -1), reclaim=False)
        self.vm._reclaim()

    def frame(self, i: int, frame: int) -> None:
        """Page i's frame (-1: the fault's own) is ours."""
        if i < 0:
            self.mine = frame
        else:
            self.frames[i] = frame
        self.one()

    def read(self, i: int) -> None:
        """Page i's read ended (or the page went): pin it now if it is verified and still
        prefetched -- else a fault on it meanwhile pins it, and it is that fault's."""
        vpn, pte = self.around[i]
        proc = self.f.proc
        if not self.over and proc.alive and pte.live() and pte.state == S.HELD \
                and self.vm._unprefetch(proc, [(vpn, pte)]):
            self.vm.set_state(proc, pte, S.PAGING_IN)
            self.pinned[i] = True
        self.one()

    def one(self) -> None:
        """One frame or read is in: install all when none is left."""
        self.left -= 1
        if self.left == 0 and not self.over:
            self.over = True
            del self.vm.gathers[id(self)]
            self.vm._install_local(self.f, self.mine, self.st, [
                (vpn, pte, self.frames[i], self.pinned[i])
                for i, (vpn, pte) in enumerate(self.around)])

    def abort(self) -> None:
        """The process is gone: give back the frames it got (Vm.cancel_shootdowns)."""
        if self.over:
            return
        self.over = True
        del self.vm.gathers[id(self)]
        self.vm.around_held -= len(self.around)
        for frame in [self.mine] + self.frames:
            if frame >= 0:
                self.vm._free_frame(frame)

