"""`sealedos keys`: make every principal's CURVE keypair (the compose deployment's one-shot
key service, or by hand for services started one by one).

    sealedos keys --dir KEYS --pagers N [--force]

writes ``KEYS/priv/<principal>/<principal>.key_secret`` (0700 directory, 0600 file: in compose
each is its own volume, mounted only into that principal's container) and
``KEYS/public/<principal>.key`` (a volume every container mounts read-only).  Principals:
kernel, launcher, observer, pager0..N-1, disk0..N-1 (a sealed process has no fixed key: the
launcher's ADMIT gets it a one-time credential, which is its CURVE secret key).  Existing keys
are kept (a restarted deployment keeps talking), unless --force.

Making and writing keys lives here, with the host tools (this command and the supervisor,
host_tools/system.py, call :func:`generate`); the services only read them (wire/keys.py).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import zmq.auth

from wire import keys as wkeys

#: The principals with a fixed key besides the per-slot pagers and disks.
FIXED_PRINCIPALS: tuple[str, ...] = ("kernel", "launcher", "observer")


def principals_for(npagers: int) -> list[str]:
    """Every principal with a fixed key in a system with `npagers` pager slots."""
    return [*FIXED_PRINCIPALS, *(f"pager{m}" for m in range(npagers)),
            *(f"disk{m}" for m in range(npagers))]


def default_private_dir(keys_dir: Path, principal: str) -> Path:
    """KEYS/priv/PRINCIPAL, created 0700 (the supervisor passes its own maker when root)."""
    base = keys_dir / "priv"
    base.mkdir(mode=0o711, parents=True, exist_ok=True)
    path = base / principal
    path.mkdir(mode=0o700, exist_ok=True)
    path.chmod(0o700)                          # a pre-made mount point (compose volume) too
    return path


def generate(keys_dir: Path, principals: list[str],
             private_dir: Callable[[str], Path] | None = None) -> dict[str, bytes]:
    """Make a fresh keypair for each principal under `keys_dir` (layout: wire/keys.py);
    return principal -> z85 public.  `private_dir(principal)` makes and returns the
    principal's private directory (default: KEYS/priv/PRINCIPAL, 0700)."""
    keys_dir = Path(keys_dir)
    public_dir = keys_dir / "public"
    public_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    publics: dict[str, bytes] = {}
    for principal in principals:
        priv = private_dir(principal) if private_dir else default_private_dir(keys_dir, principal)
        pub_file, secret_file = zmq.auth.create_certificates(priv, principal)
        os.chmod(secret_file, 0o600)
        shutil.move(pub_file, public_dir / f"{principal}.key")
        os.chmod(public_dir / f"{principal}.key", 0o644)
        owner = os.stat(priv).st_uid
        if owner != os.geteuid():               # the supervisor chowned the dir to the principal
            os.chown(secret_file, owner, owner)
        publics[principal] = wkeys.load_public(keys_dir, principal)
    return publics


def build_parser() -> argparse.ArgumentParser:
    """`sealedos keys` flags."""
    p = argparse.ArgumentParser(prog="sealedos keys", description="generate CURVE keys")
    p.add_argument("--dir", default=os.environ.get(wkeys.KEYS_ENV),
                   help=f"keys directory (env {wkeys.KEYS_ENV})")
    p.add_argument("--pagers", type=int, default=int(os.environ.get("SEALEDOS_PAGERS", "1")),
                   help="pager slots (one pagerN and one diskN key each)")
    p.add_argument("--force", action="store_true", help="replace keys that already exist")
    return p


def main(argv: list[str]) -> int:
    """Generate the missing keys (all with --force); print one line per principal."""
    args = build_parser().parse_args(argv)
    if not args.dir or args.pagers < 1:
        print("sealedos keys: give --dir (or SEALEDOS_KEYS) and --pagers >= 1", file=sys.stderr)
        return 2
    keys_dir = Path(args.dir)
    wanted = principals_for(args.pagers)
    missing = [p for p in wanted if args.force or not wkeys.secret_path(keys_dir, p).exists()
               or not (keys_dir / "public" / f"{p}.key").exists()]
    generate(keys_dir, missing)
    for principal in wanted:
        public = wkeys.load_public(keys_dir, principal).decode("ascii")
        print(f"{principal:<10} {public} {'new' if principal in missing else 'kept'}")
    return 0
