"""Attacks on identity: a process that claims to be someone else gets nothing.

Each test runs the attack as a real peer against a real system (raw connections where the
runtime would refuse to send the bad thing) and checks that the attack fails, the victim's
data verifies and the kernel keeps serving.  The issue's bullets:

* "Program, digest and manifest are whatever the process says": an attacker registered as
  program kvstore with the real file's sha256 and manifest ["*"], took over the name kv.
* "The kernel SIGKILLs any pid a process claims": REGISTER with another process's host pid,
  refuse one shootdown, and the kernel killed that pid.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import polling
import pytest

from apps.runtime import SealedProcess
from apps.runtime.errors import PermissionDenied
from host_tools.system import System
from wire.client import Client
from wire.protocol import PROT_R, PROT_W, Err, Op, ServiceError

ROOT = Path(__file__).resolve().parents[2]
KILL_GRACE_S: float = 2.5


@pytest.fixture
def system(make_system: Callable[..., System]) -> System:
    return make_system(frames=8, disk_size_mib=8)


def register_raw(system: System, as_: tuple[str, str] = ("memstress", "raw"),
                 **claims: object) -> tuple[Client, dict]:
    """A raw connection registered with a credential the launcher issued for program
    as_[0] named as_[1]; `claims` are extra fields the attacker adds to its REGISTER (the
    kernel must ignore them).  The reply gets the credential as "cred" (for ATTACH's
    connection, which must prove the same key)."""
    cred = system.admit(*as_)
    c = Client(system.kernel_addr, keys=system.credential_keyring(cred))
    return c, dict(c.call(Op.REGISTER, cred=cred, **claims), cred=cred)


def test_register_without_an_issued_credential_is_refused(system: System) -> None:
    cred = system.admit("memstress", "once")
    with Client(system.kernel_addr, keys=system.keyring("observer")) as c:   # admitted, no process
        for fields in ({}, {"cred": os.urandom(32)}, {"cred": b"short"}, {"cred": cred},
                       {"name": "kvstore", "program": "kvstore", "digest": "0" * 64,
                        "manifest": ["*"], "hostpid": 1}):
            with pytest.raises(ServiceError) as info:
                c.call(Op.REGISTER, **fields)
            assert info.value.code == Err.PERM, fields
    with Client(system.kernel_addr, keys=system.credential_keyring(cred)) as c:
        c.call(Op.REGISTER, cred=cred)
        with Client(system.kernel_addr, keys=system.credential_keyring(cred)) as again, \
                pytest.raises(ServiceError) as info:
            again.call(Op.REGISTER, cred=cred)               # a credential admits one process
    assert info.value.code == Err.PERM and "used up" in info.value.msg
    assert system.client().call(Op.PING)["service"] == "kernel"


def test_claimed_program_digest_and_manifest_are_ignored(system: System) -> None:
    c, reg = register_raw(system, ("memstress", "liar"), program="kvstore", name="kvstore",
                          digest=hashlib.sha256(b"x").hexdigest(), manifest=["*"],
                          hostpid=os.getpid(), init_token="guess", role="init")
    try:
        rec = system.process("liar")
        real = hashlib.sha256((ROOT / "apps" / "memstress.py").read_bytes()).hexdigest()
        assert rec is not None and reg["name"] == "liar"
        assert (rec["program"], rec["digest"], rec["role"]) == ("memstress", real, "app")
        assert rec["hostpid"] == 0                            # the launcher said: not local
        assert system.stats()["kernel"]["ipc"]["init_spid"] != reg["spid"]
    finally:
        c.close()


def test_only_the_launcher_admits(system: System) -> None:
    c, _ = register_raw(system)
    with c, Client(system.kernel_addr, keys=system.keyring("observer")) as outsider:
        fields = dict(name="evil", program="kvstore", digest="0" * 64, role="init",
                      manifest=["*"], provides=["*"], quota={}, hostpid=1, started=0.0)
        for conn, extra in ((outsider, {}), (outsider, {"cred": os.urandom(32)}), (c, {})):
            with pytest.raises(ServiceError) as info:
                conn.call(Op.ADMIT, **fields, **extra)
            assert info.value.code == Err.PERM and "only the launcher" in info.value.msg


def test_only_the_launcher_names_a_pagers_host_process(system: System) -> None:
    """PAGER_INSTANCE would let the kernel SIGKILL that pid when slot 0 hangs: an outsider
    naming the kernel's own pid, or a sealed process, is refused; the kernel keeps serving."""
    kernel_pid = system.services["kernel"].pid
    c, _ = register_raw(system)
    with c, Client(system.kernel_addr, keys=system.keyring("observer")) as outsider:
        for conn, extra in ((outsider, {}), (outsider, {"cred": os.urandom(32)}), (c, {})):
            with pytest.raises(ServiceError) as info:
                conn.call(Op.PAGER_INSTANCE, mirror=0, hostpid=kernel_pid, started=0.0, **extra)
            assert info.value.code == Err.PERM and "only the launcher" in info.value.msg
    assert system.client().call(Op.PING)["pid"] == kernel_pid


def test_only_init_stashes_what_the_next_init_inherits(system: System) -> None:
    c, _ = register_raw(system)
    with c, pytest.raises(ServiceError) as info:
        c.call(Op.STASH, data=b"\x81\xa2kv\x94\x01\x01\xa1x\xa1y")   # a forged name table
    assert info.value.code == Err.PERM and "only init" in info.value.msg


def test_a_name_outside_provides_cannot_be_taken_over(system: System) -> None:
    server = system.spawn_app("kvstore", ["--slots", "64"], "kv.server")
    thief = SealedProcess.connect(system.kernel_addr, system.admit("memstress", "thief"))
    try:
        polling.wait_for("kv registered by its server", lambda: "kv" in _names(system), 20)
        from apps.kvstore import KV_CONTRACT
        h = thief.endpoint(KV_CONTRACT)                     # the same contract, even
        with pytest.raises(PermissionDenied, match="provides"):
            thief.register_name("kv", h)
        with pytest.raises(PermissionDenied):
            thief.lookup("kv")                                 # memstress's manifest is empty
        client = system.spawn_app("kvstore", ["--client", "--ops", "40"], "kv.client")
        assert client.proc.wait(60) == 0, system.process("kv.client")["report"]
        assert system.process("kv.client")["checksum"] == "verified"
    finally:
        thief.close()
        server.proc.terminate()


def _names(system: System) -> set[str]:
    """Contract names of the live endpoints (kvstore's is 'kv' once it serves)."""
    return {e["contract"] for e in system.stats()["kernel"]["ipc"]["endpoints"]}


def test_a_claimed_host_pid_is_never_signalled(system: System) -> None:
    # "sealedos" in its command line: the old kernel's only check before a SIGKILL.
    decoy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "sealedos"])
    try:
        c, reg = register_raw(system, hostpid=decoy.pid, host="localhost")
        ctl = Client(system.kernel_addr, keys=system.credential_keyring(reg["cred"]))
        ctl.call(Op.ATTACH, spid=reg["spid"], secret=reg["secret"])
        addr = c.call(Op.MAP, npages=2, prot=PROT_R | PROT_W)["addr"]
        c.call(Op.FAULT, vpn=addr >> 12, access="w", refs=[])
        # Make the kernel take the frame back: a well-behaved process fills every frame.
        victim = SealedProcess.connect(system.kernel_addr, system.admit("memstress", "filler"))
        try:
            base = victim.map(16)
            for i in range(16):
                victim.store_u64(base + i * 4096, i)
            # The attacker never answers its SHOOTDOWN: the kernel stops it ...
            polling.wait_for("the attacker killed",
                             lambda: (system.process("raw") or {}).get("state") == "killed", 15)
            time.sleep(KILL_GRACE_S)                  # ... and would SIGKILL after the grace
            assert decoy.poll() is None, "the kernel signalled a pid the attacker named"
            assert all(victim.load_u64(base + i * 4096) == i for i in range(16))
        finally:
            victim.close()
            c.close()
            ctl.close()
    finally:
        decoy.kill()
        decoy.wait()


def test_a_restarted_init_gets_its_registered_names_back(system: System) -> None:
    server = system.spawn_app("kvstore", ["--slots", "64"], "kv.server2")
    probe = SealedProcess.connect(system.kernel_addr, system.admit("kvstore", "probe"))
    try:
        probe.lookup("kv", wait_s=20)                    # init has the name
        first = system.stats()["kernel"]["ipc"]["init_spid"]
        os.kill(system.services["init"].pid, 9)

        def new_init_serves_names() -> bool:
            ipc = system.stats()["kernel"]["ipc"]
            return bool(ipc["nameservice"]) and ipc["init_spid"] not in (None, first)
        polling.wait_for("a new init serving names", new_init_serves_names, 20)
        assert system.services["init"].restarts == 1
        client = system.spawn_app("kvstore", ["--client", "--ops", "40"], "kv.client2")
        assert client.proc.wait(60) == 0, system.process("kv.client2")["report"]
        assert system.process("kv.client2")["checksum"] == "verified"
    finally:
        probe.close()
        server.proc.terminate()
