"""The process table: every sealed process the kernel knows, how to reach it, and its counters.

A process registers on its *call* connection (REGISTER) and gets a sealed pid and a secret;
it then binds its *control* connection with ATTACH, proving the secret.  From then on the
kernel knows which process sent every message by the ZeroMQ routing identity of the
connection it came on: a process cannot speak as another.
"""
from __future__ import annotations

import os
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kernel_daemon.pagetable import AddressSpace, SwapSpace
from kernel_daemon.quota import Quota

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


@dataclass(slots=True)
class Proc:
    """One sealed process: identity, connections, address space, swap handles, counters."""
    spid: int
    name: str
    program: str
    digest: str
    host: str
    hostpid: int
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

    def is_local(self, host: str) -> bool:
        """True when the process runs on the kernel's host (psutil can watch it)."""
        return self.host == host

    def record(self) -> dict[str, Any]:
        """The process as one JSON-able map (ps, stats, the launcher's summary)."""
        out: dict[str, Any] = {
            "spid": self.spid, "name": self.name, "program": self.program,
            "digest": self.digest, "host": self.host, "hostpid": self.hostpid,
            "state": str(self.state), "resident_pages": self.resident,
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
        self.exited: deque[dict[str, Any]] = deque(maxlen=EXITED_KEEP)
        self._next = 1

    def register(self, peer: bytes, fields: dict[str, Any]) -> Proc:
        """Create a process bound to the call connection `peer`."""
        proc = Proc(spid=self._next, name=fields["name"][:64], program=fields["program"][:64],
                    digest=fields["digest"][:128], host=fields["host"][:128],
                    hostpid=fields["hostpid"], call_peer=peer, secret=secrets.token_bytes(16),
                    space=SwapSpace(os.urandom(16), f"{fields['name'][:24]}#{self._next}"),
                    manifest=[str(m)[:64] for m in
                                                      fields.get("manifest", [])[:64]])
        self._next += 1
        self.by_spid[proc.spid] = proc
        self.by_peer[peer] = proc
        return proc

    def attach(self, proc: Proc, peer: bytes) -> None:
        """Bind the control connection `peer` to proc."""
        proc.ctrl_peer = peer
        self.by_peer[peer] = proc

    def retire(self, proc: Proc) -> None:
        """Forget a dead process's connections, keeping its final record."""
        self.by_spid.pop(proc.spid, None)
        self.by_peer.pop(proc.call_peer, None)
        if proc.ctrl_peer is not None:
            self.by_peer.pop(proc.ctrl_peer, None)
        self.exited.append(proc.record())
