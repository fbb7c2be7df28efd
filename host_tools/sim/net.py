"""The simulated network and clock: one deterministic event queue, links that misbehave.

Every node (kernel, pager, disk, simulated sealed process, the launcher) gets a
:class:`NodeTransport` -- the same seam :class:`wire.server.Server` uses for ZeroMQ in
production (wire/transport.py) -- whose sockets are plain :class:`SimSocket` handles.  A sent
frame becomes an event in the queue, ordered by (time, seq); delivering it calls the owner's
``on_frame(sock, peer, frame)``, exactly what the production loop does after a recv.

Links are directed (src node -> dst node).  Each has a :class:`LinkFaults`: base latency,
extra random delay (which reorders, unless the link is FIFO), drop and duplicate
probabilities.  All randomness comes from one ``random.Random`` owned by the simulation, so
one seed gives one schedule.  A crashed node's sockets vanish (frames to it are lost, as to
a dead process); a hung node keeps its frames queued until it resumes (SIGSTOP/SIGCONT).
"""
from __future__ import annotations

import functools
import hashlib
import heapq
import itertools
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import msgpack

if TYPE_CHECKING:
    from wire.keys import Keypair

#: zmq.POLLOUT, without importing zmq (Pager.say_hello polls its kernel socket).
POLLOUT: int = 2


class Node(Protocol):
    """Anything that receives frames: a Server or a simulated process."""

    def on_frame(self, sock: Any, peer: bytes | None, frame: bytes) -> None:
        """Handle one frame that arrived on `sock` from `peer`."""
        ...


class SimClock:
    """The simulated monotonic clock: it only moves when the simulation says so."""

    def __init__(self) -> None:
        self.t: float = 0.0

    def now(self) -> float:
        """Simulated seconds since the simulation began."""
        return self.t

    def advance_to(self, t: float) -> None:
        """Move the clock to `t` (never backwards)."""
        if t > self.t:
            self.t = t


@dataclass(slots=True)
class LinkFaults:
    """How one directed link misbehaves (probabilities per frame, delays in seconds)."""
    latency_s: float = 0.0002
    jitter_s: float = 0.0
    drop_p: float = 0.0
    dup_p: float = 0.0
    fifo: bool = True
    spike_p: float = 0.0
    spike_s: float = 0.0


@dataclass(eq=False, slots=True)
class SimSocket:
    """A socket handle: ROUTER (bound to addr) or DEALER (connected to addr, with an identity)."""
    transport: NodeTransport
    router: bool
    addr: str
    identity: bytes = b""
    closed: bool = False

    def poll(self, timeout: int = 0, flags: int = 0) -> int:
        """POLLOUT when a router is bound at a dealer's address (the connection is up)."""
        net = self.transport.net
        return POLLOUT if not self.router and self.addr in net.routers else 0


@dataclass(order=True, slots=True)
class Event:
    """One scheduled thing: a delivery or a callback, ordered by (t, seq)."""
    t: float
    seq: int
    fn: Callable[[], None] = field(compare=False)


class NodeTransport:
    """One node's view of the simulated network (the Transport seam of wire/transport.py)."""

    def __init__(self, net: SimNet, name: str) -> None:
        self.net = net
        self.name = name
        self.owner: Node | None = None
        self.alive = True
        self.paused_until: float = 0.0
        self.sockets: list[SimSocket] = []
        self._pid = next(net.pids)
        #: While set, frames this node sends are lost (a crash between write and reply).
        self.mute = False

    def bind_router(self, addr: str, keypair: Keypair | None = None) -> SimSocket:
        """A ROUTER at `addr` (the address must be free, as for a real bind)."""
        if addr in self.net.routers:
            raise OSError(f"sim: address {addr} already bound")
        sock = SimSocket(self, True, addr)
        self.net.routers[addr] = sock
        self.sockets.append(sock)
        return sock

    def connect_dealer(self, addr: str, keypair: Keypair | None = None,
                       server_public: bytes | None = None) -> SimSocket:
        """A DEALER to `addr` with a fresh routing identity."""
        ident = b"%s#%d" % (self.name.encode(), next(self.net.idents))
        sock = SimSocket(self, False, addr, ident)
        self.net.dealers[ident] = sock
        self.sockets.append(sock)
        return sock

    def send(self, sock: SimSocket, peer: bytes | None, frame: bytes) -> None:
        """Queue `frame` for delivery over the link to its destination node."""
        if not self.alive or self.mute or sock.closed:
            return
        self.net.send(sock, peer, frame)

    def close(self, sock: SimSocket) -> None:
        """Unbind/disconnect `sock`."""
        self.net.forget(sock)

    def hostname(self) -> str:
        """A host of its own per node: no pid in the simulation is a host pid."""
        return f"sim-{self.name}"

    def pid(self) -> int:
        """A per-instance number (a restarted disk answers PING with a new one)."""
        return self._pid


class SimNet:
    """Every socket, every link and the one event queue of a simulation."""

    def __init__(self, rng: random.Random, clock: SimClock) -> None:
        self.rng = rng
        self.clock = clock
        self.queue: list[Event] = []
        self.seq = itertools.count()
        self.idents = itertools.count(1)
        self.pids = itertools.count(1000)
        self.routers: dict[str, SimSocket] = {}
        self.dealers: dict[bytes, SimSocket] = {}
        self.links: dict[tuple[str, str], LinkFaults] = {}
        self.default_link = LinkFaults()
        self._fifo_last: dict[tuple[str, str, bytes], float] = {}
        self.trace = hashlib.sha256()
        self.trace_lines: list[str] | None = None
        self.delivered = 0
        self.dropped = 0
        #: Called when a node raises out of on_frame or a timer (the world decides).
        self.on_error: Callable[[NodeTransport, Exception], None] = _reraise

    # -- the queue -------------------------------------------------------------------------
    def at(self, t: float, fn: Callable[[], None]) -> None:
        """Run fn at simulated time t (or now, if t is past)."""
        heapq.heappush(self.queue, Event(max(t, self.clock.t), next(self.seq), fn))

    def after(self, delay_s: float, fn: Callable[[], None]) -> None:
        """Run fn delay_s from now."""
        self.at(self.clock.t + delay_s, fn)

    def record(self, line: str, frame: bytes | None = None) -> None:
        """Add one line to the event trace (hashed; kept too when trace_lines is a list,
        then with what `frame` says: its op or the rid it answers)."""
        text = f"{self.clock.t:.6f} {line}"
        self.trace.update(text.encode())
        self.trace.update(b"\n")
        if self.trace_lines is not None:
            self.trace_lines.append(text + _describe(frame) if frame is not None else text)

    # -- sockets ---------------------------------------------------------------------------
    def transport(self, name: str) -> NodeTransport:
        """A new node's transport."""
        return NodeTransport(self, name)

    def forget(self, sock: SimSocket) -> None:
        """Remove a socket: frames to it are lost from now on."""
        sock.closed = True
        if sock.router:
            if self.routers.get(sock.addr) is sock:
                del self.routers[sock.addr]
        elif self.dealers.get(sock.identity) is sock:
            del self.dealers[sock.identity]

    def crash(self, tr: NodeTransport) -> None:
        """The node dies: its sockets vanish and nothing it sends goes anywhere."""
        tr.alive = False
        for sock in tr.sockets:
            self.forget(sock)

    def link(self, src: str, dst: str) -> LinkFaults:
        """The faults of the directed link src -> dst (node names without instance suffix)."""
        return self.links.get((src, dst), self.default_link)

    # -- sending and delivering ------------------------------------------------------------
    def _target(self, sock: SimSocket, peer: bytes | None) -> tuple[SimSocket | None, bytes | None]:
        """Where a frame sent on `sock` to `peer` lands now: (socket, peer id seen there)."""
        if sock.router:
            return self.dealers.get(peer or b""), None
        return self.routers.get(sock.addr), sock.identity

    def send(self, sock: SimSocket, peer: bytes | None, frame: bytes) -> None:
        """Schedule delivery of `frame` (maybe dropped, delayed, duplicated)."""
        dst, _ = self._target(sock, peer)
        if dst is None:
            self.dropped += 1
            return
        src_name, dst_name = sock.transport.name, dst.transport.name
        lf = self.link(_base(src_name), _base(dst_name))
        rng = self.rng
        copies = 1
        if lf.drop_p and rng.random() < lf.drop_p:
            copies = 0
            self.record(f"drop {src_name}->{dst_name} {zlib.crc32(frame):08x}", frame)
        elif lf.dup_p and rng.random() < lf.dup_p:
            copies = 2
        for _ in range(copies):
            t = self.clock.t + lf.latency_s + (rng.random() * lf.jitter_s if lf.jitter_s else 0.0)
            if lf.spike_p and rng.random() < lf.spike_p:     # far later: after a timeout
                t += rng.random() * lf.spike_s
            if lf.fifo:                  # per connection, as on a real socket pair
                key = (src_name, dst_name, peer or sock.identity)
                t = max(t, self._fifo_last.get(key, 0.0))
                self._fifo_last[key] = t
            self.at(t, functools.partial(self.deliver, sock, peer, frame))

    def deliver(self, sock: SimSocket, peer: bytes | None, frame: bytes) -> None:
        """Hand `frame` to the owner of its destination socket, if that still exists."""
        dst, seen_peer = self._target(sock, peer)
        if dst is None or dst.closed or not dst.transport.alive:
            self.dropped += 1
            return
        tr = dst.transport
        if tr.paused_until > self.clock.t:               # hung: it reads this when it resumes
            self.at(tr.paused_until, lambda: self.deliver(sock, peer, frame))
            return
        self.delivered += 1
        self.record(f"{sock.transport.name}->{tr.name} {len(frame)} {zlib.crc32(frame):08x}",
                    frame)
        assert tr.owner is not None
        try:
            tr.owner.on_frame(dst, seen_peer, frame)
        except Exception as exc:  # noqa: BLE001 -- the simulation judges it (invariants.py)
            self.on_error(tr, exc)


def _describe(frame: bytes) -> str:
    """A few words on a frame for a human reading the trace (not hashed)."""
    try:
        msg = msgpack.unpackb(frame, raw=False)
    except Exception:  # noqa: BLE001 -- garbage is a fine thing to trace
        return " (not msgpack)"
    if not isinstance(msg, dict):
        return " (not a map)"
    if "re" in msg:
        return f" re={msg['re']}" + (f" {msg['err']}" if "err" in msg else "")
    extra = "".join(f" {k}={msg[k]}" for k in ("vpn", "slot", "mirror") if k in msg)
    return f" {msg.get('op')} rid={msg.get('rid')}{extra}"


def _reraise(tr: NodeTransport, exc: Exception) -> None:
    """The default error policy: nobody judges, so raise."""
    raise exc


def _base(name: str) -> str:
    """A node's name without its instance suffix ("pager0.3" -> "pager0")."""
    return name.split(".", 1)[0]
