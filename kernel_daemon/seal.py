"""Sealing: authenticated encryption of every page the kernel hands to a pager.

As SGX pages enclave memory through an untrusted OS (EWB/ELDU), a page leaves the kernel as
AES-GCM ciphertext; the authentication tag and the page's version stay in the kernel's page
table.  The associated data binds the page to its process (the disk handle its slot lives
under), its virtual page number and its version, so a pager that changes a page, hands back
another page or another process's page, or replays an older copy is caught at page-in.

* The key is made here at boot and never leaves this process.
* The nonce is the version, and versions come from one boot-wide counter that only grows, so
  no nonce repeats under the key; each page-out of a page takes a new, larger version.
* A disk block holds exactly one page of ciphertext (GCM does not expand the plaintext).

Kernel cost per swapped page: 8 bytes of version + 16 bytes of tag (+ the slot and mirror
bits) in its PTE.
"""
from __future__ import annotations

import itertools
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from wire import entropy
from wire.protocol import PAGE_SIZE

_AD = struct.Struct(">16sQQ")


class IntegrityError(Exception):
    """A page failed verification; `kind` names the check (tag, size, malformed ...)."""

    def __init__(self, kind: str, msg: str) -> None:
        super().__init__(msg)
        self.kind = kind


class Sealer:
    """Seals and opens pages under one boot key; with enabled=False it passes plaintext."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._aead = AESGCM(entropy.token_bytes(16))   # a 128-bit key
        self._versions = itertools.count(1)

    def next_version(self) -> int:
        """A new version, larger than every one handed out before (also the nonce)."""
        return next(self._versions)

    def seal(self, handle: bytes, vpn: int, version: int, page: bytes) -> tuple[bytes, bytes]:
        """Encrypt one page; return (ciphertext of PAGE_SIZE bytes, tag)."""
        if len(page) != PAGE_SIZE:
            raise ValueError(f"a page is {PAGE_SIZE} bytes, got {len(page)}")
        if not self.enabled:
            return page, b""
        out = self._aead.encrypt(version.to_bytes(12, "big"), page, _AD.pack(handle, vpn, version))
        return out[:PAGE_SIZE], out[PAGE_SIZE:]

    def open(self, handle: bytes, vpn: int, version: int, tag: bytes, data: object) -> bytes:
        """Verify and decrypt what a pager returned; raise IntegrityError if it is not the page."""
        if not isinstance(data, bytes):
            raise IntegrityError("malformed",
                                 f"the pager returned {type(data).__name__}, not bytes")
        if len(data) != PAGE_SIZE:
            raise IntegrityError("size", f"the pager returned {len(data)} bytes, not {PAGE_SIZE}")
        if not self.enabled:
            return data
        try:
            return self._aead.decrypt(version.to_bytes(12, "big"), data + tag,
                                      _AD.pack(handle, vpn, version))
        except InvalidTag:
            raise IntegrityError("tag", f"authentication tag mismatch at version {version} "
                                        "(altered, swapped or replayed page)") from None
