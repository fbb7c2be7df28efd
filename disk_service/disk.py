"""The disk service: a user-mode block driver serving one device file over ZeroMQ.

Runs the shared server skeleton (wire.server) with one ROUTER socket.  Every
request names a handle by its 16-byte token (minted by the kernel and created here by OPEN;
the device file keeps only a hash of it); a handle sees only its own slots and blocks.  Ops
served:

    open  {handle, label, block_size?} -> {}         creates the handle; idempotent; label: at
                                                     most 32 bytes UTF-8, longer is EINVAL;
                                                     block_size: bytes per slot (256..4096,
                                                     default 4096; smaller slots are packed)
    close {handle}                     -> {freed}    frees every block of the handle
    write {handle, slot, data}         -> {block}    data: exactly the handle's block size
    read  {handle, slot}               -> {data}     ENOENT if the slot was never written
    free  {handle, slots}              -> {freed}    slots never written are skipped
    ping  {}                           -> {service: "disk"}
    stats {}                           -> device counters (see Device.stats)

WRITE and READ also take an optional int field `block` for raw access to an absolute block
the handle owns (EPERM otherwise).  The protocol's field table still requires `slot` on
these ops, so a raw request carries `slot` too (any int; it is ignored when `block` is set).

Who may connect (CURVE, the ZAP handler asks allow_key): disk N's pager (``pagerN``'s key)
for every op, and the launcher and observer keys for PING and STATS only; every other key is
refused at the handshake.  With ``--insecure`` (NULL, measurement only) anyone may.

Run as `sealedos disk --file FILE [--rundir DIR | --addr ADDR] [--size-mib N]
[--keys DIR --principal diskN | --insecure]`.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import zmq

from disk_service.device import Device, DeviceError
from disk_service.layout import DEFAULT_SIZE_MIB
from wire import host
from wire import keys as wkeys
from wire.keys import Keyring, KeysMissing
from wire.protocol import BLOCK_SIZE, Err, Op, ServiceError
from wire.server import Request, Server
from wire.transport import Clock, Transport

#: How often dirty pages of the device are written back (msync) while serving.
FLUSH_INTERVAL_MS: int = 1000
#: Exit status when the device file is refused.
EXIT_BAD_DEVICE: int = 2
#: Exit status when the address cannot be bound.
EXIT_BIND_FAILED: int = 1
#: Ops an observer or the launcher's watchdog may send (everything else is the pager's).
OBSERVER_OPS: frozenset[Op] = frozenset({Op.PING, Op.STATS})
#: Principals besides the disk's own pager whose keys are admitted (for OBSERVER_OPS).
OBSERVERS: tuple[str, ...] = ("launcher", "observer")


@dataclass(frozen=True, slots=True)
class ServiceCounts:
    """What the disk service counts about its requests (its stats reply follows the device's
    DeviceStats with these)."""
    requests: int
    bad_messages: int
    refused_keys: int


class DiskService(Server):
    """The disk server: do_* handlers over one Device."""

    def __init__(self, device: Device, ctx: zmq.Context[zmq.Socket[bytes]] | None = None,
                 keys: Keyring | None = None, pager: str = "pager0",
                 transport: Transport | None = None, clock: Clock | None = None) -> None:
        super().__init__("disk", ctx, keys, transport=transport, clock=clock)
        self.device = device
        self.requests_served = 0
        #: The one key that may use the device (its pager's), and the observers' keys.
        self.pager_key: str | None = None
        self.observer_keys: set[str] = set()
        if self.secure:
            self.pager_key = self.keyring.public(pager).decode("ascii")
            self.observer_keys = {self.keyring.publics[p].decode("ascii")
                                  for p in OBSERVERS if p in self.keyring.publics}
            own = self.keyring.own
            if own is not None:
                self.observer_keys.add(own.public_text)        # its own health check

    def dispatch_table(self) -> dict[Op, Callable[[Request], Any]]:
        """Every op the disk serves, and its handler."""
        return {Op.OPEN: self.do_open, Op.CLOSE: self.do_close, Op.WRITE: self.do_write,
                Op.READ: self.do_read, Op.FREE: self.do_free, Op.PING: self.do_ping,
                Op.STATS: self.do_stats}

    # -- hooks -------------------------------------------------------------------------
    def on_start(self) -> None:
        """Start the periodic write-back timer."""
        self.call_later(FLUSH_INTERVAL_MS, self._writeback)

    def on_stop(self) -> None:
        """Flush the device and unmap it."""
        self.device.close()

    def allow_key(self, public: str) -> bool:
        """Admit only this disk's pager and the observers (ZAP, at the handshake)."""
        return public == self.pager_key or public in self.observer_keys

    def check_caller(self, req: Request) -> None:
        """The pager may send every op, an observer only PING and STATS (secure mode);
        counts requests."""
        if self.secure and req.user_id != self.pager_key and req.op not in OBSERVER_OPS:
            raise ServiceError(Err.PERM, f"{req.op}: only this disk's pager may use the device")
        self.requests_served += 1

    def _writeback(self) -> None:
        """Flush dirty pages, then re-arm the timer."""
        if self.device.dirty:
            self.device.flush()
        self.call_later(FLUSH_INTERVAL_MS, self._writeback)

    # -- field helpers -----------------------------------------------------------------
    @staticmethod
    def _raw_block(req: Request) -> int | None:
        """The optional `block` field of `req` (None if absent); INVAL if not an int."""
        block = req.msg.get("block")
        if block is None:
            return None
        if not isinstance(block, int) or isinstance(block, bool):
            raise ServiceError(Err.INVAL, f"{req.op}: field 'block' has the wrong type "
                                          f"({type(block).__name__})")
        return block

    # -- handlers ----------------------------------------------------------------------
    def do_open(self, req: Request) -> dict[str, Any]:
        """Create the handle named by the request's token (idempotent) -> {}, or {created:
        true} if this device did not hold it (a new or wiped device file: the kernel learns
        that every block it stored under the handle here is gone)."""
        created = not self.device.knows(req.msg["handle"])
        self.device.open_handle(req.msg["label"], req.msg["handle"],
                                req.msg.get("block_size", BLOCK_SIZE))
        return {"created": True} if created else {}

    def do_close(self, req: Request) -> dict[str, Any]:
        """Close a handle and free its blocks -> {freed}."""
        return {"freed": self.device.close_handle(req.msg["handle"])}

    def do_write(self, req: Request) -> dict[str, Any]:
        """Write one block at a slot (or at an owned raw block) -> {block}."""
        handle, data = req.msg["handle"], req.msg["data"]
        block = self._raw_block(req)
        if block is not None:
            return {"block": self.device.write_block(handle, block, data)}
        return {"block": self.device.write(handle, req.msg["slot"], data)}

    def do_read(self, req: Request) -> dict[str, Any]:
        """Read one block at a slot (or at an owned raw block) -> {data}."""
        handle = req.msg["handle"]
        block = self._raw_block(req)
        if block is not None:
            return {"data": self.device.read_block(handle, block)}
        return {"data": self.device.read(handle, req.msg["slot"])}

    def do_free(self, req: Request) -> dict[str, Any]:
        """Release the blocks at some slots -> {freed}."""
        return {"freed": self.device.free(req.msg["handle"], req.msg["slots"])}

    def do_ping(self, req: Request) -> dict[str, Any]:
        """Liveness -> {service: "disk"}."""
        return {"service": "disk", "pid": self.pid}

    def do_stats(self, req: Request) -> dict[str, Any]:
        """Device counters plus request counters."""
        served = ServiceCounts(requests=self.requests_served, bad_messages=self.bad_messages,
                               refused_keys=self.refused_keys)
        return {**asdict(self.device.stats()), **asdict(served)}


# -- command line ------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    """Flags, each defaulting to its SEALEDOS_* environment variable; exits 2 on misuse."""
    env = os.environ
    p = argparse.ArgumentParser(prog="sealedos disk", description="Run the disk service.")
    p.add_argument("--rundir", default=env.get("SEALEDOS_RUNDIR"),
                   help="runtime directory (env SEALEDOS_RUNDIR); the default socket lives here")
    p.add_argument("--addr", default=env.get("SEALEDOS_DISK_ADDR"),
                   help="address to bind (env SEALEDOS_DISK_ADDR; default ipc://RUNDIR/disk.sock)")
    p.add_argument("--file", default=env.get("SEALEDOS_DISK_FILE"),
                   help="device file, created if missing (env SEALEDOS_DISK_FILE)")
    p.add_argument("--size-mib", type=int,
                   default=_env_int("SEALEDOS_DISK_SIZE_MIB", DEFAULT_SIZE_MIB),
                   help=f"size of a new device in MiB (env SEALEDOS_DISK_SIZE_MIB, "
                        f"default {DEFAULT_SIZE_MIB}); ignored for an existing file")
    p.add_argument("--keys", default=env.get(wkeys.KEYS_ENV),
                   help=f"keys directory (env {wkeys.KEYS_ENV})")
    p.add_argument("--principal", default=env.get("SEALEDOS_PRINCIPAL", "disk0"),
                   help="whose secret key to serve with (diskN; its pager is pagerN)")
    p.add_argument("--insecure", action="store_true", default=wkeys.insecure_from_env(),
                   help="no authentication or encryption "
                        f"(measurement only; env {wkeys.INSECURE_ENV}=1)")
    args = p.parse_args(argv)
    if not args.addr and not args.rundir:
        p.error("one of --addr or --rundir (or SEALEDOS_DISK_ADDR / SEALEDOS_RUNDIR) is required")
    if not args.file:
        p.error("--file (or SEALEDOS_DISK_FILE) is required")
    if args.size_mib < 1:
        p.error(f"--size-mib must be at least 1, got {args.size_mib}")
    if not args.addr:
        args.addr = f"ipc://{args.rundir}/disk.sock"
    return args


def _env_int(name: str, default: int) -> int:
    """The integer value of environment variable `name`, or `default` if unset or not an int."""
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def _ipc_path(addr: str) -> Path | None:
    """The socket file of an ipc:// address, None for other transports."""
    return Path(addr[len("ipc://"):]) if addr.startswith("ipc://") else None


def main(argv: list[str] | None = None) -> int:
    """`sealedos disk`: open the device, bind, serve until SIGTERM/SIGINT; return exit status."""
    host.make_nondumpable("disk")
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        device = Device(args.file, size_mib=args.size_mib)
    except DeviceError as exc:
        print(f"disk: refusing {args.file}: {exc}", file=sys.stderr)
        return EXIT_BAD_DEVICE
    pager = "pager" + args.principal[len("disk"):] if args.principal.startswith("disk") else ""
    try:
        keys = wkeys.keyring(args.keys, args.principal, args.insecure,
                             None if args.insecure else [pager, *OBSERVERS])
    except KeysMissing as exc:
        print(f"disk: {exc}", file=sys.stderr)
        device.close()
        return EXIT_BAD_DEVICE
    service = DiskService(device, keys=keys, pager=pager)
    sock_path = _ipc_path(args.addr)
    try:
        service.bind_router(args.addr)
    except zmq.ZMQError as exc:
        print(f"disk: cannot bind {args.addr}: {exc}", file=sys.stderr)
        device.close()
        return EXIT_BIND_FAILED
    host.open_socket_file(args.addr)
    print(f"disk: serving {args.file} ({device.geo.data_blocks} blocks) at {args.addr}",
          file=sys.stderr, flush=True)
    try:
        service.serve_until_signalled()
    finally:
        device.close()
        if sock_path is not None:
            sock_path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
