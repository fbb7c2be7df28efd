"""echo: an echo server and its client, the workhorse of the IPC tests and the load generator.

    sealedos run echo [--register echo] [--delay-ms 0] [--stall]              # server
    sealedos run echo --client [--target echo] [--count 100] [--size 64]      # client
                      [--duration S --slices K --go-file F --out F]          # (bench mode)
                      [--grant-pages N]                                       # page flip

The server creates an endpoint with ECHO_CONTRACT, registers it with init and answers every
``echo {data, seq}`` with the same fields (reply-and-receive: one syscall per call).  It
keeps, per sender (as the kernel stamped it), the next seq it expects, so a lost, doubled
or reordered call is counted in ``order_violations``; it REPORTs ``calls`` and that count
about twice a second.  ``digest`` carries a page grant: the server reads the granted pages,
answers their sha256, and unmaps them.  ``--stall`` receives calls and never answers
(callers stay blocked: the death tests kill it); ``--delay-ms`` answers late.

The client looks the target up (its manifest lists echo and echo.*, nothing else), then
makes ``--count`` calls, checks every reply, and REPORTs ``checksum: verified``.  In bench mode
(``--duration``) it runs ``--slices`` windows of duration/slices seconds, window k starting
when the file ``GO_FILE.k`` appears and ending with a REPORT ``slice: k+1``, then writes its
latency samples and the windows' total length to ``--out``.  ``--grant-pages N`` instead grants N
freshly written pages and checks that the server saw them and that touching them afterwards
is a segmentation fault.  Any SealedError is REPORTed as ``error`` (exit status 1).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from array import array
from pathlib import Path
from typing import Any

from apps.runtime import PAGE_SIZE, SealedProcess
from apps.runtime.app import app_parser, run_reporting
from apps.runtime.errors import SegmentationFault
from wire.protocol import IPC_MAX_PAYLOAD_BYTES

#: The echo protocol.  Data may fill a whole IPC message (the kernel's size limit bites first).
ECHO_CONTRACT: dict[str, Any] = {
    "name": "echo",
    "calls": {
        "echo": {"fields": {"data": {"type": "bytes", "max_len": IPC_MAX_PAYLOAD_BYTES},
                            "seq": {"type": "int", "min": 0, "optional": True}}},
        "digest": {"grant": True},
    },
    "replies": {
        "echo": {"fields": {"data": {"type": "bytes", "max_len": IPC_MAX_PAYLOAD_BYTES},
                            "seq": {"type": "int", "min": 0, "optional": True}}},
        "digest": {"fields": {"sha256": {"type": "bytes", "max_len": 32},
                              "npages": {"type": "int", "min": 0}}},
    },
}
REPORT_EVERY_S: float = 0.5
GO_POLL_S: float = 0.05
#: How long a client waits for its target to register (servers may start after it).
LOOKUP_WAIT_S: float = 10.0


# -- the server -------------------------------------------------------------------------------
def serve(proc: SealedProcess, name: str, delay_ms: int, stall: bool) -> None:
    """Register `name` and answer calls forever."""
    h = proc.endpoint(ECHO_CONTRACT)
    proc.register_name(name, h)
    expect: dict[int, int] = {}
    calls = violations = 0
    last_report = 0.0
    proc.report(calls=0, order_violations=0, ready=True)
    rcv = proc.receive(h)
    while True:
        if stall:
            calls += 1
            proc.report(calls=calls, stalled=calls)
            rcv = proc.receive(h)             # hold every call: callers stay blocked
            continue
        msg = rcv.msg
        if rcv.kind == "digest":
            reply = _digest(proc, rcv.grant_addr, rcv.grant_npages)
        else:
            seq = msg.get("seq")
            if seq is not None:
                want = expect.get(rcv.sender.spid, 0)
                if seq != want:
                    violations += 1
                expect[rcv.sender.spid] = seq + 1
            reply = msg
        calls += 1
        now = time.monotonic()
        if now - last_report >= REPORT_EVERY_S:
            last_report = now
            proc.report(calls=calls, order_violations=violations)
        if delay_ms:
            time.sleep(delay_ms / 1000.0)
        rcv = proc.reply(rcv, reply, receive=h)


def _digest(proc: SealedProcess, addr: int | None, npages: int) -> dict[str, Any]:
    """The sha256 of granted pages (then unmapped: this server keeps nothing)."""
    if addr is None:
        return {"kind": "digest", "sha256": b"", "npages": 0}
    data = proc.read(addr, npages * PAGE_SIZE)
    proc.unmap(addr, npages)
    return {"kind": "digest", "sha256": hashlib.sha256(data).digest(), "npages": npages}


# -- the client -------------------------------------------------------------------------------
def run_calls(proc: SealedProcess, h: int, count: int, size: int) -> None:
    """`count` echo calls with seq numbers; raise AssertionError on a wrong reply."""
    payload = os.urandom(size)
    for seq in range(count):
        reply, _ = proc.call(h, {"kind": "echo", "data": payload, "seq": seq})
        if reply.get("seq") != seq or reply.get("data") != payload:
            raise AssertionError(f"call {seq}: wrong reply (seq {reply.get('seq')})")


def run_bench(proc: SealedProcess, h: int, size: int, duration_s: float, slices: int,
              go_file: str | None, out: str) -> None:
    """`slices` windows of calls, each started by its go file; write the latency samples
    (us) and the windows' total length (s) to out."""
    msg = {"kind": "echo", "data": os.urandom(size)}
    for _ in range(20):                                   # warm-up
        proc.call(h, msg)
    proc.report(ready=True)
    lat = array("d")
    clock = time.perf_counter
    call = proc.call
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
            call(h, msg)
            t1 = clock()
            lat.append((t1 - t) * 1e6)
            t = t1
        window_s += t - t0
        ends.append(len(lat))
        lengths.append(t - t0)
        proc.report(slice=k + 1)
    Path(out).write_text(json.dumps({"window_s": window_s, "size": size,
                                     "lat_us": lat.tolist(), "slice_ends": ends,
                                     "slice_s": lengths}))


def run_grant(proc: SealedProcess, h: int, npages: int) -> None:
    """Grant npages freshly written pages; check the server's digest and our lost mapping."""
    addr = proc.map(npages)
    data = b"".join(hashlib.sha256(b"page %d" % i).digest() * (PAGE_SIZE // 32)
                    for i in range(npages))
    proc.write(addr, data)
    reply, _ = proc.call(h, {"kind": "digest"}, grant=(addr, npages))
    if reply.get("sha256") != hashlib.sha256(data).digest():
        raise AssertionError("the server saw different bytes than were granted")
    try:
        proc.read(addr, 8)
    except SegmentationFault as exc:
        proc.report(segv_after_grant=True, segv_msg=str(exc)[:200])
    else:
        raise AssertionError("the granted range is still mapped in the sender")


def client(proc: SealedProcess, args: argparse.Namespace) -> int:
    """The client modes; REPORT the verdict, return the exit status
    (run_reporting turns a SealedError or a failed check into a REPORT and status 1)."""
    h = proc.lookup(args.target, LOOKUP_WAIT_S)
    if args.grant_pages:
        run_grant(proc, h, args.grant_pages)
    elif args.duration > 0:
        run_bench(proc, h, args.size, args.duration, args.slices, args.go_file, args.out)
    else:
        run_calls(proc, h, args.count, args.size)
    proc.report(checksum="verified", calls=args.count)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """`sealedos run echo` flags."""
    p = app_parser("echo", __doc__)
    p.add_argument("--register", default="echo", help="(server) the name to publish")
    p.add_argument("--delay-ms", type=int, default=0, help="(server) answer this late")
    p.add_argument("--stall", action="store_true", help="(server) never answer")
    p.add_argument("--client", action="store_true")
    p.add_argument("--target", default="echo", help="(client) the name to call")
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--size", type=int, default=64, help="payload bytes per call")
    p.add_argument("--duration", type=float, default=0.0, help="(bench) seconds of calls")
    p.add_argument("--slices", type=int, default=1, help="(bench) measuring windows")
    p.add_argument("--go-file", help="(bench) window k starts when GO_FILE.k exists")
    p.add_argument("--out", help="(bench) write latency samples here")
    p.add_argument("--grant-pages", type=int, default=0)
    return p


def main(argv: list[str]) -> int:
    """`sealedos run echo ...`"""
    args = build_parser().parse_args(argv)
    if args.duration > 0 and not args.out:
        print("echo: --duration needs --out", file=sys.stderr)
        return 2
    with SealedProcess.connect(args.kernel) as proc:
        if not args.client:
            serve(proc, args.register, args.delay_ms, args.stall)
            return 0
        return run_reporting(proc, lambda: client(proc, args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
