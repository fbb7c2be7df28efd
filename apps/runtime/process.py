"""SealedProcess: what an app holds -- its kernel connection, bank, MMU and control thread.

    with SealedProcess.connect(kernel_addr) as proc:    # credential: from the launcher
        addr = proc.map(16)                       # 16 pages, read-write
        proc.store_u64(addr, 42)
        v = proc.view(addr, np.int64, 16 * 512)
        v[0:512] = np.arange(512)
        proc.report(checksum="verified")

Start-up is REGISTER on the call connection with the one-time credential the launcher handed
the process (an inherited descriptor named by ``SEALEDOS_CRED_FD``; the kernel knows the
process's name, program, digest and manifest from the launcher, not from it), then a bank as
large as the kernel's frame pool, then ATTACH of the control connection, the last step of
confinement in a sealed program (:mod:`confine`: no new socket; the kernel is the only door
from then on) and the control thread.  close() sends EXIT and stops the thread.
"""
from __future__ import annotations

import os
from typing import Any, overload

import numpy as np

from apps.runtime.bank import Bank
from apps.runtime.confine import Confinement, close_the_door
from apps.runtime.control import ControlThread
from apps.runtime.errors import SealedError
from apps.runtime.ipc import IpcClient, Received
from apps.runtime.mmu import Mmu
from apps.runtime.syscall import KernelLink, kernel_public_from_env
from apps.runtime.varray import VArray
from wire.credential import CRED_BYTES, CRED_FD_ENV
from wire.keys import keypair_of_credential
from wire.protocol import PAGE_SHIFT, PAGE_SIZE, PROT_R, PROT_W, Op


def read_inherited(fd: int) -> bytes:
    """Read one credential from inherited descriptor `fd` and close it (ValueError if short)."""
    data = b""
    try:
        while len(data) < CRED_BYTES:
            chunk = os.read(fd, CRED_BYTES - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    if len(data) != CRED_BYTES:
        raise ValueError(f"the launcher sent {len(data)} credential bytes, not {CRED_BYTES}")
    return data


def inherited_credential() -> bytes:
    """The credential the launcher passed on the descriptor SEALEDOS_CRED_FD names (read
    once: the variable is removed); SealedError if the process was not started by one."""
    fd = os.environ.pop(CRED_FD_ENV, None)
    if fd is None or not fd.isdigit():
        raise SealedError(f"no credential: sealed processes are started by the launcher "
                          f"(sealedos run / sealedos up), which passes one in ${CRED_FD_ENV}")
    try:
        return read_inherited(int(fd))
    except (OSError, ValueError) as exc:
        raise SealedError(f"no credential on descriptor {fd}: {exc}") from None


class SealedProcess:
    """One sealed process: syscalls, memory access through the MMU, reports."""

    def __init__(self, kernel: KernelLink, bank: Bank, mmu: Mmu, control: ControlThread,
                 spid: int, name: str, program: str) -> None:
        self.kernel = kernel
        self.bank = bank
        self.mmu = mmu
        self.control = control
        self.spid = spid
        self.name = name
        self.program = program
        self.role = "app"
        self.inheritance = b""            # init only: what the previous init stashed
        self.closed = False
        self.ipc = IpcClient(kernel, mmu)
        #: Which host locks confine this process (set by connect).
        self.confinement: Confinement | None = None
        # Word access is the TLB-hit path: bind the MMU's methods directly (one call less
        # per access than the delegating methods below, which document the API).
        self.load_u64 = mmu.load_u64          # type: ignore[method-assign]
        self.store_u64 = mmu.store_u64        # type: ignore[method-assign]
        self.call = self.ipc.call             # type: ignore[method-assign]  # (so is a call)

    @classmethod
    def connect(cls, kernel_addr: str, cred: bytes | None = None,
                kernel_public: bytes | None = None) -> SealedProcess:
        """Register with the kernel at kernel_addr and start the control thread.

        cred: the credential the launcher issued (default: read it, once, from the inherited
        descriptor the launcher named in SEALEDOS_CRED_FD).  kernel_public: the kernel's
        CURVE public key (default: from the environment, syscall.kernel_public_from_env);
        with it both connections are CURVE with the credential as this process's secret key,
        without it (an insecure kernel) they are NULL and REGISTER carries the credential."""
        if cred is None:
            cred = inherited_credential()
        if kernel_public is None:
            kernel_public = kernel_public_from_env()
        keypair = keypair_of_credential(cred) if kernel_public is not None else None
        kernel = KernelLink(kernel_addr, keypair=keypair, kernel_public=kernel_public)
        bank = None
        try:
            reg = kernel.register(cred)
            bank = Bank(reg["nframes"])
            mmu = Mmu(kernel, bank)
            sock = kernel.attach_control(reg["spid"], reg["secret"])
            confinement = close_the_door(reg["name"])   # no new socket: the kernel is the door
            control = ControlThread(sock, mmu, kernel.liveness, reg["name"])
            control.start()
        except BaseException:
            if bank is not None:
                bank.close()
            kernel.close()
            raise
        proc = cls(kernel, bank, mmu, control, reg["spid"], reg["name"], "")
        proc.role = reg["role"]
        stash = reg.get("stash")
        proc.inheritance = stash if isinstance(stash, bytes) else b""
        proc.confinement = confinement
        return proc

    # -- regions -----------------------------------------------------------------------
    def map(self, npages: int, prot: int = PROT_R | PROT_W, addr: int = 0) -> int:
        """Create a region of npages pages; return its address (addr 0: the kernel picks)."""
        return self.kernel.map(addr, npages, prot)

    def unmap(self, addr: int, npages: int) -> None:
        """Remove npages pages at addr (their contents are gone)."""
        self.kernel.unmap(addr, npages)
        self.mmu.unmapped(addr, npages)

    def protect(self, addr: int, npages: int, prot: int) -> None:
        """Change the permissions of npages pages at addr."""
        self.kernel.protect(addr, npages, prot)
        self.mmu.protected(addr, npages)

    # -- memory --------------------------------------------------------------------------
    def read(self, addr: int, n: int) -> bytes:
        """n bytes at addr."""
        return self.mmu.read(addr, n)

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Store data at addr."""
        self.mmu.write(addr, data)

    def load_u64(self, addr: int) -> int:
        """The unsigned little-endian 64-bit integer at addr."""
        return self.mmu.load_u64(addr)

    def store_u64(self, addr: int, value: int) -> None:
        """Store value (mod 2**64) at addr, little-endian."""
        self.mmu.store_u64(addr, value)

    def exec_read(self, addr: int, n: int) -> bytes:
        """n bytes at addr fetched for execution (the page must be executable)."""
        return self.mmu.exec_read(addr, n)

    def try_read(self, addr: int, n: int) -> bytes | None:
        """n bytes at addr if all its pages are in the TLB, else None (never faults)."""
        return self.mmu.try_read(addr, n)

    def view(self, addr: int, dtype: Any, count: int) -> VArray:
        """A typed view of count elements at addr, faulting pages in as they are touched."""
        return VArray(self, addr, dtype, count)

    # -- IPC (see apps.runtime.ipc) -----------------------------------------------------------
    def endpoint(self, contract: dict[str, Any], nameservice: bool = False) -> int:
        """Create an endpoint serving `contract`; return its handle."""
        return self.ipc.endpoint(contract, nameservice)

    def call(self, handle: int, msg: dict[str, Any], caps: Any = (),
             grant: tuple[int, int] | None = None) -> tuple[dict[str, Any], list[int]]:
        """Send msg on handle, block for the reply: (reply msg, received cap handles)."""
        return self.ipc.call(handle, msg, caps, grant)

    def receive(self, handle: int) -> Received:
        """Block until a call arrives on own endpoint `handle`."""
        return self.ipc.receive(handle)

    @overload
    def reply(self, call: Received | int, msg: dict[str, Any], caps: Any = (),
              receive: None = None) -> None: ...
    @overload
    def reply(self, call: Received | int, msg: dict[str, Any], caps: Any = (), *,
              receive: int) -> Received: ...

    def reply(self, call: Received | int, msg: dict[str, Any], caps: Any = (),
              receive: int | None = None) -> Received | None:
        """Answer a call; with receive=handle, block for the next call and return it."""
        return self.ipc.reply(call, msg, caps, receive)

    def cap_close(self, handle: int) -> None:
        """Drop a capability handle."""
        self.ipc.cap_close(handle)

    def lookup(self, name: str, wait_s: float = 0.0) -> int:
        """The capability init has under `name` (the manifest must list it); wait up to
        wait_s for a service that has not registered yet."""
        return self.ipc.lookup(name, wait_s)

    def register_name(self, name: str, handle: int) -> None:
        """Publish own endpoint `handle` under `name` with init."""
        self.ipc.register_name(name, handle)

    def stash(self, data: bytes) -> None:
        """(init only) Save what the next init inherits if this one dies."""
        self.kernel.call(Op.STASH, data=data)

    # -- reporting and leaving ----------------------------------------------------------------
    def report(self, **data: Any) -> None:
        """REPORT app results (scalars: the kernel keeps ints, floats, strings, bools)."""
        self.kernel.report({k: _plain(v) for k, v in data.items()})

    def counters(self) -> dict[str, int]:
        """The MMU's local counters (tlb_hits, tlb_misses, local_dirty_traps, shootdowns ...)."""
        return self.mmu.counters()

    def close(self, status: int = 0) -> None:
        """EXIT with status, stop the control thread, release the bank (idempotent)."""
        if self.closed:
            return
        self.closed = True
        try:
            self.kernel.exit(status)
        finally:
            self.control.stop()
            self.kernel.close()
            self.bank.close()

    def __enter__(self) -> SealedProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self.close(0 if exc_type is None else (3 if issubclass(exc_type, SealedError) else 1))


def _plain(value: Any) -> Any:
    """numpy scalars as Python ones, so msgpack and the kernel accept them."""
    return value.item() if isinstance(value, np.generic) else value


def pages_for(nbytes: int) -> int:
    """How many pages hold nbytes bytes."""
    return (nbytes + PAGE_SIZE - 1) >> PAGE_SHIFT
