"""The trap table: the ONE module through which an app reaches the kernel.

Like curio's ``traps.py``, everything an app asks of the kernel funnels through here: this
module owns the *call* connection (a DEALER socket to the kernel), turns every syscall into
one request and its reply, and turns every error reply into a :class:`SealedError` (through
:func:`errors.from_reply`, the one mapping).  It also opens and ATTACHes the *control*
connection, which the control thread then serves (:mod:`control`); nothing else in ``apps/``
opens a socket to the kernel.

Waiting
-------
Syscalls wait for their reply with no timeout: a major fault may wait for a pager to be
restarted, an IPC call for a server.  What ends a wait is the kernel's death: the control
thread watches the kernel's liveness (:class:`Liveness`) and, once it declares the kernel
dead, every wait here raises :class:`KernelUnreachable`.  Only REGISTER and ATTACH, sent
before there is a control thread, and EXIT, sent on the way out, have timeouts of their own.
"""
from __future__ import annotations

import itertools
import os
import threading
import time
from typing import Any

import msgpack
import zmq

from apps.runtime.errors import KernelProtocolError, KernelUnreachable, SealedError, from_reply
from wire import keys as wkeys
from wire import sockets
from wire.keys import Keypair
from wire.protocol import MAX_FRAME_BYTES, PAGE_SIZE, Op

#: A ZeroMQ socket of bytes frames, and a context making them (pyzmq's generic types).
Socket = zmq.Socket[bytes]
Context = zmq.Context[Socket]

#: The kernel is declared dead when it has answered nothing for this long.
KERNEL_DEAD_MS: int = 10000
#: How often a waiting syscall looks at the liveness verdict.
WAIT_SLICE_MS: int = 100
#: How long EXIT waits for its acknowledgement (the process is leaving anyway).
EXIT_WAIT_MS: int = 2000

KERNEL_ADDR_ENV: str = "SEALEDOS_KERNEL_ADDR"
#: Each op's wire name as a plain str (what msgpack packs fastest).
_OP_NAMES: dict[Op, str] = {op: op.value for op in Op}
_FAULT: str = _OP_NAMES[Op.FAULT]
#: msgpack >= 1.0's defaults are the protocol's (raw=False, strict_map_key=True); no
#: keyword arguments to parse per frame.
_unpackb = msgpack.unpackb
#: The kernel's z85 public key, if given directly (else KEYS/public/kernel.key).
KERNEL_KEY_ENV: str = wkeys.KERNEL_KEY_ENV


def kernel_public_from_env() -> bytes | None:
    """The kernel's CURVE public key from the environment: SEALEDOS_KERNEL_KEY, else the
    keys directory SEALEDOS_KEYS names; None with SEALEDOS_INSECURE=1 or neither (NULL: a
    secure kernel will refuse the handshake)."""
    if wkeys.insecure_from_env():
        return None
    if os.environ.get(KERNEL_KEY_ENV):
        return os.environ[KERNEL_KEY_ENV].encode("ascii")
    keys_dir = os.environ.get(wkeys.KEYS_ENV)
    return wkeys.load_public(keys_dir, "kernel") if keys_dir else None


class Liveness:
    """When the kernel was last heard from, and whether it has been declared dead.

    The control thread calls heard() and alone decides the kernel is dead; the main thread
    only counts the replies it receives (``replies += 1``: no clock read per syscall), and
    silent_ms() turns a changed count into "heard now" -- at most one control-thread turn
    (POLL_SLICE_MS) late, against a verdict of KERNEL_DEAD_MS."""

    def __init__(self) -> None:
        self.last_heard_s = time.monotonic()
        self.dead = threading.Event()
        self.reason = ""
        #: Replies the main thread has received (written by the main thread only).
        self.replies = 0
        self._replies_seen = 0

    def heard(self) -> None:
        """Any message arrived from the kernel (control thread)."""
        self.last_heard_s = time.monotonic()

    def silent_ms(self) -> float:
        """Milliseconds since the kernel last said anything (control thread)."""
        now = time.monotonic()
        if self.replies != self._replies_seen:
            self._replies_seen = self.replies
            self.last_heard_s = now
        return (now - self.last_heard_s) * 1000.0

    def declare_dead(self, reason: str) -> None:
        """Give up on the kernel: every syscall wait ends with KernelUnreachable."""
        self.reason = reason
        self.dead.set()


def _dealer(ctx: Context, addr: str, keypair: Keypair | None,
            kernel_public: bytes | None) -> Socket:
    """A DEALER socket connected to the kernel (CURVE with `keypair`, NULL without)."""
    return sockets.dealer(ctx, addr, keypair, kernel_public)


class KernelLink:
    """The call connection to the kernel: one syscall at a time, from the main thread only."""

    def __init__(self, addr: str, ctx: Context | None = None,
                 keypair: Keypair | None = None, kernel_public: bytes | None = None) -> None:
        """Connect to the kernel at `addr`: CURVE with `keypair` (both connections) and the
        kernel's public key, or NULL when keypair is None (an insecure kernel)."""
        if not addr:
            raise KernelUnreachable(f"no kernel address: pass --kernel or set {KERNEL_ADDR_ENV}")
        self.addr = addr
        self.ctx = ctx or zmq.Context.instance()
        self.keypair, self.kernel_public = keypair, kernel_public
        self.sock = _dealer(self.ctx, addr, keypair, kernel_public)
        self.liveness = Liveness()
        self.name = "?"
        self.spid = 0
        self._rids = itertools.count(1)
        self.closed = False
        self._rcvtimeo: dict[Socket, int] = {}     # the RCVTIMEO each socket has now
        # this link's packer (the main thread's only: a Packer is not thread-safe)
        self._pack = msgpack.Packer(use_bin_type=True).pack

    # -- the one request/reply --------------------------------------------------------
    #
    # Every IPC round trip passes here twice (in its client and in its server), so the path
    # is kept short: one dict per request (the op's fields, then op and rid), packed by
    # this link's own msgpack Packer (msgpack.packb builds a new one per call), one recv
    # that usually returns the reply, and no clock read (Liveness counts replies instead).
    # The replies are the kernel's; what is checked here is only what this side relies on
    # (a map, the rid, err): every check that matters is the kernel's.

    def call(self, op: Op, timeout_ms: int | None = None, **fields: Any) -> dict[str, Any]:
        """Send one request and wait for its reply; raise the mapped SealedError on error.

        timeout_ms None waits until the reply or until the kernel is declared dead."""
        return self._call(op, fields, timeout_ms)

    def _call(self, op: Op, fields: dict[str, Any],
              timeout_ms: int | None = None) -> dict[str, Any]:
        """call() with the fields as a dict (it becomes the request: op and rid are added)."""
        if self.closed:
            raise self._named(KernelUnreachable(f"{op}: the connection to the kernel is closed"))
        return self._request(self.sock, op, timeout_ms, fields)

    def _request(self, sock: Socket, op: Op, timeout_ms: int | None,
                 fields: dict[str, Any]) -> dict[str, Any]:
        """One request/reply on `sock` (`fields` becomes the request); errors become
        SealedErrors."""
        rid = next(self._rids)
        fields["op"] = _OP_NAMES[op]
        fields["rid"] = rid
        sock.send(self._pack(fields))
        reply = self._wait(sock, op, rid, timeout_ms)
        if "err" in reply:
            raise self._named(from_reply(reply, str(op)))
        return reply

    def _wait(self, sock: Socket, op: Op, rid: int, timeout_ms: int | None) -> dict[str, Any]:
        """The reply to `rid` (stale replies skipped); KernelUnreachable on timeout or death.

        A reply already received wins over a death verdict reached meanwhile."""
        if timeout_ms is None and self._rcvtimeo.get(sock) == WAIT_SLICE_MS:
            try:                         # the usual case: the reply comes within a slice
                frame = sock.recv()
            except zmq.Again:
                pass
            else:
                reply = self._decode(frame, op)
                self.liveness.replies += 1
                if reply.get("re") == rid:
                    return reply
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000.0
        while True:
            slice_ms = WAIT_SLICE_MS
            if deadline is not None:
                left_ms = (deadline - time.monotonic()) * 1000.0
                if left_ms <= 0:
                    raise self._named(KernelUnreachable(
                        f"{op}: no answer from the kernel at {self.addr} in {timeout_ms} ms"))
                slice_ms = max(1, min(slice_ms, int(left_ms)))
            if self._rcvtimeo.get(sock) != slice_ms:
                sock.setsockopt(zmq.RCVTIMEO, slice_ms)
                self._rcvtimeo[sock] = slice_ms
            try:
                # A recv with a timeout costs less CPU than poll() then recv(): every
                # IPC round trip passes here twice (client and server).
                frame = sock.recv()
            except zmq.Again:
                if self.liveness.dead.is_set():
                    raise self._named(KernelUnreachable(
                        f"{op}: the kernel is unreachable ({self.liveness.reason})")) from None
                continue
            reply = self._decode(frame, op)
            self.liveness.replies += 1
            if reply.get("re") == rid:
                return reply

    def _decode(self, frame: bytes, op: Op) -> dict[str, Any]:
        """A frame from the kernel as a map; KernelProtocolError if it is not one."""
        if len(frame) > MAX_FRAME_BYTES:
            raise self._named(KernelProtocolError(f"{op}: a {len(frame)}-byte frame from the "
                                                  f"kernel"))
        try:
            reply = _unpackb(frame)
        except Exception as exc:  # msgpack raises several unrelated types
            raise self._named(KernelProtocolError(
                f"{op}: bad frame from the kernel: {type(exc).__name__}")) from None
        if reply.__class__ is not dict:
            raise self._named(KernelProtocolError(f"{op}: bad frame from the kernel: "
                                                  f"{type(reply).__name__}, not a map"))
        return reply

    def _named(self, exc: SealedError) -> SealedError:
        """Tag an exception with this process's name (for the launcher's message)."""
        exc.process_name = self.name
        return exc

    # -- the syscalls -------------------------------------------------------------------
    def register(self, cred: bytes) -> dict[str, Any]:
        """REGISTER with the credential the launcher handed this process; return {spid,
        secret, name, role, nframes, page_size}.

        Everything the kernel knows about this process (name, program, digest, manifest,
        role) it got from the launcher for this credential, not from here."""
        # on CURVE the connection's key is the credential: it is never sent, even encrypted
        proof = {} if self.keypair is not None else {"cred": cred}
        reply = self.call(Op.REGISTER, timeout_ms=KERNEL_DEAD_MS, **proof)
        for key, typ in (("spid", int), ("secret", bytes), ("nframes", int), ("page_size", int),
                         ("name", str), ("role", str)):
            if not isinstance(reply.get(key), typ):
                raise self._named(KernelProtocolError(f"register: reply lacks {key!r}"))
        if reply["page_size"] != PAGE_SIZE or reply["nframes"] <= 0:
            raise self._named(KernelProtocolError(f"register: page size {reply['page_size']} "
                                                  f"/ {reply['nframes']} frames unsupported"))
        self.spid = reply["spid"]
        self.name = reply["name"]
        return reply

    def map(self, addr: int, npages: int, prot: int) -> int:
        """MAP a region of npages at addr (0: the kernel chooses); return its address."""
        reply = self.call(Op.MAP, addr=addr, npages=npages, prot=prot)
        start = reply.get("addr")
        if not isinstance(start, int):
            raise self._named(KernelProtocolError("map: reply lacks 'addr'"))
        return start

    def unmap(self, addr: int, npages: int) -> None:
        """UNMAP a range."""
        self.call(Op.UNMAP, addr=addr, npages=npages)

    def protect(self, addr: int, npages: int, prot: int) -> None:
        """PROTECT a range with new permissions."""
        self.call(Op.PROTECT, addr=addr, npages=npages, prot=prot)

    def fault(self, vpn: int, access: str, refs: list[int]) -> dict[str, Any]:
        """FAULT on vpn; the reply says which frame, with which prot, filled how.

        _call and _request inlined: a minor fault is the syscall a program makes most."""
        if self.closed:
            return self._call(Op.FAULT, {})              # (raises KernelUnreachable)
        rid = next(self._rids)
        self.sock.send(self._pack({"vpn": vpn, "access": access, "refs": refs,
                                   "op": _FAULT, "rid": rid}))
        reply = self._wait(self.sock, Op.FAULT, rid, None)
        if "err" in reply:
            raise self._named(from_reply(reply, _FAULT))
        return reply

    def report(self, data: dict[str, Any]) -> None:
        """REPORT app-level results."""
        self.call(Op.REPORT, data=data)

    def exit(self, status: int) -> None:
        """EXIT (best effort: the process leaves whatever the kernel answers)."""
        if self.closed or self.liveness.dead.is_set():
            return
        try:
            self.call(Op.EXIT, timeout_ms=EXIT_WAIT_MS, status=status)
        except SealedError:
            pass

    # -- IPC (the message layer is apps.runtime.ipc) ------------------------------------
    def endpoint(self, contract: dict[str, Any], nameservice: bool = False) -> int:
        """ENDPOINT with a contract; return its handle."""
        extra = {"nameservice": True} if nameservice else {}
        reply = self.call(Op.ENDPOINT, contract=contract, **extra)
        handle = reply.get("handle")
        if not isinstance(handle, int):
            raise self._named(KernelProtocolError("endpoint: reply lacks 'handle'"))
        return handle

    def ipc_call(self, handle: int, msg: bytes, caps: list[int] | None,
                 grant: dict[str, int] | None) -> dict[str, Any]:
        """CALL: send msg (a packed message) on handle and block for {msg, caps}."""
        fields: dict[str, Any] = {"handle": handle, "msg": msg}
        if caps:
            fields["caps"] = caps
        if grant is not None:
            fields["grant"] = grant
        return self._call(Op.CALL, fields)

    def ipc_receive(self, handle: int) -> dict[str, Any]:
        """RECEIVE on an own endpoint: block for {call, msg, sender, caps[, grant_addr]}."""
        return self._call(Op.RECEIVE, {"handle": handle})

    def ipc_reply(self, call: int, msg: bytes, caps: list[int] | None,
                  receive: int | None) -> dict[str, Any]:
        """REPLY to a received call; with receive, block for the next call as RECEIVE does."""
        fields: dict[str, Any] = {"call": call, "msg": msg}
        if caps:
            fields["caps"] = caps
        if receive is not None:
            fields["receive"] = receive
        return self._call(Op.REPLY, fields)

    def cap_close(self, handle: int) -> None:
        """CAP_CLOSE a handle."""
        self.call(Op.CAP_CLOSE, handle=handle)

    def named(self, exc: SealedError) -> SealedError:
        """exc tagged with this process's name (for errors raised above this module)."""
        return self._named(exc)

    # -- connections --------------------------------------------------------------------
    def attach_control(self, spid: int, secret: bytes) -> Socket:
        """Open the control connection and ATTACH it; the control thread serves it after."""
        sock = _dealer(self.ctx, self.addr, self.keypair, self.kernel_public)
        try:
            self._request(sock, Op.ATTACH, KERNEL_DEAD_MS, {"spid": spid, "secret": secret})
        except BaseException:
            sock.close(0)
            raise
        return sock

    def close(self) -> None:
        """Close the call connection."""
        if not self.closed:
            self.closed = True
            self.sock.close(0)
