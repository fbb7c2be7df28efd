"""The several-socket loop (pager_service/loop.py, PollingServer) on real ZeroMQ sockets.

The pager's shape: a server with two DEALERs, one to a "kernel" that sends it requests and
one to a "disk" it asks in turn, relaying each answer back.  Each request waits for its
answer before the next is sent, so every message reaches a server blocked in poll(2) -- the
case where a wake-up consumed by a send or an EVENTS check, and not asked about again, would
leave a message unread until some timer woke the loop: here, until the test gives up.  Then
bursts, so that drains of several messages and sends on both sockets interleave; then a
timer callback that sends on one socket while the other is busy.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from pager_service.loop import PollingServer
from wire.protocol import Op, decode, encode
from wire.server import SUSPEND, Request

#: How long a peer waits for a message before the test fails (a lost wake-up; long: a
#: loaded machine may starve this process for seconds).
WAIT_MS: int = 30000


class Relay(PollingServer):
    """PING from the kernel side: ask the disk side, answer with its reply's `n`.  STATS:
    stop.  A timer may ping the kernel side unasked (`tick_ms`)."""

    def __init__(self, kernel_addr: str, disk_addr: str, tick_ms: float = 0) -> None:
        super().__init__("relay", zmq.Context())
        self.kernel = self.connect_dealer(kernel_addr)
        self.disk = self.connect_dealer(disk_addr)
        self.tick_ms = tick_ms
        self.ticks = 0

    def dispatch_table(self) -> dict[Op, Callable[[Request], Any]]:
        return {Op.PING: self.do_ping, Op.STATS: self.do_stats}

    def on_start(self) -> None:
        """Say hello on the kernel side (so that it learns the routing id); start ticking."""
        self.send(self.kernel, None, {"op": "ping", "rid": 0})
        if self.tick_ms:
            self.call_later(self.tick_ms, self.tick)

    def tick(self) -> None:
        """Send on the kernel socket from a timer callback, and again later."""
        self.ticks += 1
        self.request(self.kernel, None, Op.PING, {}, lambda rid, reply: None, None)
        self.call_later(self.tick_ms, self.tick)

    def do_ping(self, req: Request) -> Any:
        def relayed(rid: int, reply: dict[str, Any] | None) -> None:
            self.reply(req, n=None if reply is None else reply.get("n"))
        self.request(self.disk, None, Op.PING, {"n": req.msg.get("n")}, relayed, WAIT_MS)
        return SUSPEND

    def do_stats(self, req: Request) -> dict[str, Any]:
        self.stop()
        return {}


@pytest.fixture()
def rig(tmp_path: Path) -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes], str, str]]:
    """Two ROUTERs standing for the kernel and the disk, and their addresses."""
    ctx = zmq.Context()
    socks = []
    for name in ("kernel", "disk"):
        sock = ctx.socket(zmq.ROUTER)
        sock.linger = 0
        sock.rcvtimeo = WAIT_MS
        sock.bind(f"ipc://{tmp_path}/{name}.sock")
        socks.append(sock)
    yield socks[0], socks[1], f"ipc://{tmp_path}/kernel.sock", f"ipc://{tmp_path}/disk.sock"
    for sock in socks:
        sock.close(0)
    ctx.term()


def start(relay: Relay) -> threading.Thread:
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    return thread


def recv(sock: zmq.Socket[bytes]) -> tuple[bytes, dict[str, Any]]:
    """One message on a ROUTER: (routing id, decoded map); zmq.Again after WAIT_MS."""
    peer, frame = sock.recv_multipart()
    return peer, decode(frame)


def disk_answers(disk: zmq.Socket[bytes], n: int) -> tuple[bytes, list[Any]]:
    """Receive n requests on the disk side and answer each with its `n`."""
    seen = []
    peer = b""
    for _ in range(n):
        peer, msg = recv(disk)
        if msg.get("op") == "ping":
            seen.append(msg.get("n"))
            disk.send_multipart([peer, encode({"re": msg["rid"], "n": msg.get("n")})])
    return peer, seen


def stop(relay: Relay, thread: threading.Thread, kernel: zmq.Socket[bytes],
         kernel_peer: bytes) -> None:
    kernel.send_multipart([kernel_peer, encode({"op": "stats", "rid": 0})])
    thread.join(WAIT_MS / 1000)
    assert not thread.is_alive()
    relay.ctx.destroy(0)


def hello(kernel: zmq.Socket[bytes]) -> bytes:
    """The relay's routing id on the kernel side, from its hello."""
    peer, msg = recv(kernel)
    assert (msg["op"], msg["rid"]) == ("ping", 0)
    return peer


def test_one_at_a_time_every_message_wakes_the_blocked_loop(rig: Any) -> None:
    kernel, disk, kaddr, daddr = rig
    relay = Relay(kaddr, daddr)
    thread = start(relay)
    peer = hello(kernel)
    for i in range(300):
        kernel.send_multipart([peer, encode({"op": "ping", "rid": i + 1, "n": i})])
        assert disk_answers(disk, 1)[1] == [i]
        _, reply = recv(kernel)
        assert (reply["re"], reply["n"]) == (i + 1, i)
    stop(relay, thread, kernel, peer)


def test_bursts_on_both_sockets_are_all_served(rig: Any) -> None:
    kernel, disk, kaddr, daddr = rig
    relay = Relay(kaddr, daddr)
    thread = start(relay)
    peer = hello(kernel)
    for burst in range(20):
        n = 1 + burst * 7                          # up to 134: more than one drain batch
        for i in range(n):
            kernel.send_multipart([peer, encode({"op": "ping", "rid": i + 1, "n": i})])
        assert sorted(disk_answers(disk, n)[1]) == list(range(n))
        replies = [recv(kernel)[1] for _ in range(n)]
        assert sorted((r["re"], r["n"]) for r in replies) == [(i + 1, i) for i in range(n)]
    stop(relay, thread, kernel, peer)


def test_a_timer_that_sends_does_not_hide_a_message(rig: Any) -> None:
    kernel, disk, kaddr, daddr = rig
    relay = Relay(kaddr, daddr, tick_ms=1)
    thread = start(relay)
    peer = hello(kernel)
    for i in range(200):
        kernel.send_multipart([peer, encode({"op": "ping", "rid": i + 1, "n": i})])
        assert disk_answers(disk, 1)[1] == [i]
        while True:                                # the relay's ticks come in between
            _, msg = recv(kernel)
            if msg.get("op") != "ping":
                break
        assert (msg["re"], msg["n"]) == (i + 1, i)
    assert relay.ticks > 0
    stop(relay, thread, kernel, peer)


def test_a_drain_takes_at_most_one_batch_and_says_whether_it_emptied(rig: Any) -> None:
    kernel, disk, kaddr, daddr = rig
    relay = Relay(kaddr, daddr)
    relay.on_start()                               # the hello: not run(), driven by hand
    peer = hello(kernel)
    for i in range(5):
        kernel.send_multipart([peer, encode({"op": "ping", "rid": i + 1, "n": i})])
    assert relay.kernel.poll(WAIT_MS) == zmq.POLLIN
    time.sleep(0.5)                                # (the other four come right behind)
    assert relay._drain(relay.kernel, 2) is False  # the batch ran out: more wait
    assert disk_answers(disk, 2)[1] == [0, 1]
    assert relay._drain(relay.kernel) is True      # the other three, then empty
    assert disk_answers(disk, 3)[1] == [2, 3, 4]
    assert relay._drain(relay.kernel) is True      # nothing waiting
    relay.ctx.destroy(0)
