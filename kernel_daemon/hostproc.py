"""Host processes the trusted launcher vouched for: known by pid AND start time.

The kernel watches and signals host processes only when the launcher told it which ones they
are (ADMIT for sealed processes, PAGER_INSTANCE for pagers), never a pid a message claims, and
only after checking that the pid still names *that* process: a pid is reused once its process
is gone, its start time is not.  (No command-line substrings: they are whatever a process
says.)  ExitWatch notices their exits: one poll over their pidfds per kernel tick, so the
tick costs the same with 256 processes as with 16 (reading /proc for each did not).
"""
from __future__ import annotations

import os
import select

import psutil

#: Two start times closer than this are the same host process (psutil rounds them).
SAME_START_S: float = 0.05
#: Linux pids are below this (pid_max is at most 2**22).
PID_LIMIT: int = 1 << 22


def same_process(pid: int, started: float) -> psutil.Process | None:
    """The live host process `pid` if it is the one started at `started`, else None: it
    exited, is a zombie, or the pid now belongs to another process (never raises)."""
    if not 0 < pid < PID_LIMIT:
        return None
    try:
        p = psutil.Process(pid)
        if abs(p.create_time() - started) > SAME_START_S or p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p
    except (psutil.Error, ValueError, OverflowError):
        return None


def kill_if_same(pid: int, started: float) -> bool:
    """SIGKILL host process `pid` if it is still the one started at `started`; True if sent."""
    p = same_process(pid, started)
    if p is None:
        return False
    try:
        p.kill()
    except psutil.Error:
        return False
    return True


class ExitWatch:
    """Notices the exit of watched host processes without looking at each one: a pidfd per
    process (Linux >= 5.3), readable once it has exited, all polled in one system call.

    Opening a pidfd by pid races with pid reuse, so a pidfd is kept only if, once open, the
    pid still names the process started at `started` (same_process): the pidfd then holds
    *that* process, whatever its pid names later.  A process not watched this way (no pidfd
    support, out of descriptors, already gone) is the caller's to check with same_process."""

    def __init__(self) -> None:
        self._poll = select.poll()
        self._keys: dict[int, int] = {}           # pidfd -> key
        self._fds: dict[int, int] = {}            # key -> pidfd

    def __contains__(self, key: int) -> bool:
        return key in self._fds

    def watch(self, key: int, pid: int, started: float) -> bool:
        """Watch host process `pid` (started at `started`) under `key`; False if not watched."""
        if not 0 < pid < PID_LIMIT or key in self._fds:
            return False
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return False
        if same_process(pid, started) is None:     # gone, or the pid names another process
            os.close(fd)
            return False
        self._keys[fd], self._fds[key] = key, fd
        self._poll.register(fd, select.POLLIN)
        return True

    def exited(self) -> list[int]:
        """The keys of watched processes that have exited (each is then forgotten)."""
        gone = [self._keys[fd] for fd, _ in self._poll.poll(0)]
        for key in gone:
            self.forget(key)
        return gone

    def forget(self, key: int) -> None:
        """Stop watching `key` and close its pidfd (no-op if not watched)."""
        fd = self._fds.pop(key, None)
        if fd is not None:
            del self._keys[fd]
            self._poll.unregister(fd)
            os.close(fd)
