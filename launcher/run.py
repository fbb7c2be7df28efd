"""`sealedos run APP [ARGS]`: the launcher's command -- start one sealed process against a
running kernel and wait for it.

    sealedos run memstress --kernel ipc://RUNDIR/kernel.sock --pages 64
    sealedos run kvstore --client --kernel tcp://kernel:5555 --keys /keys   (compose)

It admits the process with the kernel as the launcher (the launcher's key: ``--keys DIR``,
``$SEALEDOS_KEYS``, or the ``keys`` directory beside an ipc:// kernel socket), starts it with
its one-time credential on an inherited descriptor, forwards SIGINT/SIGTERM to it, and exits
with its exit status.  Only programs in the service table run.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from urllib.parse import urlparse

from launcher.launch import Launcher, load_launcher_key
from launcher.table import UnknownProgram, load
from wire.keys import KEYS_ENV, KeysMissing, insecure_from_env, load_public

KERNEL_ADDR_ENV: str = "SEALEDOS_KERNEL_ADDR"


def keys_dir_for(kernel_addr: str, given: str | None) -> Path:
    """Where the launcher's key is: given, else $SEALEDOS_KEYS, else RUNDIR/keys beside an
    ipc:// kernel socket; ValueError if none applies."""
    if given or os.environ.get(KEYS_ENV):
        return Path(given or os.environ[KEYS_ENV])
    if kernel_addr.startswith("ipc://"):
        return Path(kernel_addr[len("ipc://"):]).parent / "keys"
    raise ValueError(f"give --keys DIR (or ${KEYS_ENV}): the launcher's key is needed")


def is_local(kernel_addr: str) -> bool:
    """Does the kernel run on this host (so it may watch the child by its pid)?"""
    if kernel_addr.startswith("ipc://"):
        return True
    return urlparse(kernel_addr).hostname in (
        "127.0.0.1", "localhost", "::1")


def main(argv: list[str]) -> int:
    """Admit and start APP, wait for it, exit with its status."""
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: sealedos run APP [--kernel ADDR] [--name NAME] [--keys DIR] [ARGS...]\n\n"
              "apps (the service table): " + ", ".join(sorted(load())))
        return 0 if argv else 2
    app, rest = argv[0], argv[1:]
    p = argparse.ArgumentParser(prog=f"sealedos run {app}", add_help=False)
    p.add_argument("--kernel", default=os.environ.get(KERNEL_ADDR_ENV))
    p.add_argument("--name", default=app)
    p.add_argument("--keys")
    known, args = p.parse_known_args(rest)
    if not known.kernel:
        print(f"sealedos run: give --kernel ADDR (or ${KERNEL_ADDR_ENV})", file=sys.stderr)
        return 2
    try:
        keys_dir = keys_dir_for(known.kernel, known.keys)
        _, secret = load_launcher_key(keys_dir)
        kernel_public = None if insecure_from_env() else load_public(keys_dir, "kernel")
        launcher = Launcher(known.kernel, secret, kernel_public=kernel_public)
        child = launcher.start(app, known.name, args, local=is_local(known.kernel),
                               inherit_output=True)
    except (UnknownProgram, ValueError, OSError, KeysMissing) as exc:
        print(f"sealedos run: {exc}", file=sys.stderr)
        return 2
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda s, _f: child.send_signal(s))
    try:
        return child.wait()
    finally:
        launcher.close()
