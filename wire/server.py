"""The one server skeleton that the kernel, the pager and the disk service all run.

Shaped after MINIX 3's servers: a receive loop, a check of the caller, a dispatch table of
``do_*`` handlers, a reply.  A handler returns a map of reply fields (sent at once), raises
:class:`ServiceError` (sent as an error reply), or returns :data:`SUSPEND` and replies later
through :meth:`Server.reply` (a page fault waiting on the pager never blocks the loop).

The skeleton also lets a server be a *client* without blocking: :meth:`Server.request`
sends a request to a peer and runs ``callback(rid, reply)`` when the matching reply arrives,
or ``callback(rid, None)`` when the timeout passes.  Replies are matched on (socket, peer,
rid), so one peer cannot answer a request that was sent to another.

Everything runs on one thread; no handler may block.

The skeleton touches the world only through its *transport* (sockets, sending) and its
*clock* (every timer and time read), see wire/transport.py: ZeroMQ and CLOCK_MONOTONIC in
production.  A simulator (host_tools/sim) gives its own, delivers frames by calling
:meth:`Server.on_frame` and runs timers with :meth:`Server.fire_due` at the times
:meth:`Server.next_deadline` names, instead of :meth:`Server.run`.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import os
import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import zmq
from zmq.auth.base import Authenticator

from wire import protocol, sockets
from wire.keys import Keyring
from wire.protocol import Err, Op, ServiceError, check_request, decode, error, ok, request
from wire.sockets import Context, Socket
from wire.transport import MONOTONIC, Clock, Transport, ZmqTransport

log = logging.getLogger("sealedos.server")

class Suspend:
    """The type of SUSPEND, a handler's answer meaning "I will reply later"."""


SUSPEND: Final[Suspend] = Suspend()
#: What a handler returns: the reply's fields (None: no fields), or SUSPEND.
Answer = dict[str, Any] | Suspend | None
#: A request handler: the values of the dispatch table.
Handler = Callable[["Request"], Answer]

# Socket options and flags as plain ints: the hot path skips pyzmq's enum conversions.
_EVENTS: int = int(zmq.EVENTS)
_POLLIN: int = int(zmq.POLLIN)
_NOBLOCK: int = int(zmq.NOBLOCK)

#: How long a one-socket loop may block in recv, at most (the steps keep setsockopt rare and
#: never wake later than the next timer; the cap bounds how late a signal stops the loop).
_WAIT_STEPS_MS: tuple[int, ...] = (200, 100, 50, 20, 10, 5, 2, 1, 0)
#: ... as a table: _STEP_MS[w] is the largest step <= w ms, for w below _STEPS_CAP_MS.
_STEPS_CAP_MS: int = _WAIT_STEPS_MS[0]
_STEP_MS: tuple[int, ...] = tuple(next(s for s in _WAIT_STEPS_MS if s <= w)
                                  for w in range(_STEPS_CAP_MS))
#: With a ZAP handler, a one-socket loop wakes at least this often to admit new connections
#: (a client's handshake waits for the answer; nothing else does).
ZAP_WAIT_MS: int = 10
#: ... and under load looks at the ZAP socket once per this many messages (a getsockopt costs
#: about 1 us, six times what reading a message's User-Id does).
ZAP_EVERY: int = 32

#: What Server.request runs: callback(rid, reply), reply None when the timeout passed.
ReplyCallback = Callable[[int, dict[str, Any] | None], None]


class Panic(Exception):
    """A broken invariant: the server stops loudly instead of serving on corrupt state."""


@dataclass(slots=True)
class Request:
    """One received request: where it came from, its op and fields, and who sent it."""
    sock: Socket
    peer: bytes | None          # ROUTER routing id, None on a DEALER connection
    rid: int
    op: Op
    msg: dict[str, Any]
    caller: Any = None          # whatever check_caller resolved (a process, a pager ...)
    size: int = 0               # the encoded frame's length in bytes (bounds costly work)
    #: The sender's authenticated CURVE public key (z85), None on NULL (insecure) sockets
    #: and on DEALER connections (there the peer is the server this side chose to trust).
    user_id: str | None = None


@dataclass(order=True, slots=True)
class Timer:
    """A callback due at `deadline` (seconds, monotonic); cancel() makes it a no-op."""
    deadline: float
    seq: int
    fn: Callable[[], None] | None = field(compare=False)

    def cancel(self) -> None:
        """Stop the timer from firing (safe to call twice)."""
        self.fn = None


@dataclass(slots=True)
class _Pending:
    rid: int
    sock: Socket
    peer: bytes | None
    callback: ReplyCallback
    timer: Timer | None


class Server:
    """Receive loop + caller check + dispatch table + reply, for one single-threaded service."""

    def __init__(self, name: str, ctx: Context | None = None,
                 keys: Keyring | None = None, transport: Transport | None = None,
                 clock: Clock | None = None) -> None:
        self.name = name
        self.ctx = ctx or zmq.Context.instance()
        #: This service's keys; Keyring(None) = insecure (NULL on every socket).
        self.keyring = keys or Keyring(None)
        self.secure = self.keyring.secure
        #: The ZAP handler (bound with the first CURVE ROUTER), driven from this loop.
        self.auth: Authenticator | None = None
        #: ROUTER routing id -> the User-Id it first spoke with (a routing id is chosen by the
        #: peer; another key arriving on it is refused).
        self.peer_keys: dict[bytes, str] = {}
        self.refused_keys = 0
        self._zap_countdown = 0
        # The seam (wire/transport.py): sockets and sends go through the transport, every
        # time read through the clock; a simulator hands in its own.
        self.transport: Transport = transport or ZmqTransport(self.ctx)
        self.clock: Clock = clock or MONOTONIC
        self.now: Callable[[], float] = self.clock.now
        self.pid: int = self.transport.pid()
        self.log = logging.getLogger(f"sealedos.{name}")
        #: serve_until_signalled's wake-up pipe, for a loop that polls (pager_service/loop.py)
        self.wakeup_fd: int | None = None
        self.sockets: dict[Socket, bool] = {}        # socket -> is ROUTER
        #: op -> handler: each server's explicit dispatch table (greppable, like MINIX's).
        self.handlers: dict[Op, Handler] = self.dispatch_table()
        self._pending: dict[int, _Pending] = {}
        self._timers: list[Timer] = []
        self._seq = itertools.count(1)
        self._rids = itertools.count(1)
        self.running = True
        self.bad_messages = 0
        #: A frame longer than this is refused unread (EMSGSIZE); a server may lower it.
        self.max_frame_bytes = protocol.MAX_FRAME_BYTES
        self.callback_errors = 0     # timer or reply callbacks that raised (logged, survived)
        self._rcvtimeo: dict[Socket, int] = {}
        self._encode = protocol.encoder()        # this loop's own packer (encode's frames)

    # -- sockets -------------------------------------------------------------------------
    def bind_router(self, addr: str) -> Socket:
        """Listen on `addr` with a ROUTER socket served by this loop (CURVE server with this
        service's keypair, clients admitted by allow_key; NULL when insecure)."""
        if self.secure and self.auth is None:
            self._start_zap()
        sock: Socket = self.transport.bind_router(addr, self.keyring.own)
        self._add(sock, True)
        return sock

    def connect_dealer(self, addr: str, server_public: bytes | None = None) -> Socket:
        """Connect to `addr` with a DEALER socket served by this loop (a CURVE client
        expecting the server to hold `server_public`'s secret; NULL when insecure)."""
        sock: Socket = self.transport.connect_dealer(addr, self.keyring.own,
                                                     server_public if self.secure else None)
        self._add(sock, False)
        return sock

    # -- admission (ZAP) -----------------------------------------------------------------
    def allow_key(self, public: str) -> bool:
        """Hook: may a client with CURVE public key `public` (z85) connect at all?  Asked
        once per connection at its handshake; the default admits nobody."""
        return False

    def _start_zap(self) -> None:
        """Bind this context's ZAP handler; its requests are answered from this loop."""
        auth = Authenticator(self.ctx, log=self.log)
        try:
            auth.start()
        except zmq.ZMQError as exc:
            raise Panic(f"{self.name}: this context already has a ZAP handler ({exc}); "
                        "one secure server per context") from None
        auth.configure_curve_callback(sockets.ZAP_DOMAIN, _KeyCheck(self))
        self.auth = auth

    def _serve_zap(self) -> None:
        """Answer every waiting ZAP request (one handshake each) with allow_key's verdict."""
        auth = self.auth
        if auth is None:
            return
        zap = auth.zap_socket
        while int(zap.getsockopt(_EVENTS)) & _POLLIN:
            coro = auth.handle_zap_message(zap.recv_multipart(_NOBLOCK))
            try:
                coro.send(None)           # our callback is synchronous: it never suspends
            except StopIteration:
                continue
            coro.close()
            raise Panic(f"{self.name}: the ZAP handler suspended")

    def _add(self, sock: Socket, is_router: bool) -> None:
        if self.sockets and type(self).turn is Server.turn:
            raise Panic(f"{self.name}: this loop serves one socket; a server of several "
                        "brings its own turn() (pager_service/loop.py)")
        self.sockets[sock] = is_router

    def drop_socket(self, sock: Socket) -> None:
        """Stop serving `sock` and close it; requests pending on it time out as usual."""
        if sock in self.sockets:
            del self.sockets[sock]
            self.transport.close(sock)

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until stop(): receive, check, dispatch, reply; fire due timers."""
        self.on_start()
        try:
            while self.running:
                self.turn()
                self.fire_due()
        finally:
            self.on_stop()
            for sock in list(self.sockets):
                self.drop_socket(sock)
            if self.auth is not None:
                self.auth.stop()
                self.auth = None

    def stop(self) -> None:
        """Ask the loop to end after the current turn."""
        self.running = False

    def serve_until_signalled(self) -> None:
        """run() until SIGTERM or SIGINT, which stop the loop: at once where a loop polls
        the wake-up pipe (wakeup_fd) beside its sockets, else within one wait step (at most
        200 ms); handlers are restored afterwards."""
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_fd = signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        old = {s: signal.signal(s, lambda *_: self.stop()) for s in (signal.SIGTERM, signal.SIGINT)}
        self.wakeup_fd = rfd                         # never drained: the loop ends instead
        try:
            self.run()
        finally:
            self.wakeup_fd = None
            signal.set_wakeup_fd(old_fd)
            for signum, handler in old.items():
                signal.signal(signum, handler)
            os.close(rfd)
            os.close(wfd)

    def on_start(self) -> None:
        """Hook: runs once before the first receive."""

    def on_stop(self) -> None:
        """Hook: runs once after the last receive."""

    def _turn_one(self) -> None:
        """One turn with a single socket (the kernel, a disk): block in its recv until a
        message arrives or the next timer is due, as a bare broker would -- one wait per
        message instead of a poll, an events check and a receive."""
        sock = next(iter(self.sockets))
        timers = self._timers                # _poll_timeout_ms, inline (once per message)
        while timers and timers[0].fn is None:
            heapq.heappop(timers)
        wait_ms = max(0, int((timers[0].deadline - self.now()) * 1000) + 1) if timers else 1000
        if self.auth is not None:
            wait_ms = min(wait_ms, ZAP_WAIT_MS)
            self._zap_countdown -= 1
            if self._zap_countdown <= 0:
                self._zap_countdown = ZAP_EVERY
                self._serve_zap()
        step = _STEP_MS[wait_ms] if wait_ms < _STEPS_CAP_MS else _WAIT_STEPS_MS[0]
        if self._rcvtimeo.get(sock) != step:
            sock.setsockopt(zmq.RCVTIMEO, step)
            self._rcvtimeo[sock] = step
        if not (self._recv_routed if self.sockets[sock] else self._recv_dealt)(sock, 0):
            self._zap_countdown = 0              # idle: admit waiting handshakes next turn

    def turn(self) -> None:
        """One turn of the loop: serve what arrived, or wait for it until the next timer.
        This one serves one socket (_turn_one: the kernel, a disk); a server of several
        brings its own (the pager's: pager_service/loop.py)."""
        self._turn_one()

    def _recv_routed(self, sock: Socket, flags: int) -> bool:
        """Receive and dispatch one message on a ROUTER (`flags` 0: wait up to its RCVTIMEO);
        False if none came.

        The cheapest pyzmq calls for it (about 0.6 us less per message than two zero-copy
        frames): the routing id as plain bytes -- a ROUTER's first frame always has more
        after it, so no RCVMORE is asked -- then the body as a Frame, whose `more` says
        whether the sender put more frames in (refused) and which carries the User-Id."""
        try:
            peer = sock.recv(flags)
            part = sock.recv(_NOBLOCK, copy=False)   # a message arrives whole: here already
        except zmq.Again:
            return False
        if part.more:
            self._refuse(sock, peer, None, Err.BADMSG,
                         f"expected one frame per message, got {1 + _skip_rest(sock, part)}")
        elif self.secure:
            try:
                got = part.get("User-Id")
            except zmq.ZMQError:                 # no authenticated key: no role either
                got = None
            self.on_frame(sock, peer, part.bytes, got if isinstance(got, str) else None)
        else:
            self.on_frame(sock, peer, part.bytes)
        return True

    def _recv_dealt(self, sock: Socket, flags: int) -> bool:
        """Receive and dispatch one message on a DEALER (as _recv_routed); False if none."""
        try:
            part = sock.recv(flags, copy=False)
        except zmq.Again:
            return False
        if part.more:
            self._refuse(sock, None, None, Err.BADMSG,
                         f"expected one frame per message, got {1 + _skip_rest(sock, part)}")
        else:
            self.on_frame(sock, None, part.bytes)
        return True

    def on_frame(self, sock: Socket, peer: bytes | None, frame: bytes,
                 user_id: str | None = None) -> None:
        """Decode one frame and route it: a reply to its pending request, a request to do_*.
        `user_id` is the sender's authenticated key (secure ROUTERs): a routing id keeps the
        key it first spoke with, and a message from another key on it is refused unread; so
        is a frame longer than max_frame_bytes (EMSGSIZE, before anything else)."""
        if len(frame) > self.max_frame_bytes:
            self._refuse(sock, peer, None, Err.MSGSIZE, f"message of {len(frame)} bytes exceeds "
                         f"the {self.name}'s {self.max_frame_bytes}-byte limit")
            return
        if user_id is not None and peer is not None:
            bound = self.peer_keys.setdefault(peer, user_id)
            if bound != user_id:
                self.refused_keys += 1
                self._refuse(sock, peer, None, Err.PERM, "this routing id belongs to another key")
                return
        try:
            msg = decode(frame)
        except ServiceError as exc:
            self._refuse(sock, peer, None, exc.code, exc.msg)
            return
        if "re" in msg:
            self._on_reply(sock, peer, msg)
            return
        try:
            op = check_request(msg)
        except ServiceError as exc:
            rid = msg.get("rid")
            self._refuse(sock, peer, rid if isinstance(rid, int) else None, exc.code, exc.msg)
            return
        handler = self.handlers.get(op)
        if handler is None:
            self._refuse(sock, peer, msg["rid"], Err.NOSYS, f"{self.name} does not serve {op}")
            return
        req = Request(sock, peer, msg["rid"], op, msg, None, len(frame), user_id)
        try:
            self.check_caller(req)
            result = handler(req)
        except ServiceError as exc:
            self.refuse_request(req, exc)
            return
        except Panic:
            raise
        except Exception as exc:  # a bug on odd input must not kill the service
            self.log.error("%s handler for %s failed:\n%s", self.name, op, traceback.format_exc())
            self.send(sock, peer, error(req.rid, Err.INVAL,
                                        f"{op} failed: {type(exc).__name__}: {exc}"))
            return
        if not isinstance(result, Suspend):
            self.send(sock, peer, ok(req.rid, **(result or {})))

    def _refuse(self, sock: Socket, peer: bytes | None, rid: int | None,
                code: Err, msg: str) -> None:
        self.bad_messages += 1
        self.send(sock, peer, error(rid, code, msg))

    def dispatch_table(self) -> dict[Op, Handler]:
        """Hook: which do_* handler serves each op (an op missing here gets ENOSYS)."""
        return {}

    def check_caller(self, req: Request) -> None:
        """Hook: resolve req.caller and raise ServiceError if the caller may not send req.op."""

    def refuse_request(self, req: Request, exc: ServiceError) -> None:
        """Hook: answer `req`, whose check_caller or handler raised `exc` (an error reply)."""
        self.send(req.sock, req.peer, error(req.rid, exc.code, exc.msg))

    # -- sending -------------------------------------------------------------------------
    def send(self, sock: Socket, peer: bytes | None, msg: dict[str, Any]) -> None:
        """Send one message to `peer` (ROUTER) or down the connection (DEALER)."""
        self.transport.send(sock, peer, self._encode(msg))  # peer gone, queue full: dropped

    def reply(self, req: Request, **fields: Any) -> None:
        """Answer a suspended request with success."""
        self.send(req.sock, req.peer, ok(req.rid, **fields))

    def fail(self, req: Request, code: Err, msg: str, **fields: Any) -> None:
        """Answer a suspended request with an error."""
        self.send(req.sock, req.peer, error(req.rid, code, msg, **fields))

    def request(self, sock: Socket, peer: bytes | None, op: Op, fields: dict[str, Any],
                callback: ReplyCallback, timeout_ms: float | None) -> int:
        """Send a request to a peer and return its rid; later run callback(rid, reply), or
        callback(rid, None) when `timeout_ms` passes first."""
        rid = next(self._rids)
        timer = None
        if timeout_ms is not None:
            timer = self.call_later(timeout_ms, lambda: self._expire(rid))
        self._pending[rid] = _Pending(rid, sock, peer, callback, timer)
        self.send(sock, peer, request(op, rid, **fields))
        return rid

    def forget(self, rid: int) -> None:
        """Drop a pending request: its reply, if it ever comes, is ignored."""
        pending = self._pending.pop(rid, None)
        if pending is not None and pending.timer is not None:
            pending.timer.cancel()

    def _expire(self, rid: int) -> None:
        """A request's timeout passed: run its callback with None (errors survived)."""
        pending = self._pending.pop(rid, None)
        if pending is not None:
            self._run_callback(pending.callback, rid, None)

    def _on_reply(self, sock: Socket, peer: bytes | None, msg: dict[str, Any]) -> None:
        rid = msg.get("re")
        pending = self._pending.get(rid) if isinstance(rid, int) else None
        if pending is None or pending.sock is not sock or pending.peer != peer:
            self.bad_messages += 1     # late, duplicate or forged reply: ignore it
            return
        del self._pending[pending.rid]
        if pending.timer is not None:
            pending.timer.cancel()
        self._run_callback(pending.callback, pending.rid, msg)

    def _run_callback(self, fn: Callable[..., None], *args: Any) -> None:
        """Run a timer or reply callback; an exception other than Panic is logged with its
        traceback and counted in callback_errors, and never ends the loop (a Panic does)."""
        try:
            fn(*args)
        except Panic:
            raise
        except Exception:  # a bug reached from a callback must not stop every service
            self.callback_errors += 1
            self.log.error("%s: callback %s failed:\n%s", self.name,
                           getattr(fn, "__qualname__", fn), traceback.format_exc())

    # -- timers --------------------------------------------------------------------------
    def call_later(self, delay_ms: float, fn: Callable[[], None]) -> Timer:
        """Run fn once, `delay_ms` from now, on the loop."""
        timer = Timer(self.now() + delay_ms / 1000.0, next(self._seq), fn)
        heapq.heappush(self._timers, timer)
        return timer

    def _poll_timeout_ms(self) -> int:
        """How long the loop may wait for a message: until the next timer (1 s if none)."""
        deadline = self.next_deadline()
        return 1000 if deadline is None else max(0, int((deadline - self.now()) * 1000) + 1)

    # -- driven by run(), or from outside (the simulator, in-process unit tests) ---------
    def next_deadline(self) -> float | None:
        """When the earliest live timer is due (clock seconds), or None if none is."""
        while self._timers and self._timers[0].fn is None:
            heapq.heappop(self._timers)
        return self._timers[0].deadline if self._timers else None

    def fire_due(self) -> None:
        """Run every timer due by the clock's now (what one loop turn does after receiving)."""
        now = self.now()
        while self._timers and self._timers[0].deadline <= now:
            timer = heapq.heappop(self._timers)
            fn, timer.fn = timer.fn, None
            if fn is not None:
                self._run_callback(fn)


def _skip_rest(sock: Socket, part: Any) -> int:
    """Receive and drop the rest of a message after `part` (which has more); how many."""
    n = 0
    while part.more:
        try:
            part = sock.recv(_NOBLOCK, copy=False)
        except zmq.Again:                        # (never: a message arrives whole)
            break
        n += 1
    return n


class _KeyCheck:
    """The ZAP credentials provider: asks the server's allow_key (pyzmq calls callback)."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def callback(self, domain: str, key: bytes) -> bool:
        """True if the server admits the z85 public key `key`."""
        allowed = self.server.allow_key(key.decode("ascii"))
        if not allowed:
            self.server.refused_keys += 1
            self.server.log.warning("%s: refused a connection with unknown key %s",
                                    self.server.name, key.decode("ascii"))
        return allowed
