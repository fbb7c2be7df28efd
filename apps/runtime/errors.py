"""The exceptions a sealed process sees, and the ONE place kernel error codes become them.

Every error a syscall can end in is a :class:`SealedError`; the kernel's reply ``msg`` (a
sentence naming the page, the address and the check that failed) is the exception's text, so
an app that dies of one prints something a person can act on.  :func:`from_reply` is the only
code that maps an :class:`~wire.protocol.Err` code to a class; :mod:`syscall` calls
it for every error reply.
"""
from __future__ import annotations

from typing import Any

from wire.protocol import Err, err_code


class SealedError(Exception):
    """Any failure of a syscall or of the runtime; carries the kernel's error code, if any."""

    code: Err | None = None

    def __init__(self, msg: str, code: Err | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        if code is not None:
            self.code = code
        #: The sealed process's name, filled in by the syscall layer (for `sealedos run`).
        self.process_name: str | None = None


class SegmentationFault(SealedError):
    """An access outside every mapped region (ESEGV)."""
    code = Err.SEGV


class ProtectionFault(SealedError):
    """An access the page's permissions forbid (EPROT)."""
    code = Err.PROT


class PageIntegrityError(SealedError):
    """A page came back from the pager and failed verification (EINTEGRITY): page
    integrity is lost and the kernel has stopped the process."""
    code = Err.INTEGRITY


class ProcessKilled(SealedError):
    """The kernel stopped this process (EKILLED)."""
    code = Err.KILLED


class OutOfMemory(SealedError):
    """No frames, address space or swap left (ENOMEM / ENOSPC)."""
    code = Err.NOMEM


class PermissionDenied(SealedError):
    """The kernel refused the request (EPERM), e.g. W and X at once."""
    code = Err.PERM


class InvalidArgument(SealedError):
    """A field out of range (EINVAL)."""
    code = Err.INVAL


class KernelError(SealedError):
    """Any other error reply from the kernel; `code` says which."""


class KernelUnreachable(SealedError):
    """The kernel did not answer (at start-up, or for KERNEL_DEAD_MS since)."""
    code = Err.TIMEDOUT


class KernelProtocolError(SealedError):
    """The kernel's reply broke the protocol (a bad frame number, a short page ...)."""
    code = Err.BADMSG


class PeerDied(SealedError):
    """The other end of an IPC call is gone: its server died, or closed its endpoint
    (EPEERDIED)."""
    code = Err.PEERDIED


class ContractViolation(SealedError):
    """An IPC message broke its channel's contract; the text names the rule (ECONTRACT)."""
    code = Err.CONTRACT


class BadHandle(SealedError):
    """A capability handle this process does not hold: forged or stale (EBADHANDLE)."""
    code = Err.BADHANDLE


class MessageTooLarge(SealedError):
    """An IPC message over the kernel's size limit (EMSGSIZE)."""
    code = Err.MSGSIZE


class NotFound(SealedError):
    """No such name, call or object (ENOENT)."""
    code = Err.NOENT


class Busy(SealedError):
    """The process is already blocked in a call or receive (EBUSY)."""
    code = Err.BUSY


#: Error code -> exception class; codes not listed become KernelError.
_CLASSES: dict[str, type[SealedError]] = {
    Err.SEGV: SegmentationFault,
    Err.PROT: ProtectionFault,
    Err.INTEGRITY: PageIntegrityError,
    Err.KILLED: ProcessKilled,
    Err.NOMEM: OutOfMemory,
    Err.NOSPC: OutOfMemory,
    Err.PERM: PermissionDenied,
    Err.INVAL: InvalidArgument,
    Err.TIMEDOUT: KernelUnreachable,
    Err.PEERDIED: PeerDied,
    Err.CONTRACT: ContractViolation,
    Err.BADHANDLE: BadHandle,
    Err.MSGSIZE: MessageTooLarge,
    Err.NOENT: NotFound,
    Err.BUSY: Busy,
}


def from_reply(reply: dict[str, Any], op: str) -> SealedError:
    """The exception for an error reply to `op`; the kernel's msg is its text."""
    raw = reply.get("err")
    code = err_code(raw)
    msg = reply.get("msg")
    text = msg if isinstance(msg, str) and msg else f"{op} failed with {raw!r}"
    cls = _CLASSES.get(code, KernelError) if code is not None else KernelError
    return cls(text, code)
