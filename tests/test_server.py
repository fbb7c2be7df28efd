"""wire.server, in process and deterministic, over the simulated transport and clock.

host_tools/sim/kit.py drives a Server exactly as the simulator does (frames handed to
on_frame, timers fired when the simulated clock reaches them), so these tests pin down
the skeleton's contract -- timers, request/reply matching, late, duplicate and forged
replies, SUSPEND, error replies, the caller check and the dispatch table -- with exact
orders and times and no sleeping.  The production receive loop itself (Server.run: recv
with RCVTIMEO, multipart frames, batches) is driven through LoopSocket, a stand-in for a
ZeroMQ ROUTER whose messages arrive on the same simulated clock.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import zmq

from host_tools.sim.kit import Harness, Peer
from host_tools.sim.net import LinkFaults, SimClock
from wire.keys import Keypair
from wire.protocol import MAX_FRAME_BYTES, Err, Op, ServiceError, decode, encode
from wire.server import SUSPEND, Panic, Request, Server
from wire.transport import Clock, Transport

ADDR = "sim://svc"


class Echo(Server):
    """A test service: ping answers at once, stats later, ps raises (or fails later),
    fault_log panics, exit stops the loop.  Callers in `banned` are refused by the caller
    check; every handler run is logged in `ran` with the caller the check resolved."""

    def dispatch_table(self) -> dict[Op, Callable[[Request], Any]]:
        return {Op.PING: self.do_ping, Op.STATS: self.do_stats, Op.PS: self.do_ps,
                Op.FAULT_LOG: self.do_fault_log, Op.EXIT: self.do_exit}

    def __init__(self, transport: Transport, clock: Clock) -> None:
        super().__init__("echo", transport=transport, clock=clock)
        self.sock = self.bind_router(ADDR)
        self.banned: set[bytes | None] = set()
        self.ran: list[tuple[Op, Any]] = []
        self.hooks: list[str] = []

    def check_caller(self, req: Request) -> None:
        """Refuse banned peers; the caller is the peer's routing id."""
        if req.peer in self.banned:
            raise ServiceError(Err.PERM, "banned")
        req.caller = req.peer
        self.ran.append((req.op, req.caller))

    def on_start(self) -> None:
        self.hooks.append("start")

    def on_stop(self) -> None:
        self.hooks.append("stop")

    def do_ping(self, req: Request) -> dict[str, Any]:
        """Answer now."""
        return {"pong": True}

    def do_stats(self, req: Request) -> Any:
        """Answer 50 ms later."""
        self.call_later(50, lambda: self.reply(req, late=True))
        return SUSPEND

    def do_ps(self, req: Request) -> Any:
        """A caller's mistake, a bug, or (later) an error reply 20 ms later."""
        if req.msg.get("later"):
            self.call_later(20, lambda: self.fail(req, Err.BUSY, "not now", retry=True))
            return SUSPEND
        if req.msg.get("mistake"):
            raise ServiceError(Err.INVAL, "ps: you asked wrongly")
        raise KeyError("a bug on odd input")

    def do_exit(self, req: Request) -> dict[str, Any]:
        """Stop the loop after this turn (and answer)."""
        self.stop()
        return {}

    def do_fault_log(self, req: Request) -> Any:
        """A broken invariant."""
        raise Panic("invariant broken")


def setup(latency_s: float = 0.001) -> tuple[Harness, Echo, Peer]:
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


Got = list[tuple[int, dict[str, Any] | None, float]]


def _requester(h: Harness, fields: dict[str, Any] | None = None
               ) -> tuple[Echo, Peer, Got, int]:
    """The service asks a worker peer something (a DEALER it knows by its routing id); the
    callback logs (rid, reply, clock time).  Returns the rid request() gave."""
    svc = h.servers[0]
    assert isinstance(svc, Echo)
    peer = h.peer("worker", ADDR)
    peer.send({"op": "ping", "rid": 99})          # connects: the service learns its id
    h.run_for(0.01)
    got: Got = []
    rid = svc.request(svc.sock, peer.identity, Op.PING, fields or {},
                      lambda rid, reply: got.append((rid, reply, h.clock.now())),
                      timeout_ms=100)
    return svc, peer, got, rid


def test_request_sends_its_rid_and_the_callback_gets_it_back() -> None:
    h, svc, c = setup()
    svc, worker, got, rid = _requester(h, {"n": 1})
    second = svc.request(svc.sock, worker.identity, Op.STATS, {},
                         lambda rid, reply: got.append((rid, reply, h.clock.now())), None)
    assert second != rid
    h.run_for(0.01)
    asked = [m for m in worker.received if "op" in m]
    assert [(m["op"], m["rid"]) for m in asked] == [("ping", rid), ("stats", second)]
    assert asked[0]["n"] == 1
    worker.send({"re": second, "which": 2})         # answered in the other order
    worker.send({"re": rid, "which": 1})
    h.run_for(0.01)
    assert [(r, reply) for r, reply, _ in got] == [(second, {"re": second, "which": 2}),
                                                    (rid, {"re": rid, "which": 1})]


def test_a_timeout_runs_the_callback_with_none_at_the_deadline() -> None:
    h, svc, c = setup()
    t0 = h.clock.now()
    svc, worker, got, rid = _requester(h)
    h.run_for(0.099)
    assert got == []
    h.run_for(0.01)
    assert got == [(rid, None, pytest.approx(t0 + 0.01 + 0.100))]
    assert rid not in svc._pending


def test_a_reply_after_the_timeout_is_ignored_and_counted() -> None:
    h, svc, c = setup()
    svc, worker, got, rid = _requester(h)
    h.run_for(0.01)
    ping = next(m for m in worker.received if m.get("op") == "ping")
    h.run_for(0.2)                                  # the timeout passes
    assert [(r, reply) for r, reply, _ in got] == [(rid, None)]
    worker.send({"re": ping["rid"], "service": "late"})
    h.run_for(0.01)
    assert len(got) == 1 and svc.bad_messages == 1


def test_a_reply_is_taken_once_and_only_from_the_asked_peer() -> None:
    h, svc, c = setup()
    svc, worker, got, rid = _requester(h)
    h.run_for(0.01)
    assert rid == next(m for m in worker.received if m.get("op") == "ping")["rid"]
    c.send({"re": rid, "forged": True})             # another connection answers: ignored
    h.run_for(0.01)
    assert got == [] and svc.bad_messages == 1
    worker.send({"re": rid, "real": True})
    worker.send({"re": rid, "duplicate": True})     # a second answer: ignored
    h.run_for(0.01)
    assert [(r, reply) for r, reply, _ in got] == [(rid, {"re": rid, "real": True})]
    assert svc.bad_messages == 2
    h.run_for(1.0)                                  # and the timeout never fires after it
    assert len(got) == 1


def test_forget_drops_a_pending_request() -> None:
    h, svc, c = setup()
    svc, worker, got, rid = _requester(h)
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


def test_the_caller_check_runs_before_any_handler_and_resolves_the_caller() -> None:
    h, svc, c = setup()
    other = h.peer("other", ADDR)
    svc.banned.add(other.identity)
    other.send({"op": "ping", "rid": 1})
    other.send({"op": "fault_log", "rid": 2, "cursor": 0})    # would panic if it ran
    c.send({"op": "ping", "rid": 3})
    h.run_for(0.01)
    assert [(m["re"], m.get("err")) for m in other.received] == [(1, Err.PERM), (2, Err.PERM)]
    assert c.received == [{"re": 3, "pong": True}]
    assert svc.ran == [(Op.PING, c.identity)]


def test_the_dispatch_table_and_the_field_check_come_before_the_caller_check() -> None:
    h, svc, c = setup()
    c.send({"op": "map", "rid": 1, "npages": 1, "prot": 3})      # a real op, not served here
    c.send({"op": "fault_log", "rid": 2, "cursor": "0"})        # served, but mistyped
    c.send({"op": "fault_log", "rid": 3})                       # served, field missing
    h.run_for(0.01)
    assert [(m["re"], m.get("err")) for m in c.received] == [
        (1, Err.NOSYS), (2, Err.INVAL), (3, Err.INVAL)]
    assert "echo does not serve map" in c.received[0]["msg"]
    assert svc.ran == [] and svc.bad_messages == 3


def test_a_suspended_request_is_answered_later_with_success_or_an_error() -> None:
    h, svc, c = setup()
    c.send({"op": "stats", "rid": 1})
    c.send({"op": "ps", "rid": 2, "later": True})
    h.run_for(0.015)
    assert c.received == []                                     # nothing before its time
    h.run_for(0.01)                                             # ps fails at 21 ms (+1 ms)
    assert c.received == [{"re": 2, "err": Err.BUSY, "msg": "not now", "retry": True}]
    h.run_for(0.03)                                             # stats replies at 51 ms
    assert c.received[1] == {"re": 1, "late": True}
    assert svc.ran == [(Op.STATS, c.identity), (Op.PS, c.identity)]


def test_an_oversized_frame_is_refused_unread_and_the_server_keeps_serving() -> None:
    h, svc, c = setup()
    c.send(encode({"op": "ping", "rid": 1, "pad": b"x" * MAX_FRAME_BYTES}))
    c.send({"re": 12345})                                       # a reply nobody asked for
    c.send({"op": "ping", "rid": 2})
    h.run_for(0.01)
    assert [(m["re"], m.get("err")) for m in c.received] == [(None, Err.MSGSIZE), (2, None)]
    assert svc.ran == [(Op.PING, c.identity)] and svc.bad_messages == 2


def test_a_routing_id_keeps_the_key_it_first_spoke_with() -> None:
    h, svc, c = setup()
    ping = encode({"op": "ping", "rid": 1})
    svc.on_frame(svc.sock, c.identity, ping, "key-A")
    svc.on_frame(svc.sock, c.identity, ping, "key-B")           # another key on that id
    svc.on_frame(svc.sock, c.identity, ping, "key-A")
    h.run_for(0.01)
    assert [m.get("err") for m in c.received] == [None, Err.PERM, None]
    assert svc.refused_keys == 1 and len(svc.ran) == 2


def test_a_failing_callback_is_counted_and_the_loop_survives() -> None:
    h, svc, c = setup()
    fired: list[str] = []
    svc.call_later(1, lambda: 1 // 0)
    svc.call_later(2, lambda: fired.append("after"))
    h.run_for(0.01)
    assert svc.callback_errors == 1 and fired == ["after"]

    def broken_invariant() -> None:
        raise Panic("stop")
    svc.call_later(1, broken_invariant)
    with pytest.raises(Panic):
        h.run_for(0.01)


# -- the production receive loop -------------------------------------------------------------
class FakeFrame:
    """What pyzmq's recv(copy=False) returns, as far as the loop looks at it."""

    def __init__(self, data: bytes, more: bool, user_id: str | None) -> None:
        self.bytes, self.more, self._user_id = data, more, user_id

    def get(self, prop: str) -> str:
        """The frame's metadata; only User-Id exists here (ZMQError without one)."""
        if prop != "User-Id" or self._user_id is None:
            raise zmq.ZMQError(zmq.EINVAL)
        return self._user_id


class LoopSocket:
    """A ROUTER as Server.run sees it: multipart recv with NOBLOCK or RCVTIMEO (a timed-out
    wait moves the simulated clock on by RCVTIMEO, as a real blocking recv takes that long),
    EVENTS, and sends logged with the clock time.  Messages arrive at scheduled times."""

    def __init__(self, clock: SimClock) -> None:
        self.clock = clock
        self.inbox: list[tuple[float, list[bytes], str | None]] = []
        self.parts: list[FakeFrame] = []
        self.rcvtimeo_ms = -1
        self.sent: list[tuple[float, bytes | None, dict[str, Any]]] = []
        self.closed = False

    def arrive(self, at_s: float, *frames: bytes, user_id: str | None = None) -> None:
        """Schedule one multipart message (routing id first, as a ROUTER receives it)."""
        self.inbox.append((at_s, list(frames), user_id))
        self.inbox.sort(key=lambda m: m[0])

    def _ready(self) -> bool:
        return bool(self.inbox) and self.inbox[0][0] <= self.clock.now()

    def setsockopt(self, opt: int, value: int) -> None:
        assert opt == zmq.RCVTIMEO
        self.rcvtimeo_ms = value

    def getsockopt(self, opt: int) -> int:
        assert opt == zmq.EVENTS
        return zmq.POLLIN if self.parts or self._ready() else 0

    def recv(self, flags: int = 0, copy: bool = True) -> FakeFrame | bytes:
        """One frame: its bytes (copy=True, as pyzmq), else a FakeFrame."""
        frame = self._recv(flags)
        return frame.bytes if copy else frame

    def _recv(self, flags: int) -> FakeFrame:
        if self.parts:
            return self.parts.pop(0)
        if not self._ready() and not flags & zmq.NOBLOCK:
            wait_s = self.rcvtimeo_ms / 1000.0
            if self.inbox:
                wait_s = min(wait_s, max(0.0, self.inbox[0][0] - self.clock.now()))
            self.clock.advance_to(self.clock.now() + wait_s)
        if not self._ready():
            raise zmq.Again()
        _, frames, user_id = self.inbox.pop(0)
        parts = [FakeFrame(f, i < len(frames) - 1, user_id) for i, f in enumerate(frames)]
        self.parts = parts[1:]
        return parts[0]


class LoopTransport:
    """Hands out one LoopSocket; sends land in its log."""

    def __init__(self, clock: SimClock) -> None:
        self.sock = LoopSocket(clock)

    def bind_router(self, addr: str, keypair: Keypair | None = None) -> LoopSocket:
        return self.sock

    def connect_dealer(self, addr: str, keypair: Keypair | None = None,
                       server_public: bytes | None = None) -> LoopSocket:
        raise AssertionError("not used")

    def send(self, sock: LoopSocket, peer: bytes | None, frame: bytes) -> None:
        sock.sent.append((sock.clock.now(), peer, decode(frame)))

    def close(self, sock: LoopSocket) -> None:
        sock.closed = True

    def hostname(self) -> str:
        return "loop"

    def pid(self) -> int:
        return 1


def loop_server() -> tuple[Echo, LoopSocket, SimClock]:
    clock = SimClock()
    tr = LoopTransport(clock)
    return Echo(tr, clock), tr.sock, clock


def test_run_receives_dispatches_fires_timers_and_stops() -> None:
    svc, sock, clock = loop_server()
    sock.arrive(0.0, b"A", encode({"op": "ping", "rid": 1}))
    sock.arrive(0.0, b"A", encode({"op": "ping", "rid": 7}), b"")   # two frames: refused
    sock.arrive(0.001, b"B", encode({"op": "stats", "rid": 2}))   # answered 50 ms later
    sock.arrive(0.2, b"A", encode({"op": "exit", "rid": 3, "status": 0}))
    svc.call_later(10, lambda: 1 // 0)                        # a bug in a timer callback ...
    svc.run()
    assert svc.callback_errors == 1                            # ... counted; the loop went on
    assert [(peer, m["re"], m.get("err")) for _, peer, m in sock.sent] == [
        (b"A", 1, None), (b"A", None, Err.BADMSG), (b"B", 2, None), (b"A", 3, None)]
    times = [t for t, _, _ in sock.sent]
    assert times[2] == pytest.approx(0.051, abs=0.002)         # the timer, on time
    assert times[3] == pytest.approx(0.2)
    assert svc.hooks == ["start", "stop"] and sock.closed and svc.sockets == {}
    assert svc.ran == [(Op.PING, b"A"), (Op.STATS, b"B"), (Op.EXIT, b"A")]


def test_the_one_socket_loop_refuses_a_second_socket() -> None:
    # The skeleton's turn() serves one socket; a second would never be read, so adding one
    # is a loud error (a server of several brings its own turn, as the pager does).
    svc, _, _ = loop_server()                       # Echo has bound its one socket
    with pytest.raises(Panic, match="serves one socket"):
        svc.bind_router("inproc://second")
