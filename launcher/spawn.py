"""Starting and stopping the system's OS processes: private runtime directories, children that
die with their parent, and a stop that leaves no orphan and no stale socket.

Used by the launcher (`sealedos up`), the benchmarks and the tests alike.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

from launcher import reach

PR_SET_PDEATHSIG: int = 1
#: Every child creates its files and sockets private to its uid unless it says otherwise.
PRIVATE_UMASK: int = 0o077
STOP_GRACE_S: float = 3.0


def make_rundir(prefix: str = "sealedos-") -> Path:
    """Create a private (0700) runtime directory for one run; short, so ipc:// paths fit."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def remove_rundir(path: Path) -> None:
    """Delete a runtime directory and every socket or file left in it."""
    shutil.rmtree(path, ignore_errors=True)


def ipc_addr(rundir: Path, name: str) -> str:
    """The ipc:// address of socket `name` inside `rundir`."""
    return f"ipc://{rundir}/{name}.sock"


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGKILL us when the parent dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def _child_setup(nice: int, uid: int | None, plan: reach.Plan) -> None:
    """In the child, before exec: become `uid` (its own group, no others; the mount plan
    first, so it can still reach the interpreter), then die with the parent (after the uid
    change, which clears it), files private by default; the CPU priority asked for first (a
    negative change needs root)."""
    if nice:
        os.nice(nice)
    if uid is not None:
        reach.apply(plan)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    _die_with_parent()
    os.umask(PRIVATE_UMASK)


def python_cmd(*args: str) -> list[str]:
    """The command line that runs `sealedos ARGS` with this interpreter."""
    return [sys.executable, "-m", "host_tools.cli", *args]


def spawn(cmd: Sequence[str], log_path: Path | None = None,
          env: dict[str, str] | None = None, nice: int = 0,
          pass_fds: Sequence[int] = (), inherit_output: bool = False,
          uid: int | None = None) -> subprocess.Popen[bytes]:
    """Start one child process that is SIGKILLed if we die; its output goes to log_path
    (opened here, so the log stays the launcher's; or, with inherit_output, to ours); nice
    changes its CPU priority by that much (< 0 raises it: root only); pass_fds are inherited
    (credentials); uid: run it as that unprivileged uid and gid (the launcher must be root)."""
    plan = [(d, list(e)) for d, e in reach.cached_plan()] if uid is not None else []
    log = (open(os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab")
           if log_path is not None else None)
    out = log or (None if inherit_output else subprocess.DEVNULL)
    full_env = dict(os.environ)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    if env:
        full_env.update(env)
    try:
        return subprocess.Popen(list(cmd), stdout=out,
                                stderr=None if out is None else subprocess.STDOUT, env=full_env,
                                stdin=subprocess.DEVNULL, pass_fds=tuple(pass_fds),
                                preexec_fn=lambda: _child_setup(nice, uid, plan))
    finally:
        if log is not None:
            log.close()


def wait_for_path(path: Path, timeout_s: float = 10.0,
                  proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until `path` exists (a service bound its socket); raise if it does not in time."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} "
                               f"before creating {path}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout_s} s")
        time.sleep(0.02)


def stop(proc: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> int | None:
    """Stop a child (and its descendants): SIGTERM, then SIGKILL after grace_s; reap it."""
    if proc.poll() is not None:
        return proc.returncode
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        children = []
    for p in [proc, *children]:
        try:
            p.send_signal(signal.SIGCONT)
            p.send_signal(signal.SIGTERM)
        except (psutil.Error, ProcessLookupError):
            pass
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for c in children:
        try:
            c.kill()
        except psutil.Error:
            pass
    return proc.returncode


def stop_all(procs: Sequence[subprocess.Popen[bytes]], grace_s: float = STOP_GRACE_S) -> None:
    """Stop every child in `procs`, most recently started first."""
    for p in reversed(list(procs)):
        stop(p, grace_s)
