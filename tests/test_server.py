"""wire.server, in process and deterministic, over the simulated transport and clock.

host_tools/sim/kit.py drives a Server exactly as the simulator does (frames handed to
on_frame, timers fired when the simulated clock reaches them), so these tests pin down
the skeleton's contract -- timers, request/reply matching, late, duplicate and forged
replies, SUSPEND, error replies -- with exact orders and times and no sleeping.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from host_tools.sim.kit import Harness, Peer
from host_tools.sim.net import SimClock
from wire.protocol import Err, Op, ServiceError, encode
from wire.server import SUSPEND, Panic, Request, Server
from wire.transport import Clock, Transport

ADDR = "sim://svc"


class Echo(Server):
    """A test service: ping answers at once, stats later, ps raises, fault_log panics."""

    def dispatch_table(self) -> dict[Op, Callable[[Request], Any]]:
        return {Op.PING: self.do_ping, Op.STATS: self.do_stats, Op.PS: self.do_ps,
                Op.FAULT_LOG: self.do_fault_log}

    def __init__(self, transport: Transport, clock: Clock) -> None:
        super().__init__("echo", transport=transport, clock=clock)
        self.sock = self.bind_router(ADDR)
        self.held: list[Request] = []

    def do_ping(self, req: Request) -> dict[str, Any]:
        """Answer now."""
        return {"pong": True}

    def do_stats(self, req: Request) -> Any:
        """Answer 50 ms later."""
        self.call_later(50, lambda: self.reply(req, late=True))
        return SUSPEND

    def do_ps(self, req: Request) -> Any:
        """A caller's mistake, or a bug: raise."""
        if req.msg.get("mistake"):
            raise ServiceError(Err.INVAL, "ps: you asked wrongly")
        raise KeyError("a bug on odd input")

    def do_fault_log(self, req: Request) -> Any:
        """A broken invariant."""
        raise Panic("invariant broken")


def setup(latency_s: float = 0.001) -> tuple[Harness, Echo, Peer]:
    from host_tools.sim.net import LinkFaults
    h = Harness(link=LinkFaults(latency_s=latency_s))
    svc = h.adopt(Echo(h.transport("echo"), h.clock))
    return h, svc, h.peer("client", ADDR)


def test_timers_fire_in_deadline_order_on_the_given_clock() -> None:
    h, svc, _ = setup()
    fired: list[tuple[str, float]] = []
    svc.call_later(30, lambda: fired.append(("b", h.clock.now())))
    svc.call_later(10, lambda: fired.append(("a", h.clock.now())))
    t = svc.call_later(20, lambda: fired.append(("cancelled", h.clock.now())))
    t.cancel()
    h.run_for(0.005)
    assert fired == []
    h.run_for(1.0)
    assert fired == [("a", pytest.approx(0.010)), ("b", pytest.approx(0.030))]
    assert svc.next_deadline() is None


def test_a_request_is_answered_and_a_suspended_one_later() -> None:
    h, svc, c = setup()
    c.send({"op": "ping", "rid": 1})
    c.send({"op": "stats", "rid": 2})
    h.run_for(0.01)
    assert c.replies() == {1: [{"re": 1, "pong": True}]}
    h.run_for(0.1)
    assert c.replies()[2] == [{"re": 2, "late": True}]


def test_bad_input_gets_an_error_reply_and_the_server_keeps_serving() -> None:
    h, svc, c = setup()
    c.send(b"\xc1 not msgpack")
    c.send({"op": "nosuchop", "rid": 3})
    c.send({"op": "ping"})                                  # no rid
    c.send({"op": "ps", "rid": 4, "mistake": True})
    c.send({"op": "ps", "rid": 5})                          # the handler has a bug
    c.send({"op": "ping", "rid": 6})
    h.run_for(0.01)
    errs = [m.get("err") for m in c.received]
    assert errs == [Err.BADMSG, Err.NOSYS, Err.BADMSG, Err.INVAL, Err.INVAL, None]
    assert "KeyError" in c.received[4]["msg"]
    assert c.received[5] == {"re": 6, "pong": True}
    assert svc.bad_messages == 3


def test_a_panic_is_not_swallowed() -> None:
    h, svc, c = setup()
    c.send({"op": "fault_log", "rid": 1, "cursor": 0})
    with pytest.raises(Panic):
        h.run_for(0.01)


def _requester(h: Harness) -> tuple[Echo, Peer, list[Any]]:
    """The service asks the peer something (peer = a DEALER the service knows by its id)."""
    svc = h.servers[0]
    assert isinstance(svc, Echo)
    peer = h.peer("worker", ADDR)
    peer.send({"op": "ping", "rid": 99})          # connects: the service learns its id
    h.run_for(0.01)
    got: list[Any] = []
    svc.request(svc.sock, peer.identity, Op.PING, {}, lambda _rid, reply: got.append(reply),
                timeout_ms=100)
    return svc, peer, got


def test_a_reply_after_the_timeout_is_ignored_and_counted() -> None:
    h, svc, c = setup()
    svc, worker, got = _requester(h)
    h.run_for(0.01)
    ping = next(m for m in worker.received if m.get("op") == "ping")
    h.run_for(0.2)                                  # the timeout passes
    assert got == [None]
    worker.send({"re": ping["rid"], "service": "late"})
    h.run_for(0.01)
    assert got == [None] and svc.bad_messages == 1


def test_a_reply_is_taken_once_and_only_from_the_asked_peer() -> None:
    h, svc, c = setup()
    svc, worker, got = _requester(h)
    h.run_for(0.01)
    rid = next(m for m in worker.received if m.get("op") == "ping")["rid"]
    c.send({"re": rid, "forged": True})             # another connection answers: ignored
    h.run_for(0.01)
    assert got == [] and svc.bad_messages == 1
    worker.send({"re": rid, "real": True})
    worker.send({"re": rid, "duplicate": True})     # a second answer: ignored
    h.run_for(0.01)
    assert got == [{"re": rid, "real": True}]
    assert svc.bad_messages == 2
    h.run_for(1.0)                                  # and the timeout never fires after it
    assert got == [{"re": rid, "real": True}]


def test_forget_drops_a_pending_request() -> None:
    h, svc, c = setup()
    svc, worker, got = _requester(h)
    rid = max(svc._pending)
    svc.forget(rid)
    h.run_for(0.01)
    worker.send({"re": rid})
    h.run_for(1.0)
    assert got == []


def test_a_frame_to_a_vanished_peer_is_dropped_quietly() -> None:
    h, svc, c = setup()
    c.send({"op": "stats", "rid": 1})
    h.run_for(0.01)
    h.net.crash(c.tr)                              # gone before its answer is sent
    h.run_for(0.2)
    assert c.received == [] and h.net.dropped == 1
    c2 = h.peer("client2", ADDR)
    c2.send(encode({"op": "ping", "rid": 1}))
    h.run_for(0.01)
    assert c2.received == [{"re": 1, "pong": True}]


def test_the_sim_clock_only_moves_when_told() -> None:
    clock = SimClock()
    assert clock.now() == 0.0
    clock.advance_to(2.5)
    clock.advance_to(1.0)
    assert clock.now() == 2.5
