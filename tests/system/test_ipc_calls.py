"""Synchronous IPC through the kernel, as real processes: one System (kernel, init, pager,
disk) for the module; servers and clients are sealed processes it spawns, and the test
process itself registers as a sealed process (the real runtime) where it plays a client.

Covers: blocking semantics, ordering and exactly-once under concurrent clients, the size
limit, each kind of contract violation, forged and stale handles, capability transfer, page
grants, manifest refusal, PeerDied for callers blocked on a SIGKILLed server, a client dying
mid-call, the browser and its plugins, and a peer that never registered.  No assertion is
about timing: waits are "until it happens, or fail".
"""
from __future__ import annotations

import functools
import itertools
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import polling
import pytest
from systems import running_system

from apps.echo import ECHO_CONTRACT
from apps.runtime import (
    BadHandle,
    ContractViolation,
    InvalidArgument,
    MessageTooLarge,
    PeerDied,
    PermissionDenied,
    SealedProcess,
)
from apps.runtime.errors import NotFound
from host_tools.system import Service, System
from launcher import spawn
from wire.client import Client
from wire.protocol import IPC_MAX_PAYLOAD_BYTES, Err, Op, ServiceError

WAIT_S: float = 30.0
_names = itertools.count(1)


wait_for = functools.partial(polling.wait_for, timeout_s=WAIT_S)


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    """One system for the module; every process stopped and the rundir removed at the end."""
    with running_system(frames=64) as system:
        yield system


class Apps:
    """Spawns sealed processes with unique names; stops them after the test."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.started: list[Service] = []

    def start(self, app: str, *args: str, name: str | None = None) -> str:
        """Spawn `app` with args; return its (unique) name."""
        name = name or f"{app}.t{next(_names)}"
        self.started.append(self.system.spawn_app(app, list(args), name))
        return name

    def server(self, *args: str) -> str:
        """An echo server registered under a fresh name; return that name once it serves."""
        reg = f"echo.t{next(_names)}"
        name = self.start("echo", "--register", reg, *args)
        wait_for(f"{name} ready", lambda: self.report(name).get("ready"))
        return reg

    def record(self, name: str) -> dict[str, Any]:
        """The kernel's record of process `name` ({} before it registers)."""
        return self.system.process(name) or {}

    def report(self, name: str) -> dict[str, Any]:
        """What process `name` REPORTed."""
        return self.record(name).get("report") or {}

    def exit_code(self, name: str) -> int | None:
        """The exit status of `name` once it has exited, else None."""
        return self.system.services[name].proc.poll()

    def finished(self, name: str) -> dict[str, Any]:
        """Wait for `name` to exit; return its report (with its exit status as 'status')."""
        wait_for(f"{name} to exit", lambda: self.exit_code(name) is not None)
        return dict(self.report(name), status=self.exit_code(name))

    def kill(self, name: str) -> None:
        """SIGKILL process `name`."""
        os.kill(self.system.services[name].pid, signal.SIGKILL)

    def stop(self) -> None:
        for svc in self.started:
            spawn.stop(svc.proc, 1.0)


@pytest.fixture
def apps(system: System) -> Iterator[Apps]:
    a = Apps(system)
    yield a
    a.stop()


@pytest.fixture
def me(system: System) -> Iterator[Callable[..., SealedProcess]]:
    """me(manifest) registers the test process as a sealed process (closed at teardown)."""
    procs: list[SealedProcess] = []

    def make(manifest: list[str] | None = None) -> SealedProcess:
        cred = system.admit("echo", f"test.{next(_names)}", provides=("*",),
                            manifest=tuple(manifest) if manifest is not None else ("*",))
        p = SealedProcess.connect(system.kernel_addr, cred, system.kernel_public())
        procs.append(p)
        return p
    yield make
    for p in procs:
        p.close()


def in_thread(fn: Callable[[], Any]) -> Callable[[float], Any]:
    """Run fn in a daemon thread; return a join(timeout) that gives its result or raises."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the joiner
            box["error"] = exc
    t = threading.Thread(target=run, daemon=True)
    t.start()

    def join(timeout_s: float) -> Any:
        t.join(timeout_s)
        assert not t.is_alive(), "the thread is still blocked"
        if "error" in box:
            raise box["error"]
        return box.get("value")
    return join


# -- blocking ---------------------------------------------------------------------------------
def test_call_blocks_until_the_reply_and_an_idle_server_blocks_in_receive(apps: Apps) -> None:
    target = apps.server("--delay-ms", "1500")
    server = apps.started[-1].name
    wait_for("the idle server to block in receive",
             lambda: apps.record(server).get("state") == "blocked on receive")
    client = apps.start("echo", "--client", "--target", target, "--count", "2")
    wait_for("the client to block on its call",
             lambda: apps.record(client).get("state") == "blocked on call")
    assert apps.exit_code(client) is None
    report = apps.finished(client)
    assert report["status"] == 0 and report["checksum"] == "verified"


def test_order_and_exactly_once_under_concurrent_clients(apps: Apps) -> None:
    target = apps.server()
    server = apps.started[-1].name
    base = apps.record(server)["ipc_calls_in"]
    clients = [apps.start("echo", "--client", "--target", target, "--count", "150",
                          "--size", str(16 + 40 * i)) for i in range(6)]
    for c in clients:
        r = apps.finished(c)
        assert r["status"] == 0 and r["checksum"] == "verified", r
        rec = apps.record(c)
        assert rec["ipc_calls_out"] == 1 + 150      # the lookup, then its calls: no more
    assert apps.record(server)["ipc_calls_in"] - base == 6 * 150
    wait_for("the server's report", lambda: apps.report(server).get("calls", 0) > 0)
    assert apps.report(server)["order_violations"] == 0


# -- the size limit and the contracts ---------------------------------------------------------
def test_size_limit_refuses_before_delivery(apps: Apps, me: Callable[..., SealedProcess]) -> None:
    target = apps.server()
    server = apps.started[-1].name
    p = me()
    h = p.lookup(target)
    before = apps.record(server)["ipc_calls_in"]
    with pytest.raises(MessageTooLarge, match=f"exceeds the {IPC_MAX_PAYLOAD_BYTES}-byte"):
        p.call(h, {"kind": "echo", "data": bytes(IPC_MAX_PAYLOAD_BYTES)})
    reply, _ = p.call(h, {"kind": "echo", "data": bytes(IPC_MAX_PAYLOAD_BYTES - 64)})
    assert len(reply["data"]) == IPC_MAX_PAYLOAD_BYTES - 64
    assert apps.record(server)["ipc_calls_in"] - before == 1


@pytest.mark.parametrize("msg, rule", [
    ({"kind": "frobnicate"}, "unknown message kind 'frobnicate'"),
    ({"seq": 1}, "a message needs a string 'kind'"),
    ({"kind": "echo"}, "required field 'data' is missing"),
    ({"kind": "echo", "data": b"", "colour": "red"}, "field 'colour' is not in the contract"),
    ({"kind": "echo", "data": "text"}, "field 'data' is str, the contract says bytes"),
    ({"kind": "echo", "data": b"", "seq": -5}, "field 'seq' is -5, below min 0"),
])
def test_echo_contract_violations_never_reach_the_server(
        apps: Apps, me: Callable[..., SealedProcess], msg: dict[str, Any], rule: str) -> None:
    target = apps.server()
    server = apps.started[-1].name
    p = me()
    h = p.lookup(target)
    with pytest.raises(ContractViolation, match=rule):
        p.call(h, msg)
    assert apps.record(server)["ipc_calls_in"] == 0
    reply, _ = p.call(h, {"kind": "echo", "data": b"ok"})      # the channel still works
    assert reply["data"] == b"ok"


def test_kv_contract_too_long_out_of_order_and_caps(apps: Apps,
                                                    me: Callable[..., SealedProcess]) -> None:
    reg = f"kv.t{next(_names)}"
    server = apps.start("kvstore", "--register", reg, "--slots", "64")
    wait_for("kvstore ready", lambda: apps.report(server).get("ready"))
    p = me()
    kv = p.lookup(reg)
    with pytest.raises(ContractViolation, match="field 'key' is 80 bytes, longer than max_len 64"):
        p.call(kv, {"kind": "get", "key": "k" * 80})
    with pytest.raises(ContractViolation, match="reply 'ok' is not allowed in state 'ready'"):
        p.call(kv, {"kind": "ok"})
    with pytest.raises(ContractViolation, match="carries 1 capabilities, the contract allows 0"):
        p.call(kv, {"kind": "get", "key": "a"}, caps=[kv])
    assert apps.record(server)["ipc_calls_in"] == 0
    assert p.call(kv, {"kind": "put", "key": "a", "value": b"1"})[0] == {"kind": "ok"}
    assert p.call(kv, {"kind": "get", "key": "a"})[0] == {"kind": "value", "value": b"1"}


def test_a_bad_contract_is_refused_when_the_endpoint_is_created(
        me: Callable[..., SealedProcess]) -> None:
    p = me()
    with pytest.raises(InvalidArgument, match="needs max_len"):
        p.endpoint({"name": "x", "calls": {"a": {"fields": {"s": {"type": "str"}}}},
                    "replies": {"ok": {}}})


# -- handles and capabilities ------------------------------------------------------------------
def test_forged_and_stale_handles_are_refused(apps: Apps, me: Callable[..., SealedProcess]) -> None:
    target = apps.server()
    p, q = me(), me()
    h = p.lookup(target)
    with pytest.raises(BadHandle, match="was never issued"):
        p.call(h + 1000, {"kind": "echo", "data": b""})
    with pytest.raises(BadHandle):
        p.call(-3, {"kind": "echo", "data": b""})
    with pytest.raises(BadHandle, match="was never issued"):
        q.call(h, {"kind": "echo", "data": b""})      # p's number means nothing in q
    p.cap_close(h)
    with pytest.raises(BadHandle, match="stale"):
        p.call(h, {"kind": "echo", "data": b""})
    with pytest.raises(BadHandle, match="stale"):
        p.cap_close(h)


def test_capability_transfer_and_the_kernels_sender_stamp(
        apps: Apps, me: Callable[..., SealedProcess]) -> None:
    server = me()
    own = server.endpoint(ECHO_CONTRACT)
    name = f"echo.t{next(_names)}"
    server.register_name(name, own)                 # the capability goes to init in a call ...
    client = apps.start("echo", "--client", "--target", name, "--count", "3")
    got = []
    for seq in range(3):                            # ... and from init to the client in a reply
        rcv = in_thread(lambda: server.receive(own))(WAIT_S)
        got.append(rcv.sender)
        assert rcv.msg["seq"] == seq
        server.reply(rcv, rcv.msg)
    assert apps.finished(client)["checksum"] == "verified"
    rec = apps.record(client)
    assert {(s.spid, s.name, s.program) for s in got} == {(rec["spid"], client, "echo")}
    assert got[0].digest == rec["digest"] and got[0].manifest == ("echo", "echo.*")
    other = me()
    with pytest.raises(PermissionDenied, match="only the endpoint's owner may receive"):
        other.receive(other.lookup(name))


def test_page_grant_moves_the_data_and_unmaps_it_from_the_sender(
        apps: Apps, system: System) -> None:
    target = apps.server()
    server = apps.started[-1].name
    before = system.stats()["kernel"]["pages_granted"]
    client = apps.start("echo", "--client", "--target", target, "--grant-pages", "5")
    r = apps.finished(client)
    assert r["status"] == 0 and r["checksum"] == "verified", r
    assert r["segv_after_grant"] is True and "outside every region" in r["segv_msg"]
    assert system.stats()["kernel"]["pages_granted"] - before == 5
    assert apps.record(client)["pages_granted"] == 5
    assert apps.record(server)["ipc_calls_in"] == 1


def test_the_manifest_closes_the_api(apps: Apps, me: Callable[..., SealedProcess]) -> None:
    target = apps.server()
    p = me(manifest=["kv"])
    with pytest.raises(PermissionDenied, match=f"{target!r} is not in the manifest"):
        p.lookup(target)
    with pytest.raises(NotFound, match="no service is registered"):
        p.lookup("kv")
    client = apps.start("echo", "--client", "--target", "kv")
    r = apps.finished(client)
    assert r["error"] == "PermissionDenied" and "not in the manifest" in r["error_msg"]


# -- death ------------------------------------------------------------------------------------
def test_callers_blocked_on_a_killed_server_get_peer_died(apps: Apps,
                                                          me: Callable[..., SealedProcess]) -> None:
    target = apps.server("--delay-ms", "600000")     # takes one call and sits on it
    server = apps.started[-1].name
    clients = [apps.start("echo", "--client", "--target", target, "--count", "1")
               for _ in range(3)]                   # one served, two queued behind it
    for c in clients:
        wait_for(f"{c} blocked", lambda c=c: apps.record(c).get("state") == "blocked on call")
    apps.kill(server)
    for c in clients:
        r = apps.finished(c)
        assert r["error"] == "PeerDied", r
    p = me()
    h = p.lookup(target)                            # init still holds the dead capability
    with pytest.raises(PeerDied, match="is gone"):
        p.call(h, {"kind": "echo", "data": b""})


def test_a_client_dying_mid_call_does_not_disturb_the_server(apps: Apps) -> None:
    target = apps.server("--delay-ms", "1000")
    server = apps.started[-1].name
    victim = apps.start("echo", "--client", "--target", target, "--count", "1")
    wait_for("the victim blocked", lambda: apps.record(victim).get("state") == "blocked on call")
    apps.kill(victim)
    wait_for("the victim reclaimed", lambda: apps.record(victim).get("state") == "killed")
    after = apps.start("echo", "--client", "--target", target, "--count", "3")
    assert apps.finished(after)["checksum"] == "verified"
    assert apps.exit_code(server) is None
    assert apps.record(server)["state"] in ("blocked on receive", "running")


def test_killing_one_plugin_leaves_the_browser_and_the_others_working(apps: Apps) -> None:
    tag = next(_names)
    plugins = [f"plugin.{tag}{i}" for i in range(3)]
    for name in plugins:
        apps.start("plugin", name=name)
    for name in plugins:
        wait_for(f"{name} ready", lambda n=name: apps.report(n).get("ready"))
    browser = apps.start("browser", "--plugins", ",".join(plugins), "--rounds", "40",
                         "--interval-ms", "25")
    wait_for("a few rounds", lambda: apps.report(browser).get("round", 0) >= 5)
    apps.kill(plugins[1])
    r = apps.finished(browser)
    assert r["status"] == 0 and r["checksum"] == "verified", r
    assert r["round"] == 40 and r["dead"] == plugins[1]
    assert r[f"ok.{plugins[0]}"] == 40 and r[f"ok.{plugins[2]}"] == 40
    assert r[f"ok.{plugins[1]}"] < 40
    for name in (plugins[0], plugins[2]):
        assert apps.exit_code(name) is None


def test_a_finished_or_killed_process_loses_every_capability(apps: Apps, system: System) -> None:
    target = apps.server("--delay-ms", "300")

    def handles(name: str) -> int | None:
        table = system.stats()["kernel"]["ipc"]["handles_by_spid"]
        return table.get(str(apps.record(name).get("spid")))
    done = apps.start("echo", "--client", "--target", target, "--count", "2")
    wait_for("the client to hold its handle", lambda: handles(done))
    assert apps.finished(done)["checksum"] == "verified"
    assert handles(done) is None
    victim = apps.start("echo", "--client", "--target", target, "--count", "1000")
    wait_for("the victim to hold its handle", lambda: handles(victim))
    apps.kill(victim)
    wait_for("the kernel to reclaim the victim", lambda: handles(victim) is None)


# -- outsiders --------------------------------------------------------------------------------
def test_a_peer_that_never_registered_gets_only_errors(system: System) -> None:
    with Client(system.kernel_addr, keys=system.keyring("observer")) as c:
        for op, fields in ((Op.CALL, {"handle": 0, "msg": b"\x80"}), (Op.RECEIVE, {"handle": 1}),
                           (Op.ENDPOINT, {"contract": {}}), (Op.REPLY, {"call": 1, "msg": b""}),
                           (Op.CAP_CLOSE, {"handle": 0})):
            with pytest.raises(ServiceError) as info:
                c.call(op, **fields)
            assert info.value.code == Err.NOTREG
        with pytest.raises(ServiceError) as info:
            c.call(Op.REGISTER, cred=os.urandom(32))           # a credential never issued
        assert info.value.code == Err.PERM


def test_only_init_may_create_the_name_service(me: Callable[..., SealedProcess]) -> None:
    from apps.runtime.ipc import NAMESERVICE_CONTRACT
    with pytest.raises(PermissionDenied, match="only init"):
        me().endpoint(NAMESERVICE_CONTRACT, nameservice=True)
