"""Fault-around and batched shootdowns in the runtime's MMU (apps/runtime/mmu.py), against
the fake kernel of test_runtime_mmu.py taught two more things: a FAULT reply that installs
the next pages too (``around``), and a SHOOTDOWN naming several pages (``more``)."""
from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

import pytest
from polling import wait_for
from test_runtime_mmu import CRED, RACE_DELAY_S, MmuKernel

from apps.runtime import PAGE_SIZE, KernelProtocolError, SealedProcess
from wire.protocol import Op, ok


class AroundKernel(MmuKernel):
    """MmuKernel whose next fault reply may bring the next pages along."""

    def __init__(self) -> None:
        self.around_next = 0                # install up to this many following pages ...
        self.race_around = False            # ... shooting the first down before replying
        self.bad_around: Any = None         # ... or answer with this `around` instead
        self.held: list[tuple[bytes, dict[str, Any]]] | None = None   # fault replies kept
        super().__init__(nframes=8)

    def _reply_fault(self, peer: bytes, rid: int, vpn: int, frame: int, prot: int,
                     fill: str) -> None:
        if self.held is not None:           # the reply waits (as the kernel's waits for frames)
            self.held.append((peer, ok(rid, vpn=vpn, frame=frame, prot=prot, fill=fill)))
            return
        n, self.around_next = self.around_next, 0
        if not n and self.bad_around is None:
            super()._reply_fault(peer, rid, vpn, frame, prot, fill)
            return
        reply = ok(rid, vpn=vpn, frame=frame, prot=prot, fill=fill)
        if fill == "data":
            reply["data"] = self.backing[vpn]
        around: list[list[Any]] = []
        for v in range(vpn + 1, vpn + 1 + n):
            if v in self.resident or v not in self.backing or not self.free:
                break
            self.resident[v] = fr = self.free.pop()
            around.append([v, fr, prot, self.backing[v]])
        reply["around"] = around if self.bad_around is None else self.bad_around
        self.bad_around = None
        if self.race_around and around:     # the shootdown overtakes the reply on the wire
            self.race_around = False
            self.shoot(around[0][0], False, lambda _: None)
            self.call_later(RACE_DELAY_S, lambda: self.send_to(peer, reply))
            return
        self.send_to(peer, reply)

    def shoot_many(self, vpns: list[int], want: bool = False) -> dict[str, Any]:
        """One SHOOTDOWN for all of vpns (the first in the request, the rest in `more`)."""
        done: Future[dict[str, Any]] = Future()

        def go() -> None:
            frames = [self.resident[v] for v in vpns]
            self.evicting.update(vpns)

            def answered(reply: dict[str, Any]) -> None:
                for v, fr in zip(vpns, frames, strict=True):
                    del self.resident[v]
                    self.evicting.discard(v)
                    self.free.append(fr)
                done.set_result(reply)
            self.request(self.ctrl_peer, Op.SHOOTDOWN,
                         {"vpn": vpns[0], "frame": frames[0], "want": want,
                          "more": [[v, fr, want] for v, fr in zip(vpns[1:], frames[1:],
                                                                   strict=True)]}, answered)
        self.run(go)
        return done.result(5)


@pytest.fixture
def fk() -> Any:
    kernel = AroundKernel()
    yield kernel
    kernel.stop()


@pytest.fixture
def proc(fk: AroundKernel) -> Any:
    p = SealedProcess.connect(fk.addr, CRED)
    yield p
    p.close()


def swapped_out(fk: AroundKernel, proc: SealedProcess, npages: int) -> int:
    """A region of npages pages, page i holding b"page i", all taken back (only the fake
    kernel's backing holds them); its address."""
    addr = proc.map(npages)
    for i in range(npages):
        proc.write(addr + i * PAGE_SIZE, f"page {i}".encode())
    for i in range(npages):
        assert fk.shootdown(addr // PAGE_SIZE + i)["dirty"] is True
    return addr


def test_one_fault_installs_the_pages_its_reply_brings_along(fk: AroundKernel,
                                                             proc: SealedProcess) -> None:
    addr = swapped_out(fk, proc, 4)
    faults = len(fk.faults)
    fk.around_next = 3
    assert [proc.read(addr + i * PAGE_SIZE, 6) for i in range(4)] == [
        f"page {i}".encode() for i in range(4)]
    assert len(fk.faults) == faults + 1                      # pages 1-3 were TLB hits
    proc.write(addr + PAGE_SIZE, b"PAGE")                    # installed clean: the local trap
    assert fk.shootdown(addr // PAGE_SIZE + 1)["dirty"] is True
    assert fk.shootdown(addr // PAGE_SIZE + 2)["dirty"] is False


def test_a_shootdown_overtaking_a_page_its_reply_brings_along_is_answered_after_the_reply(
        fk: AroundKernel, proc: SealedProcess) -> None:
    addr = swapped_out(fk, proc, 3)
    vpn = addr // PAGE_SIZE
    fk.around_next, fk.race_around = 2, True
    shot = len(fk.shootdown_replies)
    assert proc.read(addr, 6) == b"page 0"
    wait_for("the raced shootdown's answer", lambda: len(fk.shootdown_replies) > shot, 5)
    racing = fk.shootdown_replies[shot]                      # page 1, before its install
    assert racing["vpn"] == vpn + 1 and racing["dirty"] is False
    assert vpn + 1 not in proc.mmu._r and proc.mmu._r[vpn + 2] == fk.resident[vpn + 2] * PAGE_SIZE
    faults = len(fk.faults)
    assert proc.read(addr + PAGE_SIZE, 6) == b"page 1"        # asked again: from the backing
    assert proc.read(addr + 2 * PAGE_SIZE, 6) == b"page 2"    # a hit
    assert len(fk.faults) == faults + 1


def page_of(text: str) -> bytes:
    return text.encode().ljust(PAGE_SIZE, b"\0")


BAD_AROUND: dict[str, Any] = {
    "not a list": {"vpn": 1},
    "not an entry": [[1, 2, 3]],
    "the fault's own page": [["VPN", 5, 3, page_of("x")]],
    "the fault's own frame": [["VPN+1", "FRAME", 3, page_of("x")]],
    "one frame twice": [["VPN+1", 5, 3, page_of("x")], ["VPN+2", 5, 3, page_of("y")]],
    "a frame outside the bank": [["VPN+1", 8, 3, page_of("x")]],
    "a short page": [["VPN+1", 5, 3, b"x"]],
    "a bad protection": [["VPN+1", 5, 99, page_of("x")]],
}


@pytest.mark.parametrize("how", sorted(BAD_AROUND))
def test_a_malformed_around_is_a_kernel_protocol_error(fk: AroundKernel, proc: SealedProcess,
                                                       how: str) -> None:
    addr = swapped_out(fk, proc, 1)
    vpn = addr // PAGE_SIZE
    subst = {"VPN": vpn, "VPN+1": vpn + 1, "VPN+2": vpn + 2}

    def resolve(x: Any) -> Any:
        if isinstance(x, list):
            return [resolve(e) for e in x]
        return subst.get(x, x) if isinstance(x, str) else x
    bad = resolve(BAD_AROUND[how])
    if how == "the fault's own frame":
        bad[0][1] = min(fk.free)                             # the frame the fault gets next
    fk.bad_around = bad
    with pytest.raises(KernelProtocolError):
        proc.read(addr, 6)
    assert vpn + 1 not in proc.mmu._resident


def test_a_shootdown_of_several_pages_answers_each_in_order(fk: AroundKernel,
                                                            proc: SealedProcess) -> None:
    addr = proc.map(3)
    for i in range(3):
        proc.write(addr + i * PAGE_SIZE, f"page {i}".encode())
    vpn = addr // PAGE_SIZE
    assert fk.shootdown(vpn + 1)["dirty"] is True
    assert proc.read(addr + PAGE_SIZE, 6) == b"page 1"        # back, clean
    reply = fk.shoot_many([vpn, vpn + 1, vpn + 2])
    assert reply["dirty"] is True and reply["data"][:6] == b"page 0"
    assert [m["dirty"] for m in reply["more"]] == [False, True]
    assert reply["more"][0]["data"] is None and reply["more"][1]["data"][:6] == b"page 2"
    assert not proc.mmu._resident


def test_stale_pages_in_one_shootdown_wait_for_a_fault_in_flight_once_not_each(
        fk: AroundKernel, proc: SealedProcess) -> None:
    # Pages the process no longer holds (a shootdown late behind its UNMAP), named in one
    # batched SHOOTDOWN while a fault is out: each is parked until that fault's reply --
    # which the kernel may send only once this shootdown is answered.  Parked one after the
    # other, DEFER_WAIT_S each, 4 pages outlast the kernel's SHOOTDOWN_TIMEOUT_MS (5 s) and
    # an honest process is killed; the whole message must wait DEFER_WAIT_S at most.
    addr = proc.map(8)
    vpn = addr // PAGE_SIZE
    fk.held = []
    fault: Future[bytes] = Future()
    threading.Thread(target=lambda: fault.set_result(proc.read(addr, 1)), daemon=True).start()
    wait_for("the fault is out", lambda: fk.held, 5)
    stale = [vpn + i for i in range(4, 8)]
    fk.run(lambda: fk.resident.update({v: fk.free.pop() for v in stale}))
    reply = fk.shoot_many(stale)                         # done.result(5): the kernel's deadline
    assert reply["dirty"] is False and [m["dirty"] for m in reply["more"]] == [False] * 3
    peer, held = fk.held[0]
    fk.held = None
    fk.run(lambda: fk.send_to(peer, held))
    assert fault.result(5) == b"\0"
