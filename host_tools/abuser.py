"""One abusive process for `sealedos bench abuse`: it registers raw (no runtime), pushes every
kernel resource it can to its quota, then floods the kernel with requests that are refused.

    python -m host_tools.abuser --kernel ADDR --name NAME [--duration S] [--stop-file PATH]

It prints one JSON line when done: what it got before each quota said no, and how many
requests it sent.  It is a load generator, not a test: nothing here asserts anything.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from apps.runtime.process import read_inherited
from apps.runtime.syscall import kernel_public_from_env
from wire.client import Client
from wire.credential import CRED_FD_ENV
from wire.keys import Keyring, keypair_of_credential
from wire.protocol import Err, Op, ServiceError

#: A contract of about 30 KB whose last kind is invalid: the kernel compiles it to find out.
_BAD_CONTRACT: dict[str, Any] = {
    "name": "bad",
    "calls": {f"k{i}": {"fields": {f"f{j}": {"type": "int", "min": 0, "max": 9}
                                   for j in range(24)}} for i in range(50)},
    "replies": {"ok": {}}}
_BAD_CONTRACT["calls"]["k0"] = {"fields": {"f": {"type": "no-such-type"}}}
_BIG_CONTRACT: dict[str, Any] = {
    "name": "big",
    "calls": {f"k{i}": {"fields": {f"f{j}": {"type": "int", "min": 0, "max": 9}
                                   for j in range(24)}} for i in range(50)},
    "replies": {"ok": {}}}


def connect(kernel_addr: str) -> tuple[Client, bytes]:
    """A raw connection proving the credential the launcher passed: CURVE with it as the key
    when the launcher gave the kernel's public key, else NULL (--insecure)."""
    cred = read_inherited(int(os.environ.pop(CRED_FD_ENV)))
    kernel_public = kernel_public_from_env()
    keys = Keyring(keypair_of_credential(cred), {"kernel": kernel_public}) \
        if kernel_public is not None else None
    return Client(kernel_addr, keys=keys), cred


def register(c: Client, cred: bytes) -> dict[str, Any]:
    """REGISTER the raw connection with the credential the launcher passed (the one place
    this program does)."""
    return c.call(Op.REGISTER, cred=cred)


def until_refused(c: Client, op: Op, fields: dict[str, Any], most: int) -> tuple[int, str]:
    """Send op until it is refused (or `most` times); return (how many succeeded, the error)."""
    for n in range(most):
        try:
            c.call(op, **fields)
        except ServiceError as exc:
            return n, f"{exc.code}: {exc.msg}"
    return most, ""


def main(argv: list[str]) -> int:
    """Push to every quota, then flood with refused requests for --duration seconds."""
    p = argparse.ArgumentParser(prog="abuser")
    p.add_argument("--kernel", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--duration", type=float, default=10.0,
                   help="seconds to flood (with --stop-file: at most)")
    p.add_argument("--stop-file", type=Path, help="flood until this file exists")
    args = p.parse_args(argv)
    out: dict[str, Any] = {"name": args.name}
    c, cred = connect(args.kernel)
    with c:
        register(c, cred)
        out["endpoints"] = until_refused(c, Op.ENDPOINT, {"contract": {
            "name": "e", "calls": {"a": {}}, "replies": {"ok": {}}}}, 10_000)
        for h in range(1, 9):                          # room for big contracts
            c.call(Op.CAP_CLOSE, handle=h)
        out["big_contracts"] = until_refused(c, Op.ENDPOINT, {"contract": _BIG_CONTRACT}, 100)
        out["regions"] = until_refused(c, Op.MAP, {"npages": 32, "prot": 1}, 100_000)
        out["report"] = until_refused(c, Op.REPORT, {"data": {f"k{i}": "x" * 1000
                                                              for i in range(64)}}, 100)
        sent, refused = 0, 0
        deadline = time.monotonic() + args.duration
        flood: list[tuple[Op, dict[str, Any]]] = [
            (Op.ENDPOINT, {"contract": _BAD_CONTRACT}), (Op.MAP, {"npages": 1, "prot": 1}),
            (Op.REPORT, {"data": {"z": "y" * 1000}}), (Op.PING, {})]
        while time.monotonic() < deadline and not (args.stop_file and args.stop_file.exists()):
            op, fields = flood[sent % len(flood)]
            sent += 1
            try:
                c.call(op, **fields)
            except ServiceError as exc:
                refused += exc.code in (Err.QUOTA, Err.INVAL, Err.MSGSIZE)
        out["flood_sent"], out["flood_refused"] = sent, refused
        c.call(Op.EXIT, status=0)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
