"""Synchronous IPC routed by the kernel: endpoints, capability tables, CALL/RECEIVE/REPLY.

The model is QNX's MsgSend/MsgReceive/MsgReply with Singularity's contracts and Mach's
capabilities:

* An **endpoint** is a kernel object created by the process that will serve it (ENDPOINT,
  with a contract, see :mod:`kernel_daemon.contract`).  Only its owner may RECEIVE on it.
* A **capability** to an endpoint is what lets a process CALL it.  Each process has its own
  table of small integer handles, like file descriptors; a handle means nothing in another
  process, and handles are never reused, so a closed one is *stale* forever and any other
  number is *forged*: both get EBADHANDLE.  Handle 0 of every process is the name service
  (init's endpoint, see below).  Capabilities travel only inside messages (``caps``): the
  kernel looks the sender's handles up and mints new ones in the receiver's table.
* A **call** copies its payload (a msgpack map, at most ``kernel.ipc_max_bytes``) through the
  kernel after checking it against the endpoint's contract on the caller's channel (one
  endpoint, one calling process); a violation goes back to the caller and the receiver never
  sees the message.  A call may also carry a **page grant**: the kernel moves the caller's
  pages into the receiver (vm.grant) before delivery, and the receiver learns the address.
* The kernel stamps each delivered call with the caller's identity (spid, name, program,
  digest, manifest) as bound at REGISTER; a process cannot speak as another.

The name service: the process the launcher admitted with role ``init`` is init; the
endpoint it creates with ``nameservice: true`` becomes handle 0 of every process.  Services
register names with it (passing their endpoint capability) and apps look names up; init
refuses lookups of names missing from the caller's manifest (the closed API) and
registrations of names missing from its ``provides``.  Code is fixed: the launcher tells the
kernel the program and the digest of the code it starts, and no operation loads code.

Blocking, and death while blocked (the hard part)
-------------------------------------------------
The kernel never blocks: a CALL or RECEIVE that must wait returns SUSPEND and is answered
later from another process's request, so every blocked party is a suspended *request* the
kernel holds, and every wake-up is a reply to it.  A process may be blocked in at most one
CALL or RECEIVE at a time (it is one thread of control; a second gets EBUSY); a server may
hold any number of received calls before replying.  A call lives in exactly one place at a
time: in flight (its page grant settling), queued on its endpoint, or in its server's
``serving`` table.  Each place is a list the kernel walks when somebody dies:

* The **server dies** (reclaim): each endpoint it owns is marked dead, every call queued on
  it and every call it was serving is failed with EPEERDIED at once (a caller never hangs on
  a dead server), a grant in flight to it fails when it settles, and every later call on any
  handle to the endpoint fails with EPEERDIED: the handle is not stale, its peer is gone.
* The **caller dies**: a call still queued is withdrawn (never delivered); a call being
  served is only marked orphaned, so the server's REPLY succeeds as usual and its answer is
  dropped; a grant in flight is undone (the pages are unmapped from the receiver).
* Either way, the dead process's capability table, endpoints and channel states go.

Delivery is exactly once and in order per channel: a caller has at most one call
outstanding, calls queue FIFO on their endpoint, and a call leaves its place exactly once
(delivered, answered or failed), each time under the ``done`` flag.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kernel_daemon.caps import NAMESERVICE_HANDLE, CapTable, Endpoint
from kernel_daemon.contract import (
    CONTRACT_MAX_BYTES,
    check,
    compile_contract,
    compiled_size,
    decode_payload,
    encoded_size,
)
from kernel_daemon.histogram import Histograms
from kernel_daemon.proc import Proc, ProcState, caller
from kernel_daemon.quota import Resource
from wire.protocol import PAGE_SHIFT, PAGE_SIZE, STASH_MAX_BYTES, Err, ServiceError, encoder
from wire.server import SUSPEND, Answer, Request

if TYPE_CHECKING:
    from kernel_daemon.kernel import Kernel

MAX_GRANT_PAGES: int = 1 << 16
#: How much an ENDPOINT request may exceed its contract's own limit (the op, rid, keys).
ENDPOINT_OVERHEAD_BYTES: int = 1024
#: At most this many endpoint records in STATS (the count is always given in full).
ENDPOINT_RECORDS_MAX: int = 512

_NO_CAPS: tuple[()] = ()
#: The kernel's main thread's msgpack packer (a Packer is not thread-safe; nothing else packs
#: with it); the map keys of the two frames the routing path packs itself (_deliver, _answer).
_pack = encoder()
_RE, _CALL_KEY, _MSG, _SENDER, _CAPS, _GRANT_ADDR, _GRANT_NPAGES, _EMPTY_LIST = map(
    _pack, ("re", "call", "msg", "sender", "caps", "grant_addr", "grant_npages", []))
_MAP_HEADER: tuple[bytes, ...] = tuple(bytes((0x80 | n,)) for n in range(16))  # fixmap, n keys
_CALL, _RECEIVE, _RUNNING = ProcState.CALL, ProcState.RECEIVE, ProcState.RUNNING


@dataclass(slots=True, eq=False)
class Call:
    """One call from its CALL to its reply (or failure)."""
    cid: int
    caller: Proc
    req: Request                          # the caller's suspended CALL
    ep: Endpoint
    payload: bytes
    stamp: bytes                          # the caller's identity as bound, msgpack-encoded
    caps: list[Endpoint] | tuple[()]
    prior: str                            # channel state before the call
    waiting: str                          # channel state while it awaits its reply
    t0: float
    grant_addr: int | None = None
    grant_npages: int = 0
    done: bool = False                    # answered or failed: the caller is no longer waiting


@dataclass(slots=True)
class InitLegacy:
    """What a dead init leaves its successor: the capabilities it held (same handles) and
    the stash it last saved (its name table)."""
    handles: dict[int, Endpoint]
    next_handle: int
    stash: bytes


class Ipc:
    """Endpoints, capability tables and the CALL/RECEIVE/REPLY path of the kernel."""

    def __init__(self, kernel: Kernel) -> None:
        self.k = kernel
        self.max_bytes = kernel.ipc_max_bytes
        self.init: Proc | None = None
        self.stash = b""                       # init's latest STASH
        self.legacy: InitLegacy | None = None  # a dead init's capabilities, for the next one
        self.root: Endpoint | None = None
        self.tables: dict[int, CapTable] = {}
        self.endpoints: dict[int, Endpoint] = {}
        self._next_eid = 1
        self._next_cid = 1
        self.histograms = Histograms()         # call latency and bytes, by contract (metrics)
        self.stats = kernel.stats

    # -- identity, init, tables ---------------------------------------------------------
    def check_init_free(self) -> None:
        """EPERM unless an init may register now (there is no live init)."""
        if self.init is not None and self.init.alive:
            raise ServiceError(Err.PERM, "register: init is already running")

    def set_init(self, proc: Proc) -> bytes:
        """`proc` registered with a credential the launcher admitted as init: it is init, and
        inherits what a previous init left (its capabilities, same handles); return the
        previous init's stash (b"" if none)."""
        self.init = proc
        legacy, self.legacy = self.legacy, None
        if legacy is None:
            return b""
        t = self.table(proc)
        inherited = {h: ep for h, ep in legacy.handles.items() if ep.alive}
        proc.quota.force(Resource.CAPABILITIES, len(inherited))   # its predecessor's, kept
        t.handles.update(inherited)
        t.next_handle = max(t.next_handle, legacy.next_handle)
        return legacy.stash

    def save_stash(self, req: Request) -> dict[str, Any]:
        """STASH: init saves what its successor inherits (EPERM for anyone else)."""
        if req.caller is not self.init:
            raise ServiceError(Err.PERM, "stash: only init may stash")
        data: bytes = req.msg["data"]
        if len(data) > STASH_MAX_BYTES:
            raise ServiceError(Err.MSGSIZE, f"stash: {len(data)} bytes exceeds the "
                                            f"{STASH_MAX_BYTES}-byte limit")
        self.stash = data
        return {}

    def table(self, proc: Proc) -> CapTable:
        """proc's capability table (created on first use)."""
        t = self.tables.get(proc.spid)
        if t is None:
            t = self.tables[proc.spid] = CapTable.of(proc)
        return t

    # -- ENDPOINT, CAP_CLOSE ------------------------------------------------------------
    def endpoint(self, req: Request) -> dict[str, Any]:
        """Create an endpoint with the given contract; return its handle."""
        proc = caller(req)
        t = self.table(proc)
        if req.size > CONTRACT_MAX_BYTES + ENDPOINT_OVERHEAD_BYTES:   # refused before compiling
            raise ServiceError(Err.MSGSIZE, f"endpoint: request of {req.size} bytes; a contract "
                                            f"may take at most {CONTRACT_MAX_BYTES}")
        ns = req.msg.get("nameservice", False)
        if ns and proc is not self.init:
            raise ServiceError(Err.PERM, "endpoint: only init may create the name service")
        quota = proc.quota
        quota.check(Resource.ENDPOINTS, 1)
        quota.check(Resource.CAPABILITIES, 1)
        # the frame's size bounds the contract's (no re-encoding: refusing must be cheap)
        encoded = min(req.size, CONTRACT_MAX_BYTES) or encoded_size(req.msg["contract"])
        quota.check(Resource.CONTRACT_BYTES, compiled_size(encoded))
        quota.spend_compile(encoded, self.k.now())         # CPU: bytes compiled per second
        contract = compile_contract(req.msg["contract"], encoded)
        quota.charge(Resource.CONTRACT_BYTES, contract.size_bytes)
        quota.charge(Resource.ENDPOINTS, 1)
        ep = Endpoint(self._next_eid, proc, contract, t.next_handle)
        t.mint(ep)
        self._next_eid += 1
        self.endpoints[ep.eid] = ep
        t.owned.append(ep)
        if ns:
            self.root = ep
            self.k.log.info("name service is endpoint %d of %s", ep.eid, proc.name)
        return {"handle": ep.owner_handle}

    def cap_close(self, req: Request) -> dict[str, Any]:
        """Drop a handle; the owner closing its own endpoint's handle destroys the endpoint."""
        t = self.table(caller(req))
        h = req.msg["handle"]
        ep = t.lookup(h, self.root)
        if h == NAMESERVICE_HANDLE and h not in t.handles:
            raise ServiceError(Err.INVAL, "handle 0 (the name service) cannot be closed")
        t.drop(h)
        if ep.owner is t.proc and h == ep.owner_handle and ep.alive:
            t.owned.remove(ep)
            self._kill_endpoint(ep, f"its owner {t.proc.name} closed it")
        return {}

    # -- CALL -----------------------------------------------------------------------------
    def call(self, req: Request) -> Answer:
        """Check a call (size, handle, contract, caps, grant) and post it; SUSPEND until REPLY."""
        proc = caller(req)
        spid = proc.spid
        t = self.tables.get(spid) or self.table(proc)
        m = req.msg
        payload: bytes = m["msg"]
        n = len(payload)
        if n > self.max_bytes:
            raise ServiceError(Err.MSGSIZE, f"call: message of {n} bytes exceeds the "
                                            f"{self.max_bytes}-byte IPC limit")
        h = m["handle"]
        ep = t.handles.get(h) or t.lookup(h, self.root)
        if not ep.alive:
            self.stats.ipc_peer_died += 1
            raise ServiceError(Err.PEERDIED, f"call: endpoint {ep.contract.name!r} is gone: "
                                             f"{ep.death}")
        if ep.owner is proc:
            raise ServiceError(Err.INVAL, "call: a process cannot call its own endpoint "
                                          "(it would wait on itself forever)")
        if t.calling is not None or t.receiving is not None:
            raise ServiceError(Err.BUSY, "call: this process is already blocked in a call "
                                         "or receive")
        raw_caps = m.get("caps")
        caps = t.collect(raw_caps, self.root) if raw_caps else _NO_CAPS
        grant = m.get("grant")
        vpn, npages = self._grant_range(grant) if grant is not None else (0, 0)
        proc.quota.check(Resource.CALLS, 1)
        receiver = ep.owner.quota
        if caps:
            receiver.check(Resource.CAPABILITIES, len(caps))   # the receiver must have room
        if grant is not None:
            receiver.check(Resource.REGIONS, 1)
            receiver.check(Resource.PAGES, npages)
        contract = ep.contract
        prior = ep.chans.get(spid) or contract.initial
        try:
            msg = decode_payload(contract, payload)
            waiting = check(contract, prior, msg, len(caps), grant is not None)
        except ServiceError:
            self.stats.ipc_contract_violations += 1
            raise
        cid = self._next_cid
        self._next_cid = cid + 1
        call = Call(cid, proc, req, ep, payload, t.stamp, caps, prior, waiting, self.k.now())
        ep.chans[spid] = waiting
        t.chans_on.add(ep.eid)
        t.calling = call
        proc.quota.used[Resource.CALLS] += 1            # (checked above: nothing since took any)
        proc.state = _CALL
        counters = proc.counters
        counters["ipc_calls_out"] += 1
        counters["ipc_bytes_out"] += n
        stats = self.stats
        stats.ipc_calls += 1
        stats.ipc_bytes_copied += n
        ep.calls += 1
        ep.bytes += n
        tracer = self.k.tracer
        if tracer.enabled:
            tracer.begin("ipc", "call", cid, proc.spid, endpoint=ep.contract.name,
                         kind=msg.get("kind"), bytes=n, to=ep.owner.spid)
        if grant is None:
            self._post(call)
        else:
            call.grant_npages = npages
            self.k.vm.grant(proc, vpn, npages, ep.owner,
                            lambda addr, why: self._granted(call, addr, why))
        return SUSPEND

    @staticmethod
    def _grant_range(grant: Any) -> tuple[int, int]:
        """(vpn, npages) of a CALL's grant field; EINVAL when malformed."""
        if not isinstance(grant, dict):
            raise ServiceError(Err.INVAL, "call: grant must be a map {addr, npages}")
        addr, npages = grant.get("addr"), grant.get("npages")
        if not isinstance(addr, int) or isinstance(addr, bool) or addr < 0 or addr % PAGE_SIZE:
            raise ServiceError(Err.INVAL, f"call: grant address {addr!r} is not page-aligned")
        if not isinstance(npages, int) or isinstance(npages, bool) or \
                not 0 < npages <= MAX_GRANT_PAGES:
            raise ServiceError(Err.INVAL, f"call: grant npages must be 1..{MAX_GRANT_PAGES}")
        return addr >> PAGE_SHIFT, npages

    def _granted(self, call: Call, addr: int | None, why: str) -> None:
        """The page flip of `call` settled: post the call, or fail it."""
        ep, dst = call.ep, call.ep.owner
        if addr is not None and (call.done or not ep.alive):
            if dst.alive:        # nobody will ever hear of these pages: take them back
                vpn = addr >> PAGE_SHIFT
                self.k.vm.release_pages(dst, dst.aspace.unmap(vpn, call.grant_npages))
            addr = None
        if call.done:
            return
        if not ep.alive:
            self._fail(call, Err.PEERDIED, f"call: endpoint {ep.contract.name!r} is gone: "
                                           f"{ep.death}")
            return
        if addr is None:
            self._fail(call, Err.INVAL, f"call: page grant failed: {why}")
            return
        call.grant_addr = addr
        self.stats.ipc_grants += 1
        self._post(call)

    def _post(self, call: Call) -> None:
        """Deliver `call` to its endpoint's waiting receiver, or queue it."""
        ep = call.ep
        waiter = ep.waiter
        if waiter is None:
            ep.queue.append(call)
            return
        ep.waiter = None
        owner = self.tables[ep.owner.spid]
        owner.receiving = None
        ep.owner.state = _RUNNING
        self._deliver(owner, call, waiter)

    def _deliver(self, owner: CapTable, call: Call, req: Request) -> None:
        """Hand `call` to its endpoint's owner: mint its caps there and answer its RECEIVE
        (or REPLY-and-receive) `req` with it.

        The frame is built here, not by the skeleton's encode: a msgpack map of
        {re, call, msg, sender, caps[, grant_addr, grant_npages]} whose sender is the
        caller's stamp as encoded once (CapTable.of), so the stamp is not packed again per
        call (the decoded frame is the same map encode would have made)."""
        owner.serving[call.cid] = call
        proc = owner.proc
        counters = proc.counters
        counters["ipc_calls_in"] += 1
        counters["ipc_bytes_in"] += len(call.payload)
        caps = call.caps
        if caps:
            handles = _pack([owner.mint(ep, force=True) for ep in caps])
            self.stats.ipc_caps_transferred += len(caps)
        else:
            handles = _EMPTY_LIST
        parts = [_RE, _pack(req.rid), _CALL_KEY, _pack(call.cid), _MSG, _pack(call.payload),
                 _SENDER, call.stamp, _CAPS, handles]
        if call.grant_addr is not None:
            parts += (_GRANT_ADDR, _pack(call.grant_addr), _GRANT_NPAGES,
                      _pack(call.grant_npages))
        self.k.transport.send(req.sock, req.peer, _MAP_HEADER[len(parts) // 2] + b"".join(parts))
        if self.k.tracer.enabled:
            self.k.tracer.step("ipc", "call", call.cid, call.caller.spid, "delivered",
                               receiver=proc.spid)

    def _fail(self, call: Call, code: Err, text: str) -> None:
        """End `call` with an error to its caller (if it still waits)."""
        if call.done:
            return
        call.done = True
        caller = call.caller
        caller.quota.release(Resource.CALLS, 1)
        t = self.tables.get(caller.spid)
        if t is not None and t.calling is call:
            t.calling = None
        if code == Err.PEERDIED:
            self.stats.ipc_peer_died += 1
        if call.ep.alive and caller.alive and call.ep.chans.get(caller.spid) == call.waiting:
            call.ep.chans[caller.spid] = call.prior       # the call never happened
        if caller.alive:
            if caller.state is _CALL:
                caller.state = _RUNNING
            self.k.fail(call.req, code, text)
        self.k.tracer.end("ipc", "call", call.cid, caller.spid, error=str(code))

    # -- RECEIVE, REPLY ---------------------------------------------------------------------
    def receive(self, req: Request) -> Answer:
        """The next call on an endpoint the caller owns; SUSPEND until one arrives."""
        t = self.table(caller(req))
        ep = t.owned_by_me(req.msg["handle"], self.root)
        if t.calling is not None or t.receiving is not None:
            raise ServiceError(Err.BUSY, "receive: this process is already blocked in a call "
                                         "or receive")
        return self._receive(t, ep, req)

    def _receive(self, t: CapTable, ep: Endpoint, req: Request) -> Answer:
        """Deliver the first queued call on ep, or leave req waiting there (SUSPEND)."""
        if not ep.alive:
            raise ServiceError(Err.PEERDIED, f"receive: endpoint {ep.contract.name!r} is gone: "
                                             f"{ep.death}")
        if ep.queue:
            self._deliver(t, ep.queue.popleft(), req)
            return SUSPEND                       # (answered: the delivery is its reply)
        ep.waiter = req
        t.receiving = ep
        t.proc.state = _RECEIVE
        return SUSPEND

    def reply(self, req: Request) -> Answer:
        """Answer a received call (contract-checked); with `receive`, then wait for the next."""
        proc = caller(req)
        t = self.tables.get(proc.spid) or self.table(proc)
        m = req.msg
        cid = m["call"]
        call = t.serving.get(cid)
        if call is None:
            raise ServiceError(Err.NOENT, f"reply: call {cid} is not awaiting a reply from "
                                          f"this process")
        payload: bytes = m["msg"]
        if len(payload) > self.max_bytes:
            raise ServiceError(Err.MSGSIZE, f"reply: message of {len(payload)} bytes exceeds "
                                            f"the {self.max_bytes}-byte IPC limit")
        recv = m.get("receive")
        next_ep = None
        if recv is not None:                  # (an int, not a bool: check_request said so)
            next_ep = t.owned_by_me(recv, self.root)
            if t.calling is not None or t.receiving is not None:
                raise ServiceError(Err.BUSY, "reply: already blocked in a call or receive")
        raw_caps = m.get("caps")
        caps = t.collect(raw_caps, self.root) if raw_caps else _NO_CAPS
        if caps and not call.done:
            call.caller.quota.check(Resource.CAPABILITIES, len(caps))  # the caller needs room
        contract = call.ep.contract
        try:
            state = check(contract, call.waiting, decode_payload(contract, payload), len(caps))
        except ServiceError:
            self.stats.ipc_contract_violations += 1
            raise
        del t.serving[cid]
        self._answer(call, state, payload, caps)
        if next_ep is None:
            return {}
        return self._receive(t, next_ep, req)

    def _answer(self, call: Call, state: str, payload: bytes,
                caps: list[Endpoint] | tuple[()]) -> None:
        """Wake `call`'s caller with the reply (an orphaned call's reply is dropped)."""
        self.stats.ipc_replies += 1
        if call.done:
            return
        call.done = True
        caller = call.caller
        caller.quota.release(Resource.CALLS, 1)
        ct = self.tables[caller.spid]
        ct.calling = None
        call.ep.chans[caller.spid] = state
        n = len(payload)
        caller.counters["ipc_bytes_in"] += n
        call.ep.owner.counters["ipc_bytes_out"] += n
        self.stats.ipc_bytes_copied += n
        if caller.state is _CALL:
            caller.state = _RUNNING
        handles = _pack([ct.mint(ep, force=True) for ep in caps]) if caps else _EMPTY_LIST
        req = call.req             # {re, msg, caps}, packed here as _deliver does
        self.k.transport.send(req.sock, req.peer, b"\x83" + _RE + _pack(req.rid) + _MSG +
                              _pack(payload) + _CAPS + handles)
        if self.k.tracer.enabled:
            self.k.tracer.end("ipc", "call", call.cid, caller.spid, bytes=n)
        self.histograms.observe(call.ep.contract.name, (self.k.now() - call.t0) * 1e6,
                                n + len(call.payload))

    # -- death ------------------------------------------------------------------------------
    def reclaim(self, proc: Proc) -> None:
        """A process is gone: fail what waits on it, withdraw its calls, drop its capabilities
        (a dead init's go to the next init, with its stash)."""
        was_init = proc is self.init
        if was_init:
            self.init = None
        t = self.tables.pop(proc.spid, None)
        if t is None:
            if was_init:
                self.legacy = InitLegacy({}, 1, self.stash)
            return
        call = t.calling
        if call is not None and not call.done:
            call.done = True                       # orphaned: a server's REPLY is dropped
            proc.quota.release(Resource.CALLS, 1)
            if call in call.ep.queue:
                call.ep.queue.remove(call)         # never delivered: withdrawn
            self.k.tracer.end("ipc", "call", call.cid, proc.spid, error="caller died")
        if t.receiving is not None:
            t.receiving.waiter = None
        why = f"its owner {proc.name} (spid {proc.spid}) died"
        for ep in t.owned:
            self._kill_endpoint(ep, why)
        for call in t.serving.values():
            self._fail(call, Err.PEERDIED, f"call: the server {proc.name} (spid {proc.spid}) "
                                           f"died while serving it")
        for eid in t.chans_on:
            chan_ep = self.endpoints.get(eid)
            if chan_ep is not None:
                chan_ep.chans.pop(proc.spid, None)
        if was_init:
            self.legacy = InitLegacy({h: ep for h, ep in t.handles.items() if ep.alive},
                                     t.next_handle, self.stash)
        t.drop_all()
        t.serving.clear()

    def _kill_endpoint(self, ep: Endpoint, why: str) -> None:
        """Mark `ep` dead, release its charge to its owner, and fail every call queued on it
        with EPEERDIED."""
        if not ep.alive:
            return
        ep.owner.quota.release(Resource.ENDPOINTS, 1)
        ep.owner.quota.release(Resource.CONTRACT_BYTES, ep.contract.size_bytes)
        ep.alive = False
        ep.death = why
        ep.waiter = None
        self.endpoints.pop(ep.eid, None)
        while ep.queue:
            self._fail(ep.queue.popleft(), Err.PEERDIED,
                       f"call: endpoint {ep.contract.name!r} is gone: {why}")
        ep.chans.clear()

    # -- observation ------------------------------------------------------------------------
    def counters(self) -> dict[str, Any]:
        """IPC state for STATS: the name service, and every live endpoint's counters."""
        return {"init_spid": self.init.spid if self.init is not None else None,
                "nameservice": self.root is not None and self.root.alive,
                "endpoints": [ep.record() for ep in
                              itertools.islice(self.endpoints.values(), ENDPOINT_RECORDS_MAX)],
                "endpoint_count": len(self.endpoints),
                "capabilities": sum(len(t.handles) for t in self.tables.values()),
                "handles_by_spid": {str(spid): len(t.handles) for spid, t in self.tables.items()},
                "blocked_calls": sum(1 for t in self.tables.values() if t.calling is not None)}
