"""The sealed-process runtime: what runs inside every sealed process.

    process.py   SealedProcess: connect, map/unmap/protect, read/write, view, report, close
    syscall.py   the ONE way to the kernel: the call connection, request/reply, error mapping
    errors.py    SealedError and its subclasses; the one code -> exception table
    mmu.py       the software TLB, the dirty bit, the reference record, the shootdown race
    bank.py      the private memmap holding resident pages' contents
    control.py   the control thread: SHOOTDOWN, KILL, HEARTBEAT, the kernel's liveness
    ipc.py       endpoints, call/receive/reply, page grants, names (init's protocol)
    varray.py    VArray, a typed view that faults pages in on demand
    app.py       what every app main() shares: --kernel/--name, errors reported on exit
"""
from apps.runtime.errors import (
    BadHandle,
    Busy,
    ContractViolation,
    InvalidArgument,
    KernelError,
    KernelProtocolError,
    KernelUnreachable,
    MessageTooLarge,
    NotFound,
    OutOfMemory,
    PageIntegrityError,
    PeerDied,
    PermissionDenied,
    ProcessKilled,
    ProtectionFault,
    SealedError,
    SegmentationFault,
)
from apps.runtime.ipc import NAMESERVICE, Received, Sender
from apps.runtime.process import SealedProcess, inherited_credential
from apps.runtime.syscall import KERNEL_ADDR_ENV
from apps.runtime.varray import VArray
from wire.protocol import PAGE_SIZE, PROT_R, PROT_W, PROT_X

__all__ = [
    "SealedProcess", "VArray", "inherited_credential", "KERNEL_ADDR_ENV", "PAGE_SIZE",
    "PROT_R", "PROT_W", "PROT_X", "SealedError", "SegmentationFault", "ProtectionFault",
    "PageIntegrityError", "ProcessKilled", "OutOfMemory", "PermissionDenied", "InvalidArgument",
    "KernelError", "KernelUnreachable", "KernelProtocolError", "PeerDied", "ContractViolation",
    "BadHandle", "MessageTooLarge", "NotFound", "Busy", "NAMESERVICE", "Received", "Sender"]
