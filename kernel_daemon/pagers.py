"""The kernel's side of the external pagers: admission, liveness, retry, and mirroring.

Pagers are untrusted mechanism.  A pager instance joins a mirror slot by saying PAGER_HELLO
(again every HELLO interval: that is its heartbeat).  Every request the kernel sends it has a
timeout; a request that times out is retried, and the instance is suspected: a local hung
pager is killed so that its supervisor brings up a new one, and a new instance joining the
slot is handed every request still in flight on the old one.  A slot with no live instance
queues requests until one joins.  Nothing is lost: the kernel keeps a page-out's bytes until a
pager acknowledges the write (vm.py), and page-ins are simply asked again.

With several mirrors, a page-out goes to every mirror and a page-in reads from the first
mirror holding the page whose answer verifies; a mirror that answered wrongly, or not at all,
is repaired by writing it the verified ciphertext.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import psutil
import zmq

from kernel_daemon.protocol import Op
from kernel_daemon.seal import IntegrityError
from kernel_daemon.server import Server, Timer

#: A pager silent for this long is considered down until it says hello again.
PAGER_DEAD_MS: int = 3000
#: A mirror whose page-in failed is read last for this long (the healthy one serves at once).
BAD_MIRROR_MS: int = 10000

Done = Callable[[dict[str, Any] | None, str], None]      # (reply or None, failure text)


@dataclass(slots=True, eq=False)
class PagerOp:
    """One request to one mirror, with its retry count."""
    mirror: int
    op: Op
    fields: dict[str, Any]
    done: Done
    retries: int
    attempts: int = 0
    rid: int = 0
    timer: Timer | None = None


@dataclass(slots=True)
class PagerSlot:
    """One mirror slot: the current instance, if any, and the requests waiting on it."""
    mirror: int
    peer: bytes | None = None
    host: str = ""
    hostpid: int = 0
    up: bool = False
    last_hello: float = 0.0
    joins: int = 0
    bad_until: float = 0.0             # monotonic time until which reads prefer other mirrors
    inflight: dict[int, PagerOp] = field(default_factory=dict)
    backlog: list[PagerOp] = field(default_factory=list)

    def health(self) -> dict[str, Any]:
        """The slot as one map (stats, ps, top)."""
        return {"mirror": self.mirror, "up": self.up, "host": self.host,
                "hostpid": self.hostpid, "joins": self.joins, "inflight": len(self.inflight),
                "backlog": len(self.backlog),
                "silent_ms": int((time.monotonic() - self.last_hello) * 1000) if self.joins else None}


class Pagers:
    """Every mirror slot, and the sending, retrying and mirroring of pager requests."""

    def __init__(self, server: Server, sock: zmq.Socket, nmirrors: int, timeout_ms: int,
                 retries: int, host: str, stats: dict[str, Any]) -> None:
        self.server = server
        self.sock = sock
        self.slots = [PagerSlot(m) for m in range(nmirrors)]
        self.timeout_ms = timeout_ms
        self.retries = retries
        self.host = host
        self.stats = stats
        for key in ("pager_timeouts", "pager_restarts", "pager_kills", "pager_retries", "repairs"):
            stats.setdefault(key, 0)

    @property
    def nmirrors(self) -> int:
        """How many mirror slots there are."""
        return len(self.slots)

    def peers(self) -> set[bytes]:
        """The connections of the current pager instances."""
        return {s.peer for s in self.slots if s.peer is not None}

    # -- admission and liveness -------------------------------------------------------------
    def hello(self, peer: bytes, mirror: int, host: str, hostpid: int) -> None:
        """A pager instance says hello: admit it (a new one takes over the slot's requests)."""
        slot = self.slots[mirror]
        slot.last_hello = time.monotonic()
        slot.host, slot.hostpid = host, hostpid
        if slot.peer == peer:
            if not slot.up:
                slot.up = True
                self._flush(slot)
            return
        if slot.joins:
            self.stats["pager_restarts"] += 1
        slot.joins += 1
        slot.peer, slot.up = peer, True
        moved = list(slot.inflight.values())
        slot.inflight.clear()
        for pop in moved:                  # the old instance will never answer these
            self.server.forget(pop.rid)
            slot.backlog.append(pop)
        self._flush(slot)

    def check_liveness(self) -> None:
        """Mark silent instances down (their requests wait for a new hello)."""
        now = time.monotonic()
        for slot in self.slots:
            if slot.up and (now - slot.last_hello) * 1000 > PAGER_DEAD_MS:
                slot.up = False

    def _suspect(self, slot: PagerSlot) -> None:
        """A request timed out: a local instance that still exists is hung, so kill it."""
        slot.up = False
        if slot.host != self.host or slot.hostpid <= 0 or slot.hostpid == os.getpid():
            return
        try:
            proc = psutil.Process(slot.hostpid)
            if "pager" in " ".join(proc.cmdline()):
                proc.send_signal(signal.SIGKILL)
                self.stats["pager_kills"] += 1
        except psutil.Error:
            pass

    # -- sending ----------------------------------------------------------------------------
    def submit(self, mirror: int, op: Op, fields: dict[str, Any], done: Done,
               retries: int | None = None) -> None:
        """Send op to mirror's pager (now, or when one is up); done(reply, "") or (None, why).

        A timeout is retried `retries` times (default: the kernel's setting)."""
        self._send(PagerOp(mirror, op, fields, done,
                           retries=self.retries if retries is None else retries))

    def _send(self, pop: PagerOp) -> None:
        slot = self.slots[pop.mirror]
        if slot.peer is None or not slot.up:
            slot.backlog.append(pop)       # waits for an instance, but not forever
            pop.timer = self.server.call_later(self.timeout_ms, lambda: self._expire_backlog(pop))
            return
        pop.rid = self.server.request(self.sock, slot.peer, pop.op, pop.fields,
                                      lambda reply: self._on_reply(pop, reply), self.timeout_ms)
        slot.inflight[pop.rid] = pop

    def _flush(self, slot: PagerSlot) -> None:
        backlog, slot.backlog = slot.backlog, []
        for pop in backlog:
            if pop.timer is not None:
                pop.timer.cancel()
            self._send(pop)

    def _expire_backlog(self, pop: PagerOp) -> None:
        slot = self.slots[pop.mirror]
        if pop in slot.backlog:
            slot.backlog.remove(pop)
            self._timed_out(pop, suspect=False)

    def _on_reply(self, pop: PagerOp, reply: dict[str, Any] | None) -> None:
        slot = self.slots[pop.mirror]
        slot.inflight.pop(pop.rid, None)
        if reply is not None:
            pop.done(reply, "")
        else:
            self._timed_out(pop, suspect=slot.up)

    def _timed_out(self, pop: PagerOp, suspect: bool) -> None:
        """No answer in time: suspect the instance, then retry or give up."""
        self.stats["pager_timeouts"] += 1
        if suspect:
            self._suspect(self.slots[pop.mirror])
        pop.attempts += 1
        if pop.attempts > pop.retries:
            pop.done(None, f"pager {pop.mirror} did not answer {pop.op} "
                           f"({pop.attempts} tries of {self.timeout_ms} ms)")
            return
        self.stats["pager_retries"] += 1
        self._send(pop)

    # -- mirrored page I/O ----------------------------------------------------------------
    def page_out(self, handles: list[bytes], slot: int, data: bytes,
                 done: Callable[[int, str], None]) -> None:
        """Write one sealed page to every mirror; done(mask of mirrors that acknowledged, why)."""
        state = {"left": self.nmirrors, "mask": 0, "why": ""}

        def one(m: int) -> Done:
            def on(reply: dict[str, Any] | None, why: str) -> None:
                if reply is not None and "err" not in reply:
                    state["mask"] |= 1 << m
                else:
                    state["why"] = why or f"pager {m}: {reply.get('err')} {reply.get('msg')}"
                state["left"] -= 1
                if state["left"] == 0:
                    done(state["mask"], state["why"])
            return on

        for m in range(self.nmirrors):
            self.submit(m, Op.PAGE_OUT, {"handle": handles[m], "slot": slot, "data": data}, one(m))

    def page_in(self, handles: list[bytes], slot: int, mask: int, verify: Callable[[object], bytes],
                done: Callable[[bytes | None, list[tuple[int, str, str]]], None],
                repaired: Callable[[int], None],
                answered: Callable[[int, dict[str, Any]], None] | None = None) -> None:
        """Read a page from the first mirror whose answer verifies; then repair those that failed.

        done(plaintext or None, failures as (mirror, kind, text)) runs as soon as a verified copy
        (or none) is had; repaired(mask of mirrors rewritten) runs later, after the repair writes.
        A mirror with another behind it gets no retries: a timeout fails over at once.
        answered(mirror, reply), if given, sees every non-error answer before it is verified.
        """
        now = time.monotonic()
        order = sorted((m for m in range(self.nmirrors) if mask >> m & 1),
                       key=lambda m: (self.slots[m].bad_until > now, m))
        failures: list[tuple[int, str, str]] = []

        def attempt(i: int) -> None:
            if i == len(order):
                done(None, failures)
                return
            m = order[i]

            def on(reply: dict[str, Any] | None, why: str) -> None:
                self.slots[m].bad_until = time.monotonic() + BAD_MIRROR_MS / 1000
                if reply is None:
                    failures.append((m, "timeout", why))
                elif "err" in reply:
                    failures.append((m, "error", f"{reply.get('err')}: {reply.get('msg')}"))
                else:
                    if answered is not None:
                        answered(m, reply)
                    try:
                        plain = verify(reply.get("data"))
                    except IntegrityError as exc:
                        failures.append((m, exc.kind, str(exc)))
                    else:
                        self.slots[m].bad_until = 0.0
                        done(plain, failures)
                        self._repair(handles, slot, reply["data"], [f[0] for f in failures], repaired)
                        return
                attempt(i + 1)
            self.submit(m, Op.PAGE_IN, {"handle": handles[m], "slot": slot}, on,
                        retries=0 if i + 1 < len(order) else None)

        attempt(0)

    def _repair(self, handles: list[bytes], slot: int, sealed: bytes, bad: list[int],
                repaired: Callable[[int], None]) -> None:
        """Rewrite the verified ciphertext to the mirrors that failed; repaired(mask) after."""
        if not bad:
            return
        state = {"left": len(bad), "mask": 0}

        def one(m: int) -> Done:
            def on(reply: dict[str, Any] | None, why: str) -> None:
                if reply is not None and "err" not in reply:
                    state["mask"] |= 1 << m
                    self.stats["repairs"] += 1
                state["left"] -= 1
                if state["left"] == 0:
                    repaired(state["mask"])
            return on

        for m in bad:
            self.submit(m, Op.PAGE_OUT, {"handle": handles[m], "slot": slot, "data": sealed}, one(m))
