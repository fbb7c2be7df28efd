"""The receive loop of a server with several sockets: the pager's (its kernel and disk links).

wire.server's own loop serves one socket -- the kernel's ROUTER, a disk's -- by blocking in
its recv.  The pager has two DEALERs and must wait on both.  zmq_poll can do that, safely but
bluntly: it asks ZMQ_EVENTS of every socket before and after each wait, and each EVENTS is a
poll(2) and a getpid(2) inside libzmq, so ~9 system calls per message (strace -c of the pager
under `sealedos bench paging`).  This loop waits in one poll(2) over the sockets' FDs and asks
EVENTS only of the sockets a turn touched.

The hard part: a ZeroMQ socket's FD is an edge, not a level.  It turns readable when a
command waits in the socket's mailbox (a message reached a pipe that had run dry), and any
call that processes the mailbox -- a recv, an EVENTS check, and a send too (libzmq does that
about once a millisecond) -- consumes the wake-up, whether or not the message was read.  So a
socket may hold messages while its FD stays quiet; poll(2) is safe only once every socket
operated on since an EVENTS check last found it empty has been asked again.  Those are
`_unsure`: after a drain, every other socket (its handlers may have sent on any), and the
drained one too if the batch ran out before it was empty; after a timer callback, every
socket; a socket whose FD fired.  Unsure sockets are asked in the order they became unsure,
so a flooded socket cannot starve the others.  tests/test_server_many.py drives this loop on
real sockets in the pager's shape: without the drain's rule it fails (a reply never read);
the timer's rule guards a race too narrow to be hit on every run.

Nothing here is trusted: the kernel and the disks run wire.server's one-socket loop.
"""
from __future__ import annotations

import select
from collections.abc import Callable
from typing import cast

import zmq

from wire.server import Server
from wire.sockets import Socket

#: How many messages one socket may deliver per turn before the others get a go.
DRAIN_BATCH: int = 64

_EVENTS: int = int(zmq.EVENTS)
_POLLIN: int = int(zmq.POLLIN)
_NOBLOCK: int = int(zmq.NOBLOCK)


class PollingServer(Server):
    """A Server whose turn waits on all of its sockets (and the ZAP socket, if it has one)."""

    #: poll(2) over the sockets' FDs and the wake-up pipe, built at the first turn ...
    _poll: select.poll | None = None
    #: ... its FDs' sockets (the pipe has none: a signal stops the loop) ...
    _fd_socks: dict[int, Socket]
    #: ... and the sockets that may hold messages their FD will not announce (in order).
    _unsure: dict[Socket, None]

    def turn(self) -> None:
        """Serve the first unsure socket that holds messages, or, once none does, wait in
        poll(2) until an FD fires or the next timer is due, and serve what fired."""
        poll = self._poll or self._watch()
        unsure = self._unsure
        zap = self.auth.zap_socket if self.auth is not None else None
        while unsure:
            sock = next(iter(unsure))
            if sock is zap:
                del unsure[sock]
                self._serve_zap()                # it asks EVENTS until the socket is empty
            elif sock in self.sockets and int(sock.getsockopt(_EVENTS)) & _POLLIN:
                self._serve(sock)
                return
            else:
                unsure.pop(sock, None)
        for fd, _ in poll.poll(self._poll_timeout_ms()):
            ready = self._fd_socks.get(fd)
            if ready is None:                    # the signal pipe: stop() has run
                continue
            if zap is not None and ready is zap:
                unsure[zap] = None               # (served next turn, before any wait)
            else:
                self._serve(ready)               # a recv, no EVENTS first: its FD fired

    def _serve(self, sock: Socket) -> None:
        """Drain `sock`; then every other socket is unsure (its handlers may have sent on
        any), and `sock` too, after the others, if the batch ran out first."""
        unsure = self._unsure
        unsure.pop(sock, None)
        emptied = self._drain(sock)
        unsure.update((s, None) for s in self.sockets if s is not sock)
        if not emptied:
            unsure[sock] = None

    def fire_due(self) -> None:
        """Run the due timers; their callbacks may send on any socket: all become unsure."""
        timers = self._timers
        if timers and timers[0].deadline <= self.now() and self._poll is not None:
            self._unsure.update(dict.fromkeys(self.sockets))
        super().fire_due()

    def _watch(self) -> select.poll:
        """Build the poll(2) set: every socket's FD, the ZAP socket's, the wake-up pipe;
        every socket starts unsure (the set of sockets is fixed while the loop runs)."""
        socks = list(self.sockets) + ([self.auth.zap_socket] if self.auth is not None else [])
        self._poll = select.poll()
        self._fd_socks = {int(s.getsockopt(zmq.FD)): s for s in socks}
        self._unsure = dict.fromkeys(socks)
        for fd in [*self._fd_socks, *([self.wakeup_fd] if self.wakeup_fd is not None else [])]:
            self._poll.register(fd, select.POLLIN)
        return self._poll

    def _drain(self, sock: Socket, batch: int = DRAIN_BATCH) -> bool:
        """Receive and dispatch up to `batch` messages waiting on `sock`; True if it stopped
        because none was left (an EVENTS check or a receive found it empty), False if the
        batch ran out first."""
        getopt = cast("Callable[[int], int]", sock.getsockopt)  # EVENTS: int
        receive = self._recv_routed if self.sockets[sock] else self._recv_dealt
        for i in range(batch):
            # EVENTS or the FD vouched for the first message; for the next ones asking EVENTS
            # is far cheaper than the zmq.Again exception a blind NOBLOCK recv raises.
            if i and not getopt(_EVENTS) & _POLLIN:
                return True
            if not receive(sock, _NOBLOCK):
                return True
        return False
