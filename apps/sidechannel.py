"""sidechannel: one sealed process tries every way around the kernel to another; or is the victim.

    sealedos run sidechannel --role victim [--pages 8] [--stop-file F]
    sealedos run sidechannel --role attacker --victim-pid PID [--victim-dir D]
                             [--kernel-pid PID] [--device-file F]

The victim writes a pattern into its pages and a secret file into its private directory,
REPORTs {ready, hostpid}, re-reads its pages until --stop-file exists (a stat: allowed), and
REPORTs {checksum: verified|failed}.

The attacker, confined like every sealed program, tries each side channel the host offers
once before it connects to the kernel and once after, and REPORTs ``ch_<channel>`` =
``blocked: <errno>`` or ``OPEN: <what happened>`` for each (after), ``open_channels`` and
``early_open_channels`` (comma-separated, empty when all failed) and its own confinement
(``landlock_abi``, ``seccomp``, ``no_new_sockets``).  Channels: a file in /tmp and in
/dev/shm, a file planted in or read from the victim's private directory, TCP and UDP
sockets to 127.0.0.1, a unix socket, a socketpair, SIGSTOP to the victim and a signal to
the kernel, /proc/PID/mem of the victim and of the kernel, the kernel's /proc/PID/environ,
ptrace attach, process_vm_readv, exec of /bin/true, a System V shared memory segment, the
disk's device file, and locks or watches on a file every process may read (flock, fcntl
record locks, inotify).
"""
from __future__ import annotations

import argparse
import ctypes
import errno
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from apps.runtime import PAGE_SIZE, SealedProcess
from apps.runtime.app import app_parser, run_reporting
from wire.host import PRIVATE_DIR_ENV

PTRACE_ATTACH: int = 16
PTRACE_DETACH: int = 17
IPC_PRIVATE: int = 0
IPC_CREAT: int = 0o1000
#: How often the victim re-reads its pages while it waits.
VICTIM_POLL_S: float = 0.1
#: The victim's secret file in its private directory.
SECRET_NAME: str = "secret"


def build_parser() -> argparse.ArgumentParser:
    """sidechannel's flags."""
    p = app_parser("sidechannel", __doc__)
    p.add_argument("--role", choices=("victim", "attacker"), required=True)
    p.add_argument("--pages", type=int, default=8, help="(victim) pages of pattern")
    p.add_argument("--stop-file", help="(victim) verify and leave once this file exists")
    p.add_argument("--duration", type=float, default=120.0, help="(victim) longest wait, s")
    p.add_argument("--victim-pid", type=int, default=0, help="(attacker) the victim's host pid")
    p.add_argument("--victim-dir", default="", help="(attacker) the victim's private directory")
    p.add_argument("--kernel-pid", type=int, default=0, help="(attacker) the kernel's host pid")
    p.add_argument("--device-file", default="", help="(attacker) a disk's device file")
    return p


def pattern(i: int) -> bytes:
    """The victim's page i."""
    return bytes([(i * 7 + 1) % 256]) * PAGE_SIZE


# -- the victim ---------------------------------------------------------------------------
def victim(proc: SealedProcess, args: argparse.Namespace) -> int:
    """Fill pages, keep a secret file, hold on until the stop file; report the verdict."""
    base = proc.map(args.pages)
    for i in range(args.pages):
        proc.write(base + i * PAGE_SIZE, pattern(i))
    private = os.environ.get(PRIVATE_DIR_ENV)
    if private:
        (Path(private) / SECRET_NAME).write_text("the victim's secret")
    proc.report(ready=True, hostpid=os.getpid())
    deadline = time.monotonic() + args.duration
    ok = True
    while ok and time.monotonic() < deadline:
        ok = all(proc.read(base + i * PAGE_SIZE, PAGE_SIZE) == pattern(i)
                 for i in range(args.pages))
        if args.stop_file and os.path.exists(args.stop_file):
            break
        time.sleep(VICTIM_POLL_S)
    if private:
        ok = ok and (Path(private) / SECRET_NAME).read_text() == "the victim's secret"
    proc.report(checksum="verified" if ok else "failed")
    return 0 if ok else 1


# -- the attacker -------------------------------------------------------------------------
#: The C library, by its soname (find_library would need exec and a temporary directory,
#: which a confined process lacks: every attempt through it would look blocked untried).
LIBC: ctypes.CDLL = ctypes.CDLL("libc.so.6", use_errno=True)
LIBC.ptrace.restype = ctypes.c_long
LIBC.process_vm_readv.restype = ctypes.c_ssize_t


def _errno_result(rc: int, what: str) -> str:
    """OPEN when a libc call returned >= 0, else blocked with its errno."""
    if rc >= 0:
        return f"OPEN: {what} returned {rc}"
    return f"blocked: {errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno())}"


def _write_file(path: str) -> str:
    """Create and write `path`."""
    with open(path, "w") as f:
        f.write("side channel")
    return f"OPEN: wrote {path}"


def _read_file(path: str, n: int = 64) -> str:
    """Read n bytes of `path`."""
    with open(path, "rb") as f:
        data = f.read(n)
    return f"OPEN: read {len(data)} bytes of {path}"


def _read_mem(pid: int) -> str:
    """Read a page of process pid's memory through /proc/PID/mem."""
    with open(f"/proc/{pid}/mem", "rb") as f:
        try:
            f.seek(0x400000)
            return f"OPEN: read {len(f.read(16))} bytes of /proc/{pid}/mem"
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            return f"OPEN: opened /proc/{pid}/mem (that address is not mapped)"


def _socket(family: int, kind: int, target: tuple[str, int] | None) -> str:
    """Open a socket (and connect it to target)."""
    with socket.socket(family, kind) as s:
        if target is not None:
            try:
                s.connect(target)
            except ConnectionRefusedError:
                pass                             # the socket itself was the channel
    return "OPEN: socket() succeeded"


def _socketpair() -> str:
    """A connected pair of unix sockets (to pass to a child, or across a fork)."""
    a, b = socket.socketpair()
    a.close()
    b.close()
    return "OPEN: socketpair() succeeded"


def _kill(pid: int, sig: int) -> str:
    """Send sig to pid."""
    os.kill(pid, sig)
    if sig == signal.SIGSTOP:
        os.kill(pid, signal.SIGCONT)             # never reached when blocked; be kind if not
    return f"OPEN: signal {sig} delivered to {pid}"


def _ptrace(pid: int) -> str:
    """PTRACE_ATTACH to pid."""
    rc = LIBC.ptrace(PTRACE_ATTACH, pid, None, None)
    if rc == 0:
        LIBC.ptrace(PTRACE_DETACH, pid, None, None)
    return _errno_result(rc, "ptrace(ATTACH)")


class _IoVec(ctypes.Structure):
    """struct iovec."""
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _vm_readv(pid: int) -> str:
    """process_vm_readv 16 bytes of pid's memory."""
    buf = ctypes.create_string_buffer(16)
    local = _IoVec(ctypes.cast(buf, ctypes.c_void_p), 16)
    remote = _IoVec(ctypes.c_void_p(0x400000), 16)
    rc = LIBC.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if rc < 0 and ctypes.get_errno() == errno.EFAULT:
        return "OPEN: process_vm_readv reached the process (bad address only)"
    return _errno_result(rc, "process_vm_readv")


def _exec() -> str:
    """Start /bin/true (posix_spawn: an exec failure comes back as an error here)."""
    pid = os.posix_spawn("/bin/true", ["true"], {})
    os.waitpid(pid, 0)
    return f"OPEN: /bin/true ran as pid {pid}"


def _sysv_shm() -> str:
    """Create a System V shared memory segment another process could attach."""
    shmid = LIBC.shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0o666)
    if shmid >= 0:
        LIBC.shmctl(shmid, 0, None)              # IPC_RMID
    return _errno_result(shmid, "shmget")


def _flock() -> str:
    """Lock a file every process may read (its code): another can see the lock come and go."""
    import fcntl
    with open(__file__, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(f, fcntl.LOCK_UN)
    return f"OPEN: flock on {__file__}"


def _fcntl_lock() -> str:
    """A record lock on a file every process may read."""
    import fcntl
    with open(__file__, "rb") as f:
        fcntl.lockf(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.lockf(f, fcntl.LOCK_UN)
    return f"OPEN: fcntl lock on {__file__}"


def _inotify() -> str:
    """A watch that sees other processes open shared files."""
    fd = LIBC.inotify_init1(0)
    if fd >= 0:
        os.close(fd)
    return _errno_result(fd, "inotify_init1")


def attempt(fn: Callable[[], str]) -> str:
    """Run one attempt: its own verdict, or blocked with the errno it failed with."""
    try:
        return fn()
    except OSError as exc:
        return f"blocked: {errno.errorcode.get(exc.errno or 0, exc.errno)}"


def channels(args: argparse.Namespace) -> dict[str, Callable[[], str]]:
    """Every side channel to try, by name."""
    v, k = args.victim_pid, args.kernel_pid
    tag = f"{os.getpid()}"
    return {
        "tmp_file": lambda: _write_file(f"/tmp/sealedos-sidechannel-{tag}"),
        "shm_file": lambda: _write_file(f"/dev/shm/sealedos-sidechannel-{tag}"),
        "victim_dir_write": lambda: _write_file(os.path.join(args.victim_dir, "planted")),
        "victim_dir_read": lambda: _read_file(os.path.join(args.victim_dir, SECRET_NAME)),
        "tcp_socket": lambda: _socket(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 9)),
        "udp_socket": lambda: _socket(socket.AF_INET, socket.SOCK_DGRAM, None),
        "unix_socket": lambda: _socket(socket.AF_UNIX, socket.SOCK_STREAM, None),
        "socketpair": _socketpair,
        "kill_victim": lambda: _kill(v, signal.SIGSTOP),
        "kill_kernel": lambda: _kill(k, 0),
        "victim_mem": lambda: _read_mem(v),
        "kernel_mem": lambda: _read_mem(k),
        "kernel_environ": lambda: _read_file(f"/proc/{k}/environ"),
        "ptrace_victim": lambda: _ptrace(v),
        "vm_readv_victim": lambda: _vm_readv(v),
        "exec": _exec,
        "sysv_shm": _sysv_shm,
        "device_file": lambda: _read_file(args.device_file),
        "flock_shared_file": _flock,
        "fcntl_lock_shared_file": _fcntl_lock,
        "inotify": _inotify,
    }


def try_all(args: argparse.Namespace) -> dict[str, str]:
    """Each channel's outcome."""
    return {name: attempt(fn) for name, fn in channels(args).items()}


def opened(results: dict[str, str]) -> list[str]:
    """The channels that were not blocked."""
    return [name for name, r in results.items() if not r.startswith("blocked")]


def attacker(proc: SealedProcess, args: argparse.Namespace, early: dict[str, str]) -> int:
    """Try every side channel (`early`: what was tried before connecting); REPORT each
    outcome; status 0 when all were blocked once connected."""
    results = try_all(args)
    conf = proc.confinement
    proc.report(**{f"ch_{name}": r[:120] for name, r in results.items()},
                open_channels=",".join(opened(results)), channels=len(results),
                early_open_channels=",".join(opened(early)),
                landlock_abi=conf.landlock_abi if conf else 0,
                seccomp=bool(conf and conf.seccomp),
                no_new_sockets=bool(conf and conf.no_new_sockets))
    return 0 if not opened(results) else 1


def main(argv: list[str]) -> int:
    """Run as victim or attacker (see the module docstring)."""
    args = build_parser().parse_args(argv)
    early = try_all(args) if args.role == "attacker" else {}     # before the kernel knows us
    with SealedProcess.connect(args.kernel) as proc:
        if args.role == "victim":
            return run_reporting(proc, lambda: victim(proc, args))
        return run_reporting(proc, lambda: attacker(proc, args, early))
