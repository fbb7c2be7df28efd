"""Socket recipes: the one place where LINGER, MAXMSGSIZE and the CURVE options are set.

A ROUTER given a keypair is a CURVE server: it proves it holds that secret, and every client
must pass the context's ZAP handler (``wire/server.py`` runs one) with its public key; a
DEALER given a keypair and the server's public key is a CURVE client.  With no keypair a
socket is NULL (``--insecure`` only): no authentication, no encryption.
"""
from __future__ import annotations

from typing import TypeAlias

import zmq

from wire.keys import Keypair
from wire.protocol import TRANSPORT_MAX_BYTES

#: The ZAP domain every sealedos server socket names (so libzmq always asks ZAP).
ZAP_DOMAIN: str = "sealedos"
#: pyzmq's generic socket and context types, spelled once (a sealedos socket moves bytes).
Socket: TypeAlias = zmq.Socket[bytes]
Context: TypeAlias = zmq.Context[Socket]


def router(ctx: Context, addr: str, keypair: Keypair | None) -> Socket:
    """A ROUTER bound to `addr`: a CURVE server with `keypair`, or NULL without one."""
    sock = ctx.socket(zmq.ROUTER)
    _common(sock)
    if keypair is not None:
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, keypair.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keypair.public)
        sock.setsockopt_string(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)     # no ZAP handler -> nobody gets in
    sock.bind(addr)
    return sock


def dealer(ctx: Context, addr: str, keypair: Keypair | None,
           server_public: bytes | None, routing_id: bytes | None = None) -> Socket:
    """A DEALER connected to `addr`: a CURVE client with `keypair` expecting the server to
    hold `server_public`'s secret, or NULL when keypair is None; `routing_id`: the id its
    ROUTER knows it by (default: one the ROUTER picks)."""
    sock = ctx.socket(zmq.DEALER)
    _common(sock)
    if routing_id is not None:
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
    if keypair is not None:
        if server_public is None:
            raise ValueError("a CURVE client needs the server's public key")
        sock.setsockopt(zmq.CURVE_SERVERKEY, server_public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, keypair.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keypair.public)
    sock.connect(addr)
    return sock


def _common(sock: Socket) -> None:
    """Options every sealedos socket has: close at once, refuse oversized messages."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, TRANSPORT_MAX_BYTES)
