"""echoload: steady echo traffic that records its own throughput over time, for `sealedos chaos`.

    sealedos run echoload [--target echo] [--size 64] [--duration 20] [--stop-file F]
                          [--bin-ms 100] --out F

A client of the echo server (apps.echo) that never touches paged memory after start-up, so
it never faults: while the pager is down, whatever happens to its throughput is the
kernel's doing, not its own waiting.  It calls ``echo {data, seq}`` back to back for
--duration seconds (or until --stop-file exists) and checks every reply (same seq, same
bytes).

It counts completed calls in bins of --bin-ms on the host's CLOCK_MONOTONIC and, at the end,
writes ``{"t0": s, "bin_s": s, "counts": [...], "calls": n, "peer_died": n}`` to --out (the
harness is on the same host; the kernel never sees the file).  It REPORTs ``calls`` and
``peer_died`` about four times a second, and at the end ``checksum: verified`` (every reply
was right) or ``failed``.

Its server may die (chaos kills it on purpose): a call then ends in PeerDied, never a hang.
echoload counts it (once per death, however many calls to the dead endpoint it takes until
init hands out the new one), drops the dead handle, looks the name up again until a
restarted server has registered it, and goes on.  Any other SealedError is REPORTed as
``error`` and ends the process with status 1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from apps.runtime import SealedError, SealedProcess
from apps.runtime.app import app_parser, run_reporting
from apps.runtime.errors import BadHandle, NotFound, PeerDied

REPORT_EVERY_S: float = 0.25
#: How long to keep looking a name up after its server died before giving up.
RELOOKUP_S: float = 30.0
RELOOKUP_POLL_S: float = 0.02


class Load:
    """The call loop's state: bins of completed calls, counters, the current handle."""

    def __init__(self, proc: SealedProcess, target: str, size: int, bin_s: float) -> None:
        self.proc, self.target, self.bin_s = proc, target, bin_s
        self.payload = os.urandom(size)
        self.t0 = time.monotonic()
        self.counts: list[int] = []
        self.calls = self.peer_died = self.wrong = 0
        self.served_since_death = True           # PeerDied counts deaths, not retries
        self.handle = self.lookup()

    def lookup(self) -> int:
        """The target's capability, waiting for a (re)started server to register it."""
        deadline = time.monotonic() + RELOOKUP_S
        while True:
            try:
                return self.proc.lookup(self.target)
            except NotFound:
                if time.monotonic() > deadline:
                    raise
                time.sleep(RELOOKUP_POLL_S)

    def one(self, seq: int) -> None:
        """One echo call; a dead server costs a re-lookup, a wrong reply is counted."""
        try:
            reply, _ = self.proc.call(self.handle, {"kind": "echo", "data": self.payload,
                                                    "seq": seq})
        except (PeerDied, BadHandle):
            self.peer_died += self.served_since_death
            self.served_since_death = False
            self._drop(self.handle)
            time.sleep(RELOOKUP_POLL_S)     # init may still hand out the dead one a moment
            self.handle = self.lookup()
            return
        if reply.get("seq") != seq or reply.get("data") != self.payload:
            self.wrong += 1
        self.calls += 1
        self.served_since_death = True
        b = int((time.monotonic() - self.t0) / self.bin_s)
        if b >= len(self.counts):
            self.counts.extend([0] * (b + 1 - len(self.counts)))
        self.counts[b] += 1

    def _drop(self, handle: int) -> None:
        try:
            self.proc.cap_close(handle)
        except SealedError:
            pass

    def result(self) -> dict[str, Any]:
        """What --out receives."""
        return {"t0": self.t0, "bin_s": self.bin_s, "counts": self.counts,
                "calls": self.calls, "peer_died": self.peer_died, "wrong": self.wrong}


def run(proc: SealedProcess, args: argparse.Namespace) -> int:
    """Call for --duration seconds; write --out; REPORT the verdict; return the exit status."""
    load = Load(proc, args.target, args.size, args.bin_ms / 1000)
    end = load.t0 + args.duration
    last = 0.0
    seq = 0
    while (now := time.monotonic()) < end:
        load.one(seq)
        seq += 1
        if now - last >= REPORT_EVERY_S:
            last = now
            if args.stop_file and os.path.exists(args.stop_file):
                break
            proc.report(calls=load.calls, peer_died=load.peer_died,
                        progress=round(min(0.99, (now - load.t0) / args.duration), 3))
    Path(args.out).write_text(json.dumps(load.result()))
    verdict = "verified" if load.wrong == 0 else "failed"
    proc.report(calls=load.calls, peer_died=load.peer_died, wrong=load.wrong, checksum=verdict,
                progress=1.0)
    return 0 if verdict == "verified" else 1


def build_parser() -> argparse.ArgumentParser:
    """`sealedos run echoload` flags."""
    p = app_parser("echoload", __doc__)
    p.add_argument("--target", default="echo", help="the echo server's registered name")
    p.add_argument("--size", type=int, default=64, help="payload bytes per call")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of calls")
    p.add_argument("--stop-file", help="stop early once this file exists")
    p.add_argument("--bin-ms", type=float, default=100.0, help="width of a throughput bin")
    p.add_argument("--out", required=True, help="where to write the throughput bins (JSON)")
    return p


def main(argv: list[str]) -> int:
    """`sealedos run echoload ...`"""
    args = build_parser().parse_args(argv)
    with SealedProcess.connect(args.kernel) as proc:
        return run_reporting(proc, lambda: run(proc, args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
