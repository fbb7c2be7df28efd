"""The control thread: the process's half of the kernel's control connection.

Once ATTACHed, the control connection carries requests the other way round: the kernel asks
and the process answers, whatever the app's main thread is doing.

* SHOOTDOWN {vpn, frame, want[, more]}: the kernel takes a page (or several: ``more``) back.
  :meth:`Mmu.shootdown` drops the TLB entry and captures the page; the reply is {dirty, data}
  (and ``more``: one such answer per further page).
* KILL {reason}: acknowledge, say why on stderr, and leave at once (status 137).

The thread also sends HEARTBEAT {refs}: the reference record the MMU harvested since the
last hand-over, and the proof of life a process on another host is judged by (see
_heartbeat: only when a fault has not said as much lately), and it is the judge of the kernel's
liveness: when the kernel has answered nothing on either connection for KERNEL_DEAD_MS, it
declares the kernel dead (every syscall wait then fails), gives the main thread a moment to
leave with its error, and then ends the process itself -- a sealed process never outlives its
kernel.

The thread is the only user of its socket (ZeroMQ sockets are not thread-safe); the socket
was opened and attached by the main thread (:mod:`syscall`) before the thread started.
"""
from __future__ import annotations

import itertools
import os
import sys
import threading
import time
import traceback
from typing import Any

import zmq

from apps.runtime.mmu import DEFER_WAIT_S, Mmu
from apps.runtime.syscall import KERNEL_DEAD_MS, Liveness, Socket
from wire.protocol import (
    Err,
    Op,
    ServiceError,
    check_request,
    decode,
    encode,
    error,
    ok,
    request,
)

#: How often the thread looks whether a heartbeat is due.
HEARTBEAT_MS: int = 200
#: References go at the next look once the process has run this long (CPU time, all its
#: threads) since it last handed them over: a busy process hands them over every look ...
REFS_CPU_MS: int = HEARTBEAT_MS // 2
#: ... and a process starved of CPU (it still runs a little) once this long has passed.
REFS_STALE_MS: int = 1000
#: The kernel hears from the process at least this often: a heartbeat goes, with or without
#: references, when nothing else (a fault) has gone for this long (liveness: both sides wait
#: KERNEL_DEAD_MS / PROC_DEAD_MS, 10 s, before judging the other dead).
IDLE_HEARTBEAT_MS: int = 2000
#: The longest the thread sleeps in one poll: it wakes for a message, a look at whether a
#: heartbeat is due, or stop() (which writes to the thread's wake-up eventfd), not on a shorter
#: clock: with 256 processes a 50 ms slice woke 5,120 idle threads a second on the cores
#: the kernel needs.
POLL_SLICE_MS: int = HEARTBEAT_MS
#: Exit status after a KILL (as if by SIGKILL).
KILLED_STATUS: int = 137
#: Exit status when the kernel is dead (the same as an uncaught SealedError).
KERNEL_DEAD_STATUS: int = 3
#: How long the main thread gets to leave by itself once the kernel is declared dead.
DEAD_GRACE_S: float = 1.0
#: Time for a last reply to leave the socket before os._exit.
FLUSH_S: float = 0.05


def _leave(status: int, line: str) -> None:
    """Print `line` to stderr and end the process now, from any thread."""
    try:
        sys.stdout.flush()
    except Exception:
        pass
    print(line, file=sys.stderr, flush=True)
    os._exit(status)


class ControlThread(threading.Thread):
    """Serves SHOOTDOWN and KILL, sends HEARTBEATs, watches the kernel's liveness."""

    def __init__(self, sock: Socket, mmu: Mmu, liveness: Liveness, name: str) -> None:
        super().__init__(name=f"sealedos-control-{name}", daemon=True)
        self.sock = sock
        self.mmu = mmu
        self.liveness = liveness
        self.proc_name = name
        self._stop_event = threading.Event()
        self._wake_fd = os.eventfd(0)               # stop() ends the thread's poll at once
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(self._wake_fd, zmq.POLLIN)
        self._rids = itertools.count(1)
        self._refs_rid = 0              # rid of the newest heartbeat that carried refs
        self._sent_s = 0.0              # when the last heartbeat or fault went (monotonic)
        self._sent_cpu_s = 0.0          # the process's CPU time then (as seen by a tick)
        self.heartbeats = 0

    # -- life --------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until stop(); a bug here ends the process loudly (nobody else would
        answer the kernel's shootdowns)."""
        try:
            self._serve()
        except Exception:
            _leave(70, f"sealedos: {self.proc_name}: runtime control thread failed:\n"
                       f"{traceback.format_exc()}")
        finally:
            self.sock.close(0)

    def stop(self) -> None:
        """End the thread (at once: its poll wakes) and close its socket; then close the
        wake-up descriptor, unless the thread is still running (from itself, or stuck)."""
        if self._stop_event.is_set():
            return
        self._stop_event.set()
        os.eventfd_write(self._wake_fd, 1)
        if self.is_alive() and threading.current_thread() is not self:
            self.join(2.0)
        if not self.is_alive():
            os.close(self._wake_fd)

    def _serve(self) -> None:
        """The loop: heartbeat when due, answer what arrives, judge the kernel's liveness."""
        next_hb_s = time.monotonic()
        while not self._stop_event.is_set():
            now = time.monotonic()
            if now >= next_hb_s:
                self._heartbeat()
                next_hb_s = now + HEARTBEAT_MS / 1000.0
            wait_ms = max(0, min(POLL_SLICE_MS, int((next_hb_s - now) * 1000.0) + 1))
            if self.sock in dict(self._poller.poll(wait_ms)):
                self._drain()
            if self.liveness.silent_ms() > KERNEL_DEAD_MS:
                self._kernel_dead(f"no answer for {KERNEL_DEAD_MS // 1000} s")
                return

    def _drain(self) -> None:
        """Handle every message waiting on the socket."""
        while True:
            try:
                frame = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = decode(frame)
            except ServiceError:
                continue                 # not from a kernel we can talk to; ignore it
            self.liveness.heard()
            if "re" in msg:                  # a reply (it names the request it answers)
                self._on_reply(msg)
            else:
                self._on_request(msg)

    # -- heartbeats ----------------------------------------------------------------------
    def _heartbeat(self) -> None:
        """Send HEARTBEAT when it is due: with references once the process has run
        REFS_CPU_MS (CPU) or REFS_STALE_MS has passed since the last hand-over, and with or
        without them once IDLE_HEARTBEAT_MS has passed since anything went to the kernel.

        A FAULT hands the record over and is heard by the kernel as well as a heartbeat, so
        both clocks restart at a fault.  The references' clock is the process's CPU time
        because only a running process adds references: one busy on TLB hits hands them over
        every HEARTBEAT_MS as before, while hundreds of processes starved on two cores, each
        faulting every few hundred ms of the clock, no longer send a heartbeat for the one
        or two pages each touched between faults (at 128 processes there were 0.07
        heartbeats per fault, three in four of them idle ones from processes faulting all
        along: the idle clock did not restart at a fault)."""
        now, cpu = time.monotonic(), time.process_time()
        if self.mmu.refs_faulted_s > self._sent_s:          # a fault went since the last look
            self._sent_s, self._sent_cpu_s = self.mmu.refs_faulted_s, cpu
        idle = (now - self._sent_s) * 1000 >= IDLE_HEARTBEAT_MS
        refs_due = ((cpu - self._sent_cpu_s) * 1000 >= REFS_CPU_MS
                    or (now - self._sent_s) * 1000 >= REFS_STALE_MS)
        if not (idle or refs_due) or (now - self.mmu.refs_faulted_s) * 1000 < HEARTBEAT_MS:
            return                       # a fault handed the record over lately (and was heard)
        refs = self.mmu.harvest_refs()
        if not refs and not idle:
            return
        self._sent_s, self._sent_cpu_s = now, cpu
        rid = next(self._rids)
        if refs:
            self._refs_rid = rid
        self.sock.send(encode(request(Op.HEARTBEAT, rid, refs=refs)))
        self.heartbeats += 1

    def _on_reply(self, msg: dict[str, Any]) -> None:
        """A heartbeat's answer: refs applied; an error means we no longer exist for it."""
        rid = msg.get("re")
        if isinstance(rid, int) and rid >= self._refs_rid:
            self.mmu.heartbeat_answered()
        err = msg.get("err")
        if err == Err.KILLED:
            self._killed(str(msg.get("msg", "")))
        elif err in (Err.NOTREG, Err.PERM):
            # The kernel has reclaimed us (an integrity loss, a restart): the main thread
            # will meet its own error; make sure the process ends even if it does not.
            self._kernel_dead(f"the kernel no longer knows this process: {msg.get('msg', '')}")

    # -- the kernel's requests ------------------------------------------------------------
    def _on_request(self, msg: dict[str, Any]) -> None:
        """Answer SHOOTDOWN or KILL; anything else is refused."""
        rid = msg.get("rid") if isinstance(msg.get("rid"), int) else None
        try:
            op = check_request(msg)
            if op == Op.SHOOTDOWN:
                until = time.monotonic() + DEFER_WAIT_S      # one wait for all its pages
                answer = self.mmu.shootdown(msg["vpn"], msg["frame"], msg["want"], until)
                if "more" in msg:                # further pages in the same message
                    answer["more"] = self.mmu.shootdown_more(msg["more"], until)
                self._send(ok(rid, **answer))
            elif op == Op.KILL:
                self._send(ok(rid))
                self._killed(msg["reason"])
            else:
                raise ServiceError(Err.NOSYS, f"a sealed process does not serve {op}")
        except ServiceError as exc:
            self._send(error(rid, exc.code, exc.msg))
        except ValueError as exc:
            self._send(error(rid, Err.INVAL, str(exc)))

    def _send(self, msg: dict[str, Any]) -> None:
        """Send one message on the control connection (dropped if the kernel is gone)."""
        try:
            self.sock.send(encode(msg), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    # -- the end ---------------------------------------------------------------------------
    def _killed(self, reason: str) -> None:
        """The kernel stopped us: leave now."""
        time.sleep(FLUSH_S)              # let the KILL acknowledgement go out
        _leave(KILLED_STATUS, f"sealedos: killed by the kernel: {reason}")

    def _kernel_dead(self, reason: str) -> None:
        """Give up on the kernel: fail the syscalls, then end the process if it lingers."""
        self.liveness.declare_dead(reason)
        if self._stop_event.wait(DEAD_GRACE_S):
            return                       # the main thread is closing by itself
        _leave(KERNEL_DEAD_STATUS, f"sealedos: {self.proc_name}: the kernel is gone ({reason}); "
                                   f"exiting")
