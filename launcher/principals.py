"""Principals: who each started process is to the host, and the private places each one owns.

A principal is one party the threat model names: the kernel, the launcher, an observer, pager
slot N (``pager0`` ...), disk N (``disk0`` ...), or one sealed process (``app-<name>``).

* When the launcher runs as root (containers, CI), every principal but the kernel runs under
  its own unprivileged uid (:meth:`Principals.uid`); a sealed process then cannot open another
  principal's files or sockets, nor read its memory.  As an ordinary user everything runs
  under that user, and the non-dumpable guarantee (no /proc/PID/mem, no ptrace, no environ)
  is what remains.
* Each principal has a private directory ``RUNDIR/priv/<principal>/`` (0700, owned by its
  uid): its secret key and anything else only it may read live there
  (:meth:`Principals.private_dir`).
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

#: Unprivileged uids handed to principals when the launcher runs as root, in order of first
#: use (no /etc/passwd entry is needed for setuid); one launcher's principals never share one.
UID_BASE: int = 200_000
#: Each launcher draws its own block of uids (see :func:`random_uid_base`): this many per block,
#: and this many blocks above UID_BASE (all below 2**31 + UID_BASE, far from 65534 and -1).
UID_BLOCK: int = 4096
UID_BLOCKS: int = 1 << 19
#: The principal that keeps root (the trusted kernel must signal the processes it stops).
KERNEL: str = "kernel"


def running_as_root() -> bool:
    """True when this process may hand out uids (the containers' and CI's case)."""
    return os.geteuid() == 0


def random_uid_base() -> int:
    """A uid block for one launcher: two systems on one host (two test runs, two users of
    `sealedos up`) then almost never hand the same uid to different principals, so one
    system's disk cannot open another's device file."""
    return UID_BASE + secrets.randbelow(UID_BLOCKS) * UID_BLOCK


class Principals:
    """One launcher's book of principals: a stable uid each, and their private directories."""

    def __init__(self, rundir: Path, uid_base: int = UID_BASE, isolate: bool | None = None) -> None:
        """isolate: hand out uids (default: when root); False keeps everyone the launcher's."""
        self.rundir = rundir
        self.isolate = running_as_root() if isolate is None else isolate
        self._uids: dict[str, int] = {}
        self._next = uid_base

    def uid(self, principal: str) -> int | None:
        """The uid `principal` runs under (the same every time it is started), or None: the
        launcher's own (not root, or the kernel)."""
        if not self.isolate or principal == KERNEL:
            return None
        if principal not in self._uids:
            self._uids[principal] = self._next
            self._next += 1
        return self._uids[principal]

    def private_dir(self, principal: str) -> Path:
        """RUNDIR/priv/PRINCIPAL: created 0700 and owned by the principal's uid (when root)."""
        base = self.rundir / "priv"
        base.mkdir(mode=0o711, exist_ok=True)
        path = base / principal
        path.mkdir(mode=0o700, exist_ok=True)
        uid = self.uid(principal)
        if uid is not None:
            os.chown(path, uid, uid)
        return path

    def socket_dir(self, owner: str, client: str) -> Path:
        """RUNDIR/sock/OWNER: where `owner` binds a socket only `client` (and root) may reach:
        0710, owned by the owner's uid, group the client's (every principal's gid is its uid).
        Not root: 0700, the launcher's (everything runs as one uid)."""
        base = self.rundir / "sock"
        base.mkdir(mode=0o711, exist_ok=True)
        path = base / owner
        path.mkdir(mode=0o700, exist_ok=True)
        uid, gid = self.uid(owner), self.uid(client)
        if uid is not None and gid is not None:
            os.chown(path, uid, gid)
            os.chmod(path, 0o710)
        return path
