"""The one fake kernel of the tests: a real ZeroMQ ROUTER speaking the real wire protocol.

It stands in for `sealedos kernel` where a test is about the process on the other end of the
kernel's socket (a sealed process's runtime, a pager): that process is real, its sockets are
real, and only the kernel is played by the test.  The ROUTER is served by a loop thread of the
test process; the test thread talks to it through thread-safe calls.

* Requests from the peer are answered by the handlers in `handlers()` (an explicit table,
  op -> handler; an op without a handler is answered ENOSYS).  A handler returns the reply,
  or None when it answers later (with `send_to`).  The base table answers PAGER_HELLO and
  remembers the newest hello's peer as `peer`.
* Replies from the peer go to the callback of the request they answer (`request`, on the
  loop thread) or, for requests the test thread sent (`send`), to a mailbox `wait_reply`
  reads.  Anything else from `peer` (malformed, unsolicited, a reply to no pending request)
  is kept, in order, for `next_frame`.

Timeouts here only bound a test that would otherwise hang; no test asserts on timing.
"""
from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import zmq

from kernel_daemon.pagers import TRANSIENT_ERRORS
from wire.protocol import Err, Op, ServiceError, decode, encode, error, ok

#: How long a test waits for a reply (or for the loop thread to run a call) by default.
REPLY_TIMEOUT_MS: int = 5000
#: How long the test waits for a pager's first PAGER_HELLO by default.
HELLO_TIMEOUT_S: float = 10.0
#: How many times ok() asks again after a transient error, and how long it pauses first.
TRANSIENT_TRIES: int = 5
TRANSIENT_PAUSE_S: float = 0.1
#: How long the loop thread blocks in poll before looking at its timers and calls.
LOOP_POLL_MS: int = 2

Msg = dict[str, Any]
#: A request handler: (peer routing id, request) -> reply, or None if it answers later.
Handler = Callable[[bytes, Msg], Msg | None]


class FakeKernel:
    """A kernel endpoint for tests: a ROUTER bound at `addr`, served by a loop thread."""

    def __init__(self, addr: str | None = None, ctx: zmq.Context[zmq.Socket[bytes]] | None = None
                 ) -> None:
        """Bind at `addr` (None: a random TCP port on 127.0.0.1) and start serving."""
        self._own_ctx = ctx is None
        self.ctx = zmq.Context() if ctx is None else ctx
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if addr is None:
            addr = f"tcp://127.0.0.1:{self.sock.bind_to_random_port('tcp://127.0.0.1')}"
        else:
            self.sock.bind(addr)
        self.addr = addr
        self.peer: bytes | None = None               # the newest PAGER_HELLO's sender
        self.hellos: list[Msg] = []
        self._table = self.handlers()
        self._rids = itertools.count(1000)
        self._pending: dict[int, Callable[[Msg], None]] = {}   # rid -> callback (loop thread)
        self._timers: list[tuple[float, Callable[[], None]]] = []
        self._calls: queue.Queue[tuple[Callable[[], Any], Future[Any]]] = queue.Queue()
        self._cond = threading.Condition()           # guards the three below
        self._replies: dict[int, Msg] = {}           # answers to the test thread's requests
        self._frames: deque[bytes] = deque()         # everything else `peer` sent
        self._hello_count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fakekernel", daemon=True)
        self._thread.start()

    # -- what a subclass overrides ---------------------------------------------------------
    def handlers(self) -> dict[Op, Handler]:
        """Every op this kernel serves, and its handler (a subclass extends the table)."""
        return {Op.PAGER_HELLO: self.do_pager_hello}

    def on_request(self, peer: bytes, msg: Msg) -> None:
        """Hook: a request arrived from `peer` (before its handler runs)."""

    def do_pager_hello(self, peer: bytes, msg: Msg) -> Msg:
        """PAGER_HELLO: admit the pager; it becomes `peer`, the one the test talks to."""
        with self._cond:
            self.peer = peer
            self.hellos.append(msg)
            self._hello_count += 1
            self._cond.notify_all()
        return ok(msg.get("rid"))

    # -- the loop thread -------------------------------------------------------------------
    def _loop(self) -> None:
        """Serve the socket, the timers and the test thread's calls until stop()."""
        while not self._stop.is_set():
            if self.sock.poll(LOOP_POLL_MS):
                self._drain()
            now = time.monotonic()
            due = [t for t in self._timers if t[0] <= now]
            self._timers = [t for t in self._timers if t[0] > now]
            for _, fn in due:
                fn()
            while not self._calls.empty():
                fn, fut = self._calls.get()
                try:
                    fut.set_result(fn())
                except Exception as exc:             # handed to the waiting test thread
                    fut.set_exception(exc)
        self.sock.close(0)

    def _drain(self) -> None:
        """Handle every message waiting on the socket."""
        while True:
            try:
                peer, *frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._on_message(peer, frames)

    def _on_message(self, peer: bytes, frames: list[bytes]) -> None:
        """Route one message: a request to its handler, a reply to its callback, the rest
        (from `peer`, single-frame) to next_frame's queue."""
        msg: Msg | None = None
        if len(frames) == 1:
            try:
                decoded = decode(frames[0])
            except ServiceError:                     # malformed: kept raw for next_frame
                decoded = None
            msg = decoded if isinstance(decoded, dict) else None
        if msg is not None and isinstance(msg.get("op"), str):
            self._answer(peer, msg)
            return
        callback = self._pending.pop(msg["re"], None) \
            if msg is not None and isinstance(msg.get("re"), int) else None
        if callback is not None:
            callback(msg or {})
        elif peer == self.peer and len(frames) == 1:
            with self._cond:
                self._frames.append(frames[0])
                self._cond.notify_all()

    def _answer(self, peer: bytes, msg: Msg) -> None:
        """Answer one request by its handler (ENOSYS if it has none)."""
        self.on_request(peer, msg)
        handler = self._table.get(Op(msg["op"])) if msg["op"] in Op._value2member_map_ else None
        reply = handler(peer, msg) if handler is not None else \
            error(msg.get("rid"), Err.NOSYS, f"the fake kernel does not serve {msg['op']!r}")
        if reply is not None:
            self.send_to(peer, reply)

    # -- for handlers (loop thread only) ---------------------------------------------------
    def send_to(self, peer: bytes, msg: Msg) -> None:
        """Send one encoded message to `peer`."""
        self.sock.send_multipart([peer, encode(msg)])

    def request(self, peer: bytes, op: Op | str, fields: Msg, then: Callable[[Msg], None]
                ) -> int:
        """Send request `op` to `peer`; then(reply) when it is answered.  Return its rid."""
        rid = next(self._rids)
        self._pending[rid] = then
        self.send_to(peer, {**fields, "op": str(op), "rid": rid})
        return rid

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> None:
        """Run fn on the loop thread after delay_s."""
        self._timers.append((time.monotonic() + delay_s, fn))

    # -- for the test (any thread) ---------------------------------------------------------
    def run(self, fn: Callable[[], Any], timeout_ms: int = REPLY_TIMEOUT_MS) -> Any:
        """Run fn on the loop thread and return its result (or raise its exception)."""
        fut: Future[Any] = Future()
        self._calls.put((fn, fut))
        return fut.result(timeout_ms / 1000)

    def await_hello(self, timeout_s: float = HELLO_TIMEOUT_S) -> Msg:
        """Wait for the next PAGER_HELLO (from a new or the current pager) and return it."""
        with self._cond:
            seen = self._hello_count
            if not self._cond.wait_for(lambda: self._hello_count > seen, timeout_s):
                raise AssertionError(f"no PAGER_HELLO on {self.addr} within {timeout_s} s")
            return self.hellos[-1]

    def send(self, op: Op | str, **fields: Any) -> int:
        """Send one request to `peer` (its reply goes to wait_reply); return its rid."""
        def post() -> int:
            assert self.peer is not None, "no pager said hello yet"
            return self.request(self.peer, op, fields, self._mail)
        rid: int = self.run(post)
        return rid

    def _mail(self, reply: Msg) -> None:
        """Keep a reply to a request of the test thread for wait_reply (loop thread)."""
        with self._cond:
            self._replies[reply["re"]] = reply
            self._cond.notify_all()

    def send_frames(self, *frames: bytes) -> None:
        """Send raw frames to `peer` (malformed-input tests)."""
        def post() -> None:
            assert self.peer is not None, "no pager said hello yet"
            self.sock.send_multipart([self.peer, *frames])
        self.run(post)

    def wait_reply(self, rid: int, timeout_ms: int = REPLY_TIMEOUT_MS) -> Msg | None:
        """The reply to request `rid` sent by send(), or None if none came in time."""
        with self._cond:
            if not self._cond.wait_for(lambda: rid in self._replies, timeout_ms / 1000):
                return None
            return self._replies.pop(rid)

    def next_frame(self, timeout_ms: int = REPLY_TIMEOUT_MS) -> bytes | None:
        """The next frame from `peer` that is neither a request nor an awaited reply, or None."""
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._frames), timeout_ms / 1000):
                return None
            return self._frames.popleft()

    def call(self, op: Op | str, timeout_ms: int = REPLY_TIMEOUT_MS, **fields: Any) -> Msg:
        """Send a request to `peer` and return its reply (fail the test if none comes)."""
        reply = self.wait_reply(self.send(op, **fields), timeout_ms)
        assert reply is not None, f"no reply to {op} within {timeout_ms} ms"
        return reply

    def ok(self, op: Op | str, **fields: Any) -> Msg:
        """call() that also fails the test on an error reply; a transient one (the disk did
        not answer in time, e.g. while the machine is loaded) is asked again, as the real
        kernel does (pagers.TRANSIENT_ERRORS), a few times."""
        for _ in range(TRANSIENT_TRIES):
            reply = self.call(op, **fields)
            if reply.get("err") not in TRANSIENT_ERRORS:
                break
            time.sleep(TRANSIENT_PAUSE_S)
        assert "err" not in reply, f"{op} failed: {reply}"
        return reply

    def stop(self) -> None:
        """Stop the loop thread and close the socket (and the context, if it is ours)."""
        self._stop.set()
        self._thread.join(2)
        if self._own_ctx:
            self.ctx.destroy(linger=0)
