"""The kernel's side of the external pagers: admission, liveness, retry, and mirroring.

Pagers are untrusted mechanism.  A pager instance joins a mirror slot by saying PAGER_HELLO
(again every HELLO interval: that is its heartbeat).  Every request the kernel sends it has a
timeout; a request that times out is retried, and the instance is suspected: marked down,
and killed if the trusted launcher reported its host pid (a pid a pager claims is never acted
on; the supervisor's watchdog kills a hung one), and a new instance joining the
slot is handed every request still in flight on the old one.  A slot with no live instance
queues requests until one joins.  Nothing is lost: the kernel keeps a page-out's bytes until a
pager acknowledges the write (vm.py), and page-ins are simply asked again.

With several mirrors, a page-out goes to every mirror that is up and a page-in reads from
the first mirror holding the page whose answer verifies, trying mirrors that are up and
have not failed lately first; a mirror that answered wrongly, or not at all, is repaired by
writing it the verified ciphertext.  A mirror that is down is not waited for: page-outs
complete on the others, and when it comes back the kernel's resync (resync.py) copies it
every page it missed.

Retry budget (the hard part)
----------------------------
A request has a budget of (retries + 1) * timeout_ms from its first send, spent on three
kinds of failure alike: no answer in time (the instance may be dead or hung), a wait in the
backlog while its slot has no live instance, and a *transient* error reply (the pager is
alive but its disk service did not answer: ETIMEDOUT, EIO, EBUSY), which is sent again after
TRANSIENT_BACKOFF_MS.  At most PAGER_WINDOW requests are outstanding at one instance; the
rest wait in the slot's backlog, in order.  Without the window a new instance would be
handed everything that queued up during an outage at once, the requests at the end of that
burst would time out behind the ones before them, and their retries would make the burst
bigger.  Overload is not failure: a request waiting behind a live instance's full window is
queued in the kernel and spends no budget, and a request that times out at an instance that
is still answering, but has answered nothing sent after it, is behind a queue, not withheld:
its budget is extended and the instance is not suspected.  An instance that answers later
requests but not this one (a withholding pager: drop, stall) or answers nothing (hung, dead)
is suspected.  With the defaults (2000 ms, 5 retries) that is 12 s, several times
what it takes the supervisor to notice a dead or hung pager or disk and start a new one (well
under 2 s), so a restart costs apps latency, never an error.  A request with retries=0 (a
mirrored page-in with another mirror behind it, a mirrored page-out) gets exactly one
attempt: its caller has a better option than waiting.  The pager's own disk timeout is
shorter than the kernel's pager timeout (pager.py), so a dead disk shows up here as a
transient error from a live pager, and the kernel does not kill a healthy pager for it.

Clustered page-outs
-------------------
Page-outs are not sent at once but at the end of the loop's turn, and up to cluster_pages
PAGE_OUTs waiting together at the head of a backlog go in one request (the first page in its
own fields, the others in `more`; wire/protocol.py).  Everything else stays per page: each
page is sealed on its own (its version, tag and slot), is its own PagerOp with its own
budget, and its own answer (_per_page) goes through the single-page path (_settle): an ack,
a transient error retried, EBADHANDLE re-OPENed, a timeout suspected and retried.  So a
pager that acks some pages of a batch and not others, answers for other slots, in another
order, or withholds the batch costs only those pages' write-backs; a `more` that is not one
map per page naming its page's slot is a wrong answer for every page of the batch.  An ack
is a claim, as for one page: a pager that acks and does not store is caught by the seal on
the page-in.  Mirrored and erasure-coded page-outs, repairs and the resync all go through
write_all, so each mirror's pages are clustered the same way.
"""
from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from kernel_daemon.hostproc import kill_if_same, same_process
from kernel_daemon.pagetable import SwapSpace
from kernel_daemon.seal import IntegrityError
from kernel_daemon.stats import KernelStats
from wire.protocol import Err, Op
from wire.server import Server

#: A pager silent for this long is considered down until it says hello again.
PAGER_DEAD_MS: int = 3000
#: A mirror whose page-in failed is read last for this long (the healthy one serves at once).
BAD_MIRROR_MS: int = 10000
#: Error codes a live pager answers when its disk service is down or restarting: retried.
TRANSIENT_ERRORS: frozenset[str] = frozenset({"ETIMEDOUT", "EIO", "EBUSY"})
#: How often requests waiting in a backlog are checked against their budget.
SWEEP_MS: int = 200
#: Wait before re-sending a request that got a transient error reply.
TRANSIENT_BACKOFF_MS: int = 100
#: Most requests outstanding at one pager instance; the rest wait in the backlog.
PAGER_WINDOW: int = 32
#: Most pages one PAGE_OUT request carries (the kernel's --cluster; 1: one page a request),
#: and the most --cluster may ask for (a pager takes up to 128: pager_service/pager.py).
CLUSTER_PAGES: int = 16
MAX_CLUSTER_PAGES: int = 64
#: Requests whose EBADHANDLE answer makes the kernel re-OPEN the handle and ask again.
REOPEN_OPS: frozenset[Op] = frozenset({Op.PAGE_IN, Op.PAGE_OUT})
#: How soon a CLOSE that could not reach its disk is asked again.
CLOSE_RETRY_MS: int = 1000

Done = Callable[[dict[str, Any] | None, str], None]      # (reply or None, failure text)
#: A verified read: (plaintext or None, the verified ciphertext or b"", failures as
#: (mirror, check kind, text)).
ReadDone = Callable[[bytes | None, bytes, list[tuple[int, str, str]]], None]
#: After repair writes: (mask of mirrors rewritten, mask of those that could not be).
Repaired = Callable[[int, int], None]


@dataclass(slots=True)
class FanIn:
    """A countdown for fan-in: then() runs when the last of `left` answers is in."""
    left: int
    then: Callable[[], None]

    def one(self) -> None:
        """One more answer is in."""
        self.left -= 1
        if self.left == 0:
            self.then()


@dataclass(slots=True, eq=False)
class PagerOp:
    """One request to one mirror, with its retry budget (see the module docstring)."""
    mirror: int
    op: Op
    fields: dict[str, Any]
    done: Done
    retries: int
    first_s: float = 0.0               # monotonic time of the first send
    sent_s: float = 0.0                # monotonic time of the latest send to an instance
    deadline_s: float = 0.0            # past this, a failure is final
    attempts: int = 0
    rid: int = 0
    reopened: bool = False             # EBADHANDLE made us re-OPEN its handle once already


@dataclass(slots=True)
class PagerSlot:
    """One mirror slot: the current instance, if any, and the requests waiting on it."""
    mirror: int
    peer: bytes | None = None
    host: str = ""                     # as the instance claims: shown, never acted on
    hostpid: int = 0                   # as the instance claims: shown, never acted on
    trusted_pid: int = 0               # the instance's host pid as the trusted launcher reports it
    trusted_started: float = 0.0       # ... and its start time (the same process?)
    up: bool = False
    last_hello: float = 0.0
    joins: int = 0
    bad_until: float = 0.0             # monotonic time until which reads prefer other mirrors
    last_answer_s: float = 0.0         # when the current instance last answered anything
    answered_sent_s: float = 0.0       # latest send time among the requests it answered
    down_since: float = 0.0            # when the slot last lost its instance
    pump_due: bool = False             # page-outs wait for the end of the turn (clustering)
    inflight: dict[int, list[PagerOp]] = field(default_factory=dict)   # rid -> its pages
    backlog: deque[PagerOp] = field(default_factory=deque)

    def health(self, now_s: float) -> dict[str, Any]:
        """The slot as one map (stats, ps, top); `now_s`: the kernel's clock."""
        return {"mirror": self.mirror, "up": self.up, "host": self.host, "joins": self.joins,
                "hostpid": self.hostpid, "inflight": len(self.inflight),
                "backlog": len(self.backlog), "launched": [self.trusted_pid, self.trusted_started],
                "silent_ms": int((now_s - self.last_hello) * 1000) if self.joins else None}


class Pagers:
    """Every mirror slot, and the sending, retrying and mirroring of pager requests."""

    def __init__(self, server: Server, sock: zmq.Socket[bytes], nmirrors: int, timeout_ms: int,
                 retries: int, host: str, stats: KernelStats,
                 cluster_pages: int = CLUSTER_PAGES) -> None:
        self.server = server
        self.sock = sock
        self.slots = [PagerSlot(m) for m in range(nmirrors)]
        self.timeout_ms = timeout_ms
        self.retries = retries
        self.cluster_pages = max(1, min(cluster_pages, MAX_CLUSTER_PAGES))
        self.host = host
        self.stats = stats
        #: Called with a mirror number when an instance joins or a silent one is heard again.
        self.on_up: Callable[[int], None] | None = None
        #: Kernel-minted disk handles in use, with their labels (what a re-OPEN sends) ...
        self.labels: dict[bytes, str] = {}
        #: ... and, per mirror, those its current instance answered OPEN for with success ...
        self.opened: list[set[bytes]] = [set() for _ in range(nmirrors)]
        #: ... and those any instance ever did (an OPEN of one, sent after, answered `created`
        #: means the disk lost it: a wiped or new device file); on_lost(mirror, handle) hears.
        self.made: list[set[bytes]] = [set() for _ in range(nmirrors)]
        self.on_lost: Callable[[int, bytes], None] = lambda mirror, handle: None
        #: Extra fields of every OPEN (erasure coding: the fragment record's block_size).
        self.open_fields: dict[str, int] = {}
        server.call_later(SWEEP_MS, self._sweep)

    @property
    def nmirrors(self) -> int:
        """How many mirror slots there are."""
        return len(self.slots)

    def worth_asking(self, mirror: int) -> bool:
        """Should a request wait for this mirror?  Yes if it is up, or if no mirror is up
        (then every request must wait for one); a down mirror beside an up one is skipped."""
        return self.slots[mirror].up or not any(s.up for s in self.slots)

    # -- admission and liveness -------------------------------------------------------------
    def holder(self, peer: bytes) -> int | None:
        """The mirror slot connection `peer` holds, if any (one connection, one slot)."""
        return next((s.mirror for s in self.slots if s.peer == peer), None)

    def report_instance_pid(self, mirror: int, pid: int, started: float) -> None:
        """The trusted launcher (PAGER_INSTANCE) says it started host process `pid` at
        `started` for slot `mirror`: from then on its exit is noticed at once and a hung one
        is SIGKILLed -- that very process, checked by pid and start time (hostproc.py)."""
        slot = self.slots[mirror]
        slot.trusted_pid, slot.trusted_started = pid, started

    def hello(self, peer: bytes, mirror: int, host: str, hostpid: int) -> None:
        """A pager instance says hello: admit it (a new one takes over the slot's requests).
        host and hostpid are what it claims: recorded for display, never acted on."""
        slot = self.slots[mirror]
        slot.last_hello = self.server.now()
        slot.host, slot.hostpid = host, hostpid
        if slot.peer == peer:
            if not slot.up:
                slot.up = True
                self._pump(slot)
                if self.on_up is not None:
                    self.on_up(mirror)   # it may have missed page-outs
            return
        if slot.joins:
            self.stats.pager_restarts += 1
        self.opened[mirror].clear()        # what the old instance said it opened: re-validate
        slot.joins += 1
        slot.peer, slot.up = peer, True
        slot.last_answer_s = slot.answered_sent_s = 0.0
        self._requeue(slot, [p for ps in slot.inflight.values() for p in ps])  # never answered
        self._pump(slot)
        if self.on_up is not None:
            self.on_up(mirror)

    def check_liveness(self) -> None:
        """Mark silent instances down (their requests wait for a new hello), and notice at
        once a local instance whose process has exited (no need to wait for timeouts)."""
        now = self.server.now()
        for slot in self.slots:
            if not slot.up:
                continue
            if self._is_local(slot) and \
                    same_process(slot.trusted_pid, slot.trusted_started) is None:
                self._instance_gone(slot)
            elif (now - slot.last_hello) * 1000 > PAGER_DEAD_MS:
                self._mark_down(slot)

    def _mark_down(self, slot: PagerSlot) -> None:
        """The slot has no live instance (from now on its backlog spends its budget)."""
        if slot.up:
            slot.up = False
            slot.down_since = self.server.now()

    def _slow_not_hung(self, slot: PagerSlot, pop: PagerOp) -> bool:
        """pop got no answer in time: is its instance merely slow?  Yes if it answered
        something within the last timeout but nothing sent after pop: it works through its
        queue in order and has not reached pop yet.  An instance that answers later requests
        and not pop (a withholding pager: drop, stall), or answers nothing (hung, dead), is
        suspected as before."""
        return slot.up and pop.retries > 0 and slot.answered_sent_s <= pop.sent_s and \
            (self.server.now() - slot.last_answer_s) * 1000 < self.timeout_ms

    def _is_local(self, slot: PagerSlot) -> bool:
        """Does the slot's instance run on this host (so its pid means something here)?"""
        return slot.trusted_pid > 0 and slot.trusted_pid != self.server.pid

    def _suspect(self, slot: PagerSlot) -> None:
        """A request timed out: a local instance that still exists is hung, so kill it."""
        self._mark_down(slot)
        if self._is_local(slot) and kill_if_same(slot.trusted_pid, slot.trusted_started):
            self.stats.pager_kills += 1
            self._instance_gone(slot)

    def _instance_gone(self, slot: PagerSlot) -> None:
        """The slot's instance is dead: mark the slot down; a request that has somewhere
        better to go (one attempt: another mirror) fails over now, every other one waits in
        the backlog for the next instance, keeping its budget."""
        self._mark_down(slot)
        moved = [pop for pops in slot.inflight.values() for pop in pops]
        self._requeue(slot, [pop for pop in moved if pop.retries > 0])
        for pop in moved:
            if pop.retries == 0:
                pop.attempts += 1
                pop.done(None, f"pager {pop.mirror} died with {pop.op} in flight")

    def _requeue(self, slot: PagerSlot, pops: list[PagerOp]) -> None:
        """Take every request off the slot's old instance; put `pops` back at the head of the
        backlog, in the order they were sent (the others the caller settles)."""
        for rid in slot.inflight:
            self.server.forget(rid)
        slot.inflight.clear()
        for pop in reversed(pops):
            slot.backlog.appendleft(pop)

    # -- kernel-minted disk handles ---------------------------------------------------------
    def is_open(self, mirror: int, handle: bytes) -> bool:
        """Has mirror's current instance acknowledged an OPEN of `handle`?"""
        return handle in self.opened[mirror]

    def open(self, mirror: int, handle: bytes, label: str, done: Done,
             retries: int | None = None) -> None:
        """OPEN the kernel-minted `handle` on mirror's disk (idempotent there); on success
        mark it open for the current instance; then done(reply, why)."""
        self.labels[handle] = label
        # `created` means lost only if the disk had acknowledged the handle before this OPEN
        # was sent (`known`): an earlier OPEN's `created`, answered late, behind the answers
        # to later OPENs, is no loss (sim seed 17691446: an honest single pager's page stopped).
        joins, known = self.slots[mirror].joins, handle in self.made[mirror]

        def on(reply: dict[str, Any] | None, why: str) -> None:
            if handle not in self.labels:
                # Closed while this OPEN was on its way: it may have landed after the CLOSE
                # and made the handle again (a retried or late OPEN), so close it once more.
                self.submit(mirror, Op.CLOSE, {"handle": handle}, _ignore)
            elif reply is not None and "err" not in reply:
                if reply.get("created") and known:
                    # The disk lost it (and likely every other handle: a wiped disk), so
                    # each is re-OPENed before use there.
                    self.stats.handles_lost += 1
                    self.opened[mirror].clear()
                    self.on_lost(mirror, handle)
                self.made[mirror].add(handle)
                if self.slots[mirror].joins == joins:
                    self.opened[mirror].add(handle)
            done(reply, why)
        self.submit(mirror, Op.OPEN, {"handle": handle, "label": label, **self.open_fields}, on,
                    retries=retries)

    def forget(self, mirror: int, handle: bytes) -> None:
        """`handle` is being closed: drop its marks; it is never re-OPENed after this."""
        self.opened[mirror].discard(handle)
        self.made[mirror].discard(handle)
        self.labels.pop(handle, None)

    def with_handles(self, space: SwapSpace, then: Callable[[list[bytes]], None]) -> None:
        """Run then(space's disk handle per mirror) once every mirror worth asking has
        answered an OPEN of it (a mirror down while another is up is skipped: the resync
        fills it in when it returns).

        The kernel mints each handle (SwapSpace.handle) and OPEN carries it; the pager's
        answer tells only ok or error, so every mirror gets its handle, opened or not: an
        OPEN that did not get through (a pager that died or lied) shows as EBADHANDLE on the
        READ/WRITE, which opens it again and retries (_reopen).  Withholding it would make a
        page whose OPEN timed out look lost ("no mirror holds the page": sim seed 13)."""
        handles = [space.handle(m) for m in range(self.nmirrors)]
        missing = [m for m in range(self.nmirrors)
                   if not self.is_open(m, handles[m]) and self.worth_asking(m)]
        if not missing:
            then(handles)
            return

        def all_answered() -> None:
            then(handles)
            self.maybe_close(space)
        fan = FanIn(len(missing), all_answered)
        retries = 0 if self.nmirrors > 1 else None   # mirrored: do not wait on one's restart
        for m in missing:
            self.open(m, handles[m], space.label[:32], lambda r, w: fan.one(), retries=retries)

    def free_slots(self, space: SwapSpace, slots: list[int]) -> None:
        """Tell every mirror to free these swap blocks of `space`; close it if now unused."""
        for m, handle in space.handles.items():
            for i in range(0, len(slots), 1024):
                self.submit(m, Op.FREE, {"handle": handle, "slots": slots[i:i + 1024]},
                            _ignore, retries=1)
        self.maybe_close(space)

    def maybe_close(self, space: SwapSpace) -> None:
        """Close a space's disk handles once its process is gone and no page lives in it."""
        if space.owner_alive or space.pages:
            return
        for m, handle in space.handles.items():
            self.forget(m, handle)
            self.close_handle(m, handle)
        space.handles.clear()

    def close_handle(self, mirror: int, handle: bytes) -> None:
        """Close a disk handle on a mirror, however long that mirror is away: a CLOSE whose
        budget runs out (the mirror down or failing for long) is asked again after
        CLOSE_RETRY_MS, else the handle's blocks would stay allocated on that disk forever.
        EBADHANDLE means the disk no longer knows it: closed (a lost answer's retry)."""
        def closed(reply: dict[str, Any] | None, why: str) -> None:
            if reply is None or reply.get("err") not in (None, Err.BADHANDLE):
                self.server.call_later(CLOSE_RETRY_MS, lambda: self.close_handle(mirror, handle))
        self.submit(mirror, Op.CLOSE, {"handle": handle}, closed)

    def _reopen(self, pop: PagerOp, reply: dict[str, Any]) -> None:
        """pop was answered EBADHANDLE: its handle was never really opened on this mirror
        (a pager lied about OPEN, or the disk lost it).  Drop the mark, OPEN it again and
        resend pop; if that fails, pop fails with the original answer."""
        handle: bytes = pop.fields["handle"]
        self.opened[pop.mirror].discard(handle)
        pop.reopened = True
        self.stats.handle_reopens += 1

        def on(open_reply: dict[str, Any] | None, why: str) -> None:
            if open_reply is not None and "err" not in open_reply:
                self._send(pop)
            else:
                pop.done(reply, "")
        self.open(pop.mirror, handle, self.labels.get(handle, ""), on,
                  retries=pop.retries)

    # -- sending ----------------------------------------------------------------------------
    def submit(self, mirror: int, op: Op, fields: dict[str, Any], done: Done,
               retries: int | None = None) -> None:
        """Send op to mirror's pager (now, or when one is up); done(reply, "") or (None, why).

        Failures are retried within a budget of (retries + 1) timeouts (default retries: the
        kernel's setting); retries=0 means one attempt."""
        retries = self.retries if retries is None else retries
        now = self.server.now()
        self._send(PagerOp(mirror, op, fields, done, retries, first_s=now,
                           deadline_s=now + (retries + 1) * self.timeout_ms / 1000))

    def _send(self, pop: PagerOp) -> None:
        """Queue pop at the tail of its slot's backlog and send what the window allows (a
        page-out at the end of the turn, with the others queued by then: clustered)."""
        slot = self.slots[pop.mirror]
        slot.backlog.append(pop)
        if pop.op is not Op.PAGE_OUT or self.cluster_pages == 1:
            self._pump(slot)
        elif not slot.pump_due:
            slot.pump_due = True
            self.server.call_later(0, functools.partial(self._pump, slot, True))

    def _pump(self, slot: PagerSlot, due: bool = False) -> None:
        """Send backlog requests, oldest first, while the slot has a live instance with room
        in its window; PAGE_OUTs together at the head go as one request.  While page-outs
        wait for the end of the turn, everything does (`due`: it is the end)."""
        if slot.pump_due and not due:
            return
        slot.pump_due = False
        while slot.up and slot.peer is not None and slot.backlog \
                and len(slot.inflight) < PAGER_WINDOW:
            pops = [slot.backlog.popleft()]
            while pops[0].op is Op.PAGE_OUT and slot.backlog and len(pops) < self.cluster_pages \
                    and slot.backlog[0].op is Op.PAGE_OUT:
                pops.append(slot.backlog.popleft())
            fields = pops[0].fields if len(pops) == 1 else dict(pops[0].fields, more=[
                [p.fields["handle"], p.fields["slot"], p.fields["data"]] for p in pops[1:]])
            rid = self.server.request(self.sock, slot.peer, pops[0].op, fields,
                                      functools.partial(self._on_reply, pops), self.timeout_ms)
            now = self.server.now()
            for pop in pops:
                pop.sent_s, pop.rid = now, rid
            slot.inflight[rid] = pops
            self.stats.page_out_requests += pops[0].op is Op.PAGE_OUT

    def _sweep(self) -> None:
        """Every SWEEP_MS: fail backlog requests whose budget ran out while their slot had no
        live instance.  A request waiting behind a live instance's full window is queued in
        the kernel, not withheld by the pager, so it waits (a hung instance is found by the
        timeouts of the requests it does hold).  One pass, no timer per request: under
        overload a backlog holds thousands."""
        now = self.server.now()
        for slot in self.slots:
            if slot.up or not slot.backlog:
                continue
            expired = [pop for pop in slot.backlog if self._budget_end(slot, pop) <= now]
            if not expired:
                continue
            slot.backlog = deque(pop for pop in slot.backlog if self._budget_end(slot, pop) > now)
            for pop in expired:
                self.stats.pager_timeouts += 1
                pop.attempts += 1
                pop.done(None, f"pager {pop.mirror} was not there for {pop.op} "
                               f"({int((now - pop.first_s) * 1000)} ms)")
        self.server.call_later(SWEEP_MS, self._sweep)

    def _budget_end(self, slot: PagerSlot, pop: PagerOp) -> float:
        """When a backlog request's budget runs out: its own deadline, or a full budget
        counted from when its slot went down, whichever is later."""
        return max(pop.deadline_s, slot.down_since + (pop.retries + 1) * self.timeout_ms / 1000)

    def _on_reply(self, pops: list[PagerOp], rid: int, reply: dict[str, Any] | None) -> None:
        """A request's answer (None: none in time): settle each of its pages on its own."""
        slot = self.slots[pops[0].mirror]
        if slot.inflight.pop(rid, None) is None:
            return                         # requeued meanwhile (the instance was replaced)
        for pop, answer in zip(pops, _per_page(pops, reply), strict=True):
            self._settle(slot, pop, answer)
        self._pump(slot)                   # its window has room again

    def _settle(self, slot: PagerSlot, pop: PagerOp, reply: dict[str, Any] | None) -> None:
        """One page's (or request's) answer: done, or retried, re-OPENed, suspected."""
        if reply is None:                  # no answer in time: suspect the instance ...
            self.stats.pager_timeouts += 1
            if self._slow_not_hung(slot, pop):   # ... unless it is only slow: overloaded
                pop.deadline_s = max(pop.deadline_s, self.server.now() + self.timeout_ms / 1000)
                self.stats.pager_slow += 1
            elif slot.up:
                self._suspect(slot)
            self._failed(pop, None, 0)
        elif isinstance(err := reply.get("err"), str) and err in TRANSIENT_ERRORS \
                and pop.retries > 0:
            self.stats.pager_transient_errors += 1      # alive, but its disk is not
            self._failed(pop, reply, TRANSIENT_BACKOFF_MS)
        elif reply.get("err") == Err.BADHANDLE and pop.op in REOPEN_OPS and not pop.reopened \
                and pop.fields.get("handle") in self.labels:
            slot.last_answer_s = self.server.now()
            self._reopen(pop, reply)
        else:
            slot.last_answer_s = self.server.now()
            slot.answered_sent_s = max(slot.answered_sent_s, pop.sent_s)
            pop.done(reply, "")

    def _failed(self, pop: PagerOp, reply: dict[str, Any] | None, backoff_ms: int) -> None:
        """An attempt failed (reply None: no answer; else a transient error reply): send it
        again after backoff_ms while the budget lasts, else report the failure."""
        pop.attempts += 1
        now = self.server.now()
        if pop.retries == 0 or now + backoff_ms / 1000 >= pop.deadline_s:
            spent_ms = int((now - pop.first_s) * 1000)
            why = (f"pager {pop.mirror} did not answer {pop.op} ({pop.attempts} tries in "
                   f"{spent_ms} ms)" if reply is None else "")
            pop.done(reply, why)
            return
        self.stats.pager_retries += 1
        if backoff_ms:
            self.server.call_later(backoff_ms, lambda: self._send(pop))
        else:
            self._send(pop)

    # -- mirrored page I/O ----------------------------------------------------------------
    def page_out(self, handles: list[bytes], slot: int, data: bytes,
                 done: Callable[[int, str], None]) -> None:
        """Write one sealed page to the mirrors worth asking (see worth_asking); done(mask of
        mirrors that acknowledged, why).  With several targets each gets one attempt: a
        mirror that misses the write is brought up to date by the resync."""
        targets = [m for m in range(self.nmirrors) if self.worth_asking(m)]
        self.write_all(targets, lambda m: {"handle": handles[m], "slot": slot, "data": data},
                       done, retries=0 if len(targets) > 1 else None)

    def write_all(self, targets: list[int], fields: Callable[[int], dict[str, Any]],
                  done: Callable[[int, str], None], retries: int | None = None) -> None:
        """PAGE_OUT fields(m) to every mirror m in `targets` (the one fan-in of page-outs:
        mirrored, erasure-coded, repairs, resync); done(mask of those that acknowledged, why
        the last failure) once every one has answered or given up."""
        if not targets:
            done(0, "no pager is worth asking for this page")
            return
        acked: list[int] = []
        failed: list[str] = []
        fan = FanIn(len(targets), lambda: done(sum(1 << m for m in acked),
                                               failed[-1] if failed else ""))
        for target in targets:
            def on(reply: dict[str, Any] | None, why: str, m: int = target) -> None:
                if reply is not None and "err" not in reply:
                    acked.append(m)
                else:
                    failed.append(why or (f"pager {m}: {reply.get('err')} {reply.get('msg')}"
                                          if reply is not None else f"pager {m}: no answer"))
                fan.one()
            self.submit(target, Op.PAGE_OUT, fields(target), on, retries=retries)

    def page_in(self, handles: list[bytes], slot: int, mask: int,
                verify: Callable[[object], bytes], done: ReadDone, repaired: Repaired,
                answered: Callable[[int, dict[str, Any]], None] | None = None) -> None:
        """Read a page from the first mirror whose answer verifies; then repair those that
        failed.

        done(plaintext, ciphertext, failures) runs as soon as a verified copy (or none:
        done(None, b"", failures)) is had; repaired(mask of mirrors rewritten, 0) runs later,
        after the repair writes.  A mirror with another behind it gets no retries: a timeout
        fails over at once.  answered(mirror, reply), if given, sees every non-error answer
        before it is verified."""
        now = self.server.now()
        order = [0] if mask == 1 and self.nmirrors == 1 else sorted(    # (one mirror: no sort)
            (m for m in range(self.nmirrors) if mask >> m & 1),
            key=lambda m: (not self.slots[m].up, self.slots[m].bad_until > now, m))
        failures: list[tuple[int, str, str]] = []

        def attempt(i: int) -> None:
            if i == len(order):
                done(None, b"", failures)
                return
            m = order[i]

            def on(reply: dict[str, Any] | None, why: str) -> None:
                self.slots[m].bad_until = self.server.now() + BAD_MIRROR_MS / 1000
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
                        done(plain, reply["data"], failures)
                        self._repair(handles, slot, reply["data"], [f[0] for f in failures],
                                     repaired)
                        return
                attempt(i + 1)
            self.submit(m, Op.PAGE_IN, {"handle": handles[m], "slot": slot}, on,
                        retries=0 if i + 1 < len(order) else None)

        attempt(0)

    def _repair(self, handles: list[bytes], slot: int, sealed: bytes, bad: list[int],
                repaired: Repaired) -> None:
        """Rewrite the verified ciphertext to the mirrors that failed; repaired(mask, 0)
        after (a mirror whose rewrite failed keeps its bit: it is tried, and fails over,
        again)."""
        if not bad:
            return

        def written(mask: int, why: str) -> None:
            self.stats.repairs += mask.bit_count()
            repaired(mask, 0)
        self.write_all(bad, lambda m: {"handle": handles[m], "slot": slot, "data": sealed}, written)


def _ignore(reply: dict[str, Any] | None, why: str) -> None:
    """A pager answer nobody waits for."""


def _per_page(pops: list[PagerOp], reply: dict[str, Any] | None) -> list[dict[str, Any] | None]:
    """Each page's own answer in the reply to a clustered PAGE_OUT (wire/protocol.py): the
    reply's own fields for the first page, `more` for the others, each naming its page's
    slot (one that names another is a wrong answer for that page).  An error reply without
    `more` is every page's; a `more` that is not one map per further page is a wrong answer
    for every page."""
    if len(pops) == 1 or reply is None or ("err" in reply and "more" not in reply):
        return [reply] * len(pops)
    more = reply.get("more")
    wrong = {"err": str(Err.BADMSG), "msg": "no answer of its own in the page-out's `more`"}
    if not isinstance(more, list) or len(more) != len(pops) - 1:
        return [wrong] * len(pops)
    return [{k: v for k, v in reply.items() if k != "more"}, *(
        m if type(m) is dict and m.get("slot") == p.fields["slot"] else wrong
        for m, p in zip(more, pops[1:], strict=True))]
