"""What every sealedos process asks of its host OS first thing: not to be dumpable.

The emulated hardware is the host OS, so its protections are the machine's: a process whose
"dumpable" flag is off (prctl(PR_SET_DUMPABLE, 0)) cannot be read or written through
/proc/PID/mem, attached with ptrace or process_vm_readv, and its /proc/PID/environ and
other sensitive /proc files become root's -- even by a process of the same uid.  The flag is
reset by execve, so each process clears it itself, at the top of its main, before it reads
any secret (the kernel's sealing key, init's token, a sealed process's data).

Where the host refuses (not Linux), :func:`make_nondumpable` says so loudly on stderr and the
process carries on: the guarantee is then only what the host gives.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

PR_SET_DUMPABLE: int = 4
#: Set in a process's environment by the launcher: the directory only it may write.
PRIVATE_DIR_ENV: str = "SEALEDOS_PRIVATE_DIR"
#: Set by the launcher when a confined sealed process must read more than its code and its
#: private directory (e.g. a key directory): paths joined by os.pathsep, read-only.
CONFINE_READ_ENV: str = "SEALEDOS_CONFINE_READ"


def _libc() -> ctypes.CDLL | None:
    """The C library (with errno), or None where there is none to load."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def make_nondumpable(component: str) -> bool:
    """Clear this process's dumpable flag; True when the host honoured it.  On failure one
    line on stderr names `component` and what is lost, and the process carries on."""
    libc = _libc()
    if libc is not None and libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0:
        return True
    err = os.strerror(ctypes.get_errno()) if libc is not None else "no C library"
    print(f"sealedos: {component}: WARNING: cannot make this process non-dumpable ({err}): "
          f"same-uid processes may read its memory and environment", file=sys.stderr, flush=True)
    return False


def open_socket_file(addr: str) -> None:
    """After binding `addr`: let other uids connect to an ipc:// socket file (connecting needs
    write permission on it).  Who may reach it is decided by its directory's permissions and,
    for the kernel, by transport authentication; tcp:// addresses are left alone."""
    if addr.startswith("ipc://"):
        os.chmod(addr[len("ipc://"):], 0o666)
