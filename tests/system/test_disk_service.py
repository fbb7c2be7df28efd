"""Tests of the disk service: the device format (device.py, layout.py, in-process) and the
service as a real OS process spoken to over ZeroMQ (disk.py)."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from disk_service import disk
from disk_service.device import Device, DeviceError
from disk_service.layout import (
    FORMAT_VERSION,
    HANDLE_DTYPE,
    MAGIC,
    MAP_DTYPE,
    SUPERBLOCK_DTYPE,
    pack_superblock,
    plan,
    token_hash,
)
from launcher import spawn
from wire.client import Client
from wire.protocol import BLOCK_SIZE, MAX_FRAME_BYTES, Err, ServiceError, encode
from wire.server import Panic

SIZE_MIB: int = 4
START_TIMEOUT_S: float = 10.0
REPLY_TIMEOUT_MS: int = 5000

rng = np.random.default_rng(20240601)


def random_block() -> bytes:
    """One block of random bytes."""
    return rng.integers(0, 256, BLOCK_SIZE, dtype=np.uint8).tobytes()


def sha256(path: Path) -> str:
    """Hex digest of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def open_h(service: Any, label: str) -> bytes:
    """Open a new handle on the disk service with a freshly minted token (as the kernel
    mints them); return the token."""
    token = os.urandom(16)
    # It learns nothing from the disk but that the handle is new here.
    assert service.call("open", handle=token, label=label).get("created") is True
    return token


def expect_err(code: Err, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> ServiceError:
    """Call fn and return the ServiceError it raises, which must carry `code`."""
    with pytest.raises(ServiceError) as info:
        fn(*args, **kwargs)
    assert info.value.code == code, info.value.msg
    return info.value


# -- the service as a process -------------------------------------------------------------

class DiskProc:
    """One running disk service and a client connected to it."""

    def __init__(self, rundir: Path, image: Path, size_mib: int = SIZE_MIB) -> None:
        self.rundir, self.image, self.size_mib = rundir, image, size_mib
        self.sock = rundir / "disk.sock"
        self.addr = f"ipc://{self.sock}"
        self.log = rundir / "disk.log"
        self.proc: subprocess.Popen | None = None
        self.client: Client | None = None
        self.start()

    def start(self) -> None:
        """Start the service and wait until it serves."""
        self.sock.unlink(missing_ok=True)          # a SIGKILLed service leaves its socket behind
        self.proc = spawn.spawn(spawn.python_cmd(
            "disk", "--rundir", str(self.rundir), "--file", str(self.image),
            "--size-mib", str(self.size_mib), "--insecure"), log_path=self.log)
        spawn.wait_for_path(self.sock, START_TIMEOUT_S, self.proc)
        self.client = Client(self.addr)
        assert self.call("ping")["service"] == "disk"

    def call(self, op: str, **fields: object) -> dict:
        """One request/reply with the service."""
        assert self.client is not None
        return self.client.call(op, timeout_ms=REPLY_TIMEOUT_MS, **fields)

    def kill(self) -> None:
        """SIGKILL the service, as a crash would."""
        assert self.proc is not None and self.client is not None
        self.client.close()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int | None:
        """SIGTERM the service and reap it; return its exit status."""
        if self.client is not None:
            self.client.close()
            self.client = None
        return spawn.stop(self.proc) if self.proc is not None else None


@pytest.fixture
def rundir() -> Iterator[Path]:
    """A private runtime directory, removed afterwards."""
    path = spawn.make_rundir("sealedos-disktest-")
    yield path
    spawn.remove_rundir(path)


@pytest.fixture
def service(rundir: Path) -> Iterator[DiskProc]:
    """A disk service on a fresh 4 MiB device in `rundir`, stopped afterwards."""
    svc = DiskProc(rundir, rundir / "disk.img")
    yield svc
    svc.stop()


def run_refused(rundir: Path, image: Path) -> tuple[int, str]:
    """Run the service on a file that must be refused; return (exit status, its output)."""
    log = rundir / "refused.log"
    proc = spawn.spawn(spawn.python_cmd("disk", "--rundir", str(rundir), "--file", str(image)),
                       log_path=log)
    try:
        status = proc.wait(START_TIMEOUT_S)
    finally:
        spawn.stop(proc)
    return status, log.read_text()


def test_round_trip_random_blocks(service: DiskProc) -> None:
    h = open_h(service, "roundtrip")
    assert isinstance(h, bytes) and len(h) == 16
    written = {int(s): random_block() for s in rng.choice(2**32, 40, replace=False)}
    blocks = {s: service.call("write", handle=h, slot=s, data=d)["block"]
              for s, d in written.items()}
    assert len(set(blocks.values())) == len(blocks)
    for s, d in written.items():
        assert service.call("read", handle=h, slot=s)["data"] == d
    slot = next(iter(written))
    new = random_block()
    assert service.call("write", handle=h, slot=slot, data=new)["block"] == blocks[slot]
    assert service.call("read", handle=h, slot=slot)["data"] == new
    assert service.call("read", handle=h, slot=0, block=blocks[slot])["data"] == new
    stats = service.call("stats")
    assert stats["used_blocks"] == len(written) and stats["handles"] == 1
    assert stats["used_blocks"] + stats["free_blocks"] == stats["nblocks"]
    expect_err(Err.NOENT, service.call, "read", handle=h, slot=7777777)


def test_handles_are_isolated(service: DiskProc) -> None:
    a = open_h(service, "a")
    b = open_h(service, "b")
    secret = random_block()
    blk = service.call("write", handle=a, slot=3, data=secret)["block"]
    # by slot: b simply has no slot 3
    expect_err(Err.NOENT, service.call, "read", handle=b, slot=3)
    # by raw block: refused
    err = expect_err(Err.PERM, service.call, "read", handle=b, slot=0, block=blk)
    assert err.msg == f"block {blk} does not belong to this handle"
    expect_err(Err.PERM, service.call, "write", handle=b, slot=0, block=blk, data=random_block())
    expect_err(Err.PERM, service.call, "read", handle=b, slot=0, block=0)      # the superblock
    expect_err(Err.INVAL, service.call, "read", handle=b, slot=0, block=1 << 40)
    expect_err(Err.INVAL, service.call, "read", handle=b, slot=0, block="7")
    # b writing its own slot 3 gets its own block and leaves a's alone
    other = random_block()
    assert service.call("write", handle=b, slot=3, data=other)["block"] != blk
    assert service.call("read", handle=a, slot=3)["data"] == secret
    assert service.call("read", handle=b, slot=3)["data"] == other
    # a's own raw access works
    again = random_block()
    assert service.call("write", handle=a, slot=0, block=blk, data=again)["block"] == blk
    assert service.call("read", handle=a, slot=3)["data"] == again
    # b freeing slot 3 frees only b's block
    assert service.call("free", handle=b, slots=[3])["freed"] == 1
    assert service.call("read", handle=a, slot=3)["data"] == again
    # forged tokens
    forged = bytes(x ^ 1 for x in a)
    for op, fields in (("read", {"slot": 3}), ("write", {"slot": 3, "data": secret}),
                       ("free", {"slots": [3]}), ("close", {})):
        err = expect_err(Err.BADHANDLE, service.call, op, handle=forged, **fields)
        assert err.msg == "unknown or closed handle"
    expect_err(Err.BADHANDLE, service.call, "read", handle=b"", slot=3)
    assert service.call("read", handle=a, slot=3)["data"] == again


def test_restart_after_sigkill_serves_everything(service: DiskProc) -> None:
    handles = [open_h(service, f"h{i}") for i in range(3)]
    data = {(h, s): random_block() for h in handles for s in (0, 1, 99, 2**32 - 1)}
    blocks = {k: service.call("write", handle=k[0], slot=k[1], data=d)["block"]
              for k, d in data.items()}
    gone = handles[0]
    service.call("free", handle=gone, slots=[99])
    del data[(gone, 99)]
    before = service.call("stats")
    service.kill()
    service.start()
    after = service.call("stats")
    for key in ("nblocks", "used_blocks", "free_blocks", "handles"):
        assert after[key] == before[key]
    for (h, s), d in data.items():
        assert service.call("read", handle=h, slot=s)["data"] == d
        assert service.call("read", handle=h, slot=0, block=blocks[(h, s)])["data"] == d
    expect_err(Err.NOENT, service.call, "read", handle=gone, slot=99)
    assert "created" not in service.call("open", handle=gone, label="h0")   # still known
    fresh = random_block()
    for h in handles:                              # every handle still works
        service.call("write", handle=h, slot=12345, data=fresh)
        assert service.call("read", handle=h, slot=12345)["data"] == fresh
    # a clean stop, then another restart, serves the same
    assert service.stop() == 0
    assert not service.sock.exists()
    assert f"disk: serving {service.image} (" in service.log.read_text()
    service.start()
    assert service.call("read", handle=handles[2], slot=99)["data"] == data[(handles[2], 99)]


def test_a_wiped_device_answers_open_created(service: DiskProc) -> None:
    """A new, empty device file (the old one lost: a new host) knows no handle: OPEN of one
    the old file held answers `created`, which is how the kernel learns the disk lost it."""
    h = open_h(service, "kept")
    service.call("write", handle=h, slot=0, data=random_block())
    assert "created" not in service.call("open", handle=h, label="kept")
    service.kill()
    service.image.unlink()
    service.start()
    expect_err(Err.BADHANDLE, service.call, "read", handle=h, slot=0)
    assert service.call("open", handle=h, label="kept").get("created") is True
    expect_err(Err.NOENT, service.call, "read", handle=h, slot=0)


def test_close_frees_blocks(service: DiskProc) -> None:
    h = open_h(service, "doomed")
    keep = open_h(service, "keep")
    for s in range(20):
        service.call("write", handle=h, slot=s, data=random_block())
    service.call("write", handle=keep, slot=0, data=random_block())
    assert service.call("stats")["used_blocks"] == 21
    assert service.call("free", handle=h, slots=[0, 1, 1, 500])["freed"] == 2
    assert service.call("close", handle=h)["freed"] == 18
    assert service.call("stats")["used_blocks"] == 1
    expect_err(Err.BADHANDLE, service.call, "read", handle=h, slot=5)
    expect_err(Err.BADHANDLE, service.call, "close", handle=h)
    assert service.call("close", handle=keep)["freed"] == 1
    stats = service.call("stats")
    assert stats["used_blocks"] == 0 and stats["handles"] == 0
    assert stats["free_blocks"] == stats["nblocks"]


def test_a_close_before_its_open_is_final_across_a_sigkill(service: DiskProc) -> None:
    """An OPEN sent to a hung disk can reach its next instance after the kernel's CLOSE
    (sim seed 131958005): the CLOSE of a token the disk does not hold is answered EBADHANDLE
    and is final -- that OPEN, and its WRITEs, are refused, by this instance and the next."""
    token = os.urandom(16)
    expect_err(Err.BADHANDLE, service.call, "close", handle=token)
    service.kill()
    service.start()
    expect_err(Err.BADHANDLE, service.call, "open", handle=token, label="late")
    expect_err(Err.BADHANDLE, service.call, "write", handle=token, slot=0, data=random_block())
    assert service.call("stats")["handles"] == 0 and service.call("stats")["used_blocks"] == 0


def _garbage(path: Path) -> str:
    """A file of random bytes the size of a device.  Return the words the refusal must name."""
    path.write_bytes(rng.integers(0, 256, SIZE_MIB << 20, dtype=np.uint8).tobytes())
    return "bad magic"


def _foreign(path: Path) -> str:
    """A file that is something else entirely (an ELF header).  Return the words the refusal
    must name."""
    path.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(BLOCK_SIZE * 10))
    return "bad magic"


def _corrupt_superblock(path: Path) -> str:
    """A real device with one superblock bit flipped.  Return the words the refusal must name."""
    Device(path, size_mib=SIZE_MIB).close()
    raw = bytearray(path.read_bytes())
    raw[SUPERBLOCK_DTYPE.fields["total_blocks"][1]] ^= 0x40
    path.write_bytes(bytes(raw))
    return "checksum mismatch"


def _wrong_size(path: Path) -> str:
    """A real device that grew by one block.  Return the words the refusal must name."""
    Device(path, size_mib=SIZE_MIB).close()
    with open(path, "ab") as f:
        f.write(bytes(BLOCK_SIZE))
    return "size mismatch"


def _tiny(path: Path) -> str:
    """A file shorter than one block.  Return the words the refusal must name."""
    path.write_bytes(b"hello")
    return "smaller than one"


@pytest.mark.parametrize("make", [_garbage, _foreign, _corrupt_superblock, _wrong_size, _tiny])
def test_bad_device_file_is_refused_untouched(rundir: Path, make: Callable[[Path], str]) -> None:
    image = rundir / "bad.img"
    reason = make(image)
    digest, size = sha256(image), image.stat().st_size
    status, output = run_refused(rundir, image)
    assert status == 2, output
    assert reason in output
    assert sha256(image) == digest and image.stat().st_size == size
    assert not (rundir / "disk.sock").exists()


def test_malformed_input_gets_error_replies(service: DiskProc) -> None:
    c = service.client
    assert c is not None

    def raw(frame: bytes) -> dict:
        """Send one raw frame and return the reply map."""
        c.send_raw(frame)
        return c.recv_reply(REPLY_TIMEOUT_MS)

    assert raw(b"\xc1\xc1not msgpack")["err"] == Err.BADMSG
    assert raw(msgpack.packb([1, 2, 3]))["err"] == Err.BADMSG
    assert raw(encode({"op": "ping"}))["err"] == Err.BADMSG                  # no rid
    assert raw(encode({"rid": 1, "op": "format_everything"}))["err"] == Err.NOSYS
    assert raw(b"x" * (MAX_FRAME_BYTES + 1))["err"] == Err.MSGSIZE
    c.sock.send_multipart([b"one", b"two"])
    assert c.recv_reply(REPLY_TIMEOUT_MS)["err"] == Err.BADMSG
    expect_err(Err.NOSYS, service.call, "page_in", handle=b"x" * 16, slot=0)
    h = open_h(service, "victim")
    service.call("write", handle=h, slot=1, data=random_block())
    cases = [
        ("open", {"handle": os.urandom(16), "label": 5}),
        ("open", {"handle": os.urandom(16), "label": "x" * 33}),
        ("open", {"handle": b"short", "label": "x"}),
        ("open", {"label": "x"}),
        ("open", {}),
        *[("open", {"handle": os.urandom(16), "label": "x", "block_size": size})
          for size in (0, 255, 4097, -1, 2**63, True, "1040", 1040.0)],
        ("open", {"handle": h, "label": "victim", "block_size": 1040}),   # open as 4096
        ("read", {"handle": "not bytes", "slot": 1}),
        ("read", {"handle": h, "slot": "1"}),
        ("read", {"handle": h, "slot": True}),
        ("read", {"handle": h, "slot": -1}),
        ("read", {"handle": h, "slot": 2**32}),
        ("write", {"handle": h, "slot": 2**32, "data": random_block()}),
        ("write", {"handle": h, "slot": 1, "data": random_block() + b"!"}),
        ("write", {"handle": h, "slot": 1, "data": b"short"}),
        ("write", {"handle": h, "slot": 1, "data": bytes(MAX_FRAME_BYTES - 100)}),
        ("write", {"handle": h, "slot": 1, "data": "a str"}),
        ("free", {"handle": h, "slots": [1, "two"]}),
        ("free", {"handle": h, "slots": [-5]}),
        ("free", {"handle": h, "slots": 3}),
    ]
    for op, fields in cases:
        err = expect_err(Err.INVAL, service.call, op, **fields)
        assert err.msg, (op, fields)
    # nothing was changed by the refused requests, and the service still serves
    assert service.call("read", handle=h, slot=1)["data"]
    assert service.call("stats")["used_blocks"] == 1
    assert service.call("stats")["handles"] == 1
    assert service.call("ping")["service"] == "disk"


def test_missing_flags_exit_2(rundir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALEDOS_")}
    for args in (["--file", str(rundir / "d.img")], ["--rundir", str(rundir)]):
        proc = subprocess.run(spawn.python_cmd("disk", *args), env=env, capture_output=True,
                              timeout=START_TIMEOUT_S)
        assert proc.returncode == 2, proc.stderr
    assert not (rundir / "d.img").exists()


def test_parse_args_environment_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEALEDOS_RUNDIR", "/tmp/rd")
    monkeypatch.setenv("SEALEDOS_DISK_FILE", "/tmp/rd/x.img")
    monkeypatch.setenv("SEALEDOS_DISK_SIZE_MIB", "8")
    monkeypatch.delenv("SEALEDOS_DISK_ADDR", raising=False)
    args = disk.parse_args([])
    assert (args.addr, args.file, args.size_mib) == ("ipc:///tmp/rd/disk.sock", "/tmp/rd/x.img", 8)
    args = disk.parse_args(["--addr", "tcp://127.0.0.1:5999", "--size-mib", "2"])
    assert (args.addr, args.size_mib) == ("tcp://127.0.0.1:5999", 2)


# -- the device format, in-process --------------------------------------------------------

@pytest.fixture
def image(tmp_path: Path) -> Path:
    """The path of a device file that does not exist yet."""
    return tmp_path / "unit.img"


def test_new_device_layout(image: Path) -> None:
    with Device(image, size_mib=SIZE_MIB) as dev:
        geo = dev.geo
        st = dev.stats()
    assert image.stat().st_size == SIZE_MIB << 20
    raw = image.read_bytes()
    sb = np.frombuffer(raw[:SUPERBLOCK_DTYPE.itemsize], dtype=SUPERBLOCK_DTYPE)[0]
    assert raw[:8] == MAGIC == b"SEALDISK"
    assert int(sb["version"]) == FORMAT_VERSION and int(sb["block_size"]) == BLOCK_SIZE
    assert int(sb["total_blocks"]) == (SIZE_MIB << 20) // BLOCK_SIZE == geo.total_blocks
    assert int(sb["crc"]) == zlib.crc32(raw[:SUPERBLOCK_DTYPE.fields["crc"][1]])
    assert geo.handle_table_block == 1 and geo.max_handles == 4096
    assert geo.handle_table_blocks * BLOCK_SIZE == 4096 * HANDLE_DTYPE.itemsize
    assert geo.map_block == geo.handle_table_block + geo.handle_table_blocks
    assert geo.first_data_block == geo.map_block + geo.map_blocks
    assert geo.map_blocks * BLOCK_SIZE >= geo.data_blocks * MAP_DTYPE.itemsize
    assert geo.first_data_block + geo.data_blocks <= geo.total_blocks
    bmap = np.frombuffer(raw, dtype=MAP_DTYPE, count=geo.data_blocks,
                         offset=geo.map_block * BLOCK_SIZE)
    assert (bmap["owner"] == -1).all()
    assert st.nblocks == st.free_blocks == geo.data_blocks and st.used_blocks == 0
    assert HANDLE_DTYPE.itemsize == 64 and MAP_DTYPE.itemsize == 12


def test_records_land_in_the_file(image: Path) -> None:
    data = random_block()
    with Device(image, size_mib=SIZE_MIB) as dev:
        geo = dev.geo
        tok = dev.open_handle("héllo")
        block = dev.write(tok, 0xDEADBEEF, data)
        assert dev.label(tok) == "héllo"
    raw = image.read_bytes()
    assert raw[block * BLOCK_SIZE:(block + 1) * BLOCK_SIZE] == data
    rec = np.frombuffer(raw, dtype=MAP_DTYPE, count=1,
                        offset=geo.map_block * BLOCK_SIZE
                        + (block - geo.first_data_block) * MAP_DTYPE.itemsize)[0]
    assert int(rec["slot"]) == 0xDEADBEEF and int(rec["live"]) == 1
    handles = np.frombuffer(raw, dtype=HANDLE_DTYPE, count=geo.max_handles,
                            offset=geo.handle_table_block * BLOCK_SIZE)
    h = int(rec["owner"])
    assert handles[h]["in_use"] == 1 and handles[h]["token_hash"].tobytes() == token_hash(tok)
    assert tok not in raw                           # the token itself is never stored
    assert handles[h]["label"].tobytes()[:handles[h]["label_len"]] == "héllo".encode()
    with Device(image) as dev:                      # rebuilt from the file
        assert dev.read(tok, 0xDEADBEEF) == data
        assert dev.read_block(tok, block) == data
        dev.close_handle(tok)
    raw = image.read_bytes()
    handles = np.frombuffer(raw, dtype=HANDLE_DTYPE, count=geo.max_handles,
                            offset=geo.handle_table_block * BLOCK_SIZE)
    bmap = np.frombuffer(raw, dtype=MAP_DTYPE, count=geo.data_blocks,
                         offset=geo.map_block * BLOCK_SIZE)
    assert handles["in_use"].sum() == 0 and (bmap["owner"] == -1).all()


def test_device_full_and_handle_table_full(image: Path) -> None:
    with Device(image, size_mib=1, max_handles=2) as dev:
        n = dev.geo.data_blocks
        a, b = dev.open_handle("a"), dev.open_handle("b")
        expect_err(Err.NOSPC, dev.open_handle, "c")
        for s in range(n):
            dev.write(a, s, bytes(BLOCK_SIZE))
        expect_err(Err.NOSPC, dev.write, b, 0, bytes(BLOCK_SIZE))
        dev.write(a, 0, random_block())              # a rewrite needs no new block
        assert dev.free(a, [0]) == 1
        dev.write(b, 0, bytes(BLOCK_SIZE))
        dev.close_handle(a)
        c = dev.open_handle("c")
        assert dev.stats().used_blocks == 1
        expect_err(Err.INVAL, dev.open_handle, "é" * 17)
        dev.write(c, 9, bytes(BLOCK_SIZE))
    with Device(image) as dev:
        assert dev.stats().handles == 2 and dev.stats().used_blocks == 2


def test_device_refuses_second_opener_and_use_after_close(image: Path) -> None:
    dev = Device(image, size_mib=1)
    tok = dev.open_handle("x")
    with pytest.raises(DeviceError, match="in use"):
        Device(image)
    dev.close()
    dev.close()
    with pytest.raises(Panic):
        dev.read(tok, 0)
    with pytest.raises(DeviceError, match="does not exist"):
        Device(image.with_name("absent.img"), create=False)


def _poke_handle(path: Path, h: int, block_size: int) -> None:
    """Overwrite the record size of handle-table record `h` of the device at `path`."""
    with Device(path) as dev:
        off = dev.geo.handle_table_block * BLOCK_SIZE + h * HANDLE_DTYPE.itemsize \
            + HANDLE_DTYPE.fields["block_size"][1]
    raw = bytearray(path.read_bytes())
    raw[off:off + 4] = block_size.to_bytes(4, "little")
    path.write_bytes(bytes(raw))


def _rewrite_superblock(path: Path, **fields: int) -> None:
    """Rewrite the superblock with some fields changed and a correct CRC."""
    raw = bytearray(path.read_bytes())
    sb = np.frombuffer(bytes(raw[:SUPERBLOCK_DTYPE.itemsize]), dtype=SUPERBLOCK_DTYPE).copy()
    for k, v in fields.items():
        sb[k] = v
    sb["crc"] = zlib.crc32(sb.tobytes()[:SUPERBLOCK_DTYPE.fields["crc"][1]])
    raw[:SUPERBLOCK_DTYPE.itemsize] = sb.tobytes()
    path.write_bytes(bytes(raw))


def _poke_map(path: Path, rec: int, owner: int, slot: int, live: int = 1) -> None:
    """Overwrite block-map record `rec` of the device at `path`."""
    with Device(path) as dev:
        off = dev.geo.map_block * BLOCK_SIZE + rec * MAP_DTYPE.itemsize
    raw = bytearray(path.read_bytes())
    raw[off:off + MAP_DTYPE.itemsize] = np.array([(owner, slot, live, 0)],
                                                 dtype=MAP_DTYPE).tobytes()
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage, reason", [
    (lambda p: _rewrite_superblock(p, version=FORMAT_VERSION + 1),
     "unsupported sealedos disk format version"),
    (lambda p: _rewrite_superblock(p, block_size=512), "block size 512"),
    (lambda p: _rewrite_superblock(p, first_data_block=3), "superblock field first_data_block"),
    (lambda p: _poke_map(p, 5, 77, 1), "belongs to closed handle 77"),
    (lambda p: _poke_map(p, 5, 1 << 30, 1), "outside the handle table"),
    (lambda p: _poke_map(p, 5, 0, 4), "maps slot 4 to two blocks"),
    (lambda p: _poke_map(p, 5, 0, 9, live=2), "do not start in it"),
    (lambda p: _poke_handle(p, 0, 100), "record size 100"),
])
def test_device_refuses_inconsistent_metadata(image: Path, damage: Callable[[Path], None],
                                              reason: str) -> None:
    with Device(image, size_mib=1) as dev:
        tok = dev.open_handle("h")
        dev.write(tok, 4, bytes(BLOCK_SIZE))
    damage(image)
    digest = sha256(image)
    with pytest.raises(DeviceError, match=reason):
        Device(image)
    assert sha256(image) == digest


def test_plan_and_gigabyte_device(tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match="no room"):
        plan(10)
    assert pack_superblock(plan(1024)).nbytes == SUPERBLOCK_DTYPE.itemsize
    big = tmp_path / "big.img"
    with Device(big, size_mib=1024) as dev:
        assert dev.geo.total_blocks == 262144
        tok = dev.open_handle("big")
        payload = random_block()
        for s in range(64):
            last = dev.write(tok, s, payload)
    assert big.stat().st_blocks * 512 < 64 << 20          # sparse: metadata and data only
    with Device(big) as dev:
        assert dev.stats().used_blocks == 64
        assert dev.read_block(tok, last) == payload


def test_open_of_a_minted_token_is_idempotent_and_only_its_hash_is_stored(image: Path) -> None:
    """The kernel mints handles: OPEN of the same token twice is one handle (its blocks
    stay), a reader of the device file finds no token, and a token never opened is refused."""
    token, data = os.urandom(16), random_block()
    with Device(image, size_mib=SIZE_MIB) as dev:
        assert dev.open_handle("once", token) == token
        dev.write(token, 7, data)
        assert dev.open_handle("twice", token) == token          # already open: no change
        assert dev.read(token, 7) == data and dev.label(token) == "once"
        assert dev.stats().handles == 1
        expect_err(Err.BADHANDLE, dev.read, os.urandom(16), 7)
        expect_err(Err.INVAL, dev.open_handle, "bad", b"short")
    raw = image.read_bytes()
    assert token not in raw and token_hash(token) in raw
    with Device(image) as dev:                                    # found again by its hash
        assert dev.read(token, 7) == data


# -- handles with records smaller than a block (erasure-code fragments) ---------------------

FRAG_BYTES = 1040                                    # a 4+2 fragment and its MAC


def test_small_records_are_packed_and_straddle_blocks(image: Path) -> None:
    frags = {s: os.urandom(FRAG_BYTES) for s in range(64)}
    with Device(image, size_mib=SIZE_MIB) as dev:
        tok = dev.open_handle("ec", block_size=FRAG_BYTES)
        for s, data in frags.items():
            dev.write(tok, s, data)
        # 64 records of 1040 bytes are 66560 bytes: 17 blocks, not 64
        assert dev.stats().used_blocks == -(-64 * FRAG_BYTES // BLOCK_SIZE) == 17
        assert dev.stats().slots_stored == 64
        assert all(dev.read(tok, s) == data for s, data in frags.items())
        expect_err(Err.INVAL, dev.write, tok, 64, bytes(BLOCK_SIZE))    # not this handle's size
        expect_err(Err.NOENT, dev.read, tok, 64)
        expect_err(Err.INVAL, dev.open_handle, "ec", tok, 2048)         # open with another size
        assert dev.open_handle("ec", tok, FRAG_BYTES) == tok            # idempotent
        expect_err(Err.INVAL, dev.open_handle, "tiny", None, 255)
        frags[3] = os.urandom(FRAG_BYTES)
        dev.write(tok, 3, frags[3])                                     # rewrite in place
        assert dev.stats().used_blocks == 17
    with Device(image) as dev:                                          # rebuilt from the file
        assert all(dev.read(tok, s) == data for s, data in frags.items())
        assert dev.free(tok, [3]) == 1 and dev.stats().used_blocks == 17   # neighbours stay
        expect_err(Err.NOENT, dev.read, tok, 3)
        assert dev.read(tok, 2) == frags[2] and dev.read(tok, 4) == frags[4]
        assert dev.free(tok, range(64)) == 63 and dev.stats().used_blocks == 0
        assert dev.close_handle(tok) == 0


def test_small_records_never_show_another_handles_bytes(image: Path) -> None:
    with Device(image, size_mib=1) as dev:
        full = dev.open_handle("full")
        dev.write(full, 0, b"\xaa" * BLOCK_SIZE)
        block = dev.stats().used_blocks
        dev.free(full, [0])
        small = dev.open_handle("small", block_size=1024)
        dev.write(small, 1, bytes(range(256)) * 4)
        assert dev.stats().used_blocks == block
        raw = dev.read_block(small, dev.write(small, 1, bytes(range(256)) * 4))
        assert raw[:1024] == bytes(1024) and raw[2048:] == bytes(2048)   # the rest is zeroed
        expect_err(Err.NOENT, dev.read, small, 0)
        expect_err(Err.BADHANDLE, dev.read, full + b"x", 1)
        expect_err(Err.NOENT, dev.read, full, 0)


def test_small_records_fill_the_device_exactly(image: Path) -> None:
    with Device(image, size_mib=1, max_handles=2) as dev:
        n = dev.geo.data_blocks
        tok = dev.open_handle("ec", block_size=FRAG_BYTES)
        fits = n * BLOCK_SIZE // FRAG_BYTES
        for s in range(fits):
            dev.write(tok, s, bytes(FRAG_BYTES))
        expect_err(Err.NOSPC, dev.write, tok, fits, bytes(FRAG_BYTES))
        assert dev.stats().slots_stored == fits


def test_a_live_record_whose_second_block_is_gone_is_refused(image: Path) -> None:
    with Device(image, size_mib=1) as dev:
        tok = dev.open_handle("ec", block_size=FRAG_BYTES)
        first = dev.write(tok, 3, os.urandom(FRAG_BYTES))   # bytes 3120..4159: two blocks
        assert dev.stats().used_blocks == 2
        rec = first - dev.geo.first_data_block
    _poke_map(image, rec + 1, -1, 0, live=0)                 # its second block "freed"
    digest = sha256(image)
    with pytest.raises(DeviceError, match="not all its blocks are mapped"):
        Device(image)
    assert sha256(image) == digest
