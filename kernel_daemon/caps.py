"""Capabilities: endpoints as kernel objects, and each process's table of handles to them.

Like file descriptors, a handle is a small integer that means something only in the table of
the process holding it.  Unlike file descriptors, handles are never reused: the table counts
up, so a closed handle is *stale* forever, and a number the table never issued is *forged*;
both are refused with EBADHANDLE, and no handle can come to mean a different endpoint.
Handle 0 of every process is the name service (init's endpoint), resolved through the
``root`` the caller passes in, so a process registered before init needs no fix-up.

A capability moves only inside a message: the kernel resolves the sender's handles
(:meth:`CapTable.collect`) and mints fresh ones in the receiver's table (:meth:`CapTable.mint`).
The records of what a process is blocked on live here too, since they die with the table;
the IPC path that uses them is :mod:`kernel_daemon.ipc`.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kernel_daemon.contract import Contract
from kernel_daemon.proc import Proc
from kernel_daemon.quota import Resource
from wire.protocol import Err, ServiceError, encode
from wire.server import Request

if TYPE_CHECKING:
    from kernel_daemon.ipc import Call

#: Handle 0 of every process: init's name-service endpoint.
NAMESERVICE_HANDLE: int = 0
MAX_CAPS_PER_MSG: int = 16


@dataclass(slots=True, eq=False)
class Endpoint:
    """A kernel object its owner RECEIVEs on and capability holders CALL."""
    eid: int
    owner: Proc
    contract: Contract
    owner_handle: int
    queue: deque[Call] = field(default_factory=deque)
    waiter: Request | None = None        # the owner's RECEIVE waiting here
    chans: dict[int, str] = field(default_factory=dict)   # caller spid -> channel state
    alive: bool = True
    death: str = ""
    calls: int = 0
    bytes: int = 0

    def record(self) -> dict[str, Any]:
        """The endpoint as one JSON-able map (stats, metrics)."""
        return {"eid": self.eid, "contract": self.contract.name, "owner": self.owner.spid,
                "owner_name": self.owner.name, "alive": self.alive, "queued": len(self.queue),
                "calls": self.calls, "bytes": self.bytes}


@dataclass(slots=True, eq=False)
class CapTable:
    """One process's handles and endpoints, and what it is blocked on."""
    proc: Proc
    stamp: bytes                  # identity stamped on its calls, msgpack-encoded once
    handles: dict[int, Endpoint] = field(default_factory=dict)
    next_handle: int = 1
    owned: list[Endpoint] = field(default_factory=list)
    serving: dict[int, Call] = field(default_factory=dict)  # delivered, awaiting REPLY
    calling: Call | None = None
    receiving: Endpoint | None = None
    chans_on: set[int] = field(default_factory=set)          # eids where it has a channel

    @classmethod
    def of(cls, proc: Proc) -> CapTable:
        """An empty table for proc, with the identity the kernel bound at REGISTER (encoded
        here once: every call it makes is delivered with it, unchanged)."""
        return cls(proc, encode({"spid": proc.spid, "name": proc.name, "program": proc.program,
                                 "digest": proc.digest, "manifest": list(proc.manifest),
                                 "provides": list(proc.provides)}))

    def lookup(self, handle: int, root: Endpoint | None) -> Endpoint:
        """The endpoint `handle` names here (0: root); EBADHANDLE if forged or stale."""
        ep = self.handles.get(handle)
        if ep is not None:
            return ep
        if handle == NAMESERVICE_HANDLE:
            if root is None:
                raise ServiceError(Err.NOENT, "handle 0: the name service is not running yet")
            return root
        if 0 < handle < self.next_handle:
            raise ServiceError(Err.BADHANDLE, f"handle {handle} is stale: it was closed")
        raise ServiceError(Err.BADHANDLE, f"handle {handle} was never issued to this process")

    def mint(self, ep: Endpoint, force: bool = False) -> int:
        """A new handle for `ep` here, charged to the process's capabilities quota (EQUOTA
        when full; force: past the limit, for capabilities whose move was checked earlier
        and can no longer be refused)."""
        if force:
            self.proc.quota.force(Resource.CAPABILITIES, 1)
        else:
            self.proc.quota.charge(Resource.CAPABILITIES, 1)
        h = self.next_handle
        self.next_handle += 1
        self.handles[h] = ep
        return h

    def drop(self, handle: int) -> None:
        """Remove `handle` from the table and release its charge."""
        del self.handles[handle]
        self.proc.quota.release(Resource.CAPABILITIES, 1)

    def drop_all(self) -> None:
        """Remove every handle (the process is gone) and release their charges."""
        self.proc.quota.release(Resource.CAPABILITIES, len(self.handles))
        self.handles.clear()

    def owned_by_me(self, handle: int, root: Endpoint | None) -> Endpoint:
        """The endpoint this process owns under `handle` (EPERM for anyone else's)."""
        ep = self.lookup(handle, root)
        if ep.owner is not self.proc:
            raise ServiceError(Err.PERM, f"handle {handle}: only the endpoint's owner may "
                                         f"receive on it")
        return ep

    def collect(self, raw: object, root: Endpoint | None) -> list[Endpoint]:
        """The endpoints a message's `caps` handles name; EBADHANDLE/EINVAL otherwise."""
        if raw is None:
            return []
        if not isinstance(raw, list) or len(raw) > MAX_CAPS_PER_MSG:
            raise ServiceError(Err.INVAL, f"caps must be a list of at most {MAX_CAPS_PER_MSG} "
                                          f"handles")
        out = []
        for h in raw:
            if not isinstance(h, int) or isinstance(h, bool):
                raise ServiceError(Err.BADHANDLE, f"capability {str(h)[:20]!r} is not a handle")
            out.append(self.lookup(h, root))
        return out
