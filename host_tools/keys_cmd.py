"""`sealedos keys`: make every principal's CURVE keypair (the compose deployment's one-shot
key service, or by hand for services started one by one).

    sealedos keys --dir KEYS --pagers N [--force]

writes ``KEYS/priv/<principal>/<principal>.key_secret`` (0700 directory, 0600 file: in compose
each is its own volume, mounted only into that principal's container) and
``KEYS/public/<principal>.key`` (a volume every container mounts read-only).  Principals:
kernel, launcher, observer, pager0..N-1, disk0..N-1 (a sealed process has no fixed key: the
launcher's ADMIT gets it a one-time credential, which is its CURVE secret key).  Existing keys
are kept (a restarted deployment keeps talking), unless --force.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from wire import keys as wkeys


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
    wanted = wkeys.principals_for(args.pagers)
    missing = [p for p in wanted if args.force or not wkeys.secret_path(keys_dir, p).exists()
               or not (keys_dir / "public" / f"{p}.key").exists()]
    wkeys.generate(keys_dir, missing)
    for principal in wanted:
        public = wkeys.load_public(keys_dir, principal).decode("ascii")
        print(f"{principal:<10} {public} {'new' if principal in missing else 'kept'}")
    return 0
