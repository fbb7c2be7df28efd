"""Credentials: the one-time secrets the kernel issues, and the keys that prove them.

A credential is 32 random bytes, which is also a valid Curve25519 secret key: on a CURVE
transport a process uses its credential as its connection's secret key, and the kernel knows
it by the matching public key (the ZAP User-Id); on an insecure transport (``--insecure``,
for measurement only) the first message carries the credential itself.  Either way the
kernel looks the process up by :func:`public_of`, never by anything else it says.
"""
from __future__ import annotations

import zmq
from zmq.utils import z85

from wire import entropy

CRED_BYTES: int = 32
#: The environment variable naming the inherited file descriptor a credential arrives on.
CRED_FD_ENV: str = "SEALEDOS_CRED_FD"


def new_credential() -> bytes:
    """A fresh credential (32 bytes from the OS's CSPRNG)."""
    return entropy.token_bytes(CRED_BYTES)


def public_of(cred: bytes) -> str:
    """The z85 CURVE public key of credential `cred` (ValueError if it is not 32 bytes)."""
    if not isinstance(cred, bytes) or len(cred) != CRED_BYTES:
        raise ValueError(f"a credential is {CRED_BYTES} bytes")
    return zmq.curve_public(z85.encode(cred)).decode("ascii")


def from_z85(secret: bytes | str) -> bytes:
    """A z85 CURVE secret key (as zmq.auth certificates store it) as a credential."""
    raw = z85.decode(secret.encode("ascii") if isinstance(secret, str) else secret)
    if len(raw) != CRED_BYTES:
        raise ValueError(f"a secret key is {CRED_BYTES} bytes")
    return raw
