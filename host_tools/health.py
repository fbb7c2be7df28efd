"""`sealedos health WHAT`: is this component up and doing its job?  For container
healthchecks (exit 0 healthy, 1 not, one line either way); configured like the component it
checks, by the same flags and environment variables.

    sealedos health kernel [--kernel ADDR]                 the kernel answers PING
    sealedos health disk   [--disk ADDR]                   the disk service answers PING
    sealedos health pager  [--kernel ADDR] [--mirror N]    the kernel has admitted a pager on
                                                           THIS host into mirror slot N
    sealedos health init   [--kernel ADDR]                 the name service is up, served by an
                                                           init on THIS host

A service's own address may be its bind address (tcp://0.0.0.0:PORT, tcp://*:PORT); it is
checked through 127.0.0.1.  Defaults: SEALEDOS_KERNEL_ADDR, SEALEDOS_DISK_ADDR,
SEALEDOS_PAGER_MIRROR (as `sealedos kernel`, `disk` and `pager` read them).
"""
from __future__ import annotations

import argparse
import os
import re
import socket
import sys
from typing import Any

from wire import keys as wkeys
from wire.client import Client
from wire.protocol import Op, ServiceError

DEFAULT_TIMEOUT_MS: int = 2000
UNHEALTHY: int = 1
#: A wildcard host in a bind address, and what to connect to instead.
_WILDCARD = re.compile(r"^tcp://(0\.0\.0\.0|\*|\[::\])(?=:)")


class Unhealthy(Exception):
    """The component answers but is not doing its job."""


def local_addr(addr: str) -> str:
    """A bind address made connectable: tcp://0.0.0.0:5555 -> tcp://127.0.0.1:5555."""
    return _WILDCARD.sub("tcp://127.0.0.1", addr)


def ask(args: argparse.Namespace, addr: str, op: Op, server: str = "kernel") -> dict[str, Any]:
    """One request to `addr` (principal `server`), speaking with this container's own key
    (--keys/--principal) or NULL with --insecure; ServiceError(ETIMEDOUT) when nobody answers."""
    keys = wkeys.keyring(args.keys, args.principal, args.insecure,
                         None if args.insecure else [server])
    with Client(local_addr(addr), keys=keys, server=server) as client:
        return client.call(op, timeout_ms=args.timeout_ms)


def check_kernel(args: argparse.Namespace) -> str:
    reply = ask(args, args.kernel, Op.PING)
    return f"kernel answers at {args.kernel} (pid {reply.get('pid')})"


def check_disk(args: argparse.Namespace) -> str:
    server = args.principal if args.principal.startswith("disk") else f"disk{args.mirror}"
    reply = ask(args, args.disk, Op.PING, server)
    return f"disk answers at {args.disk} (pid {reply.get('pid')})"


def check_pager(args: argparse.Namespace) -> str:
    pagers = ask(args, args.kernel, Op.STATS)["kernel"]["pagers"]
    if not 0 <= args.mirror < len(pagers):
        raise Unhealthy(f"the kernel has {len(pagers)} pager slot(s), no mirror {args.mirror}")
    slot, host = pagers[args.mirror], socket.gethostname()
    if not slot.get("up"):
        raise Unhealthy(f"pager slot {args.mirror} is down (joins {slot.get('joins')})")
    if slot.get("host") != host:
        raise Unhealthy(f"pager slot {args.mirror} is served from {slot.get('host')!r}, "
                        f"not {host!r}")
    return f"pager {args.mirror} admitted (joins {slot.get('joins')})"


def check_init(args: argparse.Namespace) -> str:
    stats = ask(args, args.kernel, Op.STATS)
    ipc, host = stats["kernel"]["ipc"], socket.gethostname()
    if not ipc.get("nameservice"):
        raise Unhealthy("the name service is not up")
    init = [p for p in stats["processes"] if p.get("spid") == ipc.get("init_spid")]
    if not init or init[0].get("host") != host:
        raise Unhealthy(f"init runs elsewhere ({init[0].get('host') if init else 'unknown'})")
    return f"init (spid {ipc.get('init_spid')}) serves the name service"


CHECKS = {"kernel": check_kernel, "disk": check_disk, "pager": check_pager, "init": check_init}


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="sealedos health", description=__doc__.split("\n")[0])
    p.add_argument("what", choices=sorted(CHECKS))
    p.add_argument("--kernel", default=env("SEALEDOS_KERNEL_ADDR"), help="kernel address")
    p.add_argument("--disk", default=env("SEALEDOS_DISK_ADDR"), help="disk service address")
    p.add_argument("--mirror", type=int, default=int(env("SEALEDOS_PAGER_MIRROR", "0")))
    p.add_argument("--timeout-ms", type=int, default=DEFAULT_TIMEOUT_MS)
    p.add_argument("--keys", default=env(wkeys.KEYS_ENV),
                   help=f"keys directory (env {wkeys.KEYS_ENV})")
    p.add_argument("--principal", default=env("SEALEDOS_PRINCIPAL", "observer"),
                   help="whose key to speak with (env SEALEDOS_PRINCIPAL: the container's own)")
    p.add_argument("--insecure", action="store_true", default=wkeys.insecure_from_env(),
                   help="talk NULL to an insecure system")
    return p


def main(argv: list[str]) -> int:
    """Run one check; print its verdict; exit 0 when healthy."""
    args = build_parser().parse_args(argv)
    needed = "disk" if args.what == "disk" else "kernel"
    if not getattr(args, needed):
        print(f"sealedos health: no {needed} address (--{needed} or "
              f"SEALEDOS_{needed.upper()}_ADDR)", file=sys.stderr)
        return 2
    try:
        print(f"healthy: {CHECKS[args.what](args)}")
        return 0
    except (ServiceError, Unhealthy, KeyError, TypeError, wkeys.KeysMissing) as exc:
        print(f"unhealthy: {args.what}: {exc}")
        return UNHEALTHY
