"""erasure.py in-process: any K of K+R fragments give the sealed page back; every altered,
moved or replayed fragment is caught by its own MAC."""
from __future__ import annotations

import itertools
import os

import pytest

from kernel_daemon.erasure import MAC_BYTES, Coder, parse_code
from kernel_daemon.seal import IntegrityError, Sealer
from wire.protocol import PAGE_SIZE

SWAP_ID = bytes(range(16))


@pytest.mark.parametrize("k,r", [(4, 2), (3, 2), (2, 1), (5, 3)])
def test_any_k_fragments_decode(k: int, r: int) -> None:
    coder = Coder(k, r)
    page = os.urandom(PAGE_SIZE)
    blocks = coder.split(page, SWAP_ID, 7, 42)
    assert len(blocks) == k + r and all(len(b) == coder.block_bytes for b in blocks.values())
    assert coder.split(page, SWAP_ID, 7, 42, [k + r - 1, 0]) == {0: blocks[0],
                                                                  k + r - 1: blocks[k + r - 1]}
    assert coder.block_bytes == -(-PAGE_SIZE // k) + MAC_BYTES
    for ids in itertools.combinations(range(k + r), k):
        frags = {i: coder.check(blocks[i], SWAP_ID, 7, 42, i) for i in ids}
        assert coder.join(frags) == page


def test_sealed_page_roundtrip_and_no_plaintext_in_fragments() -> None:
    sealer, coder = Sealer(), Coder(4, 2)
    plain = b"KNOWN-PLAINTEXT!" * (PAGE_SIZE // 16)
    sealed, tag = sealer.seal(SWAP_ID, 3, 9, plain)
    blocks = coder.split(sealed, SWAP_ID, 3, 9)
    assert not any(b"KNOWN-PLAINTEXT!" in b for b in blocks.values())
    frags = {i: coder.check(blocks[i], SWAP_ID, 3, 9, i) for i in (1, 3, 4, 5)}
    assert sealer.open(SWAP_ID, 3, 9, tag, coder.join(frags)) == plain


@pytest.mark.parametrize("lie", ["flip", "index", "vpn", "version", "swap", "size", "type",
                                 "longer", "zero"])
def test_every_lie_is_caught(lie: str) -> None:
    coder = Coder(4, 2)
    blocks = coder.split(os.urandom(PAGE_SIZE), SWAP_ID, 7, 42)
    other = coder.split(os.urandom(PAGE_SIZE), SWAP_ID, 7, 41)   # an older version
    block: object = blocks[2]
    where = dict(swap_id=SWAP_ID, vpn=7, version=42, index=2)
    if lie == "flip":
        b = bytearray(blocks[2])
        b[5] ^= 1
        block = bytes(b)
    elif lie == "index":
        block = blocks[3]
    elif lie == "vpn":
        where["vpn"] = 8
    elif lie == "version":
        block = other[2]
    elif lie == "swap":
        where["swap_id"] = bytes(16)
    elif lie == "size":
        block = blocks[2][:100]
    elif lie == "type":
        block = "text"
    elif lie == "longer":                                       # a whole zero-padded block
        block = blocks[2] + bytes(PAGE_SIZE - coder.block_bytes)
    elif lie == "zero":
        block = bytes(PAGE_SIZE)
    with pytest.raises(IntegrityError):
        coder.check(block, where["swap_id"], where["vpn"], where["version"], where["index"])


def test_another_boot_key_does_not_verify() -> None:
    blocks = Coder(4, 2).split(os.urandom(PAGE_SIZE), SWAP_ID, 1, 1)
    with pytest.raises(IntegrityError):
        Coder(4, 2).check(blocks[0], SWAP_ID, 1, 1, 0)


def test_too_few_fragments_and_bad_codes_refused() -> None:
    coder = Coder(4, 2)
    blocks = coder.split(os.urandom(PAGE_SIZE), SWAP_ID, 1, 1)
    with pytest.raises(ValueError):
        coder.join({i: coder.check(blocks[i], SWAP_ID, 1, 1, i) for i in range(3)})
    assert parse_code("4+2") == (4, 2)
    for bad in ("4", "1+1", "4+0", "a+b", "200+100", "4+2+1", "17+2"):
        with pytest.raises(ValueError):
            parse_code(bad)
