"""The supervisor's watchdog: notice a child service that is alive but hung.

A dead service is easy: its process exits and the supervisor (system.py) starts a new one.
A hung one -- stopped, deadlocked, spinning -- still exists, so someone has to decide it is
not coming back.  MINIX 3's reincarnation server does it by pinging its drivers; so does
this watchdog, with the heartbeat each kind of service already has:

* any service whose process has been *stopped* (SIGSTOP, a stopped job) for HUNG_MS is hung:
  nothing is going to continue it, and waiting for its heartbeat to lapse would only add
  to the outage (psutil sees the state directly, as it sees an exit);
* a **disk service** must answer PING; one that has answered nothing for HUNG_MS is hung;
* a **pager** has no socket of its own to ping: its heartbeat is its PAGER_HELLO to the
  kernel (every 500 ms).  The watchdog asks the kernel (PS, the pager slots alone) which
  pid serves each mirror slot and how long ago it said hello; an instance the kernel has
  not heard from for HUNG_MS -- or, for a new instance, not at all within STARTUP_MS of its
  start -- is hung.
  If the kernel does not answer, no pager is judged (a slow kernel is not a hung pager).

The kernel also kills a local pager whose request times out (pagers.py); that is faster
under load.  The watchdog covers the hangs no request exposes: a pager stopped before its
first hello or while idle, and any disk service (the kernel never talks to disks).

The watchdog only judges; the supervisor kills, and then restarts as for any death.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import zmq

from launcher import spawn
from wire.client import Client
from wire.keys import Keyring
from wire.protocol import Op, ServiceError, encode, request

if TYPE_CHECKING:
    from host_tools.system import Service

#: A service silent this long is hung (the kernel's PAGER_DEAD_MS, for pagers, is the same).
HUNG_MS: int = 3000
#: A new instance must be heard from within this long of its start (generous: a Python
#: process starting on a loaded machine takes seconds, and killing it would not help).
STARTUP_MS: int = 15000
#: How long one PING waits for its answer (the next check pings again).
PING_TIMEOUT_MS: int = 200
#: How long the kernel gets to answer PS.
KERNEL_TIMEOUT_MS: int = 1000


class Watchdog:
    """Decides which local pager and disk services are hung (see the module docstring)."""

    def __init__(self, rundir: Path, kernel_addr: str, keys: Keyring | None = None) -> None:
        """keys: the launcher's keyring (it talks to the kernel and to every disk); None
        on an insecure system."""
        self.rundir = rundir
        self.kernel_addr = kernel_addr
        self.keys = keys
        self.clients: dict[str, Client] = {}
        self.heard: dict[tuple[str, int], float] = {}   # (service, pid) -> last heard (monotonic)
        self.stopped: dict[tuple[str, int], float] = {}  # (service, pid) -> seen stopped since

    def hung(self, services: list[Service]) -> list[tuple[Service, str]]:
        """The services among `services` that are alive but hung, each with the reason."""
        now = time.monotonic()
        slots = self._pager_slots()
        out = []
        for svc in services:
            if svc.kind not in ("disk", "pager") or svc.proc.poll() is not None:
                continue
            key = (svc.name, svc.pid)
            if _is_stopped(svc.pid):
                since = self.stopped.setdefault(key, now)
                if (now - since) * 1000 > HUNG_MS:
                    out.append((svc, f"stopped for {int((now - since) * 1000)} ms"))
                continue
            self.stopped.pop(key, None)
            last = self.heard.get(key, svc.started[-1] + (STARTUP_MS - HUNG_MS) / 1000)
            if svc.kind == "disk":
                if self._ping(svc.name, svc.addr):
                    last = now
            elif slots is None:
                last = now                                # the kernel did not say: no verdict
            else:
                slot = slots.get(int(svc.name.removeprefix("pager")), {})
                if slot.get("hostpid") == svc.pid and slot.get("silent_ms") is not None:
                    last = max(last, now - slot["silent_ms"] / 1000)
            self.heard[key] = last
            silent_ms = int((now - last) * 1000)
            if silent_ms > HUNG_MS:
                what = "answered no ping" if svc.kind == "disk" else "said no hello to the kernel"
                out.append((svc, f"alive but {what} for {silent_ms} ms"))
        return out

    def _client(self, name: str, addr: str) -> Client:
        if name not in self.clients:
            self.clients[name] = Client(addr, keys=self.keys, server=name)
        return self.clients[name]

    def _ping(self, name: str, addr: str | None = None) -> bool:
        """Send a disk service one PING (at addr, default RUNDIR/NAME.sock); True if any answer
        (to this or an earlier one) came."""
        client = self._client(name, addr or spawn.ipc_addr(self.rundir, name))
        client.sock.send(encode(request(Op.PING, 0)))
        heard, wait_ms = False, PING_TIMEOUT_MS
        while client.sock.poll(wait_ms):
            client.sock.recv()
            heard, wait_ms = True, 0                      # drain whatever else is queued
        return heard

    def _pager_slots(self) -> dict[int, dict[str, Any]] | None:
        """The kernel's view of each mirror slot, or None if it did not answer in time."""
        client = self._client("kernel", self.kernel_addr)
        try:
            reply = client.call(Op.PS, timeout_ms=KERNEL_TIMEOUT_MS, processes=False)
        except (ServiceError, zmq.ZMQError):
            return None
        return {p["mirror"]: p for p in reply.get("pagers", [])}

    def close(self) -> None:
        """Close every connection the watchdog opened."""
        for client in self.clients.values():
            client.close()
        self.clients.clear()


def _is_stopped(pid: int) -> bool:
    """Is process `pid` stopped (by a signal or a tracer)?"""
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
    except psutil.Error:
        return False
