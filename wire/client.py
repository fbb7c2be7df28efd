"""A blocking request/reply client for one service: used by the CLI, tests and benchmarks.

Not for use inside a server loop (it blocks); servers use Server.request instead.
"""
from __future__ import annotations

import itertools
from typing import Any

import zmq

from wire import sockets
from wire.keys import Keyring
from wire.protocol import Err, Op, ServiceError, decode, encode, err_code, request
from wire.sockets import Context

DEFAULT_TIMEOUT_MS: int = 5000


class Client:
    """One DEALER connection to a service; call() sends a request and waits for its reply."""

    def __init__(self, addr: str, ctx: Context | None = None, keys: Keyring | None = None,
                 server: str = "kernel") -> None:
        """Connect to `addr`: CURVE with keys.own as this client's keypair, expecting the
        server to hold principal `server`'s key (kernel, disk0 ...); NULL without keys (an
        insecure system, or a test of what an unauthenticated peer gets)."""
        self.addr = addr
        own = keys.own if keys is not None else None
        self.sock = sockets.dealer(ctx or zmq.Context.instance(), addr, own,
                                   keys.public(server) if own is not None and keys else None)
        # a refused handshake leaves no connection to queue on: sending must not block forever
        self.sock.setsockopt(zmq.SNDTIMEO, DEFAULT_TIMEOUT_MS)
        self._rids = itertools.count(1)

    def call(self, op: Op | str, timeout_ms: int | None = DEFAULT_TIMEOUT_MS,
             **fields: Any) -> dict[str, Any]:
        """Send `op` with `fields`; return the reply map or raise ServiceError."""
        rid = next(self._rids)
        self.send_raw(encode(request(op, rid, **fields)))
        return self.wait(rid, timeout_ms)

    def send_raw(self, frame: bytes) -> None:
        """Send bytes as they are (tests of malformed input); ServiceError(ETIMEDOUT) if no
        connection takes them in time (the server is down, or refused our key)."""
        try:
            self.sock.send(frame)
        except zmq.Again:
            raise ServiceError(Err.TIMEDOUT, f"cannot send to {self.addr}: no connection "
                                             "(down, or our key was refused)") from None

    def recv_reply(self, timeout_ms: int | None = DEFAULT_TIMEOUT_MS) -> dict[str, Any]:
        """Receive the next reply map, whatever its rid (raise ServiceError on timeout)."""
        if timeout_ms is not None and not self.sock.poll(timeout_ms):
            raise ServiceError(Err.TIMEDOUT, f"no reply from {self.addr} in {timeout_ms} ms")
        return decode(self.sock.recv())

    def wait(self, rid: int, timeout_ms: int | None) -> dict[str, Any]:
        """Wait for the reply to `rid`, skipping stale replies; raise its error if any."""
        while True:
            reply = self.recv_reply(timeout_ms)
            if reply.get("re") != rid:
                continue
            if "err" in reply:
                raise ServiceError(err_code(reply["err"]) or Err.INVAL, str(reply.get("msg", "")))
            return reply

    def close(self) -> None:
        """Close the connection."""
        self.sock.close(0)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
