"""kernel_daemon/seal.py: a sealed page opens only as the page, process and version it was.

Sealer is a pure function of its boot key, so these are plain unit tests: seal a page, then
open it back with each binding changed in turn.
"""
from __future__ import annotations

import pytest

from kernel_daemon.seal import IntegrityError, Sealer
from wire.protocol import PAGE_SIZE

#: AES-GCM's tag length (the kernel keeps it in the PTE).
GCM_TAG_BYTES = 16
SPACE = b"S" * 16
OTHER_SPACE = b"T" * 16
PAGE = bytes(range(256)) * (PAGE_SIZE // 256)


def sealed(s: Sealer, vpn: int = 7) -> tuple[int, bytes, bytes]:
    """(version, ciphertext, tag) of PAGE sealed at vpn."""
    version = s.next_version()
    data, tag = s.seal(SPACE, vpn, version, PAGE)
    return version, data, tag


def test_a_sealed_page_opens_back_and_is_ciphertext_of_the_same_size() -> None:
    s = Sealer()
    version, data, tag = sealed(s)
    assert len(data) == PAGE_SIZE and len(tag) == GCM_TAG_BYTES
    assert data != PAGE and PAGE[:64] not in data
    assert s.open(SPACE, 7, version, tag, data) == PAGE


def test_versions_only_grow_so_no_nonce_repeats() -> None:
    s = Sealer()
    versions = [s.next_version() for _ in range(100)]
    assert versions == sorted(set(versions)) and versions[0] >= 1
    v1, d1, _ = sealed(s)
    v2, d2, _ = sealed(s)
    assert v2 > v1 and d1 != d2                    # the same page, another ciphertext


@pytest.mark.parametrize("change", ["space", "vpn", "version", "tag", "byte", "key"])
def test_open_refuses_a_page_bound_to_anything_else(change: str) -> None:
    s = Sealer()
    version, data, tag = sealed(s)
    space, vpn, opener = SPACE, 7, s
    if change == "space":
        space = OTHER_SPACE                        # another process's swap
    elif change == "vpn":
        vpn = 8                                    # another page of the same process
    elif change == "version":
        version += 1                               # a replayed, older or newer copy
    elif change == "tag":
        tag = bytes(b ^ 1 for b in tag)
    elif change == "byte":
        data = data[:10] + bytes([data[10] ^ 0x80]) + data[11:]
    else:
        opener = Sealer()                          # another boot's key
    with pytest.raises(IntegrityError) as info:
        opener.open(space, vpn, version, tag, data)
    assert info.value.kind == "tag"


def test_a_replayed_older_version_does_not_open_as_the_current_one() -> None:
    s = Sealer()
    old_version, old_data, old_tag = sealed(s)
    new_version, new_data, new_tag = sealed(s)
    assert s.open(SPACE, 7, old_version, old_tag, old_data) == PAGE   # it was a real page ...
    with pytest.raises(IntegrityError):
        s.open(SPACE, 7, new_version, new_tag, old_data)              # ... not the current one


@pytest.mark.parametrize("data,kind", [(b"\0" * 100, "size"), (b"\0" * (PAGE_SIZE + 1), "size"),
                                       ("text", "malformed"), (None, "malformed")])
def test_open_names_a_wrong_size_or_type(data: object, kind: str) -> None:
    s = Sealer()
    version, _, tag = sealed(s)
    with pytest.raises(IntegrityError) as info:
        s.open(SPACE, 7, version, tag, data)
    assert info.value.kind == kind


def test_seal_takes_exactly_one_page_and_unsealed_mode_passes_plaintext() -> None:
    s = Sealer()
    with pytest.raises(ValueError):
        s.seal(SPACE, 1, s.next_version(), PAGE[:-1])
    plain = Sealer(enabled=False)
    data, tag = plain.seal(SPACE, 1, plain.next_version(), PAGE)
    assert (data, tag) == (PAGE, b"")
    assert plain.open(SPACE, 1, 1, b"", data) == PAGE
    with pytest.raises(IntegrityError):
        plain.open(SPACE, 1, 1, b"", b"short")     # the size check stays
