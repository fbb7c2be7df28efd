"""A CLOSE is final on a device (disk_service/device.py): whatever order OPEN and CLOSE of a
kernel-minted token land in, and across a restart of the disk on the same file, the handle
is never made again after its CLOSE, so its blocks cannot leak.

The case a tombstone of a *closed* handle cannot catch: the CLOSE lands before any OPEN of
the token has (the OPENs were sent to a hung instance of the disk and arrive, from the
pager's queue, at the next instance after the CLOSE: sim seed 131958005)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from disk_service.device import Device
from wire.protocol import BLOCK_SIZE, Err, ServiceError

SIZE_MIB: int = 1


def expect_err(code: Err, fn: object, *args: object) -> None:
    """fn(*args) must raise ServiceError carrying `code`."""
    assert callable(fn)
    with pytest.raises(ServiceError) as info:
        fn(*args)
    assert info.value.code == code, info.value.msg


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """Where a fresh device file is made."""
    return tmp_path / "disk.img"


def test_an_open_after_the_close_of_an_open_handle_is_refused(image: Path) -> None:
    token = os.urandom(16)
    with Device(image, size_mib=SIZE_MIB) as dev:
        dev.open_handle("p1#1", token)
        dev.write(token, 3, bytes(BLOCK_SIZE))
        assert dev.close_handle(token) == 1
        expect_err(Err.BADHANDLE, dev.open_handle, "p1#1", token)
    with Device(image) as dev:                       # the tombstone is in the file
        expect_err(Err.BADHANDLE, dev.open_handle, "p1#1", token)
        assert dev.stats().handles == 0 and dev.stats().used_blocks == 0


def test_a_close_that_lands_before_its_open_is_final(image: Path) -> None:
    token = os.urandom(16)
    with Device(image, size_mib=SIZE_MIB) as dev:
        expect_err(Err.BADHANDLE, dev.close_handle, token)      # not held: answered so ...
        expect_err(Err.BADHANDLE, dev.open_handle, "p1#3", token)   # ... and never made
        expect_err(Err.BADHANDLE, dev.write, token, 0, bytes(BLOCK_SIZE))
        expect_err(Err.BADHANDLE, dev.close_handle, token)      # a retried CLOSE: the same
        assert dev.stats().handles == 0 and dev.stats().used_blocks == 0
    with Device(image) as dev:                       # a restarted disk still refuses it
        expect_err(Err.BADHANDLE, dev.open_handle, "p1#3", token)
        other = dev.open_handle("p2#1", os.urandom(16))          # other tokens are not hurt
        dev.write(other, 0, bytes(BLOCK_SIZE))
        assert dev.stats().handles == 1


def test_burying_never_takes_an_open_handles_record(image: Path) -> None:
    """With every record open there is no room for a tombstone: the CLOSE of a token not
    held is still answered BADHANDLE, and every open handle keeps its blocks."""
    with Device(image, size_mib=SIZE_MIB, max_handles=2) as dev:
        a, b = dev.open_handle("a", os.urandom(16)), dev.open_handle("b", os.urandom(16))
        dev.write(a, 0, bytes(BLOCK_SIZE))
        dev.write(b, 0, bytes(BLOCK_SIZE))
        expect_err(Err.BADHANDLE, dev.close_handle, os.urandom(16))
        assert dev.read(a, 0) == bytes(BLOCK_SIZE) and dev.read(b, 0) == bytes(BLOCK_SIZE)
        assert dev.stats().handles == 2 and dev.stats().used_blocks == 2
        # a closed handle's record becomes a tombstone; a later bury reuses the oldest one
        dev.close_handle(a)
        late = os.urandom(16)
        expect_err(Err.BADHANDLE, dev.close_handle, late)
        expect_err(Err.BADHANDLE, dev.open_handle, "late", late)
        assert dev.read(b, 0) == bytes(BLOCK_SIZE)


def test_a_flood_of_closes_of_unknown_tokens_cannot_fill_the_handle_table(image: Path) -> None:
    """A hostile pager CLOSEs many tokens nobody opened: each buries one, in a free record or
    the oldest tomb, so OPENs still succeed (no NOSPC), the open handle keeps its block, and
    the newest tombstones still refuse their late OPENs."""
    with Device(image, size_mib=SIZE_MIB, max_handles=4) as dev:
        kept = dev.open_handle("kept", os.urandom(16))
        dev.write(kept, 0, b"\x5a" * BLOCK_SIZE)
        flood = [os.urandom(16) for _ in range(50)]
        for token in flood:
            expect_err(Err.BADHANDLE, dev.close_handle, token)
        assert dev.stats().handles == 1
        fresh = dev.open_handle("fresh", os.urandom(16))          # took the oldest tomb
        dev.write(fresh, 1, bytes(BLOCK_SIZE))
        expect_err(Err.BADHANDLE, dev.open_handle, "late", flood[-1])
        assert dev.read(kept, 0) == b"\x5a" * BLOCK_SIZE
        assert dev.stats().handles == 2 and dev.stats().used_blocks == 2
