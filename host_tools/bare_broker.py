"""The bare baseline of the IPC load generator: the same traffic through a plain pyzmq broker.

    python -m host_tools.bare_broker broker --addr ADDR
    python -m host_tools.bare_broker server --addr ADDR --id K
    python -m host_tools.bare_broker client --addr ADDR --id I --server K --size B --duration S
                                      --slices N --go-file F --out F

The shape is the kernel's: one ROUTER in the middle, every client and server a DEALER
connected to it, one process each.  The broker has no kernel logic at all -- no decoding, no
handles, no contracts, no identity stamping: it swaps the first two frames and forwards::

    client -> broker  [server id, payload]           (ROUTER prepends the client's id)
    broker -> server  [client id, payload]
    server -> broker  [client id, payload]           (ROUTER prepends the server's id)
    broker -> client  [server id, payload]

Clients and servers do what the sealed echo client and server do with each message (msgpack
encode, decode), so the difference between the two runs is the kernel's routing path (and
the runtime's syscall layer).  Transport security is the kernel's in the same run: with
SEALEDOS_BARE_SECRET (the broker's z85 CURVE secret key) in the environment every connection
is CURVE (each client and server with a fresh keypair of its own; the broker admits any key,
its cost is the encryption, as the kernel's ZAP check is paid once per connection); without
it, NULL.  These are ordinary processes, not sealed ones.  A client
measures in windows as the sealed one does: window k starts when GO_FILE.k appears and
ends with the file OUT.done.k.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from array import array
from pathlib import Path

import msgpack
import zmq

from wire import sockets
from wire.keys import Keypair

#: The broker's CURVE secret key (z85); unset: NULL everywhere.
SECRET_ENV: str = "SEALEDOS_BARE_SECRET"
GO_POLL_S: float = 0.05
WARMUP_CALLS: int = 20
RETRY_S: float = 0.05


def broker(addr: str) -> int:
    """Forward forever: [src, dst, payload] in, [dst, src, payload] out."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    secret = os.environ.get(SECRET_ENV)
    if secret:
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret.encode("ascii"))
    sock.bind(addr)
    recv, send = sock.recv_multipart, sock.send_multipart
    while True:
        frames = recv()
        if len(frames) != 3:
            continue
        src, dst, payload = frames
        try:
            send([dst, src, payload])
        except zmq.ZMQError:                   # no such peer (yet): bounce an empty payload
            send([src, dst, b""])


def server(addr: str, ident: int) -> int:
    """Echo every message back to its sender (decoded and re-encoded, as the echo app)."""
    sock = _dealer(addr, b"s%d" % ident)
    packb, unpackb = msgpack.packb, msgpack.unpackb
    while True:
        client, payload = sock.recv_multipart()
        msg = unpackb(payload, raw=False)
        sock.send_multipart([client, packb(msg, use_bin_type=True)])


def client(addr: str, ident: int, target: int, size: int, duration_s: float, slices: int,
           go_file: str | None, out: str) -> int:
    """Warm up, then `slices` windows of calls, each started by its go file; write the latency
    samples (us) and the windows' total length (s)."""
    sock = _dealer(addr, b"c%d" % ident)
    dst = b"s%d" % target
    payload = msgpack.packb({"kind": "echo", "data": os.urandom(size)}, use_bin_type=True)
    done = 0
    while done < WARMUP_CALLS:                   # until the server is reachable
        sock.send_multipart([dst, payload])
        _, reply = sock.recv_multipart()
        if reply:
            done += 1
        else:
            time.sleep(RETRY_S)
    Path(out + ".ready").touch()
    lat = array("d")
    clock, unpackb = time.perf_counter, msgpack.unpackb
    send, recv = sock.send_multipart, sock.recv_multipart
    window_s = 0.0
    ends: list[int] = []                       # per window: samples so far
    lengths: list[float] = []                  # per window: seconds
    for k in range(slices):
        if go_file:
            while not os.path.exists(f"{go_file}.{k}"):
                time.sleep(GO_POLL_S)
        t0 = t = clock()
        end = t0 + duration_s / slices
        while t < end:
            send([dst, payload])
            _, reply = recv()
            msg = unpackb(reply, raw=False)
            if "data" not in msg:
                raise RuntimeError("bare client: bad reply")
            t1 = clock()
            lat.append((t1 - t) * 1e6)
            t = t1
        window_s += t - t0
        ends.append(len(lat))
        lengths.append(t - t0)
        Path(f"{out}.done.{k}").touch()
    Path(out).write_text(json.dumps({"window_s": window_s, "size": size,
                                     "lat_us": lat.tolist(), "slice_ends": ends,
                                     "slice_s": lengths}))
    return 0


def _dealer(addr: str, ident: bytes) -> zmq.Socket[bytes]:
    """A DEALER with routing id `ident`, connected to the broker: the services' socket recipe
    (wire/sockets.py), CURVE with a fresh keypair of its own when the broker has a secret."""
    secret = os.environ.get(SECRET_ENV)
    own = Keypair(*zmq.curve_keypair()) if secret else None
    broker_public = zmq.curve_public(secret.encode("ascii")) if secret else None
    return sockets.dealer(zmq.Context.instance(), addr, own, broker_public, routing_id=ident)


def main(argv: list[str]) -> int:
    """`python -m host_tools.bare_broker ROLE ...`"""
    p = argparse.ArgumentParser(prog="host_tools.bare_broker")
    p.add_argument("role", choices=("broker", "server", "client"))
    p.add_argument("--addr", required=True)
    p.add_argument("--id", type=int, default=0)
    p.add_argument("--server", type=int, default=0)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--slices", type=int, default=1)
    p.add_argument("--go-file")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    if args.role == "broker":
        return broker(args.addr)
    if args.role == "server":
        return server(args.addr, args.id)
    return client(args.addr, args.id, args.server, args.size, args.duration, args.slices,
                  args.go_file, args.out)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
