"""Confinement: the kernel is a sealed process's only door.

A sealed program (``sealedos run``) is confined in two steps, each a set of locks that cannot
be undone:

1. :func:`confine_program`, in ``apps/run.py`` before the app's module is even imported, so
   no line of a hostile program runs unconfined:

   * **no_new_privs** -- nothing this process executes can gain privileges;
   * **Landlock** (ctypes syscalls: the PyPI ``landlock`` package knows files only) -- files:
     read-only access to the code (the Python installation, the project, the shared
     libraries, /etc), read-write to the process's own private directory
     (``SEALEDOS_PRIVATE_DIR``) and /dev/null, nothing else (no /tmp, no /dev/shm, no other
     process's /proc); TCP (ABI 4): no bind, connect only to the kernel's port; scope (ABI 6):
     no signal to and no abstract unix socket of a process outside this domain;
   * **seccomp** (libseccomp via ``pyseccomp``, synchronised to every thread) -- fails with
     EPERM: exec (execve, execveat), signals to another process (kill, tgkill,
     rt_sigqueueinfo, rt_tgsigqueueinfo unless aimed at this process; tkill,
     pidfd_send_signal), other processes' memory (ptrace, process_vm_readv/writev,
     pidfd_getfd, kcmp, process_madvise), host IPC that bypasses files (System V shm/msg/sem,
     POSIX message queues, io_uring), locks and watches on shared files (flock, fcntl record
     locks, inotify, fanotify), namespace, mount, key-ring and BPF calls, socketpair,
     and any socket but the kernel transport's kind (ipc: unix; tcp: unix, IPv4, IPv6 --
     not raw or packet).  Everything else is allowed: a Python process with pyzmq and numpy
     needs threads, futexes, mmap, its sockets' send/recv/poll.

2. :func:`close_the_door`, from :meth:`SealedProcess.connect` after ATTACH: a second seccomp
   filter refusing every new socket.  The two kernel connections stay open; zmq could not
   reconnect them, which is fine: a sealed process whose kernel connection dies is dead.

A test or tool that plays a sealed process in-process is not a sealed program: nothing
confines it.  Where the host cannot apply a lock (an older kernel, no libseccomp), one line
on stderr says which is missing and the process carries on with the others.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wire.host import CONFINE_READ_ENV, PRIVATE_DIR_ENV

try:                                     # imported now: nothing is importable once confined
    import pyseccomp
except (ImportError, RuntimeError) as _exc:        # no pyseccomp, or no libseccomp
    pyseccomp = None
    _SECCOMP_MISSING = f"seccomp unavailable: {_exc}"

PR_SET_NO_NEW_PRIVS: int = 38
SYS_LANDLOCK_CREATE_RULESET: int = 444
SYS_LANDLOCK_ADD_RULE: int = 445
SYS_LANDLOCK_RESTRICT_SELF: int = 446
LANDLOCK_CREATE_RULESET_VERSION: int = 1
LANDLOCK_RULE_PATH_BENEATH: int = 1

# Landlock file access rights, and the ABI that introduced the later ones.
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1, 2, 4, 8
FS_REMOVE_DIR, FS_REMOVE_FILE, FS_MAKE_CHAR, FS_MAKE_DIR = 16, 32, 64, 128
FS_MAKE_REG, FS_MAKE_SOCK, FS_MAKE_FIFO, FS_MAKE_BLOCK, FS_MAKE_SYM = 256, 512, 1024, 2048, 4096
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 8192, 16384, 32768
NET_BIND_TCP, NET_CONNECT_TCP = 1, 2
LANDLOCK_RULE_NET_PORT: int = 2
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1, 2

#: Read-only: what code needs.
READ_RIGHTS: int = FS_READ_FILE | FS_READ_DIR
#: The private directory: make, read, write, remove files and directories there.
PRIVATE_RIGHTS: int = (FS_READ_FILE | FS_READ_DIR | FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE
                       | FS_MAKE_DIR | FS_MAKE_REG)
#: Read-only trees besides the interpreter's and the project's (shared libraries, /etc).
SYSTEM_READ_DIRS: tuple[str, ...] = ("/usr", "/lib", "/lib64", "/etc")

#: The type bits of socket()'s second argument (the rest are SOCK_NONBLOCK, SOCK_CLOEXEC).
SOCK_TYPE_MASK: int = 0xF
SOCK_PACKET: int = 10

#: Syscalls refused outright.
DENIED_SYSCALLS: tuple[str, ...] = (
    "socketpair", "execve", "execveat", "ptrace", "process_vm_readv",
    "process_vm_writev", "pidfd_getfd", "pidfd_send_signal", "pidfd_open", "kcmp",
    "process_madvise", "tkill", "shmget", "shmat", "msgget", "msgsnd", "msgrcv", "semget",
    "semop", "semtimedop", "mq_open", "mq_timedsend", "mq_timedreceive", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "unshare", "setns", "mount", "umount2",
    "pivot_root", "chroot", "keyctl", "add_key", "request_key", "bpf", "perf_event_open",
    "userfaultfd", "mknod", "mknodat",
    # Covert channels through files every process may read (the code): locks and watches.
    "flock", "inotify_init", "inotify_init1", "fanotify_init")
#: fcntl commands refused: record locks on shared files (another covert channel).
DENIED_FCNTL_CMDS: tuple[int, ...] = (5, 6, 7, 36, 37, 38)   # F_GETLK/SETLK/SETLKW, F_OFD_*
#: Syscalls refused unless their first argument is this process's pid.
SELF_ONLY_SYSCALLS: tuple[str, ...] = ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")

#: One seccomp rule: a syscall's name and its argument comparisons (pyseccomp Arg objects).
SeccompRule = tuple[str, tuple[object, ...]]


#: What confine_program achieved, in a process started as a sealed program (None: not one).
_state: Confinement | None = None


def armed() -> bool:
    """True when this process is a confined sealed program (connect() must close the door)."""
    return _state is not None


@dataclass
class Confinement:
    """What confinement achieved: each lock applied, or why not."""
    no_new_privs: bool = False
    landlock_abi: int = 0
    seccomp: bool = False
    no_new_sockets: bool = False
    missing: list[str] = field(default_factory=list)


def _libc() -> ctypes.CDLL:
    """The C library, with errno."""
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _fail(what: str) -> str:
    """`what` and the errno of the call that just failed."""
    return f"{what}: {os.strerror(ctypes.get_errno())}"


def readable_paths() -> list[str]:
    """The trees a confined process may read: the interpreter's installation, the project's
    code (where this package was imported from, and PYTHONPATH), the system's libraries, and
    what the launcher lists in SEALEDOS_CONFINE_READ."""
    project = Path(__file__).resolve().parents[2]
    pythonpath = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    extra = [p for p in os.environ.get(CONFINE_READ_ENV, "").split(os.pathsep) if p]
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, str(project), *SYSTEM_READ_DIRS,
             *pythonpath, *extra}
    # sys.path also holds the working directory (python -m): not code, and maybe anything.
    paths |= {p for p in sys.path if p and p != os.getcwd() and os.path.isdir(p)}
    return sorted(p for p in paths if os.path.exists(p) and p != "/")


def _kernel_port(kernel_addr: str | None) -> int | None:
    """The TCP port of a tcp://HOST:PORT kernel address, else None."""
    if not kernel_addr or not kernel_addr.startswith("tcp://"):
        return None
    try:
        return int(kernel_addr.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None


def _landlock(libc: ctypes.CDLL, private_dir: str | None,
              kernel_port: int | None) -> tuple[int, str | None]:
    """Restrict this thread (and its future threads) with Landlock; (ABI, problem or None)."""
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 1:
        return 0, _fail("Landlock unavailable")
    handled = FS_EXECUTE | READ_RIGHTS | PRIVATE_RIGHTS | FS_MAKE_CHAR | FS_MAKE_SOCK \
        | FS_MAKE_FIFO | FS_MAKE_BLOCK | FS_MAKE_SYM
    handled |= (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0) \
        | (FS_IOCTL_DEV if abi >= 5 else 0)
    net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    attr = struct.pack("=QQQ", handled, net, scoped)
    size = 8 if abi < 4 else (16 if abi < 6 else 24)
    buf = ctypes.create_string_buffer(attr[:size], size)
    ruleset = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, buf, ctypes.c_size_t(size), 0)
    if ruleset < 0:
        return 0, _fail("landlock_create_ruleset")
    try:
        truncate = FS_TRUNCATE if abi >= 3 else 0
        rules = [(p, READ_RIGHTS) for p in readable_paths()]
        rules.append(("/dev/null", FS_READ_FILE | FS_WRITE_FILE | truncate))
        if private_dir and os.path.isdir(private_dir):
            rules.append((private_dir, PRIVATE_RIGHTS | truncate | (FS_REFER if abi >= 2 else 0)))
        for path, rights in rules:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                if not os.path.isdir(path):
                    rights &= FS_READ_FILE | FS_WRITE_FILE | FS_EXECUTE | truncate
                rule = ctypes.create_string_buffer(struct.pack("=Qi", rights & handled, fd), 12)
                if libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH,
                                rule, 0) != 0:
                    return 0, _fail(f"landlock_add_rule {path}")
            finally:
                os.close(fd)
        if net and kernel_port is not None:
            rule = ctypes.create_string_buffer(struct.pack("=QQ", NET_CONNECT_TCP, kernel_port), 16)
            if libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_NET_PORT, rule, 0) != 0:
                return 0, _fail(f"landlock_add_rule port {kernel_port}")
        if libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
            return 0, _fail("landlock_restrict_self")
    finally:
        os.close(ruleset)
    return abi, None


def _socket_rules(sc: Any, tcp: bool) -> list[SeccompRule]:
    """The (syscall, argument comparisons) that refuse a socket the kernel transport does not
    need: ipc -- anything but AF_UNIX; tcp -- any family but unix, IPv4, IPv6, and raw or
    packet sockets."""
    if not tcp:
        return [("socket", (sc.Arg(0, sc.NE, socket.AF_UNIX),))]
    allowed = (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6)
    rules: list[SeccompRule] = [("socket", (sc.Arg(0, sc.GT, max(allowed)),))]
    rules += [("socket", (sc.Arg(0, sc.EQ, fam),))
              for fam in range(max(allowed)) if fam not in allowed]
    rules += [("socket", (sc.Arg(1, sc.MASKED_EQ, SOCK_TYPE_MASK, kind),))
              for kind in (socket.SOCK_RAW, SOCK_PACKET)]
    return rules


def _seccomp(rules: list[SeccompRule]) -> str | None:
    """Load one filter refusing `rules` (syscall, argument comparisons) with EPERM on every
    thread of this process; the problem or None."""
    sc = pyseccomp
    if sc is None:
        return _SECCOMP_MISSING
    try:
        flt = sc.SyscallFilter(sc.ALLOW)
        flt.set_attr(sc.Attr.CTL_TSYNC, 1)           # every thread, not only this one
        deny = sc.ERRNO(errno.EPERM)
        for name, args in rules:
            try:
                flt.add_rule(deny, name, *args)
            except (OSError, ValueError):           # no such syscall on this architecture
                continue
        flt.load()
    except OSError as exc:
        return f"seccomp filter not loaded: {exc}"
    return None


def _program_rules(kernel_addr: str | None) -> list[SeccompRule]:
    """Step 1's seccomp rules (see the module docstring)."""
    sc = pyseccomp
    if sc is None:
        return []
    me = os.getpid()
    rules: list[SeccompRule] = [(name, ()) for name in DENIED_SYSCALLS]
    rules += [(name, (sc.Arg(0, sc.NE, me),)) for name in SELF_ONLY_SYSCALLS]
    rules += [("fcntl", (sc.Arg(1, sc.EQ, cmd),)) for cmd in DENIED_FCNTL_CMDS]
    return rules + _socket_rules(sc, _kernel_port(kernel_addr) is not None)


def _warn(component: str, result: Confinement) -> None:
    """One stderr line naming every lock the host refused."""
    if result.missing:
        print(f"sealedos: {component}: WARNING: confinement incomplete: "
              f"{'; '.join(result.missing)}", file=sys.stderr, flush=True)


def confine_program(component: str, kernel_addr: str | None) -> Confinement:
    """Step 1, first thing in a sealed program: no_new_privs, Landlock and seccomp (see the
    module docstring); each lock the host refuses is named on stderr, and the process goes on."""
    global _state
    libc = _libc()
    result = Confinement()
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0:
        result.no_new_privs = True
    else:
        result.missing.append(_fail("no_new_privs"))
    try:
        abi, problem = _landlock(libc, os.environ.get(PRIVATE_DIR_ENV), _kernel_port(kernel_addr))
    except OSError as exc:                          # a path that vanished, an odd host
        abi, problem = 0, f"Landlock not applied: {exc}"
    result.landlock_abi = abi
    if problem:
        result.missing.append(problem)
    problem = _seccomp(_program_rules(kernel_addr))
    result.seccomp = problem is None
    if problem:
        result.missing.append(problem)
    _warn(component, result)
    _state = result
    return result


def close_the_door(component: str) -> Confinement | None:
    """Step 2, once the kernel connections are open: no new socket at all.  None when this
    process is not a confined sealed program (nothing is done)."""
    if _state is None:
        return None
    if _state.seccomp:
        problem = _seccomp([("socket", ()), ("socketpair", ())])
        _state.no_new_sockets = problem is None
        if problem:
            _state.missing.append(problem)
            _warn(component, _state)
    return _state
