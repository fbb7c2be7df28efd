"""Simulated sealed processes: they speak the wire protocol to the real kernel directly.

A :class:`SimProcess` is what apps/runtime is, minus threads: a call connection (one request
at a time: REGISTER, MAP, FAULT ..., EXIT), a control connection (ATTACH, HEARTBEATs, and the
kernel's SHOOTDOWN/KILL requests), and a *bank* (frame -> page bytes) whose resident pages it
reads and writes without asking the kernel, like apps/runtime/mmu.py: the TLB, the dirty bit,
the local dirty trap, fault-around (a FAULT reply's ``around`` pages are installed too),
batched shootdowns (``more``), and the install race (a shootdown of a page not held that
overtakes a FAULT reply is parked until the reply arrives; one of an older residency
revokes the FILL_KEEP answer).

It keeps what it wrote (vpn -> bytes) and checks every read against it (a page never
written must read as zeros): any other byte is a violation of invariant 1 (invariants.py).
Its workload is drawn from the simulation's rng: touch a page (read or write), now and then
verify every page, and eventually EXIT -- or just die, when the schedule says so.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from host_tools.sim import ipcload
from wire.protocol import (
    ACCESS_READ,
    ACCESS_WRITE,
    FILL_DATA,
    FILL_KEEP,
    FILL_ZERO,
    PAGE_SHIFT,
    PAGE_SIZE,
    PROT_R,
    PROT_W,
    Err,
    Op,
    decode,
    encode,
    request,
)

if TYPE_CHECKING:
    from host_tools.sim.net import NodeTransport, SimNet, SimSocket

ZERO_PAGE: bytes = bytes(PAGE_SIZE)
#: How often the control connection says HEARTBEAT (the runtime's HEARTBEAT_MS).
HEARTBEAT_S: float = 0.2
#: Most references one FAULT carries.
REFS_MAX: int = 16

Reply = Callable[[dict[str, Any]], None]


@dataclass(slots=True)
class Shot:
    """One SHOOTDOWN message: its answers (first page, then `more`), sent when all are in."""
    rid: int
    answers: list[dict[str, Any] | None]
    batched: bool


@dataclass(slots=True)
class Parked:
    """A page of a shootdown that is not ours while a FAULT is in flight, waiting for that
    FAULT's reply (which may install it: the install race)."""
    shot: Shot
    index: int
    vpn: int
    frame: int
    want: bool


class SimProcess:
    """One simulated sealed process (see the module docstring)."""

    def __init__(self, name: str, net: SimNet, kernel_addr: str, rng: random.Random,
                 npages: int, ops: int, report: Callable[[str, str], None],
                 role: str = "app", server: SimProcess | None = None) -> None:
        self.name = name
        self.role = role                      # "init": the IPC server (ipcload.py)
        self.server = server                  # a client's server, to know when it is up
        self.endpoint: int | None = None
        self.receive_rid = 0
        self.wants_exit = False
        self.calls = 0
        self.grants_refused = 0
        self.install_races = 0                               # shootdowns that overtook a fault
        self.net = net
        self.rng = rng
        self.npages = npages
        self.ops_left = ops
        self.report = report                   # report(kind, text): a violation or a note
        self.tr: NodeTransport = net.transport(name)
        self.tr.owner = self
        self.call: SimSocket = self.tr.connect_dealer(kernel_addr)
        self.ctrl: SimSocket = self.tr.connect_dealer(kernel_addr)
        self.rids = iter(range(1, 1 << 62))
        self.waiting: dict[tuple[bool, int], Reply] = {}     # (on ctrl?, rid) -> callback
        self.answered: set[tuple[bool, int]] = set()
        #: Requests given up on purpose (a server's last RECEIVE when it exits): their
        #: answer, should one still come, is no violation.
        self.abandoned: set[tuple[bool, int]] = set()
        self.spid = 0
        self.base_vpn = 0
        self.bank: dict[int, bytes] = {}                     # frame -> page bytes
        self.resident: dict[int, int] = {}                   # vpn -> frame
        self.tlb: dict[int, int] = {}                        # vpn -> installed prot
        self.dirty: set[int] = set()
        self.wrote: dict[int, bytes] = {}                    # vpn -> what we last wrote
        self.refs: list[int] = []
        self.inflight: int | None = None
        self.revoked = False
        self.parked: list[Parked] = []
        self.state = "new"                                   # new ... running, exited, dead
        self.stopped_by: str = ""                            # error code that stopped us
        self.version = 0
        self.reads_checked = 0

    # -- wire ------------------------------------------------------------------------------
    def _request(self, ctrl: bool, op: Op, fields: dict[str, Any], then: Reply) -> int:
        """Send a request on the call (or control) connection; then(reply) when answered.
        Returns its rid."""
        rid = next(self.rids)
        self.waiting[(ctrl, rid)] = then
        self.tr.send(self.ctrl if ctrl else self.call, None, encode(request(op, rid, **fields)))
        return rid

    def on_frame(self, sock: SimSocket, peer: bytes | None, frame: bytes) -> None:
        """A reply to one of our requests, or the kernel's SHOOTDOWN/KILL on control."""
        if self.state in ("dead", "exited"):
            return
        msg = decode(frame)
        ctrl = sock is self.ctrl
        if "re" in msg:
            key = (ctrl, msg["re"])
            then = self.waiting.pop(key, None)
            if then is None and key in self.abandoned:
                return
            if then is None:
                kind = "duplicate reply" if key in self.answered else "unsolicited reply"
                self.report("violation", f"{self.name}: {kind} {msg!r:.120}")
                return
            self.answered.add(key)
            then(msg)
            return
        if not ctrl:
            self.report("violation", f"{self.name}: request on the call connection {msg!r:.80}")
        elif msg.get("op") == str(Op.SHOOTDOWN):
            self._shootdown(msg)
        elif msg.get("op") == str(Op.KILL):
            self._answer(msg["rid"], {})
            self.die(f"killed by the kernel: {msg.get('reason')}", stopped_by=str(Err.KILLED))

    def _answer(self, rid: int, fields: dict[str, Any]) -> None:
        """Reply on the control connection."""
        self.tr.send(self.ctrl, None, encode(dict(fields, re=rid)))

    # -- life ------------------------------------------------------------------------------
    def start(self, cred: bytes) -> None:
        """REGISTER with the launcher-issued credential, ATTACH, MAP, then run."""
        self.state = "registering"
        self._request(False, Op.REGISTER, {"cred": cred}, self._registered)

    def _registered(self, reply: dict[str, Any]) -> None:
        if "err" in reply:
            self.report("violation", f"{self.name}: register refused: {reply.get('msg')}")
            self.state = "dead"
            return
        self.spid = reply["spid"]
        self._request(True, Op.ATTACH, {"spid": self.spid, "secret": reply["secret"]},
                      self._attached)

    def _attached(self, reply: dict[str, Any]) -> None:
        if "err" in reply:
            self.report("violation", f"{self.name}: attach refused: {reply.get('msg')}")
            self.state = "dead"
            return
        self.net.after(HEARTBEAT_S, self._heartbeat)
        if self.role == "init":
            ipcload.serve(self)
            return
        self._request(False, Op.MAP, {"npages": self.npages, "prot": PROT_R | PROT_W},
                      self._mapped)

    def _mapped(self, reply: dict[str, Any]) -> None:
        if not self._ok(reply, "map"):
            return
        self.base_vpn = reply["addr"] >> PAGE_SHIFT
        self.state = "running"
        self._next()

    def _heartbeat(self) -> None:
        if self.state in ("dead", "exited"):
            return
        self._request(True, Op.HEARTBEAT, {"refs": []}, lambda reply: None)
        self.net.after(HEARTBEAT_S, self._heartbeat)

    def die(self, why: str, stopped_by: str = "") -> None:
        """Vanish at once (no EXIT): the kernel must notice and reclaim everything."""
        if self.state in ("dead", "exited"):
            return
        self.state = "dead"
        self.stopped_by = stopped_by
        self.net.record(f"{self.name} dies: {why[:80]}")
        self.net.crash(self.tr)

    def finish(self) -> None:
        """Stop taking new work; verify every page, then EXIT (at quiescence); a server
        exits once its clients are gone (ipcload.stop_serving)."""
        self.ops_left = 0

    # -- the workload ----------------------------------------------------------------------
    def _next(self) -> None:
        """Schedule the next operation after a short think time."""
        self.net.after(self.rng.random() * 0.002, self._op)

    def _op(self) -> None:
        if self.state != "running":
            return
        if self.ops_left <= 0:
            self.state = "verifying"
            self._verify_from(0)
            return
        self.ops_left -= 1
        if self.server is not None and self.server.endpoint is not None and \
                self.rng.random() < 0.08:
            ipcload.call(self, self._next)
            return
        if self.rng.random() < 0.03:
            self._remap_range()
            return
        if self.rng.random() < 0.03:
            self._protect_range()
            return
        vpn = self.base_vpn + self.rng.randrange(self.npages)
        if self.rng.random() < 0.5:
            self.version += 1
            data = (b"%s:%d:%d;" % (self.name.encode(), vpn, self.version)).ljust(32, b".") * (
                PAGE_SIZE // 32)
            self.access(vpn, ACCESS_WRITE, data, self._next)
        else:
            self.access(vpn, ACCESS_READ, None, self._next)

    def _remap_range(self) -> None:
        """UNMAP a few pages and MAP them again at the same address: they must read as
        zeros afterwards, whatever was written, evicted or in flight before."""
        k = self.rng.randint(1, min(4, self.npages))
        vpn0 = self.base_vpn + self.rng.randrange(self.npages - k + 1)
        where = {"addr": vpn0 << PAGE_SHIFT, "npages": k}

        def unmapped(reply: dict[str, Any]) -> None:
            if not self._ok(reply, "unmap"):
                return
            for v in range(vpn0, vpn0 + k):
                self._forget(v)
                self.wrote.pop(v, None)
            self._request(False, Op.MAP, dict(where, prot=PROT_R | PROT_W), remapped)

        def remapped(reply: dict[str, Any]) -> None:
            if self._ok(reply, "remap") and reply.get("addr") != vpn0 << PAGE_SHIFT:
                self.report("violation", f"{self.name}: MAP at {vpn0 << PAGE_SHIFT:#x} "
                                         f"mapped {reply.get('addr')!r}")
                return
            if self.state == "running":
                self._next()

        self._request(False, Op.UNMAP, where, unmapped)

    def _protect_range(self) -> None:
        """PROTECT a few pages read-only and back: the TLB drops them each time (the pages,
        their bytes and dirty bits stay), as the runtime's protected() does."""
        k = self.rng.randint(1, min(4, self.npages))
        vpn0 = self.base_vpn + self.rng.randrange(self.npages - k + 1)
        where = {"addr": vpn0 << PAGE_SHIFT, "npages": k}

        def protected(prot: int, then: Callable[[], None]) -> Reply:
            def on(reply: dict[str, Any]) -> None:
                if not self._ok(reply, f"protect {prot}"):
                    return
                for v in range(vpn0, vpn0 + k):
                    self.tlb.pop(v, None)
                then()
            return on

        def back() -> None:
            self._request(False, Op.PROTECT, dict(where, prot=PROT_R | PROT_W),
                          protected(PROT_R | PROT_W, self._next))

        self._request(False, Op.PROTECT, dict(where, prot=PROT_R), protected(PROT_R, back))

    def _verify_from(self, i: int) -> None:
        """Read back every page in order, then EXIT."""
        if self.state != "verifying":
            return
        if i == self.npages:
            self._request(False, Op.EXIT, {"status": 0}, self._exited)
            return
        self.access(self.base_vpn + i, ACCESS_READ, None, lambda: self._verify_from(i + 1))

    def _exited(self, reply: dict[str, Any]) -> None:
        if self._ok(reply, "exit"):
            self.state = "exited"
            self.net.crash(self.tr)

    def _ok(self, reply: dict[str, Any], what: str) -> bool:
        """True for a success reply; an error reply stops us (judged by invariants.py)."""
        if "err" not in reply:
            return True
        err = str(reply.get("err"))
        kind = "stopped" if err in (Err.INTEGRITY, Err.KILLED) else "violation"
        self.report(kind, f"{self.name}: {what} failed: {err} {str(reply.get('msg'))[:160]}")
        self.die(f"{what} failed with {err}", stopped_by=err)
        return False

    # -- the MMU ---------------------------------------------------------------------------
    def access(self, vpn: int, access: str, data: bytes | None, then: Callable[[], None]) -> None:
        """Read (check) or write vpn, faulting first if the TLB does not allow it."""
        prot = self.tlb.get(vpn)
        need = PROT_W if access == ACCESS_WRITE else PROT_R
        if prot is not None and prot & need:
            self._touch(vpn, access, data)
            then()
            return
        self.inflight, self.revoked = vpn, False
        refs, self.refs = self.refs[-REFS_MAX:], []
        self._request(False, Op.FAULT, {"vpn": vpn, "access": access, "refs": refs},
                      lambda reply: self._faulted(vpn, access, data, then, reply))

    def _touch(self, vpn: int, access: str, data: bytes | None) -> None:
        """The access itself, on an installed page."""
        frame = self.resident[vpn]
        if not self.refs or self.refs[-1] != vpn:
            self.refs.append(vpn)
        if access == ACCESS_WRITE:
            assert data is not None
            self.bank[frame] = data
            self.dirty.add(vpn)
            self.wrote[vpn] = data
            return
        got = self.bank.get(frame, ZERO_PAGE)
        want = self.wrote.get(vpn, ZERO_PAGE)
        self.reads_checked += 1
        if got != want:
            was = ("we wrote " + repr(want[:24]) if vpn in self.wrote
                   else "it was never written (zeros)")
            self.report("violation", f"{self.name}: page {vpn:#x} read {got[:24]!r} but {was}")

    def _faulted(self, vpn: int, access: str, data: bytes | None, then: Callable[[], None],
                 reply: dict[str, Any]) -> None:
        """Apply a FAULT reply (mmu.py _complete_locked), then do the access or fault again."""
        self.inflight = None
        parked, self.parked = self.parked, []
        if "err" in reply:
            self._release(parked)
            self._ok(reply, f"fault on {vpn:#x}")
            return
        frame, prot, fill = reply.get("frame"), reply.get("prot"), reply.get("fill")
        around = reply.get("around", [])
        if not isinstance(frame, int) or not isinstance(prot, int) or not isinstance(
                around, list) or not all(isinstance(a, list) and len(a) == 4 for a in around):
            self.report("violation", f"{self.name}: malformed fault reply {reply!r:.120}")
            return
        if fill == FILL_DATA:
            self.bank[frame] = reply["data"]
        elif fill == FILL_ZERO:
            self.bank[frame] = ZERO_PAGE
        elif fill != FILL_KEEP:
            self.report("violation", f"{self.name}: fault reply with fill {fill!r}")
            return
        for v, fr, pr, page in around:                # fault-around: installed clean
            self.bank[fr] = page
            p = _take(parked, v, fr)
            if p is not None:                           # revoked before installed
                self._settle(p.shot, p.index, {"dirty": False, "data": page if p.want else None})
                continue
            self.dirty.discard(v)
            self.resident[v] = fr
            self.tlb[v] = pr
        p = _take(parked, vpn, frame)
        self._release(parked)
        if p is not None:                            # revoked before installed: ask again
            dirty = fill == FILL_KEEP and vpn in self.dirty
            self._settle(p.shot, p.index, {"dirty": dirty, "data": self.bank.get(
                frame, ZERO_PAGE) if (dirty or p.want) else None})
            self._forget(vpn)
            self.access(vpn, access, data, then)
            return
        if self.revoked and fill == FILL_KEEP:
            self.access(vpn, access, data, then)
            return
        if fill != FILL_KEEP:
            self.dirty.discard(vpn)
        self.resident[vpn] = frame
        self.tlb[vpn] = prot
        if prot & PROT_W and access == ACCESS_WRITE:
            self.dirty.add(vpn)
        if not prot & (PROT_W if access == ACCESS_WRITE else PROT_R):
            self.report("violation", f"{self.name}: fault on {vpn:#x} for {access} installed "
                                     f"prot {prot}")
            return
        self._touch(vpn, access, data)
        then()

    def _forget(self, vpn: int) -> None:
        self.tlb.pop(vpn, None)
        self.resident.pop(vpn, None)
        self.dirty.discard(vpn)

    def _shootdown(self, msg: dict[str, Any]) -> None:
        """mmu.py shootdown() for each page named: park one we do not hold while a FAULT is
        in flight, answer the others; the reply goes when every page is answered."""
        pages = [(msg["vpn"], msg["frame"], msg["want"])] + [
            (m[0], m[1], m[2]) for m in msg.get("more", [])]
        shot = Shot(msg["rid"], [None] * len(pages), "more" in msg)
        for i, (vpn, frame, want) in enumerate(pages):
            if self.inflight is not None and (vpn not in self.resident or (
                    vpn == self.inflight and self.resident[vpn] != frame)):
                self.parked.append(Parked(shot, i, vpn, frame, want))
                self.install_races += 1
            else:
                self._settle(shot, i, self._give_back(vpn, frame, want))

    def _give_back(self, vpn: int, frame: int, want: bool) -> dict[str, Any]:
        """The answer for one page, the usual way (no reply pending for it)."""
        if vpn == self.inflight:
            self.revoked = True
            self.install_races += 1
        if self.resident.get(vpn, frame) != frame:     # stale: an older residency of vpn
            return {"dirty": False, "data": self.bank.get(frame, ZERO_PAGE) if want else None}
        dirty = vpn in self.dirty
        self._forget(vpn)
        return {"dirty": dirty,
                "data": self.bank.get(frame, ZERO_PAGE) if (dirty or want) else None}

    def _release(self, parked: list[Parked]) -> None:
        """The reply did not install these: answer them the usual way."""
        for p in parked:
            self._settle(p.shot, p.index, self._give_back(p.vpn, p.frame, p.want))

    def _settle(self, shot: Shot, index: int, answer: dict[str, Any]) -> None:
        """One page of a shootdown is answered; reply once all are."""
        shot.answers[index] = answer
        if all(a is not None for a in shot.answers):
            first, *more = shot.answers
            assert first is not None
            self._answer(shot.rid, dict(first, more=more) if shot.batched else first)


def _take(parked: list[Parked], vpn: int, frame: int) -> Parked | None:
    """Remove and return the parked shootdown page (vpn, frame), if any."""
    for p in parked:
        if p.vpn == vpn and p.frame == frame:
            parked.remove(p)
            return p
    return None
