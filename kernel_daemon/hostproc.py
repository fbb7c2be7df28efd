"""Host processes the trusted launcher vouched for: known by pid AND start time.

The kernel watches and signals host processes only when the launcher told it which ones they
are (ADMIT for sealed processes, PAGER_INSTANCE for pagers), never a pid a message claims, and
only after checking that the pid still names *that* process: a pid is reused once its process
is gone, its start time is not.  (No command-line substrings: they are whatever a process
says.)
"""
from __future__ import annotations

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
