"""CURVE keys: one keypair per principal, and what each connection needs to know of them.

Every connection is ZeroMQ CURVE (``wire/sockets.py``): a server proves it holds the secret
of the public key its clients expect, and a client is admitted by its public key at the
handshake (the server's ZAP handler, ``wire/server.py``); the role a peer plays -- pager slot
N, disk N's pager, the launcher, an observer, an admitted sealed process -- is bound to that
key, never to anything it says afterwards.  ``--insecure`` (measurement only) switches every
connection to NULL, and then no keys are loaded at all.

Layout of a keys directory ``KEYS`` (made by ``sealedos keys`` or the supervisor, with
``host_tools/keys_cmd.py``: nothing here writes a key)::

    KEYS/priv/<principal>/<principal>.key_secret   only the principal may read (0700 dir)
    KEYS/public/<principal>.key                     anyone may read

Principals with fixed keys: ``kernel``, ``launcher``, ``observer``, ``pager0..N-1``,
``disk0..N-1``.  A sealed process gets its key from the kernel's ADMIT: the one-time 32-byte
credential *is* its CURVE secret key (:func:`keypair_of_credential`).

Nothing here hand-rolls cryptography: keys are read by ``zmq.auth``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85

#: Environment variables every service and observer reads (flags override them).
KEYS_ENV: str = "SEALEDOS_KEYS"
INSECURE_ENV: str = "SEALEDOS_INSECURE"
#: The kernel's z85 public key, handed to a sealed process by its launcher (else it reads
#: KEYS/public/kernel.key).
KERNEL_KEY_ENV: str = "SEALEDOS_KERNEL_KEY"
#: Length of a raw Curve25519 key (a credential from ADMIT is one).
KEY_BYTES: int = 32


class KeysMissing(Exception):
    """A key that should be there is missing or unreadable (a setup mistake, said plainly)."""


@dataclass(frozen=True, slots=True)
class Keypair:
    """One CURVE keypair, both halves z85-encoded (40 ASCII bytes each)."""
    public: bytes
    secret: bytes

    @property
    def public_text(self) -> str:
        """The public key as the str a ZAP User-Id carries."""
        return self.public.decode("ascii")


@dataclass(frozen=True, slots=True)
class Role:
    """What a key may do: its principal kind (pager, disk, kernel, launcher, observer, app)
    and, for pagers and disks, its slot."""
    kind: str
    index: int = 0

    @staticmethod
    def of_principal(principal: str) -> Role:
        """pager1 -> Role("pager", 1); observer -> Role("observer")."""
        for kind in ("pager", "disk"):
            if principal.startswith(kind) and principal[len(kind):].isdigit():
                return Role(kind, int(principal[len(kind):]))
        return Role(principal)

    def __str__(self) -> str:
        return f"{self.kind}{self.index}" if self.kind in ("pager", "disk") else self.kind


@dataclass(slots=True)
class Keyring:
    """What one service holds: its own keypair (None when insecure) and the public keys of
    the principals it talks to or admits (principal -> z85 public)."""
    own: Keypair | None
    publics: dict[str, bytes] = field(default_factory=dict)

    @property
    def secure(self) -> bool:
        """True unless the system runs --insecure (NULL everywhere)."""
        return self.own is not None

    def public(self, principal: str) -> bytes:
        """The z85 public key of `principal` (KeysMissing if this keyring lacks it)."""
        try:
            return self.publics[principal]
        except KeyError:
            raise KeysMissing(f"no public key for {principal!r} in this keyring") from None

    def roles(self) -> dict[str, Role]:
        """z85 public (str) -> Role for every principal this keyring knows."""
        return {pub.decode("ascii"): Role.of_principal(p) for p, pub in self.publics.items()}


def secret_path(keys_dir: str | Path, principal: str) -> Path:
    """Where `principal`'s secret key file lives."""
    return Path(keys_dir) / "priv" / principal / f"{principal}.key_secret"


def load_keypair(keys_dir: str | Path, principal: str) -> Keypair:
    """`principal`'s own keypair from KEYS/priv (KeysMissing with the path if unreadable)."""
    path = secret_path(keys_dir, principal)
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeysMissing(f"cannot read the secret key of {principal} at {path}: {exc}") from None
    if not secret:
        raise KeysMissing(f"{path} holds no secret key")
    return Keypair(public, secret)


def load_public(keys_dir: str | Path, principal: str) -> bytes:
    """`principal`'s z85 public key from KEYS/public (KeysMissing with the path if missing)."""
    path = Path(keys_dir) / "public" / f"{principal}.key"
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeysMissing(f"cannot read the public key of {principal} at {path}: {exc}") from None
    return public


def load_publics(keys_dir: str | Path) -> dict[str, bytes]:
    """Every public key in KEYS/public: principal -> z85 public."""
    public_dir = Path(keys_dir) / "public"
    if not public_dir.is_dir():
        raise KeysMissing(f"no public keys at {public_dir}")
    return {p.stem: load_public(keys_dir, p.stem) for p in sorted(public_dir.glob("*.key"))}


def keyring(keys_dir: str | Path | None, principal: str, insecure: bool,
            peers: list[str] | None = None) -> Keyring:
    """The keyring a service or observer runs with: insecure -> no keys (NULL); else its own
    keypair and the publics of `peers` (None: every public in the directory)."""
    if insecure:
        return Keyring(None)
    if not keys_dir:
        raise KeysMissing(f"{principal}: no keys directory: pass --keys or set {KEYS_ENV} "
                        "(or --insecure to run without authentication, for measurement only)")
    keys_dir = Path(keys_dir)
    own = load_keypair(keys_dir, principal)
    if peers is None:
        publics = load_publics(keys_dir)
    else:
        publics = {p: load_public(keys_dir, p) for p in peers}
    return Keyring(own, publics)


def keypair_of_credential(cred: bytes) -> Keypair:
    """The CURVE keypair whose secret is an ADMIT credential (any 32 random bytes are a
    valid Curve25519 secret key)."""
    if len(cred) != KEY_BYTES:
        raise KeysMissing(f"a credential is {KEY_BYTES} bytes, not {len(cred)}")
    secret = z85.encode(cred)
    return Keypair(zmq.curve_public(secret), secret)


def insecure_from_env() -> bool:
    """SEALEDOS_INSECURE=1 selects NULL security (flags default to this)."""
    return os.environ.get(INSECURE_ENV) == "1"
