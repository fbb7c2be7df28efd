"""Erasure coding of sealed pages: K data + R parity fragments, each authenticated on its own.

A page is sealed first (seal.py: AES-GCM of the whole page, the tag and version stay in the
kernel's PTE), so no fragment and no set of pagers ever holds plaintext.  The ciphertext is
split into K equal data fragments and R parity fragments with zfec (a Reed-Solomon code over
GF(2^8); any K of the K+R fragments give the ciphertext back).  Fragment i goes to pager i.

Each fragment carries its own MAC, stored NEXT TO it on the pager (the SGX hint: only the
version must stay inside the trusted side, because the version bound into the MAC is what
stops a replay).  The MAC is keyed BLAKE2b-128 over (swap id, vpn, version, fragment index,
fragment bytes) under a key made here at boot that never leaves the kernel, so a pager can
neither forge a fragment, nor move one to another page, index or version.  A fragment that
fails its check is simply an *erasure*: the kernel knows exactly which pager lied.

Record layout: fragment (FRAG bytes = ceil(PAGE_SIZE / K)), then its MAC (16 bytes):
block_bytes in all, which is the block size the kernel opens each EC disk handle with (OPEN
block_size), so the disks pack fragments back to back (disk_service/layout.py) and a page
costs (K+R) * (FRAG + 16) bytes on the devices: 1.52x a page for 4+2.  K <= 16 keeps a
record at least the disks' 256-byte minimum.
"""
from __future__ import annotations

import hashlib
import hmac
import struct

import zfec

from kernel_daemon.seal import IntegrityError
from wire import entropy
from wire.protocol import PAGE_SIZE

MAC_BYTES: int = 16
#: swap id (16 bytes), vpn, version, fragment index: what a fragment's MAC binds it to.
_BIND = struct.Struct(">16sQQH")


def parse_code(text: str) -> tuple[int, int]:
    """'K+R' -> (K, R); ValueError unless 2 <= K <= 16, 1 <= R and K + R <= 256."""
    try:
        k_text, r_text = text.split("+")
        k, r = int(k_text), int(r_text)
    except ValueError:
        raise ValueError(f"--code wants K+R (e.g. 4+2), got {text!r}") from None
    Coder.check_code(k, r)
    return k, r


class Coder:
    """Splits sealed pages into authenticated fragments and joins verified ones back."""

    def __init__(self, k: int, r: int) -> None:
        self.check_code(k, r)
        self.k, self.r, self.n = k, r, k + r
        self.frag_bytes = -(-PAGE_SIZE // k)
        self.block_bytes = self.frag_bytes + MAC_BYTES
        self._encoder = zfec.Encoder(k, self.n)
        self._decoder = zfec.Decoder(k, self.n)
        self._keyed = hashlib.blake2b(key=entropy.token_bytes(32), digest_size=MAC_BYTES)

    @staticmethod
    def check_code(k: int, r: int) -> None:
        """ValueError unless 2 <= K <= 16, R >= 1 and K + R <= 256 (zfec's limit)."""
        if not 2 <= k <= 16 or r < 1 or k + r > 256:
            raise ValueError(f"bad code {k}+{r}: need 2 <= K <= 16, R >= 1, K+R <= 256")

    def _mac(self, swap_id: bytes, vpn: int, version: int, index: int, frag: bytes) -> bytes:
        h = self._keyed.copy()                  # the key's block is hashed once, at boot
        h.update(_BIND.pack(swap_id, vpn, version, index))
        h.update(frag)
        return h.digest()

    def split(self, sealed: bytes, swap_id: bytes, vpn: int, version: int,
              which: list[int] | None = None) -> dict[int, bytes]:
        """Encode one sealed page into records of block_bytes {i: record for pager i}: all
        K+R, or only those in `which` (a repair computes no other parity, MACs no other)."""
        if len(sealed) != PAGE_SIZE:
            raise ValueError(f"a sealed page is {PAGE_SIZE} bytes, got {len(sealed)}")
        padded, f = sealed + bytes(self.k * self.frag_bytes - PAGE_SIZE), self.frag_bytes
        ids = list(range(self.n)) if which is None else sorted(which)
        frags = self._encoder.encode([padded[i * f:(i + 1) * f] for i in range(self.k)], ids)
        return {i: frag + self._mac(swap_id, vpn, version, i, frag)
                for i, frag in zip(ids, frags, strict=True)}

    def check(self, block: object, swap_id: bytes, vpn: int, version: int, index: int) -> bytes:
        """The fragment in what pager `index` returned; IntegrityError (kind malformed, size,
        or mac) unless it is exactly the record split() made for this binding."""
        if not isinstance(block, bytes):
            raise IntegrityError("malformed", f"the pager returned {type(block).__name__}")
        if len(block) != self.block_bytes:
            raise IntegrityError("size", f"{len(block)} bytes, not {self.block_bytes}")
        frag, mac = block[:self.frag_bytes], block[self.frag_bytes:]
        if not hmac.compare_digest(mac, self._mac(swap_id, vpn, version, index, frag)):
            raise IntegrityError("mac", f"fragment {index}: MAC mismatch at version {version} "
                                        "(altered, swapped or replayed fragment)")
        return frag

    def join(self, frags: dict[int, bytes]) -> bytes:
        """The sealed page from any K verified fragments {index: fragment}."""
        if len(frags) < self.k:
            raise ValueError(f"need {self.k} fragments, got {len(frags)}")
        ids = sorted(frags)[:self.k]
        got = [frags[i] for i in ids]           # the data fragments themselves need no decode
        data = b"".join(got if ids == list(range(self.k)) else self._decoder.decode(got, ids))
        return data[:PAGE_SIZE]
