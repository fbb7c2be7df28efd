"""The kernel's admission and liveness, in process, on the shared harness (tests/kernel_harness.py).

Exact frames at exact simulated times: admission by the launcher only, one REGISTER per
credential, and the liveness of a process the kernel cannot watch on the host (hostpid 0:
it is dead once silent for PROC_DEAD_MS of the kernel's clock -- simulated here).  Kernel
state is read as an observer reads it (PS), never from the kernel's objects.
"""
from __future__ import annotations

import random

from kernel_harness import ADDR, Rig, admission

from kernel_daemon.kernel import PROC_DEAD_MS
from wire import entropy
from wire.credential import new_credential
from wire.protocol import Err


def test_only_the_launcher_admits_and_a_credential_registers_once() -> None:
    rig = Rig()
    intruder = rig.h.peer("intruder", ADDR)
    assert rig.ask(intruder, "admit", **admission(new_credential(), "app"))["err"] == Err.PERM
    cred = rig.admit("app")
    app, thief = rig.h.peer("app", ADDR), rig.h.peer("thief", ADDR)
    reg = rig.ask(app, "register", cred=cred)
    assert reg["name"] == "app" and reg["spid"] == 1
    assert rig.ask(thief, "register", cred=cred)["err"] == Err.PERM
    assert [(r["spid"], r["name"]) for r in rig.processes()] == [(1, "app")]


def test_a_silent_remote_process_is_reclaimed_on_the_kernels_clock() -> None:
    rig = Rig()
    app = rig.h.peer("app", ADDR)                      # registers, never ATTACHes or beats
    spid = rig.ask(app, "register", cred=rig.admit("app"))["spid"]
    rig.send(app, "map", npages=4, prot=3)
    rig.run(PROC_DEAD_MS / 1000 - 1.0)                 # silent, but not for long enough
    assert rig.ps(spid)["state"] not in ("exited", "killed")
    rig.run(2.0)
    record = rig.ps(spid)
    assert (record["state"], record["exit_reason"]) == ("killed", "died")


def test_seeded_entropy_reproduces_every_secret() -> None:
    """What the simulator relies on: one seed, the same credentials and ATTACH secrets."""

    def secrets_of_one_boot() -> tuple[bytes, bytes]:
        entropy.set_source(random.Random(7).randbytes)
        try:
            rig = Rig()
            cred = rig.admit("app")
            return cred, rig.ask(rig.h.peer("app", ADDR), "register", cred=cred)["secret"]
        finally:
            entropy.set_source(None)

    assert secrets_of_one_boot() == secrets_of_one_boot()
    assert new_credential() != new_credential()       # and os.urandom again afterwards
