"""Kernel-minted disk handles on the kernel's side (pagers.py), over real sockets in-process:
a pager that answered OPEN without opening is caught by the disk's EBADHANDLE, the kernel
re-OPENs and asks again; what one instance said it opened is forgotten when another joins."""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from kernel_daemon.pagers import Pagers
from kernel_daemon.stats import KernelStats
from wire.protocol import PAGE_SIZE, Err, Op, decode, encode, error, ok
from wire.server import Server

WAIT_S: float = 10.0


class Rig:
    """A kernel-side Pagers on a real ROUTER, and a raw DEALER playing the pager."""

    def __init__(self, tmp: Path) -> None:
        self.server = Server("kernel-test", zmq.Context.instance())
        addr = f"ipc://{tmp}/k.sock"
        self.sock = self.server.bind_router(addr)
        self.stats = KernelStats("fifo", 1, True, 1)
        self.pagers = Pagers(self.server, self.sock, 1, 2000, 1, "here", self.stats)
        self.pager = zmq.Context.instance().socket(zmq.DEALER)
        self.pager.setsockopt(zmq.LINGER, 0)
        self.pager.setsockopt(zmq.ROUTING_ID, b"pager-1")
        self.pager.connect(addr)
        self.pager.send(encode({"op": "ping", "rid": 1}))     # make the connection known
        self.until("the ping", lambda: self._got_ping())
        self.pagers.hello(b"pager-1", 0, "elsewhere", 0)

    def _got_ping(self) -> bool:
        self.server._drain(self.sock)
        return bool(self.pager.poll(0)) and bool(self.pager.recv())

    def until(self, what: str, pred: Callable[[], Any]) -> Any:
        """Run the kernel's loop by hand until pred() is truthy."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            self.server._drain(self.sock)
            self.server.fire_due()
            got = pred()
            if got:
                return got
            time.sleep(0.005)
        raise AssertionError(f"timed out waiting for {what}")

    def request(self) -> dict[str, Any]:
        """The next request the kernel sent the pager."""
        return self.until("a request", lambda: self.pager.poll(0) and decode(self.pager.recv()))

    def answer(self, msg: dict[str, Any]) -> None:
        """Send the pager's answer."""
        self.pager.send(encode(msg))

    def close(self) -> None:
        """Close both sockets."""
        self.pager.close(0)
        self.server.drop_socket(self.sock)


def test_an_open_lie_is_caught_by_ebadhandle_and_reopened(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    try:
        token = os.urandom(16)
        opened: list[Any] = []
        rig.pagers.open(0, token, "space", lambda reply, why: opened.append(reply))
        req = rig.request()
        assert req["op"] == "open" and req["handle"] == token       # the kernel minted it
        rig.answer(ok(req["rid"]))                                 # the lie: nothing opened
        rig.until("the open's answer", lambda: opened)
        assert rig.pagers.is_open(0, token)
        done: list[Any] = []
        rig.pagers.submit(0, Op.PAGE_OUT, {"handle": token, "slot": 3,
                                           "data": bytes(PAGE_SIZE)},
                          lambda reply, why: done.append(reply))
        req = rig.request()
        assert req["op"] == "page_out"
        rig.answer(error(req["rid"], Err.BADHANDLE, "unknown or closed handle"))  # the disk
        req = rig.request()
        assert req["op"] == "open" and req["handle"] == token       # re-OPEN ...
        rig.answer(ok(req["rid"]))
        req = rig.request()
        assert req["op"] == "page_out" and req["slot"] == 3          # ... and ask again
        rig.answer(ok(req["rid"], block=99))
        rig.until("the page-out's answer", lambda: done)
        assert "err" not in done[0] and rig.stats.handle_reopens == 1
    finally:
        rig.close()


def test_a_new_instance_revalidates_what_the_old_one_opened(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    try:
        token = os.urandom(16)
        opened: list[Any] = []
        rig.pagers.open(0, token, "space", lambda reply, why: opened.append(reply))
        req = rig.request()
        rig.answer(ok(req["rid"]))
        rig.until("the open's answer", lambda: opened)
        assert rig.pagers.is_open(0, token)
        rig.pagers.hello(b"pager-2", 0, "elsewhere", 0)            # another instance joins
        assert not rig.pagers.is_open(0, token)
    finally:
        rig.close()
