"""The sealed-process runtime's MMU against a fake kernel.

The fake kernel is the tests' shared one (tests/system/fakekernel.py: a real ZeroMQ ROUTER
loop on a thread of the test process) with a small VM model: it speaks the
wire protocol (REGISTER, ATTACH, MAP, UNMAP, PROTECT, FAULT with zero-fill or the captured
data, HEARTBEAT, REPORT, EXIT) and sends SHOOTDOWN and KILL on the control connection when
a test asks.  It exists only for these unit tests; the real kernel is tested elsewhere.
"""
from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fakekernel import FakeKernel, Handler

from apps.runtime import (
    PAGE_SIZE,
    PROT_R,
    PROT_W,
    PROT_X,
    PageIntegrityError,
    ProcessKilled,
    ProtectionFault,
    SealedProcess,
    SegmentationFault,
)
from apps.runtime.control import HEARTBEAT_MS, IDLE_HEARTBEAT_MS, REFS_STALE_MS
from wire.protocol import Err, Op, error, ok

ROOT = Path(__file__).resolve().parents[2]
#: What the launcher would hand a process (the fake kernel accepts any).
CRED: bytes = bytes(range(32))
#: How long a raced fault reply is held back, so that the shootdown overtakes it.
RACE_DELAY_S: float = 0.05


class MmuKernel(FakeKernel):
    """The shared fake kernel serving one sealed process: FIFO eviction over `nframes`,
    backing store in a dict, a log of refs."""

    def __init__(self, nframes: int = 8) -> None:
        self.nframes = nframes
        self.free = list(range(nframes - 1, -1, -1))
        self.resident: dict[int, int] = {}         # vpn -> frame, in install (FIFO) order
        self.evicting: set[int] = set()
        self.waiters: dict[int, list[Callable[[], None]]] = {}
        self.backing: dict[int, bytes] = {}        # captured pages
        self.regions: list[list[int]] = []         # [lo_vpn, hi_vpn, prot]
        self.next_vpn = 0x100
        self.call_peer: bytes | None = None
        self.ctrl_peer: bytes | None = None
        self.secret = b"s3cret-s3cret-16"
        self.registered: dict[str, Any] = {}
        self.faults: list[tuple[int, str, list[int]]] = []
        self.refs_log: list[tuple[str, list[int]]] = []   # (fault|heartbeat, refs), as arrived
        self.beats: list[list[int]] = []           # every HEARTBEAT's refs, empty ones too
        self.call_msgs = 0
        self.shootdown_replies: list[dict[str, Any]] = []
        self.reports: dict[str, Any] = {}
        self.exited: int | None = None
        self.fail_next: tuple[Err, str] | None = None
        self.race_next_fault = False               # shoot the page down before replying
        super().__init__()

    def handlers(self) -> dict[Op, Handler]:
        """The calls a sealed process makes, and their handlers."""
        return {Op.REGISTER: self.do_register, Op.ATTACH: self.do_attach,
                Op.HEARTBEAT: self.do_heartbeat, Op.MAP: self.do_map, Op.UNMAP: self.do_unmap,
                Op.PROTECT: self.do_protect, Op.REPORT: self.do_report, Op.EXIT: self.do_exit,
                Op.FAULT: self.do_fault}

    def on_request(self, peer: bytes, msg: dict[str, Any]) -> None:
        """Count the requests on the process's call connection."""
        if peer == self.call_peer:
            self.call_msgs += 1

    # -- requests --------------------------------------------------------------------------
    def do_register(self, peer: bytes, msg: dict[str, Any]) -> dict[str, Any]:
        self.call_peer = peer
        self.registered = msg
        return ok(msg["rid"], spid=7, secret=self.secret, nframes=self.nframes, page_size=PAGE_SIZE,
                  name="ident", role="app")

    def do_attach(self, peer: bytes, msg: dict[str, Any]) -> dict[str, Any]:
        if msg["secret"] != self.secret:
            return error(msg["rid"], Err.PERM, "wrong secret")
        self.ctrl_peer = peer
        return ok(msg["rid"])

    def do_heartbeat(self, peer: bytes, msg: dict[str, Any]) -> dict[str, Any]:
        self.beats.append(list(msg["refs"]))
        if msg["refs"]:
            self.refs_log.append(("heartbeat", list(msg["refs"])))
        return ok(msg["rid"])

    def do_map(self, peer: bytes, msg: dict[str, Any]) -> dict[str, Any]:
        lo = self.next_vpn
        self.next_vpn += msg["npages"] + 16
        self.regions.append([lo, lo + msg["npages"], msg["prot"]])
        return ok(msg["rid"], addr=lo * PAGE_SIZE)

    def do_unmap(self, peer: bytes, msg: dict[str, Any]) -> dict[str, Any]:
        lo = msg["addr"] // PAGE_SIZE
        for vpn in range(lo, lo + msg["npages"]):
            if vpn in self.resident:
                self.free.append(self.resident.pop(vpn))
            self.backing.pop(vpn, None)
        self.regions = [r for r in self.regions if not lo <= r[0] < lo + msg["npages"]]
        return ok(msg["rid"])

    def do_protect(self, peer: bytes, msg: dict[str, Any]) -> dict[str, Any]:
        lo = msg["addr"] // PAGE_SIZE
        for r in self.regions:
            if r[0] == lo:
                r[2] = msg["prot"]
        return ok(msg["rid"])

    def do_report(self, peer: bytes, msg: dict[str, Any]) -> dict[str, Any]:
        self.reports.update(msg["data"])
        return ok(msg["rid"])

    def do_exit(self, peer: bytes, msg: dict[str, Any]) -> dict[str, Any]:
        self.exited = msg["status"]
        return ok(msg["rid"])

    def region_prot(self, vpn: int) -> int | None:
        for lo, hi, prot in self.regions:
            if lo <= vpn < hi:
                return prot
        return None

    def do_fault(self, peer: bytes, msg: dict[str, Any]) -> dict[str, Any] | None:
        vpn, access, rid = msg["vpn"], msg["access"], msg["rid"]
        self.faults.append((vpn, access, list(msg["refs"])))
        self.refs_log.append(("fault", list(msg["refs"])))
        if self.fail_next is not None:
            (code, text), self.fail_next = self.fail_next, None
            return error(rid, code, text)
        prot = self.region_prot(vpn)
        if prot is None:
            return error(rid, Err.SEGV,
                         f"segmentation fault: page {vpn:#x} is outside every region")
        if not prot & {"r": PROT_R, "w": PROT_W, "x": PROT_X}[access]:
            return error(rid, Err.PROT, f"protection fault: {access} access to page {vpn:#x}")
        self._serve(peer, rid, vpn, prot)
        return None

    def _serve(self, peer: bytes, rid: int, vpn: int, prot: int) -> None:
        if vpn in self.evicting:
            self.waiters.setdefault(vpn, []).append(lambda: self._serve(peer, rid, vpn, prot))
            return
        if vpn in self.resident:
            self._reply_fault(peer, rid, vpn, self.resident[vpn], prot, "keep")
            return
        if not self.free:
            victim = next(v for v in self.resident if v not in self.evicting)
            self.shoot(victim, True, lambda _: self._serve(peer, rid, vpn, prot))
            return
        frame = self.free.pop()
        self.resident[vpn] = frame
        fill = "data" if vpn in self.backing else "zero"
        self._reply_fault(peer, rid, vpn, frame, prot, fill)

    def _reply_fault(self, peer: bytes, rid: int, vpn: int, frame: int, prot: int,
                     fill: str) -> None:
        reply = ok(rid, vpn=vpn, frame=frame, prot=prot, fill=fill)
        if fill == "data":
            reply["data"] = self.backing[vpn]
        if self.race_next_fault:
            # The reply is "sent" first, but the shootdown overtakes it on the wire.
            self.race_next_fault = False
            self.shoot(vpn, True, lambda _: None)
            self.call_later(RACE_DELAY_S, lambda: self.send_to(peer, reply))
            return
        self.send_to(peer, reply)

    def shoot(self, vpn: int, want: bool, then: Callable[[dict[str, Any]], None]) -> bool:
        """Take vpn back (loop thread only); then(reply) when the process answered."""
        if vpn not in self.resident or vpn in self.evicting or self.ctrl_peer is None:
            return False
        frame = self.resident[vpn]
        self.evicting.add(vpn)

        def answered(reply: dict[str, Any]) -> None:
            assert "err" not in reply, reply
            self.shootdown_replies.append(dict(reply, vpn=vpn))
            if reply.get("data") is not None:
                self.backing[vpn] = reply["data"]
            del self.resident[vpn]
            self.evicting.discard(vpn)
            self.free.append(frame)
            then(reply)
            for w in self.waiters.pop(vpn, []):
                w()
        self.request(self.ctrl_peer, Op.SHOOTDOWN, {"vpn": vpn, "frame": frame, "want": want},
                      answered)
        return True

    # -- for the tests (any thread) -----------------------------------------------------------
    def shootdown(self, vpn: int, want: bool = False) -> dict[str, Any] | None:
        """Shoot vpn down and wait for the answer (None if it is not resident)."""
        done: Future = Future()
        started = self.run(lambda: self.shoot(vpn, want, done.set_result))
        return done.result(5) if started else None

    def kill(self, reason: str) -> None:
        self.run(lambda: self.request(self.ctrl_peer, Op.KILL, {"reason": reason}, lambda _: None))


@pytest.fixture
def fk() -> Any:
    kernel = MmuKernel(nframes=8)
    yield kernel
    kernel.stop()


@pytest.fixture
def proc(fk: MmuKernel) -> Any:
    p = SealedProcess.connect(fk.addr, CRED)
    yield p
    p.close()


# -- registration ---------------------------------------------------------------------------
def test_register_carries_only_the_credential_and_exit_is_sent(fk: MmuKernel) -> None:
    p = SealedProcess.connect(fk.addr, CRED)
    reg = fk.registered
    assert set(reg) == {"op", "rid", "cred"} and reg["cred"] == CRED   # identity: the launcher's
    assert p.name == "ident" and p.role == "app"                       # ... as the kernel says
    assert fk.ctrl_peer is not None
    p.close(5)
    assert fk.exited == 5
    assert not p.control.is_alive()


# -- the TLB ----------------------------------------------------------------------------------
def test_tlb_fills_only_on_fault(fk: MmuKernel, proc: SealedProcess) -> None:
    addr = proc.map(4)
    vpn = addr // PAGE_SIZE
    assert not proc.mmu._r and not fk.faults                 # mapping installs nothing
    assert proc.read(addr + 10, 4) == bytes(4)               # demand-zero
    assert [f[:2] for f in fk.faults] == [(vpn, "r")]
    assert vpn in proc.mmu._r and vpn + 1 not in proc.mmu._r
    proc.read(addr + 100, 8)
    assert len(fk.faults) == 1 and proc.counters()["tlb_misses"] == 1
    proc.read(addr + PAGE_SIZE - 2, 4)                       # straddles into the next page
    assert [f[0] for f in fk.faults] == [vpn, vpn + 1]


def test_tlb_hits_send_nothing(fk: MmuKernel, proc: SealedProcess) -> None:
    addr = proc.map(2)
    proc.write(addr, b"x")
    proc.write(addr + PAGE_SIZE, b"y")
    sent = fk.call_msgs
    hits = proc.counters()["tlb_hits"]
    for i in range(2000):
        proc.store_u64(addr + 8 * (i % 512), i)
        assert proc.load_u64(addr + PAGE_SIZE + 8) == 0
    assert fk.call_msgs == sent
    assert proc.counters()["tlb_hits"] == hits          # word hits are not counted (cost)
    proc.read(addr, 16)
    proc.read(addr + PAGE_SIZE - 8, 16)                 # spans both pages
    assert fk.call_msgs == sent
    assert proc.counters()["tlb_hits"] == hits + 3


def test_dirty_trap_is_local_and_feeds_shootdown(fk: MmuKernel, proc: SealedProcess) -> None:
    addr = proc.map(2)
    vpn = addr // PAGE_SIZE
    proc.read(addr, 1)                                       # installed RW, clean
    proc.read(addr + PAGE_SIZE, 1)
    assert vpn not in proc.mmu._w
    sent = fk.call_msgs
    proc.write(addr + 5, b"dirty")
    proc.write(addr + 50, b"again")
    assert fk.call_msgs == sent                              # no kernel trip
    assert proc.counters()["local_dirty_traps"] == 1
    clean = fk.shootdown(vpn + 1, want=False)
    assert clean["dirty"] is False and clean["data"] is None
    dirty = fk.shootdown(vpn, want=False)
    assert dirty["dirty"] is True and dirty["data"][5:10] == b"dirty"
    assert vpn not in proc.mmu._r and vpn not in proc.mmu._w
    assert proc.read(addr + 50, 5) == b"again"               # refilled from the capture
    assert fk.faults[-1][0] == vpn
    assert fk.shootdown(vpn)["dirty"] is False               # the dirty bit was reset


def test_write_fault_installs_dirty(fk: MmuKernel, proc: SealedProcess) -> None:
    addr = proc.map(1)
    proc.store_u64(addr, 99)
    assert fk.faults[-1][:2] == (addr // PAGE_SIZE, "w")
    assert proc.counters()["local_dirty_traps"] == 0
    assert fk.shootdown(addr // PAGE_SIZE)["dirty"] is True


# -- the shootdown race -------------------------------------------------------------------------
class _RacingBuffer:
    """Wraps the bank buffer: runs `hook` around the first store into [lo, hi)."""

    def __init__(self, buf: memoryview, lo: int, hi: int, hook: Callable[[], None],
                 before: bool) -> None:
        self.buf, self.lo, self.hi, self.hook, self.before = buf, lo, hi, hook, before

    def __getitem__(self, key: Any) -> Any:
        return self.buf[key]

    def __setitem__(self, key: slice, value: Any) -> None:
        fire = self.hook is not None and self.lo <= key.start < self.hi
        if fire and self.before:
            self.hook, hook = None, self.hook
            hook()
        self.buf[key] = value
        if fire and not self.before:
            self.hook, hook = None, self.hook
            hook()


@pytest.mark.parametrize("before", [True, False], ids=["shot-before-store", "shot-after-store"])
def test_shootdown_between_lookup_and_store_loses_nothing(fk: MmuKernel, proc: SealedProcess,
                                                          before: bool) -> None:
    addr = proc.map(1)
    vpn = addr // PAGE_SIZE
    proc.write(addr, b"old!")                                # resident and dirty
    frame_off = proc.mmu._w[vpn]
    captured: list[dict[str, Any]] = []
    proc.mmu._buf = _RacingBuffer(proc.mmu._buf, frame_off, frame_off + PAGE_SIZE,
                                  lambda: captured.append(fk.shootdown(vpn)), before)
    proc.write(addr + 100, b"NEW")                           # the fast path: lookup, store, check
    assert captured and captured[0]["dirty"] is True
    assert (captured[0]["data"][100:103] == b"NEW") is (not before)
    assert proc.counters()["store_races"] == 1
    assert proc.read(addr, 4) == b"old!" and proc.read(addr + 100, 3) == b"NEW"
    final = fk.shootdown(vpn)
    assert final["dirty"] is True and final["data"][100:103] == b"NEW"


def test_shootdowns_during_busy_store_loop_lose_no_store(fk: MmuKernel,
                                                         proc: SealedProcess) -> None:
    npages = 12                                              # more pages than the 8 frames
    addr = proc.map(npages)
    base_vpn = addr // PAGE_SIZE
    expect = np.zeros(npages * 512, dtype=np.uint64)
    stop = threading.Event()
    shot = []

    def shooter() -> None:
        rng = random.Random(1)
        while not stop.is_set():
            reply = fk.shootdown(base_vpn + rng.randrange(npages), want=rng.random() < 0.5)
            if reply is not None:
                shot.append(reply)
            time.sleep(0.0005)

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)                              # interleave the threads hard
    t = threading.Thread(target=shooter)
    t.start()
    try:
        rng = np.random.default_rng(2)
        deadline = time.monotonic() + 2.0
        i = 0
        while time.monotonic() < deadline:
            for slot in rng.integers(0, npages * 512, size=500):
                i += 1
                proc.store_u64(addr + 8 * int(slot), i)
                expect[slot] = i
            page = int(rng.integers(0, npages))
            chunk = rng.integers(0, 1 << 62, size=512, dtype=np.uint64)
            proc.write(addr + page * PAGE_SIZE, chunk.tobytes())
            expect[page * 512:(page + 1) * 512] = chunk
    finally:
        stop.set()
        t.join()
        sys.setswitchinterval(old_interval)
    got = proc.view(addr, np.uint64, npages * 512).to_numpy()
    assert np.array_equal(got, expect)
    assert len(shot) > 50 and proc.counters()["shootdowns"] >= len(shot)
    assert proc.counters()["tlb_misses"] > len(shot) // 2


# -- the install race ---------------------------------------------------------------------------
def test_shootdown_overtaking_its_fault_reply_is_answered_with_the_fill(
        fk: MmuKernel, proc: SealedProcess) -> None:
    addr = proc.map(1)
    vpn = addr // PAGE_SIZE
    proc.write(addr, b"paged out")
    assert fk.shootdown(vpn)["dirty"] is True                # now only the backing holds it
    fk.race_next_fault = True
    assert proc.read(addr, 9) == b"paged out"
    assert len(fk.shootdown_replies) == 2
    racing = fk.shootdown_replies[-1]                        # answered before the install
    assert racing["dirty"] is False and racing["data"][:9] == b"paged out"
    assert proc.counters()["install_races"] == 1
    assert proc.mmu._r[vpn] == fk.resident[vpn] * PAGE_SIZE  # the TLB matches the kernel


def test_shootdown_of_old_residency_during_keep_fault_refaults(fk: MmuKernel,
                                                              proc: SealedProcess) -> None:
    addr = proc.map(1)
    vpn = addr // PAGE_SIZE
    proc.write(addr, b"kept")
    proc.protect(addr, 1, PROT_R)                            # TLB dropped, page stays, dirty
    assert vpn not in proc.mmu._r and vpn in proc.mmu._dirty
    fk.race_next_fault = True                                # reply "keep", shot down first
    assert proc.read(addr, 4) == b"kept"
    racing = fk.shootdown_replies[-1]
    assert racing["dirty"] is True and racing["data"][:4] == b"kept"
    assert proc.counters()["install_races"] == 1
    assert proc.mmu._r[vpn] == fk.resident[vpn] * PAGE_SIZE


def test_stale_shootdown_of_an_older_residency_leaves_the_page_alone(
        fk: MmuKernel, proc: SealedProcess) -> None:
    """A SHOOTDOWN the control thread handles late, after vpn was unmapped, mapped again and
    installed at another frame, must not drop the new page or its dirty bit (sim seed
    2000779 at --intensity 5: the lost dirty bit made the kernel treat the page as
    demand-zero, and the process read zeros where it had written)."""
    addr = proc.map(1)
    vpn = addr // PAGE_SIZE
    proc.write(addr, b"new bytes")
    frame = fk.resident[vpn]
    stale = proc.mmu.shootdown(vpn, (frame + 1) % proc.mmu.bank.nframes, want=False)
    assert stale == {"dirty": False, "data": None}
    assert proc.mmu._resident[vpn] == frame and vpn in proc.mmu._dirty
    sent = fk.call_msgs
    assert proc.read(addr, 9) == b"new bytes"                 # still a TLB hit
    assert fk.call_msgs == sent
    real = fk.shootdown(vpn)
    assert real is not None and real["dirty"] is True and real["data"][:9] == b"new bytes"


# -- unmap / protect ----------------------------------------------------------------------------
def test_protect_keeps_dirty_bit_unmap_drops_everything(fk: MmuKernel,
                                                         proc: SealedProcess) -> None:
    addr = proc.map(2)
    vpn = addr // PAGE_SIZE
    proc.write(addr, b"abc")
    proc.protect(addr, 2, PROT_R)
    assert vpn not in proc.mmu._r
    assert proc.read(addr, 3) == b"abc"                      # refilled ("keep")
    assert fk.faults[-1][:2] == (vpn, "r")
    with pytest.raises(ProtectionFault, match="protection fault"):
        proc.write(addr, b"x")
    assert fk.shootdown(vpn)["dirty"] is True                # protect kept the dirty bit
    proc.protect(addr, 2, PROT_R | PROT_W)
    proc.write(addr + PAGE_SIZE, b"z")
    proc.unmap(addr, 2)
    assert not proc.mmu._r and not proc.mmu._w and not proc.mmu._dirty
    with pytest.raises(SegmentationFault):
        proc.read(addr, 1)


def test_exec_needs_an_executable_page(fk: MmuKernel, proc: SealedProcess) -> None:
    code = proc.map(1, PROT_R | PROT_X)
    assert proc.exec_read(code, 4) == bytes(4)
    assert fk.faults[-1][1] == "x" and code // PAGE_SIZE in proc.mmu._x
    data = proc.map(1)
    with pytest.raises(ProtectionFault):
        proc.exec_read(data, 4)


# -- reference record ---------------------------------------------------------------------------
def test_refs_arrive_in_access_order(fk: MmuKernel, proc: SealedProcess) -> None:
    addr = proc.map(8)
    v0 = addr // PAGE_SIZE
    for p in range(4):
        proc.read(addr + p * PAGE_SIZE, 1)                   # faults carry no refs yet
    mark = len(fk.refs_log)
    for p in (2, 0, 0, 3, 1, 1, 2):
        proc.read(addr + p * PAGE_SIZE + 8, 8)               # hits: 0 then 0 recorded once
    proc.write(addr + 3 * PAGE_SIZE, b"w")                   # the dirty trap is a reference too
    proc.read(addr + 5 * PAGE_SIZE, 1)                       # miss: hands the record over
    got = [vpn for _, refs in fk.refs_log[mark:] for vpn in refs]
    assert got == [v0 + p for p in (2, 0, 3, 1, 2, 3)]
    assert fk.refs_log[-1][0] == "fault" and fk.faults[-1][0] == v0 + 5


def test_word_access_refs_interleave_in_order(fk: MmuKernel, proc: SealedProcess) -> None:
    addr = proc.map(8)
    v0 = addr // PAGE_SIZE
    for p in range(4):
        proc.write(addr + p * PAGE_SIZE, b"d")               # resident and dirty
    mark = len(fk.refs_log)
    for p, how in ((2, "load"), (2, "load"), (0, "store"), (0, "load"), (2, "read"),
                   (0, "store"), (0, "write"), (0, "load"), (3, "load"), (3, "store"),
                   (2, "load"), (1, "store"), (2, "load")):
        a = addr + p * PAGE_SIZE + 16
        if how == "load":
            proc.load_u64(a)
        elif how == "store":
            proc.store_u64(a, 7)
        elif how == "read":
            proc.read(a, 8)
        else:
            proc.write(a, b"w")
    proc.read(addr + 5 * PAGE_SIZE, 1)                       # miss: hands the record over
    got = [vpn for _, refs in fk.refs_log[mark:] for vpn in refs]
    assert got == [v0 + p for p in (2, 0, 2, 0, 3, 2, 1, 2)]


def test_word_hits_end_with_shootdown_and_protect(fk: MmuKernel, proc: SealedProcess) -> None:
    addr = proc.map(2)
    vpn = addr // PAGE_SIZE
    proc.store_u64(addr + 8, 41)
    proc.store_u64(addr + 8, 42)                             # a word hit
    assert proc.load_u64(addr + 8) == 42                     # and a load hit
    faults = len(fk.faults)
    shot = fk.shootdown(vpn)
    assert shot["dirty"] is True and shot["data"][8:16] == (42).to_bytes(8, "little")
    assert proc.load_u64(addr + 8) == 42                     # faulted back from the capture
    assert [f[:2] for f in fk.faults[faults:]] == [(vpn, "r")]
    assert proc.load_u64(addr + 9) == 42 >> 8                # unaligned: the slow path
    proc.store_u64(addr + 16, 1)                             # the dirty trap, then a hit
    proc.store_u64(addr + 16, 2)
    assert fk.shootdown(vpn)["data"][16:24] == (2).to_bytes(8, "little")
    proc.store_u64(addr + 16, 3)                             # a write fault, then a hit
    assert fk.faults[-1][:2] == (vpn, "w")
    proc.protect(addr, 2, PROT_R)
    with pytest.raises(ProtectionFault):
        proc.store_u64(addr + 16, 4)
    assert proc.load_u64(addr + 16) == 3
    proc.unmap(addr, 2)
    with pytest.raises(SegmentationFault):
        proc.load_u64(addr + 16)
    with pytest.raises(SegmentationFault):
        proc.load_u64(-8)


def test_heartbeat_hands_over_refs_of_a_busy_process(fk: MmuKernel, proc: SealedProcess) -> None:
    addr = proc.map(2)
    proc.read(addr, 1)
    proc.read(addr + PAGE_SIZE, 1)
    mark = len(fk.refs_log)
    cpu_until, wall_until = time.process_time() + 0.6, time.monotonic() + 30
    while time.process_time() < cpu_until and time.monotonic() < wall_until:
        proc.load_u64(addr)                                  # only hits: no fault while this
        proc.load_u64(addr + PAGE_SIZE)                      # process runs for 0.6 s (CPU)
    beats = [refs for kind, refs in fk.refs_log[mark:] if kind == "heartbeat"]
    assert beats and all(refs for refs in beats)


def test_heartbeat_hands_over_refs_of_a_process_that_hardly_runs(fk: MmuKernel,
                                                                 proc: SealedProcess) -> None:
    addr = proc.map(2)
    proc.read(addr, 1)
    proc.read(addr + PAGE_SIZE, 1)
    mark = len(fk.refs_log)
    wall_until = time.monotonic() + REFS_STALE_MS / 1000 + 10
    while not fk.refs_log[mark:] and time.monotonic() < wall_until:
        proc.load_u64(addr)                                  # a hit now and then, no fault
        proc.load_u64(addr + PAGE_SIZE)
        time.sleep(0.05)
    assert fk.refs_log[mark:] and fk.refs_log[mark][0] == "heartbeat"
    assert addr // PAGE_SIZE in fk.refs_log[mark][1]


def test_idle_process_heartbeats_and_a_faulting_one_need_not(fk: MmuKernel,
                                                             proc: SealedProcess) -> None:
    """Liveness: the kernel hears from a process at least every IDLE_HEARTBEAT_MS -- from
    its heartbeats when it is idle, from its faults when it faults (then no heartbeat)."""
    idle_s = IDLE_HEARTBEAT_MS / 1000
    mark = len(fk.beats)
    time.sleep(idle_s + 2 * HEARTBEAT_MS / 1000)             # idle: nothing else goes
    assert len(fk.beats) > mark and fk.beats[-1] == []
    addr = proc.map(32)
    mark = len(fk.beats)
    until = time.monotonic() + idle_s * 1.5
    page = 0
    while time.monotonic() < until:                          # a fault every IDLE/8: heard
        proc.read(addr + page * PAGE_SIZE, 1)
        page += 1
        time.sleep(idle_s / 8)
    assert page > 8 and fk.beats[mark:] == []


# -- errors ---------------------------------------------------------------------------------------
def test_segfault_on_esegv(fk: MmuKernel, proc: SealedProcess) -> None:
    proc.map(1)
    with pytest.raises(SegmentationFault, match="outside every region") as info:
        proc.read(0x10, 1)
    assert info.value.code == Err.SEGV and info.value.process_name == "ident"


@pytest.mark.parametrize("code, cls", [(Err.INTEGRITY, PageIntegrityError),
                                       (Err.KILLED, ProcessKilled)])
def test_fault_errors_map_to_exceptions(fk: MmuKernel, proc: SealedProcess, code: Err,
                                        cls: type) -> None:
    addr = proc.map(1)
    fk.fail_next = (code, "page integrity lost: page 0x100 failed check tag")
    with pytest.raises(cls, match="failed check tag"):
        proc.read(addr, 1)
    assert proc.mmu._inflight is None and not proc.mmu._r


# -- the typed view --------------------------------------------------------------------------------
def test_varray_faults_page_by_page(fk: MmuKernel, proc: SealedProcess) -> None:
    addr = proc.map(4)
    v = proc.view(addr, np.int64, 4 * 512)
    assert len(v) == 2048 and not fk.faults
    v[510:514] = [1, 2, 3, 4]                                # straddles pages 0 and 1
    assert [f[0] - addr // PAGE_SIZE for f in fk.faults] == [0, 1]
    assert list(v[509:515]) == [0, 1, 2, 3, 4, 0]
    v[1000] = -7                                             # page 1: resident already
    assert v[1000] == -7 and len(fk.faults) == 2
    assert v[-1] == 0 and len(fk.faults) == 3                # page 3
    v[1536:] = 9
    assert (v.to_numpy()[1536:] == 9).all() and len(fk.faults) == 4   # page 2
    with pytest.raises(IndexError):
        v[0:10:2]


# -- KILL ---------------------------------------------------------------------------------------
def test_kill_ends_the_process_with_a_message(fk: MmuKernel) -> None:
    script = ("import sys, time\n"
              "from apps.runtime import SealedProcess\n"
              f"p = SealedProcess.connect(sys.argv[1], {CRED!r})\n"
              "print('up', flush=True)\n"
              "time.sleep(30)\n")
    child = subprocess.Popen([sys.executable, "-c", script, fk.addr], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "up"
        fk.kill("it misbehaved")
        assert child.wait(5) == 137
        assert "sealedos: killed by the kernel: it misbehaved" in child.stderr.read()
    finally:
        child.kill()
        child.wait()
