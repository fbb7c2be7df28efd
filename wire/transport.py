"""The seam under the server skeleton: where frames go, what time it is, who we are.

:class:`wire.server.Server` never touches ZeroMQ or the host clock directly: it asks its
*transport* for sockets and to send frames, and its *clock* for the time.  Production uses
:class:`ZmqTransport` and :data:`MONOTONIC` (today's behaviour, byte for byte); the
deterministic simulator (``host_tools/sim``) and the in-process unit tests hand in their own,
and the kernel, pager and disk code cannot tell the difference: receiving stays the loop's
job in production, and in a simulation the simulator calls ``server.on_frame`` itself.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Any, Protocol

import zmq

from wire import sockets
from wire.keys import Keypair
from wire.sockets import Context, Socket

_NOBLOCK: int = int(zmq.NOBLOCK)
_MORE_NOBLOCK: int = int(zmq.SNDMORE | zmq.NOBLOCK)
#: pyzmq's compiled send, which its Socket.send wraps only to handle the routing_id and group
#: arguments of draft socket types (never used here): 0.3 us less per call.
_send = zmq.backend.Socket.send


class Clock(Protocol):
    """A monotonic clock in seconds."""

    def now(self) -> float:
        """Seconds since an arbitrary origin; never goes backwards."""
        ...


class MonotonicClock:
    """The host's CLOCK_MONOTONIC (production)."""
    now = staticmethod(time.monotonic)


#: The production clock.
MONOTONIC: Clock = MonotonicClock()


class Transport(Protocol):
    """How a server gets sockets and sends frames (receiving: see the module docstring)."""

    def bind_router(self, addr: str, keypair: Keypair | None = None) -> Any:
        """A ROUTER-like socket listening on `addr` (a CURVE server with `keypair`)."""
        ...

    def connect_dealer(self, addr: str, keypair: Keypair | None = None,
                       server_public: bytes | None = None) -> Any:
        """A DEALER-like socket connected to `addr` (a CURVE client with `keypair`, expecting
        the server's `server_public`)."""
        ...

    def send(self, sock: Any, peer: bytes | None, frame: bytes) -> None:
        """Send `frame` to `peer` (ROUTER) or down the connection (DEALER); never blocks,
        never raises: a frame that cannot go is dropped."""
        ...

    def close(self, sock: Any) -> None:
        """Close a socket this transport made."""
        ...

    def hostname(self) -> str:
        """The host this server runs on (pager liveness compares hosts)."""
        ...

    def pid(self) -> int:
        """This server instance's process id (a restarted disk answers PING with a new one)."""
        ...


class ZmqTransport:
    """ZeroMQ sockets on a context (production)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def bind_router(self, addr: str, keypair: Keypair | None = None) -> Socket:
        """A ROUTER bound to `addr` (the socket recipe: wire/sockets.py)."""
        return sockets.router(self.ctx, addr, keypair)

    def connect_dealer(self, addr: str, keypair: Keypair | None = None,
                       server_public: bytes | None = None) -> Socket:
        """A DEALER connected to `addr` (the socket recipe: wire/sockets.py)."""
        return sockets.dealer(self.ctx, addr, keypair, server_public)

    def send(self, sock: Socket, peer: bytes | None, frame: bytes) -> None:
        """Non-blocking send; a full queue or a vanished peer drops the frame."""
        try:
            if peer is None:
                _send(sock, frame, _NOBLOCK)
            else:
                _send(sock, peer, _MORE_NOBLOCK)
                _send(sock, frame, _NOBLOCK)
        except zmq.ZMQError:
            pass

    def close(self, sock: Socket) -> None:
        """Close at once (LINGER 0)."""
        sock.close(0)

    def hostname(self) -> str:
        """socket.gethostname()."""
        return socket.gethostname()

    def pid(self) -> int:
        """os.getpid()."""
        return os.getpid()
