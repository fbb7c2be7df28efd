"""Attacks on the kernel, each run by a real process against a real system: the attack fails
with the right error, a bystander's ping is answered, a victim's data verifies, and the kernel
keeps serving (the same kernel process: nothing restarts it).

Raw ZeroMQ clients (wire.client.Client) play attackers where the runtime would refuse to
send the bad thing; the test process registers as a sealed process (the real runtime) where
it plays an ordinary program.  No assertion is about timing.
"""
from __future__ import annotations

import functools
import itertools
import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import polling
import pytest
import zmq
from systems import running_system

from apps.runtime import SealedProcess
from apps.runtime.errors import SealedError
from host_tools.system import System
from kernel_daemon.contract import CONTRACT_MAX_BYTES
from kernel_daemon.pagetable import MAX_VPN
from kernel_daemon.quota import Limits
from wire import sockets
from wire.client import Client
from wire.protocol import PAGE_SIZE, PROT_R, PROT_W, Err, Op, ServiceError, encode

WAIT_S: float = 60.0
wait_for = functools.partial(polling.wait_for, timeout_s=WAIT_S)
_names = itertools.count(1)
LIMITS = Limits()


# -- the one place processes register (adapt here when REGISTER changes) ------------------------
def register_raw(system: System, name: str, hostpid: int | None = None,
                 manifest: list[str] | None = None) -> tuple[Client, dict[str, Any]]:
    """A raw connection registered as a sealed process (no control connection): the
    attacker's call connection and the kernel's REGISTER reply.  The launcher admits it as
    program "attacker"; hostpid is what the attacker *claims* in its REGISTER (ignored)."""
    cred = system.admit("memstress", name, program="attacker", manifest=tuple(manifest or ()))
    c = Client(system.kernel_addr, keys=system.credential_keyring(cred))   # its key: the credential
    claims = {} if hostpid is None else {"hostpid": hostpid, "host": socket.gethostname()}
    reg = c.call(Op.REGISTER, cred=cred, **claims)
    return c, reg


def connect_sealed(system: System, name: str, manifest: list[str] | None = None
                   ) -> SealedProcess:
    """The test process registered as an ordinary sealed process (the real runtime)."""
    cred = system.admit("memstress", name, manifest=tuple(manifest or ("*",)), provides=("*",))
    return SealedProcess.connect(system.kernel_addr, cred, system.kernel_public())


# -- fixtures and checks ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    """One system for the module (few frames: the victims page through the pager)."""
    with running_system(frames=32, disk_size_mib=16) as system:
        yield system


@pytest.fixture(scope="module")
def kernel_pid(system: System) -> int:
    """The kernel's pid when the module started (it must never change)."""
    return system.client().call(Op.PING)["pid"]


@pytest.fixture
def victim(system: System) -> str:
    """A memstress app (more pages than frames: it pages out and back in) started before
    the attack; its name."""
    name = f"victim.{next(_names)}"
    system.spawn_app("memstress", ["--pages", "48", "--passes", "2"], name)
    return name


def record(system: System, name: str) -> dict[str, Any]:
    """The kernel's newest record of process `name` ({} if none)."""
    return system.process(name) or {}


def assert_survived(system: System, kernel_pid: int, victim: str) -> None:
    """The kernel (the same process) answers a bystander's ping, the victim's data verifies
    and no callback of the kernel failed."""
    with Client(system.kernel_addr, keys=system.keyring("observer")) as bystander:
        assert bystander.call(Op.PING)["pid"] == kernel_pid
    rec = wait_for(f"{victim} to finish", lambda: (r := record(system, victim)).get(
        "state") in ("exited", "killed") and r)
    assert rec["checksum"] == "verified", (rec, system.log_tail(victim))
    assert system.stats()["kernel"]["callback_errors"] == 0, system.log_tail("kernel")


def expect(code: Err, call: Callable[[], Any]) -> ServiceError:
    """call() must fail with `code`; return the error."""
    with pytest.raises(ServiceError) as e:
        call()
    assert e.value.code == code, e.value
    return e.value


def tiny_contract(i: int) -> dict[str, Any]:
    """A small valid contract."""
    return {"name": f"c{i}", "calls": {"ping": {}}, "replies": {"ok": {}}}


def big_contract(nbytes: int, valid: bool = True) -> dict[str, Any]:
    """A contract of about `nbytes` encoded bytes, of at most 64 kinds when it is small
    enough to be valid (invalid: one kind has a type that does not exist)."""
    per_kind = {"fields": {f"f{j}": {"type": "int", "min": 0, "max": 9} for j in range(24)}}
    kinds = max(1, nbytes // 583)                 # one kind encodes to about 583 bytes
    calls = {f"k{i}": per_kind for i in range(kinds)}
    if not valid:
        calls["k0"] = {"fields": {"f": {"type": "no-such-type"}}}
    return {"name": "big", "calls": calls, "replies": {"ok": {}}}


# -- 1. one message kills the kernel ------------------------------------------------------------
@pytest.mark.parametrize("hostpid", [-1, 0, 2 ** 62])
def test_register_with_impossible_hostpid_does_not_kill_the_kernel(
        system: System, kernel_pid: int, victim: str, hostpid: int) -> None:
    name = f"liar.{next(_names)}"
    c, _ = register_raw(system, name, hostpid=hostpid)
    try:
        rec = wait_for(f"{name} reclaimed", lambda: (r := record(system, name)).get(
            "state") == "killed" and r)              # the liveness timer ran on it, and lived
        assert rec["exit_reason"] == "died"
        expect(Err.NOTREG, lambda: c.call(Op.MAP, npages=1, prot=PROT_R))
    finally:
        c.close()
    assert_survived(system, kernel_pid, victim)


GRANT_CONTRACT: dict[str, Any] = {"name": "sink", "calls": {"take": {"grant": True}},
                                  "replies": {"ok": {}}}


def test_page_grant_into_a_full_address_space_fails_cleanly(
        system: System, kernel_pid: int, victim: str) -> None:
    """The receiver mapped a region at the top of its address space, so the kernel cannot
    place the granted pages; the sender's page is resident, so the grant completes from a
    timer (after the shootdown) -- where a raised error used to end the kernel's loop."""
    sink_name = f"sink.{next(_names)}"
    sink = connect_sealed(system, f"sink.p{next(_names)}")
    sender = connect_sealed(system, f"sender.p{next(_names)}")
    try:
        sink.map(1, PROT_R | PROT_W, addr=(MAX_VPN - 1) << 12)
        ep = sink.endpoint(GRANT_CONTRACT)
        sink.register_name(sink_name, ep)
        target = sender.lookup(sink_name)
        addr = sender.map(2)
        data = os.urandom(2 * PAGE_SIZE)
        sender.write(addr, data)                       # resident: the grant shoots it down
        with pytest.raises(SealedError) as e:
            sender.call(target, {"kind": "take"}, grant=(addr, 2))
        assert e.value.code == Err.INVAL and "cannot take the pages" in str(e.value), e.value
        assert sender.read(addr, 2 * PAGE_SIZE) == data      # nothing moved
        assert record(system, sink.name)["state"] != "killed"
    finally:
        sender.close()
        sink.close()
    assert_survived(system, kernel_pid, victim)


# -- 2. kernel memory and CPU are free for the taking -------------------------------------------
def test_endpoint_flood_stops_at_the_endpoint_quota(
        system: System, kernel_pid: int, victim: str) -> None:
    name = f"flood.{next(_names)}"
    c, _ = register_raw(system, name)
    try:
        handles = [c.call(Op.ENDPOINT, contract=tiny_contract(i))["handle"]
                   for i in range(LIMITS.endpoints)]
        err = expect(Err.QUOTA, lambda: c.call(Op.ENDPOINT, contract=tiny_contract(0)))
        assert err.msg == f"endpoints {LIMITS.endpoints}/{LIMITS.endpoints}"
        assert record(system, name)["quota"]["endpoints"] == [LIMITS.endpoints] * 2
        c.call(Op.CAP_CLOSE, handle=handles[0])            # closing releases the charge
        c.call(Op.ENDPOINT, contract=tiny_contract(0))
        c.call(Op.EXIT, status=0)
    finally:
        c.close()
    rec = record(system, name)
    assert rec["state"] == "exited"
    assert all(used == 0 for used, _ in rec["quota"].values()), rec["quota"]
    assert_survived(system, kernel_pid, victim)


def test_huge_contract_is_refused_before_it_is_compiled(
        system: System, kernel_pid: int, victim: str) -> None:
    c, _ = register_raw(system, f"bigc.{next(_names)}")
    try:
        for valid in (True, False):                    # 0.93 MB, valid-looking or not
            c.send_raw(encode({"op": str(Op.ENDPOINT), "rid": 77,
                               "contract": big_contract(930_000, valid)}))
            reply = c.recv_reply()                     # refused before it is even decoded
            assert reply["err"] == Err.MSGSIZE and "limit" in reply["msg"], reply
            big = big_contract(2 * CONTRACT_MAX_BYTES, valid)   # decoded, not compiled
            err = expect(Err.MSGSIZE, functools.partial(c.call, Op.ENDPOINT, contract=big))
            assert str(CONTRACT_MAX_BYTES) in err.msg
        with Client(system.kernel_addr, keys=system.keyring("observer")) as bystander:
            assert bystander.call(Op.PING)["pid"] == kernel_pid
        # contracts just under the size limit: compiled, charged, until the quota says no
        made = 0
        with pytest.raises(ServiceError) as e:
            for _ in range(64):
                c.call(Op.ENDPOINT, contract=big_contract(CONTRACT_MAX_BYTES - 2048))
                made += 1
        assert e.value.code == Err.QUOTA and e.value.msg.startswith("contract_bytes "), e.value
        assert 0 < made < 64
    finally:
        c.close()
    assert_survived(system, kernel_pid, victim)


def test_invalid_contract_flood_is_throttled_per_process(
        system: System, kernel_pid: int, victim: str) -> None:
    """Invalid contracts are charged nothing in memory, but compiling them costs the kernel
    CPU: each process gets compile_bytes_per_s, and a flood runs out of it."""
    c, _ = register_raw(system, f"compiler.{next(_names)}")
    bad = big_contract(CONTRACT_MAX_BYTES - 2048, valid=False)
    try:
        with pytest.raises(ServiceError) as e:
            for _ in range(1000):
                try:
                    c.call(Op.ENDPOINT, contract=bad)
                except ServiceError as exc:
                    if exc.code != Err.INVAL:              # the flaw, found by compiling
                        raise
        assert e.value.code == Err.QUOTA and e.value.msg.startswith("compile_bytes_per_s "), \
            e.value
        with Client(system.kernel_addr, keys=system.keyring("observer")) as bystander:
            assert bystander.call(Op.PING)["pid"] == kernel_pid
        c2, _ = register_raw(system, f"honest.{next(_names)}")    # others are not throttled
        try:
            c2.call(Op.ENDPOINT, contract=tiny_contract(1))
        finally:
            c2.close()
    finally:
        c.close()
    assert_survived(system, kernel_pid, victim)


def test_report_values_cannot_make_stats_fail(
        system: System, kernel_pid: int, victim: str) -> None:
    attackers = [register_raw(system, f"reporter.{next(_names)}") for _ in range(2)]
    try:
        for c, _ in attackers:
            c.send_raw(encode({"op": str(Op.REPORT), "rid": 5, "data": {"blob": "x" * 600_000}}))
            assert c.recv_reply()["err"] == Err.MSGSIZE          # 600 KB: not even decoded
            err = expect(Err.INVAL, functools.partial(c.call, Op.REPORT,
                                                      data={"blob": "x" * 60_000}))
            assert "limit" in err.msg                            # one value: at most 1 KiB
            with pytest.raises(ServiceError) as e:
                for i in range(64):
                    c.call(Op.REPORT, data={f"k{i}": "y" * 1000})
            assert e.value.code == Err.QUOTA and e.value.msg.startswith("report_bytes "), e.value
        with Client(system.kernel_addr, keys=system.keyring("observer")) as bystander:
            assert bystander.call(Op.STATS)["processes"]
            assert bystander.call(Op.PS)["processes"]
    finally:
        for c, _ in attackers:
            c.close()
    assert_survived(system, kernel_pid, victim)


def test_map_and_protect_floods_stop_at_the_region_and_page_quotas(
        system: System, kernel_pid: int, victim: str) -> None:
    c, _ = register_raw(system, f"mapper.{next(_names)}")
    d, _ = register_raw(system, f"mapper.{next(_names)}")
    try:
        addrs = [c.call(Op.MAP, npages=1, prot=PROT_R)["addr"] for _ in range(LIMITS.regions)]
        err = expect(Err.QUOTA, lambda: c.call(Op.MAP, npages=1, prot=PROT_R))
        assert err.msg == f"regions {LIMITS.regions}/{LIMITS.regions}"
        c.call(Op.UNMAP, addr=addrs[0], npages=1)
        c.call(Op.MAP, npages=1, prot=PROT_R)
        # pages: one region as big as the quota, then nothing more
        base = d.call(Op.MAP, npages=LIMITS.pages, prot=PROT_R | PROT_W)["addr"]
        err = expect(Err.QUOTA, lambda: d.call(Op.MAP, npages=1, prot=PROT_R))
        assert err.msg == f"pages {LIMITS.pages}/{LIMITS.pages}"
        # splitting one region into many by protecting every other page stops at the quota
        with pytest.raises(ServiceError) as e:
            for i in range(1, 2 * LIMITS.regions + 2, 2):
                d.call(Op.PROTECT, addr=base + i * PAGE_SIZE, npages=1, prot=PROT_R)
        assert e.value.code == Err.QUOTA and e.value.msg.startswith("regions "), e.value
        d.call(Op.UNMAP, addr=base, npages=LIMITS.pages)
        d.call(Op.MAP, npages=1, prot=PROT_R)              # released: room again
    finally:
        c.close()
        d.close()
    assert_survived(system, kernel_pid, victim)


# -- 3. a departed pager's lies persist ---------------------------------------------------------
def rogue_pager(system: System, stop: threading.Event, opens: list[bytes]) -> None:
    """A pager instance on 'another host' that takes over mirror slot 0 (HELLO every 50 ms),
    answers every OPEN with success and a bogus handle without opening anything, ignores every
    other request, and leaves once `stop` is set."""
    keys = system.keyring("pager0")                  # a pager gone bad holds its own key
    sock = sockets.dealer(zmq.Context.instance(), system.kernel_addr, keys.own,
                          keys.publics.get("kernel"))
    rid = itertools.count(1)
    try:
        while not stop.is_set():
            sock.send(encode({"op": str(Op.PAGER_HELLO), "rid": next(rid), "mirror": 0,
                              "host": "rogue.invalid", "hostpid": 4242}))
            while sock.poll(50):
                msg = msgpack.unpackb(sock.recv(), raw=False)
                if msg.get("op") == str(Op.OPEN):
                    opens.append(msg.get("handle", b""))
                    sock.send(encode({"re": msg["rid"], "handle": os.urandom(16)}))
    finally:
        sock.close(0)


def test_a_departed_rogue_pagers_open_lies_do_not_persist(
        system: System, kernel_pid: int) -> None:
    """A rogue takes the pager slot and answers OPEN with success (and a bogus handle) for a
    new process's swap space without opening anything, then leaves.  The kernel minted the
    handle itself and re-validates what the departed instance claimed: the honest pager that
    takes the slot back opens it for real and the process's pages verify."""
    stop, opens = threading.Event(), []
    rogue = threading.Thread(target=rogue_pager, args=(system, stop, opens), daemon=True)
    rogue.start()
    try:
        wait_for("the rogue to hold the slot", lambda: any(
            p["host"] == "rogue.invalid" for p in system.client().call(Op.PS)["pagers"]))
        name = f"victim.{next(_names)}"
        system.spawn_app("memstress", ["--pages", "48", "--duration", "4"], name)
        wait_for("the rogue to lie about an OPEN", lambda: opens)
    finally:
        stop.set()
        rogue.join(10)
    assert all(len(h) == 16 for h in opens)           # the kernel, not the pager, minted them
    assert_survived(system, kernel_pid, name)
    rec = record(system, name)
    assert rec["integrity_failures"] == 0
    assert rec["page_outs"] > 0, rec       # its pages really reached the disk (not only HELD)
