"""The process table: every sealed process the kernel knows, how to reach it, and its counters.

Identity is issued, never claimed.  The trusted launcher ADMITs a process before it runs: it
names the program, the digest of the code it starts, the manifest, quota and role (from the
operator's service table) and, on the kernel's host, the host process (pid and start time).
The kernel answers with a one-time credential, which the launcher hands the process through
an inherited descriptor.  The process REGISTERs on its *call* connection with it and gets a
sealed pid and a secret; it then binds its *control* connection with ATTACH, proving the
secret.  From then on the kernel knows which process sent every message by the connection it
came on (and, on CURVE, the key that connection authenticated): a process cannot speak as
another, nor say what it is.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kernel_daemon.pagetable import AddressSpace, Pte, SwapSpace
from kernel_daemon.prefetch import Trend
from kernel_daemon.quota import Quota, limits_from
from wire import entropy
from wire.protocol import Err, ServiceError
from wire.server import Panic, Request

#: How many exited processes' final records the kernel keeps for stats.
EXITED_KEEP: int = 1000

COUNTERS: tuple[str, ...] = (
    "minor_faults", "major_faults", "page_ins", "page_outs", "evictions",
    "integrity_failures", "ipc_calls_out", "ipc_calls_in", "ipc_bytes_out", "ipc_bytes_in",
    "pages_granted")


class ProcState(StrEnum):
    """What a sealed process is doing, as ps shows it."""
    RUNNING = "running"
    FAULT = "blocked on fault"
    CALL = "blocked on call"
    RECEIVE = "blocked on receive"
    EXITED = "exited"
    KILLED = "killed"


#: How long an admission waits for its REGISTER before it lapses.
ADMIT_TTL_MS: int = 30000
#: Most admissions waiting for their REGISTER at once (the launcher is trusted; this bounds a bug).
MAX_ADMISSIONS: int = 4096


@dataclass(slots=True)
class Admission:
    """What the launcher vouched for a process it is starting; claimed by one REGISTER."""
    name: str
    program: str
    digest: str
    role: str                            # "app" or "init"
    manifest: list[str]
    provides: list[str]
    quota: dict[str, int]
    hostpid: int                         # 0: not on the kernel's host
    started: float                       # the host process's start time (psutil create_time)
    host: str                            # the launcher's host (display, health checks)
    expires_s: float


@dataclass(slots=True)
class Proc:
    """One sealed process: identity, connections, address space, swap handles, counters."""
    spid: int
    name: str
    program: str
    digest: str
    host: str                            # the kernel's host name when hostpid is set, else ""
    hostpid: int                         # from the launcher's ADMIT, never from the process
    host_started: float                  # that host process's start time (the same process?)
    key: str                             # the credential's public key
    role: str
    provides: list[str]
    quota_spec: dict[str, int]
    call_peer: bytes
    secret: bytes
    space: SwapSpace                     # where this process's pages are sealed and stored
    manifest: list[str]
    ctrl_peer: bytes | None = None
    aspace: AddressSpace = field(default_factory=AddressSpace)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    report: dict[str, Any] = field(default_factory=dict)
    state: ProcState = ProcState.RUNNING
    alive: bool = True
    exit_reason: str = ""
    started: float = field(default_factory=time.time)
    last_heard: float = field(default_factory=time.monotonic)
    resident: int = 0
    swapped: int = 0
    quota: Quota = field(default_factory=Quota)   # limits and usage of kernel objects
    trend: Trend | None = None                    # its prefetch detector (vm.py, prefetch.py)
    prefetched: dict[int, Pte] = field(default_factory=dict)   # read ahead, unused: oldest first

    def is_local(self) -> bool:
        """True when the launcher told the kernel this process's host pid (psutil can watch it)."""
        return self.hostpid > 0

    def record(self) -> dict[str, Any]:
        """The process as one JSON-able map (ps, stats, the launcher's summary)."""
        out: dict[str, Any] = {
            "spid": self.spid, "name": self.name, "program": self.program, "role": self.role,
            "host": self.host, "hostpid": self.hostpid, "host_started": self.host_started,
            "digest": self.digest, "state": str(self.state), "resident_pages": self.resident,
            "swapped_pages": self.swapped, "exit_reason": self.exit_reason,
            "checksum": self.report.get("checksum"), "report": dict(self.report),
            "quota": self.quota.usage()}
        out.update(self.counters)
        out["faults"] = self.counters["minor_faults"] + self.counters["major_faults"]
        return out


class ProcTable:
    """Live processes by spid and by connection, plus the records of exited ones."""

    def __init__(self) -> None:
        self.by_spid: dict[int, Proc] = {}
        self.by_peer: dict[bytes, Proc] = {}
        self.by_key: dict[str, Proc] = {}
        self.admissions: dict[str, Admission] = {}      # credential public key -> admission
        self.exited: deque[dict[str, Any]] = deque(maxlen=EXITED_KEEP)
        self._next = 1

    def admit(self, key: str, adm: Admission) -> None:
        """Hold `adm` for the one REGISTER proving credential `key` (lapsed ones are dropped)."""
        self.expire_admissions(adm.expires_s - ADMIT_TTL_MS / 1000)
        if len(self.admissions) >= MAX_ADMISSIONS:
            raise ServiceError(Err.QUOTA, f"EQUOTA: admissions {len(self.admissions)}/"
                                          f"{MAX_ADMISSIONS} waiting for their REGISTER")
        self.admissions[key] = adm

    def expire_admissions(self, now_s: float) -> None:
        """Forget admissions whose REGISTER did not come in time."""
        for key in [k for k, a in self.admissions.items() if a.expires_s <= now_s]:
            del self.admissions[key]

    def register(self, peer: bytes, key: str, host: str) -> Proc:
        """Create the process that credential `key` admits, bound to call connection `peer`;
        the admission is used up.  EPERM when there is none (used, lapsed or forged)."""
        adm = self.admissions.pop(key, None)
        if adm is None:
            raise ServiceError(Err.PERM, "register: this credential admits no process (it was "
                                         "never issued, is used up, or lapsed)")
        proc = Proc(spid=self._next, name=adm.name, program=adm.program, digest=adm.digest,
                    host=host if adm.hostpid > 0 else adm.host, hostpid=adm.hostpid,
                    host_started=adm.started, key=key, role=adm.role, provides=adm.provides,
                    quota_spec=adm.quota, call_peer=peer, secret=entropy.token_bytes(16),
                    space=SwapSpace(entropy.token_bytes(16), f"{adm.name[:24]}#{self._next}"),
                    manifest=adm.manifest, quota=Quota(limits_from(adm.quota)))
        self._next += 1
        self.by_spid[proc.spid] = proc
        self.by_peer[peer] = proc
        self.by_key[key] = proc
        return proc

    def attach(self, proc: Proc, peer: bytes) -> None:
        """Bind the control connection `peer` to proc."""
        proc.ctrl_peer = peer
        self.by_peer[peer] = proc

    def retire(self, proc: Proc) -> None:
        """Forget a dead process's connections, keeping its final record."""
        self.by_spid.pop(proc.spid, None)
        self.by_peer.pop(proc.call_peer, None)
        if self.by_key.get(proc.key) is proc:
            del self.by_key[proc.key]
        if proc.ctrl_peer is not None:
            self.by_peer.pop(proc.ctrl_peer, None)
        self.exited.append(proc.record())


def caller(req: Request) -> Proc:
    """The process the kernel's check_caller bound to `req` (by its connection); a Panic if
    there is none (an op from ANYONE reached a handler that needs a process)."""
    proc = req.caller
    if not isinstance(proc, Proc):
        raise Panic(f"{req.op}: no registered process behind this request")
    return proc
