"""The real Kernel, in process, over the simulated transport and clock (host_tools/sim/kit.py).

Exact frames at exact simulated times: admission by the launcher only, one REGISTER per
credential, and the liveness of a process the kernel cannot watch on the host (hostpid 0:
it is dead once silent for PROC_DEAD_MS of the kernel's clock -- simulated here).
"""
from __future__ import annotations

from typing import Any

from host_tools.sim.kit import Harness, Peer
from kernel_daemon.kernel import PROC_DEAD_MS, Kernel
from wire import entropy
from wire.credential import new_credential, public_of
from wire.protocol import Err

ADDR = "sim://kernel"


def boot() -> tuple[Harness, Kernel, bytes]:
    """A kernel on the harness; returns it with the launcher's secret."""
    h = Harness()
    launcher_secret = new_credential()
    k = Kernel(ADDR, 4, "clock", launcher_key=public_of(launcher_secret),
               transport=h.transport("kernel"), clock=h.clock)
    h.adopt(k)
    k.on_start()
    return h, k, launcher_secret


def admit(peer: Peer, rid: int, cred: bytes, name: str = "app") -> None:
    peer.send({"op": "admit", "rid": rid, "cred": cred, "name": name, "program": "p",
               "digest": "d", "role": "app", "manifest": [], "provides": [], "quota": {},
               "hostpid": 0, "started": 0.0})


def last(peer: Peer) -> dict[str, Any]:
    return peer.received[-1]


def test_only_the_launcher_admits_and_a_credential_registers_once() -> None:
    h, k, secret = boot()
    launcher, intruder = h.peer("launcher", ADDR), h.peer("intruder", ADDR)
    admit(intruder, 1, new_credential())
    h.run_for(0.01)
    assert last(intruder)["err"] == Err.PERM
    admit(launcher, 2, secret)
    h.run_for(0.01)
    cred = last(launcher)["cred"]
    app, thief = h.peer("app", ADDR), h.peer("thief", ADDR)
    app.send({"op": "register", "rid": 1, "cred": cred})
    h.run_for(0.01)
    assert last(app)["name"] == "app" and last(app)["spid"] == 1
    thief.send({"op": "register", "rid": 1, "cred": cred})
    h.run_for(0.01)
    assert last(thief)["err"] == Err.PERM
    assert set(k.procs.by_spid) == {1}


def test_a_silent_remote_process_is_reclaimed_on_the_kernels_clock() -> None:
    h, k, secret = boot()
    launcher, app = h.peer("launcher", ADDR), h.peer("app", ADDR)
    admit(launcher, 1, secret)
    h.run_for(0.01)
    app.send({"op": "register", "rid": 1, "cred": last(launcher)["cred"]})
    h.run_for(0.01)
    app.send({"op": "map", "rid": 2, "npages": 4, "prot": 3})
    h.run_for(PROC_DEAD_MS / 1000 - 1.0)              # silent, but not for long enough
    assert 1 in k.procs.by_spid
    h.run_for(2.0)
    assert not k.procs.by_spid
    assert k.procs.exited[-1]["state"] == "killed" and k.procs.exited[-1]["exit_reason"] == "died"


def test_seeded_entropy_reproduces_every_secret() -> None:
    """What the simulator relies on: one seed, the same credentials and ATTACH secrets."""
    import random

    def secrets_of_one_boot() -> tuple[bytes, bytes]:
        entropy.set_source(random.Random(7).randbytes)
        try:
            h, k, secret = boot()
            launcher, app = h.peer("launcher", ADDR), h.peer("app", ADDR)
            admit(launcher, 1, secret)
            h.run_for(0.01)
            app.send({"op": "register", "rid": 1, "cred": last(launcher)["cred"]})
            h.run_for(0.01)
            return last(launcher)["cred"], last(app)["secret"]
        finally:
            entropy.set_source(None)

    assert secrets_of_one_boot() == secrets_of_one_boot()
    assert new_credential() != new_credential()       # and os.urandom again afterwards
