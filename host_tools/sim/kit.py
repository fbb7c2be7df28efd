"""A small harness over the simulated network and clock, for in-process unit tests.

It drives any :class:`wire.server.Server` (the kernel's, a pager's, a test's own) the way
the simulator does -- frames are delivered by calling ``on_frame``, timers fire when the
simulated clock reaches them -- so a unit test can send exact frames, in an exact order,
at exact simulated times, and look at exactly what came back.  No sockets, no threads, no
sleeping: the same test gives the same result every time.
"""
from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from typing import Any, TypeVar

from host_tools.sim.net import LinkFaults, NodeTransport, SimClock, SimNet, SimSocket
from wire.protocol import decode, encode
from wire.server import Server

S = TypeVar("S", bound=Server)


class Peer:
    """A test's end of a connection: send raw frames or maps, keep what arrives."""

    def __init__(self, harness: Harness, name: str, addr: str) -> None:
        self.tr: NodeTransport = harness.net.transport(name)
        self.tr.owner = self
        self.sock: SimSocket = self.tr.connect_dealer(addr)
        self.received: list[dict[str, Any]] = []
        self.on_request: Callable[[Peer, dict[str, Any]], None] | None = None

    @property
    def identity(self) -> bytes:
        """The routing id the server sees this peer by."""
        return self.sock.identity

    def send(self, msg: dict[str, Any] | bytes) -> None:
        """Send one message (a map is msgpack-encoded; bytes go as they are)."""
        self.tr.send(self.sock, None, msg if isinstance(msg, bytes) else encode(msg))

    def on_frame(self, sock: SimSocket, peer: bytes | None, frame: bytes) -> None:
        """Keep what the server sent; a request goes to on_request if set."""
        msg = decode(frame)
        self.received.append(msg)
        if "re" not in msg and self.on_request is not None:
            self.on_request(self, msg)

    def replies(self) -> dict[int, list[dict[str, Any]]]:
        """Replies received so far, by the rid they answer."""
        out: dict[int, list[dict[str, Any]]] = {}
        for m in self.received:
            if "re" in m:
                out.setdefault(m["re"], []).append(m)
        return out


class Harness:
    """One simulated clock and network with the servers and peers of a test."""

    def __init__(self, seed: int = 0, link: LinkFaults | None = None) -> None:
        self.clock = SimClock()
        self.net = SimNet(random.Random(seed), self.clock)
        self.net.default_link = link or LinkFaults(latency_s=0.001)
        self.servers: list[Server] = []

    def transport(self, name: str) -> NodeTransport:
        """A transport for a server the test constructs itself (then call adopt())."""
        return self.net.transport(name)

    def adopt(self, server: S) -> S:
        """Serve `server` (built with one of our transports and our clock)."""
        tr = server.transport
        assert isinstance(tr, NodeTransport), "build the server with harness.transport()"
        tr.owner = server
        self.servers.append(server)
        return server

    def peer(self, name: str, addr: str) -> Peer:
        """A test peer connected to `addr`."""
        return Peer(self, name, addr)

    def run_for(self, seconds: float) -> None:
        """Deliver frames and fire timers, in time order, for `seconds` of simulated time."""
        end = self.clock.t + seconds
        while True:
            t_q = self.net.queue[0].t if self.net.queue else float("inf")
            due = [(d, i) for i, s in enumerate(self.servers)
                   if (d := s.next_deadline()) is not None]
            t_s, who = min(due) if due else (float("inf"), -1)
            t = min(t_q, t_s)
            if t > end:
                self.clock.advance_to(end)
                return
            self.clock.advance_to(t)
            if t_q <= t_s:
                heapq.heappop(self.net.queue).fn()
            else:
                self.servers[who].fire_due()
