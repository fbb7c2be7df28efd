"""Where every secret byte comes from: os.urandom, unless a simulation seeds it.

Credentials, ATTACH secrets, swap identities, the sealing key and disk handle tokens are all
drawn with :func:`token_bytes`.  ``host_tools/sim`` installs a seeded source with
:func:`set_source` so one seed reproduces a whole run; production never calls it.
"""
from __future__ import annotations

import os
from collections.abc import Callable

_source: Callable[[int], bytes] = os.urandom


def token_bytes(n: int) -> bytes:
    """`n` unpredictable bytes (os.urandom in production)."""
    return _source(n)


def set_source(source: Callable[[int], bytes] | None) -> None:
    """Draw from `source` from now on; None restores os.urandom."""
    global _source
    _source = source if source is not None else os.urandom
