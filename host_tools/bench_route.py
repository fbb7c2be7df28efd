"""`sealedos bench route`: the kernel's own CPU per routed IPC round trip, in process.

    sealedos bench route [--calls N] [--faults N] [--profile] [--json]

The real Kernel on the simulated transport and clock (host_tools/sim/kit.py): no sockets, no
other processes, so the figure hardly moves with the machine's load (it is the process's CPU
time, not wall time).  A client and a server are admitted, registered and attached as the
launcher and the runtime would; the server owns the name service's endpoint and waits in
RECEIVE.  Then, N times: the client's CALL frame goes into Kernel.on_frame (checked, contract-
checked, delivered: one frame out to the server), and the server's REPLY-and-RECEIVE frame
(checked, contract-checked, the reply out to the client).  Every frame the kernel sends is
encoded as usual and then dropped instead of going to a socket.

The figure is what `bench ipc` cannot separate from ZeroMQ and the machine's load: the Python
work of one round trip through the kernel (two requests in, two messages out).  The same for
a minor fault (``--faults``): the client maps FAULT_REGION pages, takes a write fault on each
(a free frame waiting: one FAULT in, one reply out) and unmaps them, round after round; only
the FAULT frames are timed.  It is printed
as the median and min over 10 slices of N/10 round trips; ``--profile`` adds cProfile's top
functions (their shares, not their absolute times: cProfile slows small functions most).
"""
from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time
from typing import Any

import msgpack

from host_tools.sim.ipcload import CONTRACT
from host_tools.sim.kit import Harness, Peer
from kernel_daemon.kernel import Kernel
from wire.credential import new_credential, public_of
from wire.protocol import ACCESS_WRITE, decode, encode

ADDR: str = "sim://kernel"
SLICES: int = 10
#: Pages per round of minor faults (fewer than the kernel's frames: no eviction, no pager).
FAULT_REGION: int = 200
FAULT_FRAMES: int = 256
SETTLE_S: float = 0.01


def _last(peer: Peer) -> dict[str, Any]:
    """The last message `peer` received; RuntimeError if it is an error reply."""
    msg = peer.received[-1]
    if "err" in msg:
        raise RuntimeError(f"bench route: set-up refused: {msg.get('msg')}")
    return msg


def _start(h: Harness, launcher: Peer, secret: bytes, name: str, role: str) -> Peer:
    """Admit (as the launcher), register and attach one process; its data connection."""
    launcher.send({"op": "admit", "rid": 1, "cred": secret, "name": name, "program": "bench",
                   "digest": "d", "role": role, "manifest": [], "provides": [], "quota": {},
                   "hostpid": 0, "started": 0.0})
    h.run_for(SETTLE_S)
    cred = _last(launcher)["cred"]
    data, ctrl = h.peer(f"{name}.data", ADDR), h.peer(f"{name}.ctrl", ADDR)
    data.send({"op": "register", "rid": 1, "cred": cred})
    h.run_for(SETTLE_S)
    reg = _last(data)
    ctrl.send({"op": "attach", "rid": 1, "spid": reg["spid"], "secret": reg["secret"]})
    h.run_for(SETTLE_S)
    _last(ctrl)
    return data


def setup() -> tuple[Kernel, Peer, Peer, int, list[bytes]]:
    """A kernel with a server waiting in RECEIVE on the name service and a client; returns
    (kernel, client, server, the endpoint's handle, the list the kernel's frames go to)."""
    h = Harness()
    secret = new_credential()
    kernel = Kernel(ADDR, FAULT_FRAMES, "clock", launcher_key=public_of(secret),
                    transport=h.transport("kernel"), clock=h.clock)
    h.adopt(kernel)
    kernel.on_start()
    launcher = h.peer("launcher", ADDR)
    server = _start(h, launcher, secret, "server", "init")
    client = _start(h, launcher, secret, "client", "app")
    server.send({"op": "endpoint", "rid": 2, "contract": CONTRACT, "nameservice": True})
    h.run_for(SETTLE_S)
    handle = _last(server)["handle"]
    server.send({"op": "receive", "rid": 3, "handle": handle})
    h.run_for(SETTLE_S)
    sent: list[bytes] = []
    kernel.transport.send = lambda sock, peer, frame: sent.append(frame)  # type: ignore[method-assign]  # drop, not deliver
    return kernel, client, server, handle, sent


def measure(calls: int, profile: bool) -> dict[str, Any]:
    """CPU microseconds of kernel work per routed round trip (median and min of SLICES)."""
    kernel, client, server, handle, sent = setup()
    payload, answer = msgpack.packb({"kind": "ping", "n": 7}), msgpack.packb({"kind": "ok", "n": 7})
    sock, on_frame = kernel.sock, kernel.on_frame
    on_frame(sock, client.identity, encode({"op": "call", "rid": 9, "handle": 0, "msg": payload}))
    first = decode(sent[-1])["call"]
    call_frames = [encode({"op": "call", "rid": 10 + i, "handle": 0, "msg": payload})
                   for i in range(calls)]
    reply_frames = [encode({"op": "reply", "rid": 10 + i, "call": first + i, "msg": answer,
                            "receive": handle}) for i in range(calls)]
    step = max(1, calls // SLICES)
    per_rt: list[float] = []
    prof = cProfile.Profile() if profile else None
    for s in range(SLICES):
        sent.clear()
        lo, hi = s * step, (s + 1) * step
        if prof is not None:
            prof.enable()
        t0 = time.thread_time()
        for i in range(lo, hi):
            on_frame(sock, server.identity, reply_frames[i])       # answers call first + i
            on_frame(sock, client.identity, call_frames[i + 1] if i + 1 < calls else
                     call_frames[0])
        dt = time.thread_time() - t0
        if prof is not None:
            prof.disable()
        errors = [m for m in map(decode, sent[-4:]) if "err" in m]
        if errors:
            raise RuntimeError(f"bench route: the kernel refused a routed call: {errors[0]}")
        per_rt.append(dt / step * 1e6)
    per_rt.sort()
    out: dict[str, Any] = {"round_trips": step * SLICES, "cpu_us_per_round_trip":
                           round(per_rt[len(per_rt) // 2], 2), "min_us": round(per_rt[0], 2)}
    if prof is not None:
        out["profile"] = _top(prof)
    return out


def measure_faults(faults: int) -> dict[str, Any]:
    """CPU microseconds of kernel work per minor fault (median and min of SLICES)."""
    kernel, client, _, _, sent = setup()
    sock, on_frame, ident = kernel.sock, kernel.on_frame, client.identity
    rounds = max(1, faults // (SLICES * FAULT_REGION))
    per_fault: list[float] = []
    rid = 100
    for _ in range(SLICES):
        spent = 0.0
        for _ in range(rounds):
            rid += 1
            on_frame(sock, ident, encode({"op": "map", "rid": rid, "npages": FAULT_REGION,
                                          "prot": 3}))
            reply = decode(sent[-1])
            if "err" in reply:
                raise RuntimeError(f"bench route: map refused: {reply.get('msg')}")
            vpn0 = reply["addr"] >> 12
            frames = [encode({"op": "fault", "rid": rid + 1 + i, "vpn": vpn0 + i,
                              "access": ACCESS_WRITE, "refs": []}) for i in range(FAULT_REGION)]
            sent.clear()
            t0 = time.thread_time()
            for frame in frames:
                on_frame(sock, ident, frame)
            spent += time.thread_time() - t0
            errors = [m for m in map(decode, sent) if "err" in m]
            if errors or len(sent) != FAULT_REGION:
                raise RuntimeError(f"bench route: a fault was not answered: {errors[:1]}")
            rid += FAULT_REGION + 1
            on_frame(sock, ident, encode({"op": "unmap", "rid": rid, "addr": reply["addr"],
                                          "npages": FAULT_REGION}))
            sent.clear()
        per_fault.append(spent / (rounds * FAULT_REGION) * 1e6)
    per_fault.sort()
    return {"faults": rounds * FAULT_REGION * SLICES,
            "cpu_us_per_minor_fault": round(per_fault[len(per_fault) // 2], 2),
            "min_us": round(per_fault[0], 2)}


def _top(prof: cProfile.Profile, n: int = 15) -> list[tuple[str, float]]:
    """The n functions with the most own time, with their share of the total."""
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]  # untyped in typeshed
    total = sum(v[2] for v in stats.values()) or 1.0
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:n]
    return [(f"{fn} ({'/'.join(file.split('/')[-2:])}:{line})", round(v[2] / total, 3))
            for (file, line, fn), v in rows]


def main(argv: list[str]) -> int:
    """Print the kernel's CPU per routed round trip (and its profile with --profile)."""
    p = argparse.ArgumentParser(prog="sealedos bench route", description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=30000, help="routed round trips in all")
    p.add_argument("--faults", type=int, default=20000, help="minor faults in all")
    p.add_argument("--profile", action="store_true", help="add cProfile's top functions")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.calls < SLICES:
        print(f"sealedos bench route: --calls >= {SLICES}")
        return 2
    result = measure(args.calls, False)
    if args.profile:                    # a second run: cProfile's overhead skews the time
        result["profile"] = measure(args.calls, True)["profile"]
    result["minor_fault"] = measure_faults(args.faults)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print("kernel CPU, in process (no sockets), median and min over "
          f"{SLICES} slices:")
    print(f"  per routed round trip: {result['cpu_us_per_round_trip']} us, min "
          f"{result['min_us']} us ({result['round_trips'] // SLICES} per slice)")
    print("    (CALL in, delivery out, REPLY+RECEIVE in, reply out)")
    f = result["minor_fault"]
    print(f"  per minor fault: {f['cpu_us_per_minor_fault']} us, min {f['min_us']} us "
          f"({f['faults'] // SLICES} per slice)")
    print("    (FAULT in, reply out)")
    for name, share in result.get("profile", []):
        print(f"  {share * 100:5.1f}%  {name}")
    return 0
