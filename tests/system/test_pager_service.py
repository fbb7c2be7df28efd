"""The external pager, as real processes: a real disk service, a real pager, and the test as
the kernel (tests/system/fakekernel.py: a ROUTER at the kernel address that answers
PAGER_HELLO and sends requests).

Covers: page round trips bit for bit, a SIGKILLed pager losing nothing, disk errors and
timeouts forwarded, malformed requests refused without harm, and every hostile mode doing
what it says.  Timing assertions are only ever "answered / not answered within X".
"""
from __future__ import annotations

import itertools
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from fakekernel import REPLY_TIMEOUT_MS, FakeKernel

from launcher import spawn
from wire.client import Client
from wire.protocol import PAGE_SIZE, Err, Op, ServiceError, decode, encode

STARTUP_S: float = 10.0
#: How long "never answers" is watched for.
SILENCE_MS: int = 1000
STALL_MS: int = 1500
NPAGES: int = 24
DISK_MIB: int = 8


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rundir() -> Iterator[Path]:
    """A private runtime directory, removed at the end."""
    path = spawn.make_rundir("sealedos-pt-")
    yield path
    spawn.remove_rundir(path)


@pytest.fixture(scope="module")
def disk_addr(rundir: Path) -> Iterator[str]:
    """A real disk service shared by the module's tests (each test opens its own handles)."""
    addr = spawn.ipc_addr(rundir, "disk")
    proc = spawn.spawn(spawn.python_cmd("disk", "--rundir", str(rundir), "--file",
                                        str(rundir / "disk.img"), "--size-mib", str(DISK_MIB),
                                        "--addr", addr, "--insecure"), log_path=rundir / "disk.log")
    try:
        spawn.wait_for_path(Path(addr.removeprefix("ipc://")), STARTUP_S, proc)
        yield addr
    finally:
        spawn.stop(proc)


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    """A private zmq context for the fake kernel sockets."""
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


PagerFactory = Callable[..., tuple[subprocess.Popen, FakeKernel]]


@pytest.fixture
def start_pager(rundir: Path, disk_addr: str, ctx: zmq.Context,
                request: pytest.FixtureRequest) -> Iterator[PagerFactory]:
    """Factory: start a real pager against a fresh fake kernel (or a given one); wait for hello."""
    procs: list[subprocess.Popen] = []
    kernels: list[FakeKernel] = []
    names = itertools.count()

    def start(*args: str, kernel: FakeKernel | None = None, disk: str | None = None,
              ) -> tuple[subprocess.Popen, FakeKernel]:
        if kernel is None:
            name = f"k-{request.node.name[:20]}-{next(names)}"
            kernel = FakeKernel(spawn.ipc_addr(rundir, name), ctx)
            kernels.append(kernel)
        log = rundir / f"pager-{request.node.name[:40]}-{len(procs)}.log"
        proc = spawn.spawn(spawn.python_cmd("pager", "--kernel", kernel.addr,
                                            "--disk", disk or disk_addr, "--rundir", str(rundir),
                                            "--insecure", *args),
                           log_path=log)
        procs.append(proc)
        hello = kernel.await_hello()
        assert hello["hostpid"] == proc.pid
        return proc, kernel

    yield start
    spawn.stop_all(procs)
    for k in kernels:
        k.stop()


def random_pages(n: int) -> list[bytes]:
    """n distinct random pages."""
    return [os.urandom(PAGE_SIZE) for _ in range(n)]


def open_handle(kernel: FakeKernel, label: str = "t") -> bytes:
    """Open a disk handle through the pager (minted here, as the kernel mints them)."""
    handle = os.urandom(16)
    assert "handle" not in kernel.ok(Op.OPEN, handle=handle, label=label)    # learns nothing
    return handle


def page_out_all(kernel: FakeKernel, handle: bytes, pages: list[bytes]) -> None:
    """Page out pages[i] to slot i, pipelined: all requests first, then all replies."""
    rids = [kernel.send(Op.PAGE_OUT, handle=handle, slot=i, data=p) for i, p in enumerate(pages)]
    for rid in rids:
        reply = kernel.wait_reply(rid)
        assert reply is not None and "err" not in reply, reply


def page_in_all(kernel: FakeKernel, handle: bytes, n: int) -> list[bytes | None]:
    """Page in slots 0..n-1, pipelined; the data of each reply (None if an error)."""
    rids = [kernel.send(Op.PAGE_IN, handle=handle, slot=i) for i in range(n)]
    out: list[bytes | None] = []
    for rid in rids:
        reply = kernel.wait_reply(rid)
        assert reply is not None, f"no reply to page_in rid {rid}"
        out.append(reply.get("data"))
    return out


# -- the honest pager ----------------------------------------------------------------------
def test_hello_and_round_trip(start_pager: PagerFactory, rundir: Path) -> None:
    """Hello carries mirror/host/pid; N random pages come back bit for bit; stats count them."""
    proc, kernel = start_pager("--mirror", "2")
    assert kernel.hellos[-1]["mirror"] == 2 and kernel.hellos[-1]["host"]
    assert kernel.ok(Op.PING)["mirror"] == 2
    handle = open_handle(kernel)
    pages = random_pages(NPAGES)
    page_out_all(kernel, handle, pages)
    assert page_in_all(kernel, handle, NPAGES) == pages
    stats = kernel.ok(Op.STATS)
    assert stats["mirror"] == 2 and stats["hostile"] == "none" and stats["tampered"] == 0
    assert stats["page_outs"] == NPAGES and stats["page_ins"] == NPAGES
    kernel.await_hello(2.0)                           # the heartbeat keeps coming
    assert spawn.stop(proc) == 0                      # SIGTERM: clean exit
    log = next(rundir.glob("pager-test_hello_and_round_trip*.log")).read_text()
    assert "pager[2]: kernel=" in log and "hostile=none" in log


def test_sigkill_loses_nothing(start_pager: PagerFactory) -> None:
    """A pager SIGKILLed after page-outs is replaced; the new one returns every page."""
    proc, kernel = start_pager()
    handle = open_handle(kernel)
    pages = random_pages(NPAGES)
    page_out_all(kernel, handle, pages)
    old_peer = kernel.peer
    proc.send_signal(signal.SIGKILL)
    proc.wait(5)
    start_pager(kernel=kernel)
    assert kernel.peer != old_peer
    assert page_in_all(kernel, handle, NPAGES) == pages


def test_overwrite_free_close(start_pager: PagerFactory) -> None:
    """A rewrite wins; free and close are forwarded, and later page-ins get the disk's error."""
    _, kernel = start_pager()
    handle = open_handle(kernel)
    a, b, c = random_pages(3)
    kernel.ok(Op.PAGE_OUT, handle=handle, slot=0, data=a)
    kernel.ok(Op.PAGE_OUT, handle=handle, slot=0, data=b)
    kernel.ok(Op.PAGE_OUT, handle=handle, slot=1, data=c)
    assert kernel.ok(Op.PAGE_IN, handle=handle, slot=0)["data"] == b
    kernel.ok(Op.FREE, handle=handle, slots=[0])
    assert kernel.call(Op.PAGE_IN, handle=handle, slot=0)["err"] == Err.NOENT
    assert kernel.ok(Op.PAGE_IN, handle=handle, slot=1)["data"] == c
    kernel.ok(Op.CLOSE, handle=handle)
    assert kernel.call(Op.PAGE_IN, handle=handle, slot=1)["err"] == Err.BADHANDLE


def test_disk_errors_are_forwarded(start_pager: PagerFactory, disk_addr: str) -> None:
    """A disk error reaches the kernel with the disk's own code and message."""
    _, kernel = start_pager()
    forged = b"\x42" * 16
    via_pager = kernel.call(Op.PAGE_IN, handle=forged, slot=0)
    with Client(disk_addr) as disk, pytest.raises(ServiceError) as direct:
        disk.call(Op.READ, handle=forged, slot=0)
    assert (via_pager.get("err"), via_pager.get("msg")) == (direct.value.code, direct.value.msg)


def test_disk_timeout(start_pager: PagerFactory, rundir: Path) -> None:
    """With no disk answering, requests end in ETIMEDOUT (and the pager keeps serving)."""
    _, kernel = start_pager("--disk-timeout-ms", "300", disk=spawn.ipc_addr(rundir, "nodisk"))
    assert kernel.call(Op.PAGE_IN, handle=b"\x01" * 16, slot=3)["err"] == Err.TIMEDOUT
    assert kernel.call(Op.PAGE_OUT, handle=b"\x01" * 16, slot=3,
                       data=bytes(PAGE_SIZE))["err"] == Err.TIMEDOUT
    assert kernel.call(Op.OPEN, handle=b"\x02" * 16, label="x")["err"] == Err.TIMEDOUT
    assert kernel.ok(Op.STATS)["disk_timeouts"] == 3


def test_malformed_requests(start_pager: PagerFactory) -> None:
    """Malformed requests get error replies; the pager keeps serving afterwards."""
    _, kernel = start_pager()
    handle = open_handle(kernel)
    page = os.urandom(PAGE_SIZE)
    kernel.ok(Op.PAGE_OUT, handle=handle, slot=5, data=page)

    kernel.send_frames(b"\xc1 not msgpack")
    assert decode(kernel.next_frame())["err"] == Err.BADMSG
    kernel.send_frames(msgpack.packb([1, 2, 3]))
    assert decode(kernel.next_frame())["err"] == Err.BADMSG
    kernel.send_frames(encode({"op": "ping", "rid": 1}), b"second frame")
    assert decode(kernel.next_frame())["err"] == Err.BADMSG
    kernel.send_frames(encode({"op": "page_in", "rid": "x"}))
    assert decode(kernel.next_frame())["err"] == Err.BADMSG

    bad: list[tuple[str, dict[str, Any], Err]] = [
        ("no_such_op", {}, Err.NOSYS),
        (Op.WRITE, {"handle": handle, "slot": 0, "data": page}, Err.NOSYS),
        (Op.PAGER_HELLO, {"mirror": 0, "host": "h", "hostpid": 1}, Err.NOSYS),
        (Op.PAGE_IN, {"handle": handle}, Err.INVAL),
        (Op.PAGE_IN, {"handle": "text", "slot": 0}, Err.INVAL),
        (Op.PAGE_IN, {"handle": b"short", "slot": 0}, Err.INVAL),
        (Op.PAGE_IN, {"handle": handle, "slot": -1}, Err.INVAL),
        (Op.PAGE_IN, {"handle": handle, "slot": True}, Err.INVAL),
        (Op.PAGE_OUT, {"handle": handle, "slot": 0, "data": b"x" * 17}, Err.INVAL),
        (Op.PAGE_OUT, {"handle": handle, "slot": 0, "data": page + b"x"}, Err.INVAL),
        (Op.FREE, {"handle": handle, "slots": [1, "two"]}, Err.INVAL),
        (Op.FREE, {"handle": handle, "slots": 3}, Err.INVAL),
        (Op.OPEN, {"handle": handle, "label": 7}, Err.INVAL),
        (Op.OPEN, {"handle": b"short", "label": "x"}, Err.INVAL),
        (Op.OPEN, {"label": "x"}, Err.INVAL),
        (Op.CLOSE, {"handle": None}, Err.INVAL),
    ]
    for op, fields, code in bad:
        reply = kernel.call(op, **fields)
        assert reply.get("err") == code, (op, fields, reply)
    assert kernel.ok(Op.PAGE_IN, handle=handle, slot=5)["data"] == page
    assert kernel.ok(Op.STATS)["bad_messages"] >= 4


# -- hostile modes ---------------------------------------------------------------------------
def hostile_setup(start_pager: PagerFactory, mode: str, *args: str,
                  ) -> tuple[FakeKernel, bytes, list[bytes]]:
    """A pager in `mode` with a handle holding 4 random pages in slots 0..3."""
    _, kernel = start_pager("--hostile", mode, *args)
    handle = open_handle(kernel, mode)
    pages = random_pages(4)
    page_out_all(kernel, handle, pages)
    return kernel, handle, pages


def tampered(kernel: FakeKernel) -> int:
    """The pager's count of falsified page-in replies."""
    return kernel.ok(Op.STATS)["tampered"]


@pytest.mark.parametrize("mode", ["flip", "zero"])
def test_flip_and_zero_corrupt_page_ins(start_pager: PagerFactory, mode: str) -> None:
    """flip and zero answer every page-in with a full page that is not the stored one."""
    kernel, handle, pages = hostile_setup(start_pager, mode)
    got = page_in_all(kernel, handle, len(pages))
    for want, data in zip(pages, got, strict=True):
        assert isinstance(data, bytes) and len(data) == PAGE_SIZE and data != want
        if mode == "zero":
            assert data == bytes(PAGE_SIZE)
        else:
            diff = sum(bin(x ^ y).count("1") for x, y in zip(want, data, strict=True))
            assert 0 < diff <= 8
    assert tampered(kernel) == len(pages)


def test_swap_answers_with_another_page(start_pager: PagerFactory) -> None:
    """swap answers with another page of the same handle, else another handle's, else flips."""
    kernel, handle, pages = hostile_setup(start_pager, "swap")
    for slot, want in enumerate(pages):
        data = kernel.ok(Op.PAGE_IN, handle=handle, slot=slot)["data"]
        assert data != want and data in pages
    lone = open_handle(kernel, "lone")
    page = os.urandom(PAGE_SIZE)
    kernel.ok(Op.PAGE_OUT, handle=lone, slot=9, data=page)
    assert kernel.ok(Op.PAGE_IN, handle=lone, slot=9)["data"] in pages   # another process's
    stats = kernel.ok(Op.STATS)
    assert stats["swapped"] == 5 and stats["tampered"] == 5


def test_swap_with_a_single_page_flips(start_pager: PagerFactory) -> None:
    """swap knowing no other page still attacks, by flipping bits."""
    _, kernel = start_pager("--hostile", "swap")
    handle = open_handle(kernel)
    page = os.urandom(PAGE_SIZE)
    kernel.ok(Op.PAGE_OUT, handle=handle, slot=0, data=page)
    data = kernel.ok(Op.PAGE_IN, handle=handle, slot=0)["data"]
    assert len(data) == PAGE_SIZE and data != page
    assert kernel.ok(Op.STATS)["flipped"] == 1


def test_replay_answers_with_an_older_version(start_pager: PagerFactory) -> None:
    """replay answers with the previous version of a rewritten page, and flips the others."""
    kernel, handle, pages = hostile_setup(start_pager, "replay")
    newer = os.urandom(PAGE_SIZE)
    kernel.ok(Op.PAGE_OUT, handle=handle, slot=0, data=newer)
    assert kernel.ok(Op.PAGE_IN, handle=handle, slot=0)["data"] == pages[0]
    data = kernel.ok(Op.PAGE_IN, handle=handle, slot=1)["data"]
    assert len(data) == PAGE_SIZE and data != pages[1]
    stats = kernel.ok(Op.STATS)
    assert (stats["replayed"], stats["flipped"], stats["tampered"]) == (1, 1, 2)


def test_garbage_sends_malformed_replies(start_pager: PagerFactory) -> None:
    """garbage answers with raw bytes, then an int, then a 17-byte page; never the page."""
    kernel, handle, pages = hostile_setup(start_pager, "garbage")
    kernel.send(Op.PAGE_IN, handle=handle, slot=0)
    raw = kernel.next_frame()
    assert raw is not None
    with pytest.raises(ServiceError):
        decode(raw)
    assert isinstance(kernel.call(Op.PAGE_IN, handle=handle, slot=1)["data"], int)
    short = kernel.call(Op.PAGE_IN, handle=handle, slot=2)["data"]
    assert isinstance(short, bytes) and len(short) == 17
    assert tampered(kernel) == 3


def test_drop_never_answers_page_in(start_pager: PagerFactory) -> None:
    """drop never answers a page-in, yet answers everything else."""
    kernel, handle, _ = hostile_setup(start_pager, "drop")
    rid = kernel.send(Op.PAGE_IN, handle=handle, slot=0)
    assert kernel.wait_reply(rid, SILENCE_MS) is None
    kernel.ok(Op.PAGE_OUT, handle=handle, slot=7, data=bytes(PAGE_SIZE))
    assert kernel.wait_reply(rid, 200) is None
    assert tampered(kernel) == 1


def test_stall_answers_late(start_pager: PagerFactory) -> None:
    """stall answers a page-in correctly but late; other requests are served meanwhile."""
    kernel, handle, pages = hostile_setup(start_pager, "stall", "--stall-ms", str(STALL_MS))
    rid = kernel.send(Op.PAGE_IN, handle=handle, slot=1)
    assert kernel.wait_reply(rid, STALL_MS // 3) is None
    kernel.ok(Op.PING)                                # the loop is not blocked
    reply = kernel.wait_reply(rid, REPLY_TIMEOUT_MS + STALL_MS)
    assert reply is not None and reply["data"] == pages[1]


def test_snoop_records_every_page(start_pager: PagerFactory, rundir: Path) -> None:
    """snoop answers correctly; its snoop file (default: RUNDIR/pager{mirror}-snoop.bin)
    holds every page it saw, in and out."""
    snoop = rundir / "pager3-snoop.bin"
    kernel, handle, pages = hostile_setup(start_pager, "snoop", "--mirror", "3")
    assert page_in_all(kernel, handle, len(pages)) == pages
    seen = snoop.read_bytes()
    assert len(seen) == 2 * len(pages) * PAGE_SIZE
    assert all(seen.count(p) == 2 for p in pages)
    stats = kernel.ok(Op.STATS)
    assert stats["tampered"] == 0 and stats["snooped_pages"] == 2 * len(pages)


# -- clustered page-outs -------------------------------------------------------------------
def test_a_clustered_page_out_stores_and_answers_each_page(start_pager: PagerFactory) -> None:
    """One PAGE_OUT with `more` stores every page; the answer names each further page's slot;
    a page the disk refuses (a handle never opened) fails alone; a malformed entry refuses
    the whole request; --batch-attack is felt only with --hostile."""
    _, kernel = start_pager()
    handle, unknown = open_handle(kernel), os.urandom(16)
    pages = random_pages(4)
    reply = kernel.call(Op.PAGE_OUT, handle=handle, slot=0, data=pages[0],
                        more=[[handle, i, p] for i, p in enumerate(pages[1:], 1)])
    assert "err" not in reply and reply["more"] == [{"slot": 1}, {"slot": 2}, {"slot": 3}]
    assert page_in_all(kernel, handle, 4) == pages
    reply = kernel.call(Op.PAGE_OUT, handle=handle, slot=5, data=pages[0],
                        more=[[unknown, 6, pages[1]], [handle, 7, pages[2]]])
    assert "err" not in reply and reply["more"][0]["err"] == "EBADHANDLE"
    assert reply["more"][1] == {"slot": 7}
    bad = kernel.call(Op.PAGE_OUT, handle=handle, slot=8, data=pages[0],
                      more=[[handle, -1, pages[1]]])
    assert bad["err"] == "EINVAL" and page_in_all(kernel, handle, 9)[8] is None
    stats = kernel.ok(Op.STATS)
    assert (stats["page_outs"], stats["page_out_requests"]) == (7, 2)


@pytest.mark.parametrize("attack", ["unsent", "withhold"])
def test_a_batch_attack_falsifies_clustered_answers_and_stores_honestly(
        start_pager: PagerFactory, attack: str) -> None:
    """--hostile snoop --batch-attack: a share of the clustered answers is false (an extra
    page, or none at all), every page is still stored; single pages are answered honestly."""
    _, kernel = start_pager("--hostile", "snoop", "--batch-attack", attack)
    handle = open_handle(kernel)
    pages = random_pages(3)
    falsified = 0
    for _ in range(16):
        rid = kernel.send(Op.PAGE_OUT, handle=handle, slot=0, data=pages[0],
                          more=[[handle, 1, pages[1]], [handle, 2, pages[2]]])
        reply = kernel.wait_reply(rid, SILENCE_MS if attack == "withhold" else REPLY_TIMEOUT_MS)
        honest = reply is not None and reply.get("more") == [{"slot": 1}, {"slot": 2}]
        falsified += not honest
    assert 0 < falsified < 16 and kernel.ok(Op.STATS)["batches_falsified"] == falsified
    assert page_in_all(kernel, handle, 3) == pages
    assert "err" not in kernel.call(Op.PAGE_OUT, handle=handle, slot=3, data=pages[0])
