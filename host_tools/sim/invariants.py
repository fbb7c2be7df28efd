"""What must hold in every simulated run, after every step and at quiescence.

1. No process reads a byte it did not write (a never-written page reads as zeros): checked
   by each SimProcess on every read (workload.py), reported here as a violation.
2. Every fault completes or stops only its process with EINTEGRITY -- and with mirrored
   pagers, where the schedule makes at most one mirror faulty, nothing is stopped.  No
   honest process is ever KILLed.
3. Every call is answered exactly once: no duplicate or unsolicited reply (workload.py),
   and at quiescence no live process still waits for an answer.
4. The kernel never panics and never raises out of its loop, and no handler of it fails
   on an unexpected exception (the skeleton would turn that into an EINVAL reply and log it).
5. At quiescence nothing is leaked: every frame free, no process, endpoint, shootdown or
   pager request left in the kernel, no disk handle (not even an empty one) or block left
   on any disk.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from wire.protocol import Err

if TYPE_CHECKING:
    from host_tools.sim.world import World


@dataclass(slots=True)
class Violation:
    """One broken invariant: at which step, and what."""
    step: int
    text: str


@dataclass(slots=True)
class Verdict:
    """Everything the invariants concluded about one run."""
    violations: list[Violation] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)        # processes stopped (allowed ones)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no invariant broke."""
        return not self.violations


class HandlerFailures(logging.Handler):
    """Catches the skeleton's "handler for OP failed" log records of one server."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.failures: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep handler crashes (a bug on odd input); ignore the rest."""
        if isinstance(record.msg, str) and "handler for" in record.msg and "failed" in record.msg:
            self.failures.append(record.getMessage()[-400:])


def judge_report(world: World, kind: str, text: str) -> None:
    """A process reported something: a violation, or a stop that may be allowed."""
    if kind == "stopped":
        allowed = Err.INTEGRITY in text and not world.mirrors_protect
        if allowed:
            world.verdict.stopped.append(text)
            world.net.record(f"stopped {text[:100]}")
            return
        kind = "violation"
        why = ("mirrored, one mirror faulty" if world.mirrors_protect
               else "only integrity errors may stop a process")
        text = f"{text} (invariant 2: {why})"
    if kind == "violation":
        world.violate(text)
    else:
        world.verdict.notes.append(text)


def check_step(world: World) -> None:
    """After every step: the kernel's handlers did not crash."""
    failures = world.kernel_failures.failures
    if failures:
        world.violate(f"kernel handler failed (invariant 4): {failures[0]}")
        failures.clear()


def check_quiescent(world: World) -> None:
    """At quiescence: every call answered, nothing leaked (invariants 3 and 5)."""
    k = world.kernel
    for p in world.procs:
        if p.state not in ("exited", "dead"):
            world.violate(f"{p.name} did not finish (state {p.state}, waiting on "
                          f"{sorted(p.waiting)[:4]}): a call never answered (invariant 3)")
    leaks: list[str] = []
    if k.procs.by_spid:
        leaks.append(f"processes {[p.name for p in k.procs.by_spid.values()]}")
    if k.vm.pool.free_count != k.vm.pool.nframes:
        leaks.append(f"frames: {k.vm.pool.nframes - k.vm.pool.free_count} not free")
    if k.vm.shootdowns:
        leaks.append(f"{len(k.vm.shootdowns)} shootdowns")
    if k.ipc.endpoints:
        leaks.append(f"{len(k.ipc.endpoints)} endpoints")
    if k.ipc.tables:
        leaks.append(f"capability tables of spids {sorted(k.ipc.tables)}")
    for slot in k.pagers.slots:
        if slot.inflight or slot.backlog:
            leaks.append(f"pager slot {slot.mirror}: {len(slot.inflight)} in flight, "
                         f"{len(slot.backlog)} waiting")
    for d in world.disks:
        if d.service is None:
            continue
        st = d.service.device.stats()
        # Empty handles too: the kernel mints every handle and CLOSEs each once its space
        # is gone, and a CLOSE is final on the disk (a late OPEN cannot make it again).
        if st.handles or st.used_blocks:
            leaks.append(f"{d.name}: {st.handles} handles, {st.used_blocks} blocks")
    if leaks:
        world.violate("leaked at quiescence (invariant 5): " + "; ".join(leaks))
