"""Quotas: every kernel object a process can cause is charged to that process.

A sealed process may be hostile, and the kernel's memory and CPU are shared by everyone, so
nothing a process asks the kernel to keep is free: its regions, its mapped pages (each may
get a page-table entry), its endpoints, the compiled size of their contracts, the handles in
its capability table, its outstanding calls and the bytes of its reports.  Each is counted
in the process's :class:`Quota`; a request that would go over a limit is refused with
``EQUOTA`` naming the resource, e.g. ``endpoints 256/256``.  Whatever is charged is released
when the object goes (unmap, cap_close, reply, exit or kill), so a process's usage returns to
zero when it is reclaimed.

The default limits fit every app and benchmark shipped (kvstore, memstress --pages 256,
bench paging --scale, echo) with room to spare; an operator may give a program other limits
(the kernel's service table sets ``Proc.quota``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from wire.protocol import Err, ServiceError
from wire.server import Panic


class Resource(StrEnum):
    """What a quota limits (the names EQUOTA replies use)."""
    REGIONS = "regions"                    # regions made by MAP (and grants received)
    PAGES = "pages"                        # virtual pages mapped in those regions
    ENDPOINTS = "endpoints"                # endpoints owned
    CONTRACT_BYTES = "contract_bytes"      # compiled size of the owned endpoints' contracts
    CAPABILITIES = "capabilities"          # handles in the capability table
    CALLS = "calls"                        # calls sent and not yet answered or failed
    REPORT_BYTES = "report_bytes"          # bytes of the REPORT values kept for ps/stats
    PREFETCHED = "prefetched"              # pages read ahead (held by the kernel), not yet used


@dataclass(slots=True)
class Limits:
    """The most of each resource one process may hold at once."""
    regions: int = 1024
    pages: int = 1 << 16                   # 256 MiB of address space
    endpoints: int = 256
    contract_bytes: int = 4 << 20
    capabilities: int = 4096
    calls: int = 4
    report_bytes: int = 8192
    prefetched: int = 32                   # past it the oldest goes back to swap (vm.py)
    #: Contract bytes the kernel compiles for the process per second (CPU, not memory: an
    #: invalid contract is paid for too); a burst of COMPILE_BURST_S seconds' worth is allowed.
    compile_bytes_per_s: int = 64 * 1024
    #: Reference-list entries (FAULT and HEARTBEAT ``refs``) the kernel applies per message;
    #: the runtime sends at most 4096 (apps/runtime/mmu.py); hints beyond this are ignored.
    refs_per_message: int = 4096


#: How many seconds of compile_bytes_per_s a process may spend at once.
COMPILE_BURST_S: float = 4.0
#: A process refused for quota again within this long is answered later, not at once ...
REFUSAL_WINDOW_S: float = 1.0
#: ... after this delay, doubled with each further refusal, up to REFUSAL_DELAY_MAX_MS: a
#: process hammering its quota gets few answers a second (and costs the kernel few).
REFUSAL_DELAY_MS: float = 2.0
REFUSAL_DELAY_MAX_MS: float = 1000.0


@dataclass(slots=True)
class Quota:
    """One process's limits and its current usage of each resource."""
    limits: Limits = field(default_factory=Limits)
    used: dict[Resource, int] = field(default_factory=lambda: dict.fromkeys(Resource, 0))
    compile_credit: float = float("inf")   # bytes it may compile now (refilled over time)
    compile_t: float = 0.0                 # monotonic time of the last refill
    refusals: int = 0                      # EQUOTA answers in a row (within the window)
    refused_t: float = float("-inf")       # monotonic time of the last one

    def check(self, resource: Resource, n: int = 1) -> None:
        """Raise EQUOTA naming `resource` unless n more of it fit (charges nothing).  (A
        Resource is the str naming its Limits field: no .value, an Enum property, per check.)"""
        used, limit = self.used[resource], getattr(self.limits, resource)
        if n > 0 and used + n > limit:
            more = "" if n == 1 else f" (asked for {n} more)"
            raise ServiceError(Err.QUOTA, f"{resource} {used}/{limit}{more}")

    def charge(self, resource: Resource, n: int = 1) -> None:
        """Take n of `resource`; EQUOTA (nothing taken) when it would pass the limit."""
        if n < 0:
            raise Panic(f"charge of {n} {resource}")
        self.check(resource, n)
        self.used[resource] += n

    def force(self, resource: Resource, n: int) -> None:
        """Take n of `resource` even past the limit (an object the process receives from
        another and cannot refuse once its move is under way, e.g. granted pages)."""
        if n < 0:
            raise Panic(f"charge of {n} {resource}")
        self.used[resource] += n

    def release(self, resource: Resource, n: int = 1) -> None:
        """Give back n of `resource`; going below zero is a broken invariant (Panic)."""
        left = self.used[resource] - n
        if n < 0 or left < 0:
            raise Panic(f"release of {n} {resource} with {self.used[resource]} charged")
        self.used[resource] = left

    def spend_compile(self, nbytes: int, now_s: float) -> None:
        """Take nbytes from the compile budget (refilled at compile_bytes_per_s, holding at
        most COMPILE_BURST_S seconds' worth); EQUOTA naming the rate when it is spent."""
        rate = self.limits.compile_bytes_per_s
        self.compile_credit = min(rate * COMPILE_BURST_S,
                                  self.compile_credit + (now_s - self.compile_t) * rate)
        self.compile_t = now_s
        if nbytes > self.compile_credit:
            raise ServiceError(Err.QUOTA, f"compile_bytes_per_s {rate} (a contract of "
                                          f"{nbytes} bytes; {int(self.compile_credit)} left)")
        self.compile_credit -= nbytes

    def refused(self, now_s: float) -> float:
        """Count one EQUOTA answer; return how long to hold it back in ms (0: answer now).
        The first refusal after a quiet REFUSAL_WINDOW_S is answered at once."""
        self.refusals = self.refusals + 1 if now_s - self.refused_t < REFUSAL_WINDOW_S else 1
        self.refused_t = now_s
        if self.refusals == 1:
            return 0.0
        return min(REFUSAL_DELAY_MAX_MS, REFUSAL_DELAY_MS * 2.0 ** min(self.refusals - 2, 20))

    def usage(self) -> dict[str, Any]:
        """Usage and limits as one JSON-able map (ps, stats)."""
        return {str(r): [self.used[r], getattr(self.limits, r)] for r in Resource}

    def idle(self) -> bool:
        """True when nothing is charged."""
        return not any(self.used.values())


def limits_from(values: dict[str, int]) -> Limits:
    """Limits with the given overrides (names as in Resource); EINVAL for unknown names or
    negative values (for an operator's service table)."""
    known = {f.name for f in fields(Limits)}
    for name, value in values.items():
        if name not in known or not isinstance(value, int) or isinstance(value, bool) \
                or value < 0:
            raise ServiceError(Err.INVAL, f"quota: bad limit {name!r}={value!r}")
    return Limits(**values)
