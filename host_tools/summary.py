"""`sealedos summary`: the per-process summary `sealedos up` prints, for a system someone else
started (containers): asked from the kernel, optionally after waiting for named apps to exit.

    sealedos summary [--kernel ADDR] [--wait NAME,NAME...] [--timeout S] [--json]

With --wait, polls the kernel until every named sealed process has registered and ended
(exited or killed), then prints.  Exit status 0 when every named process (every process the
kernel has seen, without --wait) that reported a checksum verified it and every named one
exited with status 0; 1 otherwise; 2 when no kernel answers.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from rich.console import Console

from host_tools.up import print_summary
from wire import keys as wkeys
from wire.client import Client
from wire.protocol import Op, ServiceError

POLL_S: float = 1.0
KERNEL_TIMEOUT_MS: int = 5000
ENDED = ("exited", "killed")
NO_KERNEL: int = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sealedos summary", description=__doc__.split("\n")[0])
    p.add_argument("--kernel", default=os.environ.get("SEALEDOS_KERNEL_ADDR"),
                   help="kernel address")
    p.add_argument("--wait", default="", help="comma-separated process names to wait for")
    p.add_argument("--timeout", type=float, default=0.0,
                   help="give up waiting after S seconds (0: never)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--keys", default=os.environ.get(wkeys.KEYS_ENV),
                   help=f"keys directory with the observer's secret (env {wkeys.KEYS_ENV})")
    p.add_argument("--insecure", action="store_true", default=wkeys.insecure_from_env(),
                   help="talk NULL to an insecure system")
    return p


def summarize(stats: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """`sealedos up`'s summary shape from one STATS reply: newest record per name."""
    by_name: dict[str, Any] = {}
    for rec in stats["processes"]:
        if rec.get("name") != "init":
            by_name[rec["name"]] = rec
    procs = {n: by_name.get(n, {"checksum": None, "state": "never registered"})
             for n in (names or list(by_name))}
    k = stats["kernel"]
    restarts = {f"pager{p['mirror']}": max(0, p.get("joins", 0) - 1) for p in k.get("pagers", [])}
    return {"processes": procs, "kernel": k, "services": restarts}


def verdict(summary: dict[str, Any], names: list[str]) -> int:
    """0 when every checksum reported verified and every named process exited 0."""
    for rec in summary["processes"].values():
        if rec.get("checksum") not in (None, "verified"):
            return 1
        if names and (rec.get("checksum") is None
                      or rec.get("exit_reason") != "exited with status 0"):
            return 1
    return 0


def main(argv: list[str]) -> int:
    """Wait if asked, print the summary, exit with the verdict."""
    args = build_parser().parse_args(argv)
    if not args.kernel:
        print("sealedos summary: no kernel address (--kernel or SEALEDOS_KERNEL_ADDR)",
              file=sys.stderr)
        return NO_KERNEL
    names = [n for n in args.wait.split(",") if n]
    deadline = time.monotonic() + args.timeout if args.timeout > 0 else None
    try:
        keys = wkeys.keyring(args.keys, "observer", args.insecure,
                             None if args.insecure else ["kernel"])
    except wkeys.KeysMissing as exc:
        print(f"sealedos summary: {exc}", file=sys.stderr)
        return NO_KERNEL
    with Client(args.kernel, keys=keys) as client:
        while True:
            try:
                stats = client.call(Op.STATS, timeout_ms=KERNEL_TIMEOUT_MS)
            except ServiceError as exc:
                print(f"sealedos summary: no kernel answers at {args.kernel}: {exc}",
                      file=sys.stderr)
                return NO_KERNEL
            ended = {r["name"] for r in stats["processes"] if r.get("state") in ENDED}
            waiting = [n for n in names if n not in ended]
            if not waiting or (deadline is not None and time.monotonic() > deadline):
                break
            time.sleep(POLL_S)
    summary = summarize(stats, names)
    if waiting:
        print(f"sealedos summary: still running after {args.timeout:g} s: {', '.join(waiting)}",
              file=sys.stderr)
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    else:
        print_summary(summary, Console(width=None if sys.stdout.isatty() else 132))
    return 1 if waiting else verdict(summary, names)
