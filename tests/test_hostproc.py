"""Noticing that a local process exited (kernel_daemon/hostproc.py): real child processes.

ExitWatch holds a pidfd per process and reports the ones that exited in one poll; it keeps
a pidfd only for the process started at the time the launcher said (pid reuse); the kernel
reclaims a local sealed process whose host process died within one liveness tick.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
from kernel_harness import ADDR, Rig, admission

from kernel_daemon.hostproc import ExitWatch
from kernel_daemon.kernel import LIVENESS_MS

#: How long a test waits for a killed child to be reported (a bound, not a measurement).
WAIT_S: float = 10.0


@contextmanager
def children(n: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """n sleeping child processes, killed and reaped afterwards."""
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
             for _ in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


def started(p: subprocess.Popen[bytes]) -> float:
    return float(psutil.Process(p.pid).create_time())


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def wait_exited(watch: ExitWatch) -> list[int]:
    """The first non-empty exited() (empty after WAIT_S)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        gone = watch.exited()
        if gone:
            return gone
        time.sleep(0.01)
    return []


def test_exitwatch_reports_exactly_the_processes_that_exited() -> None:
    fds = open_fds()
    watch = ExitWatch()
    with children(3) as kids:
        assert all(watch.watch(i, p.pid, started(p)) for i, p in enumerate(kids))
        assert watch.exited() == [] and all(i in watch for i in range(3))
        kids[1].kill()                         # a zombie until reaped: exited all the same
        assert wait_exited(watch) == [1]
        assert 1 not in watch and 0 in watch and 2 in watch
        kids[0].kill()
        kids[0].wait()                         # reaped
        assert wait_exited(watch) == [0]
        watch.forget(2)
        watch.forget(2)                        # forgetting twice is harmless
        assert 2 not in watch and watch.exited() == []
    assert open_fds() == fds                   # every pidfd closed


def test_exitwatch_refuses_another_process_under_the_same_pid() -> None:
    watch = ExitWatch()
    with children(1) as (kid,):
        assert not watch.watch(7, kid.pid, started(kid) + 10.0)    # the pid was reused
        assert not watch.watch(8, 0, 0.0) and not watch.watch(9, 1 << 22, 0.0)
        kid.kill()
        kid.wait()
        assert not watch.watch(10, kid.pid, started_or_zero(kid.pid))   # gone already
    assert all(k not in watch for k in (7, 8, 9, 10))


def started_or_zero(pid: int) -> float:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return 0.0


def test_the_kernel_reclaims_a_local_process_whose_host_process_died() -> None:
    rig = Rig()
    with children(2) as kids:
        spids = []
        for i, kid in enumerate(kids):
            fields = {**admission(rig.secret, f"local{i}"), "hostpid": kid.pid,
                      "started": started(kid)}
            cred = bytes(rig.ask(rig.launcher, "admit", **fields)["cred"])
            spids.append(rig.ask(rig.h.peer(f"local{i}", ADDR), "register", cred=cred)["spid"])
        rig.run(3 * LIVENESS_MS / 1000)
        assert all(rig.ps(s)["state"] not in ("exited", "killed") for s in spids)
        kids[0].kill()
        kids[0].wait()
        deadline = time.monotonic() + WAIT_S        # the kill lands in real time
        while rig.ps(spids[0])["state"] != "killed" and time.monotonic() < deadline:
            rig.run(LIVENESS_MS / 1000)
        record = rig.ps(spids[0])
        assert (record["state"], record["exit_reason"]) == ("killed", "died")
        assert rig.ps(spids[1])["state"] not in ("exited", "killed")
