"""Reach: let a child that drops to an unprivileged uid still run this Python and this code.

A principal's uid may not traverse the directory the interpreter was installed under (pyenv
in /root, which is 0700).  Rather than loosen the host's permissions, the launcher gives
such a child its own mount namespace in which each blocking directory is covered by an empty
0711 tmpfs with only the needed entries bind-mounted back (read-only): the child sees the
Python installation and the project, and nothing else of, say, /root.  The plan is computed
in the parent (:func:`plan`); the child applies it between fork and exec (:func:`apply`),
while still root.  Nothing changes for anyone else.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import stat
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

CLONE_NEWNS: int = 0x00020000
MS_RDONLY: int = 1
MS_REMOUNT: int = 32
MS_BIND: int = 4096
MS_REC: int = 16384
MS_PRIVATE: int = 1 << 18
#: A uid no principal uses: the probe's child drops to it.
PROBE_UID: int = 65534

#: One blocking directory and the entries under it the child needs back.
Plan = list[tuple[str, list[str]]]


def needed_paths() -> list[str]:
    """What a sealedos child reads: the interpreter, its installation, the project's code
    (PYTHONPATH, the launcher's package root) and the working directory."""
    project = str(Path(__file__).resolve().parent.parent)
    paths = [os.path.realpath(sys.executable), sys.prefix, sys.base_prefix, sys.exec_prefix,
             project, os.getcwd()]
    paths += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return [os.path.realpath(p) for p in paths]


def _world_traversable(path: str) -> bool:
    """True when any uid may pass through directory `path`."""
    return bool(os.stat(path).st_mode & stat.S_IXOTH)


def plan(paths: list[str]) -> Plan:
    """Every directory on the way to `paths` that other uids cannot traverse, shallowest
    first, with the entries below it that lead to the paths."""
    blocked: dict[str, set[str]] = {}
    for path in paths:
        parts = Path(path).parts
        for depth in range(1, len(parts)):
            parent = str(Path(*parts[:depth]))
            try:
                if not _world_traversable(parent):
                    blocked.setdefault(parent, set()).add(parts[depth])
            except OSError:
                break
    return sorted(((d, sorted(e)) for d, e in blocked.items()), key=lambda x: x[0].count("/"))


def _libc() -> ctypes.CDLL:
    """The C library, with errno."""
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(rc: int, what: str) -> None:
    """Raise OSError naming `what` when a libc call failed."""
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def apply(the_plan: Plan) -> None:
    """In the child, as root, before dropping its uid: a private mount namespace in which
    each blocked directory is a 0711 tmpfs holding read-only binds of the needed entries."""
    if not the_plan:
        return
    libc = _libc()
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    fds = {f"{d}/{e}": os.open(f"{d}/{e}", os.O_PATH) for d, entries in the_plan for e in entries}
    try:
        for directory, entries in the_plan:
            _check(libc.mount(b"tmpfs", directory.encode(), b"tmpfs", 0, b"mode=0711,size=64k"),
                   f"mount tmpfs on {directory}")
            for entry in entries:
                target = f"{directory}/{entry}"
                source = f"/proc/self/fd/{fds[target]}".encode()
                if stat.S_ISDIR(os.fstat(fds[target]).st_mode):
                    os.mkdir(target, 0o711)
                else:
                    os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o600))
                _check(libc.mount(source, target.encode(), None, MS_BIND | MS_REC, None),
                       f"bind {target}")
                _check(libc.mount(None, target.encode(), None,
                                  MS_BIND | MS_REMOUNT | MS_RDONLY, None),
                       f"remount {target} read-only")
    finally:
        for fd in fds.values():
            os.close(fd)


@lru_cache(maxsize=1)
def cached_plan() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """This launcher's plan (computed once; the interpreter and project do not move)."""
    return tuple((d, tuple(e)) for d, e in plan(needed_paths()))


@lru_cache(maxsize=1)
def can_drop_uid() -> str | None:
    """None when a child can drop to an unprivileged uid and still run this Python here;
    else why not (checked once, by starting one such child)."""
    if os.geteuid() != 0:
        return "not running as root"
    the_plan = [(d, list(e)) for d, e in cached_plan()]

    def child() -> None:
        """In the probe's child: what spawn() does for a principal."""
        apply(the_plan)
        os.setgroups([])
        os.setgid(PROBE_UID)
        os.setuid(PROBE_UID)

    try:
        done = subprocess.run([sys.executable, "-c", "import zmq, numpy, msgpack"],
                              preexec_fn=child, capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"a child could not drop its uid: {exc}"
    if done.returncode != 0:
        return f"a child under another uid cannot run {sys.executable}: " \
               f"{done.stderr.decode(errors='replace').strip()[-300:]}"
    return None
