"""IPC as a sealed process sees it: endpoints, calls, receives, replies, and names.

    h = proc.endpoint(ECHO_CONTRACT)                  # serve: create an endpoint ...
    proc.register_name("echo", h)                     # ... and publish it with init
    rcv = proc.receive(h)                             # block until a call arrives
    while True:
        rcv = proc.reply(rcv, {"kind": "echo", "data": rcv.msg["data"]}, receive=h)

    echo = proc.lookup("echo")                        # a client: ask init for the capability
    reply, caps = proc.call(echo, {"kind": "echo", "data": b"hi"})

Messages are dicts with a ``kind``; they travel as msgpack and the kernel checks them against
the endpoint's contract before delivery.  Handles are this process's capability numbers;
handle 0 is the name service.  Errors are the runtime's exceptions (PeerDied,
ContractViolation, BadHandle, MessageTooLarge, PermissionDenied ...), mapped in errors.py.

A page grant (``grant=(addr, npages)``) moves pages to the receiver: the TLB entries of the
range are dropped here *before* the call goes out (the kernel then shoots the resident pages
down and takes them), and after the call the range is forgotten: touching it again is a
SegmentationFault.
"""
from __future__ import annotations

import fnmatch
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgpack

from apps.runtime.errors import KernelProtocolError, NotFound, from_reply

if TYPE_CHECKING:
    from apps.runtime.mmu import Mmu
    from apps.runtime.syscall import KernelLink

#: Every process's handle for init's name-service endpoint.
NAMESERVICE: int = 0
NAME_MAX_BYTES: int = 64
#: How often lookup(wait_s=...) asks again for a name not registered yet.
LOOKUP_RETRY_S: float = 0.1

#: The name service's protocol (init serves it; the kernel checks it).
NAMESERVICE_CONTRACT: dict[str, Any] = {
    "name": "names",
    "calls": {
        "register": {"fields": {"name": {"type": "str", "max_len": NAME_MAX_BYTES}}, "caps": 1},
        "lookup": {"fields": {"name": {"type": "str", "max_len": NAME_MAX_BYTES}}},
        "list": {},
    },
    "replies": {
        "ok": {},
        "found": {"caps": 1},
        "names": {"fields": {"names": {"type": "list", "max_len": 256,
                                       "items": {"type": "str", "max_len": NAME_MAX_BYTES}}}},
        "refused": {"fields": {"code": {"type": "str", "max_len": 16},
                               "reason": {"type": "str", "max_len": 256}}},
    },
}


@dataclass(slots=True, frozen=True)
class Sender:
    """Who sent a call, as the kernel stamped it (never as the message claims)."""
    spid: int
    name: str
    program: str
    digest: str
    manifest: tuple[str, ...]
    provides: tuple[str, ...] = ()


@dataclass(slots=True)
class Received:
    """One call delivered to this process: answer it with reply(received, msg)."""
    call: int
    msg: dict[str, Any]
    sender: Sender
    caps: list[int]
    grant_addr: int | None = None
    grant_npages: int = 0

    @property
    def kind(self) -> str:
        """The message's kind."""
        kind: str = self.msg["kind"]
        return kind


def pack(msg: dict[str, Any]) -> bytes:
    """A message as its wire payload."""
    payload: bytes = msgpack.packb(msg, use_bin_type=True)
    return payload


#: msgpack >= 1.0's defaults (raw=False): no keyword arguments to parse per message.
_unpackb = msgpack.unpackb


def unpack(payload: Any) -> dict[str, Any]:
    """A payload from the kernel as a message map; KernelProtocolError if it is not one."""
    try:
        msg = _unpackb(payload)
    except Exception as exc:  # msgpack raises several unrelated types
        raise KernelProtocolError(f"ipc: undecodable message ({type(exc).__name__})") from None
    if msg.__class__ is not dict:
        raise KernelProtocolError("ipc: a message must be a map")
    return msg


def allowed(manifest: Iterable[str], name: str) -> bool:
    """True when `name` matches an entry of `manifest` (shell patterns: plugin.*)."""
    return any(fnmatch.fnmatchcase(name, pat) for pat in manifest)


#: Senders already seen, by spid (spids are never reused, and a stamp never changes).
_SENDERS: dict[int, Sender] = {}
SENDERS_KEEP: int = 4096


def received(reply: dict[str, Any]) -> Received:
    """A RECEIVE reply as a Received; KernelProtocolError when it is malformed."""
    s: Any = reply.get("sender")            # None or malformed: caught below
    try:
        sender = _SENDERS.get(s["spid"])
        if sender is None:
            if len(_SENDERS) >= SENDERS_KEEP:
                _SENDERS.clear()
            sender = _SENDERS[s["spid"]] = Sender(s["spid"], s["name"], s["program"],
                                                  s["digest"], tuple(s["manifest"]),
                                                  tuple(s.get("provides") or ()))
        return Received(reply["call"], unpack(reply["msg"]), sender, reply.get("caps") or [],
                        reply.get("grant_addr"), reply.get("grant_npages", 0))
    except (KeyError, TypeError) as exc:
        raise KernelProtocolError(f"receive: malformed delivery ({exc})") from None


class IpcClient:
    """The IPC calls of one sealed process (SealedProcess delegates here)."""

    def __init__(self, kernel: KernelLink, mmu: Mmu) -> None:
        self.kernel = kernel
        self.mmu = mmu
        # pack() without a new Packer per message (the main thread's only: not thread-safe)
        self._pack = msgpack.Packer(use_bin_type=True).pack

    def endpoint(self, contract: dict[str, Any], nameservice: bool = False) -> int:
        """Create an endpoint with `contract`; return its handle (only this process receives)."""
        return self.kernel.endpoint(contract, nameservice)

    def call(self, handle: int, msg: dict[str, Any], caps: Iterable[int] = (),
             grant: tuple[int, int] | None = None) -> tuple[dict[str, Any], list[int]]:
        """Send msg on handle and block for the reply; return (reply msg, new cap handles)."""
        if grant is not None:
            addr, npages = grant
            self.mmu.protected(addr, npages)        # TLB entries go before the pages do
            reply = self.kernel.ipc_call(handle, self._pack(msg), list(caps),
                                         {"addr": addr, "npages": npages})
            self.mmu.unmapped(addr, npages)         # the range is the receiver's now
        else:
            reply = self.kernel.ipc_call(handle, self._pack(msg), list(caps) if caps else None,
                                         None)
        got = reply.get("caps")
        return unpack(reply["msg"]), got if got.__class__ is list else list(got or ())

    def receive(self, handle: int) -> Received:
        """Block until a call arrives on `handle` (an endpoint of this process)."""
        return received(self.kernel.ipc_receive(handle))

    def reply(self, call: Received | int, msg: dict[str, Any], caps: Iterable[int] = (),
              receive: int | None = None) -> Received | None:
        """Answer `call`; with receive=handle, then block for the next call and return it."""
        cid = call.call if isinstance(call, Received) else call
        reply = self.kernel.ipc_reply(cid, self._pack(msg), list(caps) if caps else None,
                                      receive)
        return received(reply) if receive is not None else None

    def cap_close(self, handle: int) -> None:
        """Drop a handle (closing an own endpoint's handle destroys the endpoint)."""
        self.kernel.cap_close(handle)

    # -- names ---------------------------------------------------------------------------
    def lookup(self, name: str, wait_s: float = 0.0) -> int:
        """The capability registered under `name` (PermissionDenied outside the manifest);
        a name not registered yet is asked for again for up to wait_s, then NotFound."""
        deadline = time.monotonic() + wait_s
        while True:
            try:                                # NotFound here: init is not up yet
                reply, caps = self.call(NAMESERVICE, {"kind": "lookup", "name": name})
            except NotFound as exc:
                err: Exception = exc
            else:
                if reply.get("kind") == "found" and len(caps) == 1:
                    return caps[0]
                err = self._refused(reply, f"lookup {name!r}")
            if not isinstance(err, NotFound) or time.monotonic() >= deadline:
                raise err
            time.sleep(LOOKUP_RETRY_S)

    def register_name(self, name: str, handle: int) -> None:
        """Publish endpoint `handle` under `name` with init."""
        reply, _ = self.call(NAMESERVICE, {"kind": "register", "name": name}, caps=[handle])
        if reply.get("kind") != "ok":
            raise self._refused(reply, f"register {name!r}")

    def names(self) -> list[str]:
        """The registered names this process's manifest lets it see."""
        reply, _ = self.call(NAMESERVICE, {"kind": "list"})
        if reply.get("kind") != "names":
            raise self._refused(reply, "list")
        return list(reply["names"])

    def _refused(self, reply: dict[str, Any], what: str) -> Exception:
        """The exception for init's refusal (the same codes as the kernel's errors)."""
        code = str(reply.get("code", "EINVAL"))
        return self.kernel.named(from_reply({"err": code, "msg": f"{what}: refused by init: "
                                             f"{reply.get('reason', '')}"}, what))
