"""Address spaces: regions, W^X, overlap, unmap and protect splitting (pure: pagetable.py)."""
from __future__ import annotations

import pytest

from kernel_daemon.pagetable import AddressSpace, PageState
from wire.protocol import PROT_R, PROT_W, PROT_X, Err, ServiceError


def test_map_lets_the_kernel_choose_and_leaves_guard_pages() -> None:
    a = AddressSpace()
    v1 = a.map(0, 4, PROT_R | PROT_W)
    v2 = a.map(0, 4, PROT_R)
    assert v2 >= v1 + 5
    assert a.pte(v1 + 3) is not None and a.pte(v1 + 4) is None


def test_w_xor_x_is_refused_everywhere() -> None:
    a = AddressSpace()
    with pytest.raises(ServiceError) as e:
        a.map(0, 1, PROT_W | PROT_X)
    assert e.value.code == Err.PERM
    v = a.map(0, 2, PROT_R | PROT_X)
    with pytest.raises(ServiceError):
        a.protect(v, 1, PROT_R | PROT_W | PROT_X)


def test_overlap_is_refused() -> None:
    a = AddressSpace()
    a.map(0x100, 10, PROT_R)
    with pytest.raises(ServiceError, match="overlaps"):
        a.map(0x105, 10, PROT_R)


def test_unmap_middle_splits_the_region_and_returns_its_ptes() -> None:
    a = AddressSpace()
    v = a.map(0x100, 10, PROT_R | PROT_W)
    for i in range(10):
        a.pte(v + i)
    gone = a.unmap(v + 3, 4)
    assert sorted(x for x, _ in gone) == list(range(v + 3, v + 7))
    assert a.pte(v + 2) is not None and a.pte(v + 3) is None and a.pte(v + 7) is not None
    assert [(r.start, r.npages) for r in a.regions] == [(v, 3), (v + 7, 3)]


def test_protect_changes_existing_ptes_and_new_ones() -> None:
    a = AddressSpace()
    v = a.map(0x100, 4, PROT_R | PROT_W)
    p = a.pte(v)
    a.protect(v, 2, PROT_R)
    assert p.prot == PROT_R and a.pte(v + 1).prot == PROT_R and a.pte(v + 2).prot == PROT_R | PROT_W
    assert p.state == PageState.ZERO


def test_unmapping_a_hole_is_a_segv() -> None:
    a = AddressSpace()
    v = a.map(0x100, 2, PROT_R)
    with pytest.raises(ServiceError) as e:
        a.unmap(v, 5)
    assert e.value.code == Err.SEGV
