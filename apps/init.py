"""init: the trusted first sealed process, and the name service.

    sealedos run init --kernel ADDR          (the launcher admits it with role init)

The system starts init right after the kernel, before any app (System, `sealedos up`, and
its own container in compose).  The launcher admits it with the role the service table gives
program ``init``, so the kernel knows it is init without any secret of init's own; the
endpoint it then creates with ``nameservice`` becomes handle 0 of every process.

The names protocol (apps.runtime.ipc.NAMESERVICE_CONTRACT):

* ``register {name}`` + one capability: publish an endpoint, if the caller's ``provides``
  (from the service table, stamped by the kernel) lists the name.  A free name is taken; a
  name already held is given to a new holder only if it runs the same program with the same
  digest (a restarted service takes its name back); anyone else is refused (EPERM).
* ``lookup {name}``: the capability, if the caller's manifest lists the name (shell
  patterns, e.g. ``plugin.*``); otherwise ``refused {code: EPERM}`` -- the closed API: an
  app reaches only what it declared at REGISTER, and the kernel, not the app, tells init
  what that was.  An unknown name is ``refused {code: ENOENT}``.
* ``list``: the registered names the caller's manifest covers.

init never dies of a client: every request is answered or refused, and a failed reply is
logged and forgotten.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

import msgpack

from apps.runtime import SealedError, SealedProcess
from apps.runtime.app import app_parser
from apps.runtime.ipc import NAMESERVICE_CONTRACT, Received, allowed

MAX_NAMES: int = 1024


@dataclass(slots=True)
class Entry:
    """One published name: the capability and who published it."""
    handle: int
    spid: int
    program: str
    digest: str


class NameService:
    """The table of names and the answer to each request (no I/O: easy to reason about)."""

    def __init__(self) -> None:
        self.names: dict[str, Entry] = {}

    def dump(self) -> bytes:
        """The table as bytes, for the kernel to hand the next init (STASH)."""
        table: bytes = msgpack.packb({n: [e.handle, e.spid, e.program, e.digest]
                                      for n, e in self.names.items()})
        return table

    @classmethod
    def restore(cls, data: bytes) -> NameService:
        """The table a previous init stashed (its handles are ours now); empty if none."""
        ns = cls()
        if data:
            for name, (handle, spid, program, digest) in msgpack.unpackb(data).items():
                ns.names[name] = Entry(handle, spid, program, digest)
        return ns

    def handle(self, rcv: Received) -> tuple[dict[str, Any], list[int], int | None]:
        """(reply, caps to pass, handle init no longer needs) for one request."""
        kind, sender = rcv.kind, rcv.sender
        if kind == "lookup":
            name = rcv.msg["name"]
            if not allowed(sender.manifest, name):
                return _refuse("EPERM", f"{name!r} is not in the manifest of {sender.name} "
                                        f"({', '.join(sender.manifest) or 'empty'})"), [], None
            entry = self.names.get(name)
            if entry is None:
                return _refuse("ENOENT", f"no service is registered as {name!r}"), [], None
            return {"kind": "found"}, [entry.handle], None
        if kind == "register":
            return self._register(rcv)
        names = sorted(n for n in self.names if allowed(sender.manifest, n))
        return {"kind": "names", "names": names[:256]}, [], None

    def _register(self, rcv: Received) -> tuple[dict[str, Any], list[int], int | None]:
        """Publish the one capability rcv carries under its name, if the name is free or the
        caller runs the same program (and digest) as its holder."""
        name, sender = rcv.msg["name"], rcv.sender
        if len(rcv.caps) != 1:
            return _refuse("EINVAL", "register needs exactly one endpoint capability"), [], None
        if not allowed(sender.provides, name):
            return (_refuse("EPERM", f"{name!r} is not among the names program "
                                     f"{sender.program} provides "
                                     f"({', '.join(sender.provides) or 'none'})"), [], rcv.caps[0])
        old = self.names.get(name)
        if old is not None and (old.program, old.digest) != (sender.program, sender.digest):
            return (_refuse("EPERM", f"{name!r} is held by program {old.program} (spid "
                                     f"{old.spid})"), [], rcv.caps[0])
        if old is None and len(self.names) >= MAX_NAMES:
            return _refuse("ENOMEM", f"the name table is full ({MAX_NAMES})"), [], rcv.caps[0]
        self.names[name] = Entry(rcv.caps[0], sender.spid, sender.program, sender.digest)
        return {"kind": "ok"}, [], old.handle if old is not None else None


def _refuse(code: str, reason: str) -> dict[str, Any]:
    """A refusal at the message level, with the kernel's error code for the reason."""
    return {"kind": "refused", "code": code, "reason": reason[:256]}


def serve(proc: SealedProcess, handle: int) -> None:
    """Answer name-service requests forever (reply-and-receive: one syscall per request),
    starting from the names a previous init left; every change is stashed for the next."""
    ns = NameService.restore(proc.inheritance)
    rcv: Received | None = proc.receive(handle)
    while True:
        assert rcv is not None
        try:
            reply, caps, drop = ns.handle(rcv)
        except (KeyError, TypeError) as exc:          # the contract makes these impossible
            reply, caps, drop = _refuse("EINVAL", f"malformed request: {exc}"), [], None
        try:
            rcv = proc.reply(rcv, reply, caps=caps, receive=handle)
        except SealedError as exc:
            print(f"init: reply to {rcv.sender.name} failed: {exc}", file=sys.stderr, flush=True)
            rcv = proc.receive(handle)
        if drop is not None:
            _close_quietly(proc, drop)
        if reply.get("kind") == "ok":                  # a name was published: keep it safe
            proc.stash(ns.dump())


def _close_quietly(proc: SealedProcess, handle: int) -> None:
    """Drop a capability init no longer needs (it may already be gone)."""
    try:
        proc.cap_close(handle)
    except SealedError:
        pass


def build_parser() -> argparse.ArgumentParser:
    """`sealedos run init` flags."""
    p = app_parser("init", __doc__)
    return p


def main(argv: list[str]) -> int:
    """Register (the launcher admitted this process as init) and serve names until killed."""
    args = build_parser().parse_args(argv)
    with SealedProcess.connect(args.kernel) as proc:
        if proc.role != "init":
            print(f"init: the kernel registered this process as {proc.role!r}, not init "
                  f"(start it with the launcher, program init)", file=sys.stderr)
            return 2
        serve(proc, proc.endpoint(NAMESERVICE_CONTRACT, nameservice=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
