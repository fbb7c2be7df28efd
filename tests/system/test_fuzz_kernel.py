"""A stateful fuzzer against a real kernel: several hostile sealed processes send sequences of
valid and invalid messages; after every step a bystander's ping is answered and its data
verifies.

Hypothesis drives the attackers (rule-based state machine): each step one attacker sends one
message -- a well-formed request of any op with the worst values Hypothesis finds, a request
with fields of the wrong type, a frame that is not msgpack, or a multi-frame message -- on
its call or control connection, without waiting for the answer (a hostile process does not
wait).  The bystander is a real sealed process (this test's own, through the runtime) whose
pages were written before the attack and must read back the same after every step.  The run
is bounded in time (RUN_S) so CI stays fast; failing sequences are shrunk and printed by
Hypothesis.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from apps.runtime import SealedProcess
from host_tools.system import Config, System
from wire import sockets
from wire.client import Client
from wire.protocol import Op, encode

#: Wall-clock budget of the whole fuzz run.
RUN_S: float = 45.0
ATTACKERS: int = 3
BYSTANDER_PAGES: int = 4
PING_TIMEOUT_MS: int = 5000

# The worst values: boundaries of every type the kernel meets.
INTS = st.one_of(st.sampled_from([0, 1, -1, 2**31, 2**63 - 1, -(2**63), 2**64 - 1, 4096,
                                  0x10000 << 12, (1 << 48) - 4096]),
                 st.integers(-(2**63), 2**64 - 1))          # all msgpack can carry
SCALARS = st.one_of(INTS, st.booleans(), st.none(), st.floats(allow_nan=True),
                    st.text(max_size=40), st.binary(max_size=64))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=12), inner, max_size=6)),
    max_leaves=24)
FIELD_NAMES = st.sampled_from(["vpn", "access", "refs", "npages", "prot", "addr", "handle",
                               "msg", "contract", "call", "caps", "grant", "receive", "data",
                               "status", "spid", "secret", "mirror", "cred", "name", "slot",
                               "cursor", "nameservice", "hostpid", "role", "quota"])
OPS = st.sampled_from([str(op) for op in Op] + ["", "nosuchop", "x" * 300])


def request(op: str, fields: dict[str, Any], rid: Any) -> bytes:
    """One request frame (fields may lie about their types)."""
    msg: dict[str, Any] = dict(fields)
    msg["op"] = op
    msg["rid"] = rid
    return msgpack.packb(msg, use_bin_type=True)


class Attacker:
    """A hostile sealed process: registered call connection + attached control connection."""

    def __init__(self, ctx: zmq.Context, system: System, i: int) -> None:
        cred = system.admit("memstress", f"fuzz{i}")
        keys = system.credential_keyring(cred)             # CURVE with the credential's key
        self.call, self.ctrl = (sockets.dealer(ctx, system.kernel_addr, keys.own,
                                               keys.publics.get("kernel")) for _ in range(2))
        self.call.send(encode({"op": "register", "rid": 1, "cred": cred}))
        reply = msgpack.unpackb(self.call.recv(), raw=False) if self.call.poll(10000) else {}
        if "spid" in reply:
            self.ctrl.send(encode({"op": "attach", "rid": 1, "spid": reply["spid"],
                                   "secret": reply["secret"]}))

    def send(self, on_ctrl: bool, frames: list[bytes]) -> None:
        """Send without waiting; drop whatever the kernel sent meanwhile (never answering it:
        a hostile process may ignore shootdowns too)."""
        sock = self.ctrl if on_ctrl else self.call
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            pass
        for s in (self.call, self.ctrl):
            while s.poll(0):
                s.recv_multipart(zmq.NOBLOCK)

    def close(self) -> None:
        self.call.close(0)
        self.ctrl.close(0)


@pytest.fixture(scope="module")
def arena() -> Iterator[tuple[System, SealedProcess, int]]:
    system = System(Config(frames=32, disk_size_mib=16)).start()
    try:
        bystander = SealedProcess.connect(system.kernel_addr,
                                          system.admit("memstress", "bystander"),
                                          system.kernel_public())
        base = bystander.map(BYSTANDER_PAGES)
        for i in range(BYSTANDER_PAGES):
            bystander.store_u64(base + i * 4096, 0xB0B0 + i)
        yield system, bystander, base
        bystander.close()
    finally:
        system.stop()


def test_hostile_message_sequences_leave_the_kernel_serving(
        arena: tuple[System, SealedProcess, int]) -> None:
    system, bystander, base = arena
    started = time.monotonic()
    ctx = zmq.Context.instance()

    class KernelUnderAttack(RuleBasedStateMachine):
        """Attackers send; the invariant asks the bystander."""

        @initialize()
        def connect(self) -> None:
            self.attackers = [Attacker(ctx, system, i) for i in range(ATTACKERS)]
            self.observer = Client(system.kernel_addr, keys=system.keyring("observer"))

        @rule(who=st.integers(0, ATTACKERS - 1), on_ctrl=st.booleans(), op=OPS,
              fields=st.dictionaries(FIELD_NAMES, VALUES, max_size=6),
              rid=st.one_of(INTS, SCALARS))
        def send_request(self, who: int, on_ctrl: bool, op: str, fields: dict[str, Any],
                         rid: Any) -> None:
            self.attackers[who].send(on_ctrl, [request(op, fields, rid)])

        @rule(who=st.integers(0, ATTACKERS - 1), frames=st.lists(st.binary(max_size=200),
                                                                  min_size=1, max_size=3))
        def send_garbage(self, who: int, frames: list[bytes]) -> None:
            self.attackers[who].send(False, frames)

        @rule(who=st.integers(0, ATTACKERS - 1), npages=st.integers(1, 64),
              touch=st.integers(0, 63), access=st.sampled_from(["r", "w", "x"]))
        def map_and_fault(self, who: int, npages: int, touch: int, access: str) -> None:
            """A plausible sequence too: map a region and fault in it (the kernel must then
            take the frame back from a process that ignores its shootdowns)."""
            a = self.attackers[who]
            a.send(False, [request("map", {"npages": npages, "prot": 3, "addr": 0}, 7)])
            vpn = 0x10000 + touch
            a.send(False, [request("fault", {"vpn": vpn, "access": access, "refs": [vpn]}, 8)])

        @invariant()
        def bystander_is_served(self) -> None:
            assert self.observer.call(Op.PING, timeout_ms=PING_TIMEOUT_MS)["service"] == "kernel"
            for i in range(BYSTANDER_PAGES):
                assert bystander.load_u64(base + i * 4096) == 0xB0B0 + i

        def teardown(self) -> None:
            for a in getattr(self, "attackers", []):
                a.close()
            if hasattr(self, "observer"):
                self.observer.close()

    rounds = 0
    while time.monotonic() - started < RUN_S:         # batches of fresh random sequences
        run_state_machine_as_test(KernelUnderAttack, settings=settings(
            max_examples=5, stateful_step_count=25, deadline=None, database=None,
            suppress_health_check=list(HealthCheck)))
        rounds += 1
    assert rounds > 0
    assert system.client().call(Op.PING)["service"] == "kernel"
    assert all(bystander.load_u64(base + i * 4096) == 0xB0B0 + i for i in range(BYSTANDER_PAGES))
