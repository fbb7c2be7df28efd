"""The one fake-kernel harness of the unit tests: the real Kernel over the simulated seam.

A :class:`Rig` is the real :class:`kernel_daemon.kernel.Kernel`, built with a simulated
transport and clock (host_tools/sim/kit.py), and the test's own parties speaking to it in
frames, as the real ones do:

* the launcher (ADMIT, with the launcher's secret);
* :class:`App`, a sealed process: a call connection (REGISTER, MAP, FAULT, IPC), a control
  connection (ATTACH, HEARTBEAT, and the kernel's SHOOTDOWN and KILL), and a bank of frames
  it installs the kernel's fault replies into, the way apps/runtime/mmu.py does;
* :class:`FakePager`, a pager instance of one mirror slot: PAGER_HELLO every HELLO_S, and
  OPEN/CLOSE/FREE/PAGE_OUT/PAGE_IN served from a :class:`Disk` that outlives instances (or
  is wiped: a new host).  A test may replace how it answers PAGE_IN (or anything else) to
  make it lie or withhold;
* an observer (STATS, PS): the only way the tests read kernel state.

No sockets, no threads, no sleeping: frames are delivered and timers fired in simulated-time
order, so every test is exact and repeatable.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from host_tools.sim.kit import Harness, Peer
from kernel_daemon.kernel import Kernel
from wire.credential import new_credential, public_of
from wire.protocol import (
    FILL_DATA,
    FILL_KEEP,
    FILL_ZERO,
    PAGE_SHIFT,
    PAGE_SIZE,
    PROT_R,
    PROT_W,
    decode,
    encode,
)

ADDR = "sim://kernel"
ZERO_PAGE: bytes = bytes(PAGE_SIZE)
#: How often a fake pager says hello (the real one: 500 ms).
HELLO_S: float = 0.5
#: How often an app's control connection says HEARTBEAT (the kernel reclaims a remote
#: process silent for PROC_DEAD_MS).
HEARTBEAT_S: float = 1.0
#: The longest a test waits, in simulated seconds, for something it expects.
WAIT_S: float = 60.0
#: The simulated time one waiting step advances.
STEP_S: float = 0.01

Msg = dict[str, Any]
_rids = itertools.count(1)

#: init's name service, as the tests' init speaks it: register (with the capability to
#: publish) and lookup (answered with it).
NAMES_CONTRACT: Msg = {
    "name": "names",
    "calls": {"register": {"fields": {"name": {"type": "str", "max_len": 32}}, "caps": 1},
              "lookup": {"fields": {"name": {"type": "str", "max_len": 32}}}},
    "replies": {"ok": {}, "found": {"caps": 1}, "missing": {}}}
#: A small service: echo bytes back; "share" passes one capability, "bulk" a page grant.
ECHO_CONTRACT: Msg = {
    "name": "echo",
    "calls": {"echo": {"fields": {"data": {"type": "bytes", "max_len": 64}}},
              "share": {"caps": 1}, "bulk": {"grant": True}},
    "replies": {"echo": {"fields": {"data": {"type": "bytes", "max_len": 64}}}, "ok": {}}}


def packed(kind: str, **fields: Any) -> bytes:
    """An IPC message (the msgpack map a CALL or REPLY carries in `msg`)."""
    return encode(dict(fields, kind=kind))


def unpacked(msg: bytes) -> Msg:
    """The map an IPC message carries."""
    return decode(msg)


def page(text: str) -> bytes:
    """A recognisable page of bytes."""
    return (text.encode() * (PAGE_SIZE // max(1, len(text)) + 1))[:PAGE_SIZE]


class Rig:
    """The real kernel on a simulated network and clock, and the parties of one test."""

    def __init__(self, nframes: int = 4, mirrors: int = 1, policy: str = "fifo",
                 pager_timeout_ms: int = 1000, pager_retries: int = 2,
                 ipc_max_bytes: int = 64 * 1024, code: tuple[int, int] | None = None,
                 prefetch: str = "off") -> None:
        self.h = Harness()
        self.secret = new_credential()
        self.kernel = Kernel(ADDR, nframes, policy, mirrors, True, pager_timeout_ms,
                             pager_retries, ipc_max_bytes, launcher_key=public_of(self.secret),
                             transport=self.h.transport("kernel"), clock=self.h.clock,
                             code=code, prefetch=prefetch)
        self.h.adopt(self.kernel)
        self.kernel.on_start()
        self.launcher = self.h.peer("launcher", ADDR)
        self.observer = self.h.peer("observer", ADDR)
        self.disks = [Disk() for _ in range(mirrors)]
        self._names = itertools.count(1)

    # -- time ---------------------------------------------------------------------------
    @property
    def now(self) -> float:
        """Simulated seconds since the rig was built."""
        return self.h.clock.now()

    def run(self, seconds: float) -> None:
        """Let `seconds` of simulated time pass (frames delivered, timers fired)."""
        self.h.run_for(seconds)

    def run_until(self, what: str, pred: Callable[[], object], limit_s: float = WAIT_S,
                  step_s: float = STEP_S) -> None:
        """Run, step_s at a time, until pred() is truthy; AssertionError naming `what` after
        limit_s."""
        end = self.now + limit_s
        while not pred():
            if self.now >= end:
                raise AssertionError(f"not within {limit_s} simulated seconds: {what}")
            self.h.run_for(step_s)

    # -- frames -------------------------------------------------------------------------
    def send(self, peer: Peer, op: str, **fields: Any) -> int:
        """Send request `op` on `peer`'s connection; return its rid (do not wait)."""
        rid = next(_rids)
        peer.send(dict(fields, op=op, rid=rid))
        return rid

    def answer(self, peer: Peer, rid: int, limit_s: float = WAIT_S) -> Msg:
        """The reply to request `rid` on `peer`, waiting for it if it has not come yet (in
        steps of one link latency: the clock moves no further than the reply needs)."""
        self.run_until(f"the reply to request {rid}", lambda: rid in peer.replies(), limit_s,
                       step_s=0.001)
        return peer.replies()[rid][0]

    def has_answer(self, peer: Peer, rid: int) -> bool:
        """Has request `rid` on `peer` been answered yet?"""
        return rid in peer.replies()

    def ask(self, peer: Peer, op: str, **fields: Any) -> Msg:
        """Send a request and wait for its reply."""
        return self.answer(peer, self.send(peer, op, **fields))

    # -- observing (STATS, PS) ----------------------------------------------------------
    def stats(self) -> Msg:
        """The kernel-wide counters (STATS "kernel")."""
        return dict(self._observe("stats")["kernel"])

    def ps(self, spid: int) -> Msg:
        """One process's record (PS), live or exited."""
        records = self._observe("ps")["processes"]
        return dict(next(r for r in reversed(records) if r["spid"] == spid))

    def processes(self) -> list[Msg]:
        """Every process record (PS), live and exited, oldest first."""
        return list(self._observe("ps")["processes"])

    def pager_slots(self) -> list[Msg]:
        """The pager slots' health (PS "pagers")."""
        return list(self._observe("ps")["pagers"])

    def _observe(self, op: str) -> Msg:
        """The observer's request and reply (its inbox is emptied: a test that polls STATS
        thousands of times must not rescan every earlier reply)."""
        reply = self.ask(self.observer, op)
        self.observer.received.clear()
        return reply

    # -- parties ------------------------------------------------------------------------
    def admit(self, name: str, role: str = "app", manifest: tuple[str, ...] = (),
              provides: tuple[str, ...] = (), quota: dict[str, int] | None = None) -> bytes:
        """The launcher admits a process; returns its one-time credential."""
        reply = self.ask(self.launcher, "admit", **admission(self.secret, name, role, manifest,
                                                             provides, quota))
        assert "err" not in reply, reply
        return bytes(reply["cred"])

    def app(self, name: str = "", role: str = "app", manifest: tuple[str, ...] = (),
            provides: tuple[str, ...] = (), quota: dict[str, int] | None = None) -> App:
        """A registered, attached sealed process."""
        name = name or f"app{next(self._names)}"
        return App(self, name, self.admit(name, role, manifest, provides, quota))

    def pager(self, mirror: int = 0) -> FakePager:
        """A new pager instance for `mirror`'s slot (it says hello at once), on its disk."""
        p = FakePager(self, mirror, self.disks[mirror])
        self.run_until(f"pager {mirror} admitted", lambda: p.admitted)
        return p


def admission(cred: bytes, name: str, role: str = "app", manifest: tuple[str, ...] = (),
              provides: tuple[str, ...] = (), quota: dict[str, int] | None = None) -> Msg:
    """The fields of an ADMIT of `name` (a remote process: hostpid 0), signed off by `cred`."""
    return {"cred": cred, "name": name, "program": name, "digest": "d" * 64, "role": role,
            "manifest": list(manifest), "provides": list(provides), "quota": quota or {},
            "hostpid": 0, "started": 0.0}


@dataclass
class Disk:
    """What a mirror's pager stores, kept across pager instances: every write of a slot."""
    writes: dict[tuple[bytes, int], list[bytes]] = field(default_factory=dict)
    opened: set[bytes] = field(default_factory=set)

    def current(self, handle: bytes, slot: int) -> bytes | None:
        """The last bytes written to (handle, slot), if any."""
        history = self.writes.get((handle, slot))
        return history[-1] if history else None

    def blocks(self) -> dict[tuple[bytes, int], bytes]:
        """Every (handle, slot) written, with its current bytes."""
        return {k: v[-1] for k, v in self.writes.items()}

    def wipe(self) -> None:
        """Lose everything: a new, empty device file (a new host)."""
        self.writes.clear()
        self.opened.clear()


#: How a fake pager answers one request: a reply map, or None to withhold the answer.
Behaviour = Callable[["FakePager", Msg], "Msg | None"]


class FakePager:
    """One pager instance of one mirror slot (see the module docstring)."""

    def __init__(self, rig: Rig, mirror: int, disk: Disk) -> None:
        self.rig = rig
        self.mirror = mirror
        self.disk = disk
        self.peer = rig.h.peer(f"pager{mirror}", ADDR)
        self.peer.on_request = lambda _peer, msg: self._serve(msg)
        self.requests: list[Msg] = []
        #: Per op, a replacement for the honest answer (a lie, or None: withhold).
        self.behaviour: dict[str, Behaviour] = {}
        #: A replacement for the honest reply to a clustered page-out: (pager, request,
        #: honest reply) -> the replies to send (none: withheld).
        self.behaviour_cluster: Callable[[FakePager, Msg, Msg], list[Msg]] | None = None
        #: The clustered page-outs (several pages in one request) as the kernel sent them.
        self.clusters: list[Msg] = []
        self.alive = True
        self.hello_rids: list[int] = []
        self.hello()

    @property
    def admitted(self) -> bool:
        """Did the kernel accept this instance's first hello?"""
        first = self.peer.replies().get(self.hello_rids[0], []) if self.hello_rids else []
        return bool(first) and "err" not in first[0]

    def hello(self) -> None:
        """Say PAGER_HELLO now and every HELLO_S while alive (admission and heartbeat)."""
        if not self.alive:
            return
        self.hello_rids.append(self.rig.send(self.peer, "pager_hello", mirror=self.mirror,
                                             host="fake", hostpid=0))
        self.rig.h.net.after(HELLO_S, self.hello)

    def crash(self) -> None:
        """The instance dies: no more hellos, frames to it are lost."""
        self.alive = False
        self.rig.h.net.crash(self.peer.tr)

    def ops(self, op: str) -> list[Msg]:
        """The requests of kind `op` the kernel sent this instance."""
        return [m for m in self.requests if m.get("op") == op]

    def _serve(self, msg: Msg) -> None:
        op = str(msg.get("op"))
        if op == "page_out" and "more" in msg:
            self._serve_cluster(msg)
            return
        self.requests.append(msg)
        reply = self._one(op, msg)
        if reply is not None:
            self.peer.send(dict(reply, re=msg["rid"]))

    def _one(self, op: str, msg: Msg) -> Msg | None:
        """The answer to one request (or one page of a clustered page-out)."""
        how = self.behaviour.get(op)
        return how(self, msg) if how is not None else self.honest(msg)

    def _serve_cluster(self, msg: Msg) -> None:
        """A clustered page-out: each page served as a page-out of its own (and recorded as
        one: ops("page_out") lists pages), answered in one reply (wire/protocol.py), or as
        behaviour_cluster says."""
        self.clusters.append(msg)
        pages = [msg] + [dict(op="page_out", rid=msg["rid"], handle=h, slot=s, data=d)
                         for h, s, d in msg["more"]]
        answers = []
        for one in pages:
            self.requests.append({k: v for k, v in one.items() if k != "more"})
            answer = self._one("page_out", one)
            answers.append({"err": "EIO", "msg": "withheld"} if answer is None else answer)
        reply = dict(answers[0], more=[dict(a, slot=p["slot"]) for p, a in
                                       zip(pages[1:], answers[1:], strict=True)])
        attack = self.behaviour_cluster
        for r in ([reply] if attack is None else attack(self, msg, reply)):
            self.peer.send(dict(r, re=msg["rid"]))

    def honest(self, msg: Msg) -> Msg:
        """What a correct pager with a working disk answers."""
        op, handle, slot = msg.get("op"), bytes(msg.get("handle") or b""), msg.get("slot", -1)
        if op == "open":
            created = handle not in self.disk.opened
            self.disk.opened.add(handle)
            return {"created": True} if created else {}
        if op == "page_out":
            self.disk.writes.setdefault((handle, slot), []).append(msg["data"])
            return {}
        if op == "page_in":
            data = self.disk.current(handle, slot)
            if data is None:
                return {"err": "ENOENT", "msg": "fake pager: slot never written"}
            return {"data": data}
        return {}                                       # close, free


class App:
    """A sealed process (see the module docstring): REGISTERs, ATTACHes, and has an MMU."""

    def __init__(self, rig: Rig, name: str, cred: bytes) -> None:
        self.rig = rig
        self.name = name
        self.syscalls = rig.h.peer(f"{name}.call", ADDR)
        self.control = rig.h.peer(f"{name}.ctrl", ADDR)
        self.control.on_request = lambda _peer, msg: self._control(msg)
        reg = rig.ask(self.syscalls, "register", cred=cred)
        assert "err" not in reg, reg
        self.spid: int = reg["spid"]
        self.registered: Msg = reg
        att = rig.ask(self.control, "attach", spid=self.spid, secret=reg["secret"])
        assert "err" not in att, att
        self.bank: dict[int, bytes] = {}           # frame -> bytes
        self.resident: dict[int, int] = {}         # vpn -> frame
        self.tlb: dict[int, int] = {}              # vpn -> prot
        self.dirty: set[int] = set()
        self.shootdowns: list[Msg] = []
        self.killed: str | None = None
        #: False: SHOOTDOWNs are recorded but not answered (a hung process).
        self.answers_shootdowns = True
        self.alive = True
        rig.h.net.after(HEARTBEAT_S, self._heartbeat)

    # -- requests -----------------------------------------------------------------------
    def ask(self, op: str, **fields: Any) -> Msg:
        """A request on the call connection, and its reply."""
        return self.rig.ask(self.syscalls, op, **fields)

    def send(self, op: str, **fields: Any) -> int:
        """A request on the call connection, without waiting (CALL, RECEIVE block)."""
        return self.rig.send(self.syscalls, op, **fields)

    def answer(self, rid: int) -> Msg:
        """The reply to request `rid` on the call connection (waiting for it)."""
        return self.rig.answer(self.syscalls, rid)

    def answered(self, rid: int) -> bool:
        """Has request `rid` on the call connection been answered yet?"""
        return self.rig.has_answer(self.syscalls, rid)

    def map(self, npages: int, prot: int = PROT_R | PROT_W) -> int:
        """MAP a region; return its first vpn."""
        reply = self.ask("map", npages=npages, prot=prot)
        assert "err" not in reply, reply
        return int(reply["addr"]) >> PAGE_SHIFT

    def exit(self, status: int = 0) -> Msg:
        """EXIT, and stop."""
        reply = self.ask("exit", status=status)
        self.die()
        return reply

    def die(self) -> None:
        """Vanish (no EXIT): both connections go."""
        self.alive = False
        self.rig.h.net.crash(self.syscalls.tr)
        self.rig.h.net.crash(self.control.tr)

    # -- IPC ------------------------------------------------------------------------------
    def endpoint(self, contract: Msg, nameservice: bool = False) -> int:
        """ENDPOINT with `contract`; return its handle."""
        fields: Msg = {"contract": contract}
        if nameservice:
            fields["nameservice"] = True
        reply = self.ask("endpoint", **fields)
        assert "err" not in reply, reply
        return int(reply["handle"])

    def call(self, handle: int, msg: bytes, **fields: Any) -> int:
        """CALL (it blocks: returns the rid; answer() waits for the reply)."""
        return self.send("call", handle=handle, msg=msg, **fields)

    def receive(self, handle: int) -> int:
        """RECEIVE (it blocks: returns the rid; answer() waits for the call)."""
        return self.send("receive", handle=handle)

    # -- the MMU ------------------------------------------------------------------------
    def fault(self, vpn: int, access: str = "r") -> Msg:
        """FAULT on vpn; install what the reply says.  Returns the reply."""
        reply = self.ask("fault", vpn=vpn, access=access, refs=[])
        self.install(vpn, access, reply)
        return reply

    def install(self, vpn: int, access: str, reply: Msg) -> None:
        """Apply a FAULT reply to the bank and TLB (as apps/runtime/mmu.py does)."""
        if "err" in reply:
            return
        frame, fill = reply["frame"], reply["fill"]
        if fill == FILL_ZERO:
            self.bank[frame] = ZERO_PAGE
        elif fill == FILL_DATA:
            self.bank[frame] = reply["data"]
        assert fill in (FILL_ZERO, FILL_DATA, FILL_KEEP), reply
        if fill != FILL_KEEP:
            self.dirty.discard(vpn)
        self.resident[vpn] = frame
        self.tlb[vpn] = reply["prot"]
        if access == "w":
            self.dirty.add(vpn)
        for v, fr, prot, data in reply.get("around", []):      # fault-around: installed clean
            self.bank[fr] = data
            self.dirty.discard(v)
            self.resident[v] = fr
            self.tlb[v] = prot

    def write(self, vpn: int, data: bytes) -> None:
        """Store a page, faulting first unless the TLB allows writing."""
        if not self.tlb.get(vpn, 0) & PROT_W:
            reply = self.fault(vpn, "w")
            assert "err" not in reply, reply
        self.bank[self.resident[vpn]] = data
        self.dirty.add(vpn)

    def read(self, vpn: int) -> bytes:
        """Load a page, faulting first unless the TLB allows reading."""
        if not self.tlb.get(vpn, 0) & PROT_R:
            reply = self.fault(vpn, "r")
            assert "err" not in reply, reply
        return self.bank[self.resident[vpn]]

    # -- the control connection -----------------------------------------------------------
    def _control(self, msg: Msg) -> None:
        if msg.get("op") == "kill":
            self.killed = str(msg.get("reason"))
            self.control.send({"re": msg["rid"]})
            return
        if msg.get("op") != "shootdown":
            return
        self.shootdowns.append(msg)
        if self.answers_shootdowns:
            answer = self.give_back(msg["vpn"], msg["frame"], msg["want"])
            if "more" in msg:                            # several pages in one message
                answer["more"] = [self.give_back(*m) for m in msg["more"]]
            self.control.send(dict(answer, re=msg["rid"]))

    def give_back(self, vpn: int, frame: int, want: bool) -> Msg:
        """Drop vpn from the TLB; the answer to its SHOOTDOWN (bytes when dirty or wanted)."""
        dirty = vpn in self.dirty and self.resident.get(vpn) == frame
        if self.resident.get(vpn) == frame:
            self.resident.pop(vpn)
            self.tlb.pop(vpn, None)
            self.dirty.discard(vpn)
        data = self.bank.get(frame, ZERO_PAGE) if dirty or want else None
        return {"dirty": dirty, "data": data}

    def _heartbeat(self) -> None:
        if not self.alive:
            return
        self.rig.send(self.control, "heartbeat", refs=[])
        self.rig.h.net.after(HEARTBEAT_S, self._heartbeat)


def swapped_page(rig: Rig, app: App, text: str) -> int:
    """A new page of app's holding page(text), evicted to swap (a PAGE_OUT was asked) by
    touching the next page: for rigs with nframes=1."""
    v = app.map(2)
    app.write(v, page(text))
    app.read(v + 1)                               # the only frame: v is evicted
    rig.run(0.05)
    assert v not in app.resident
    return v


@dataclass
class EchoWorld:
    """init with the name service, an echo server, and a client holding the echo capability
    it looked up (the capability moved server -> init -> client inside messages)."""
    init: App
    names: int                 # init's handle of its name-service endpoint
    server: App
    echo: int                  # the server's handle of its echo endpoint
    published: int             # init's handle of the echo endpoint (what lookup hands out)
    client: App
    held: int                  # the client's handle of the echo endpoint


def serve_one(rig: Rig, server: App, handle: int, answer: Callable[[Msg], tuple[bytes, list[int]]]
              ) -> Msg:
    """server RECEIVEs one call on handle and REPLYs answer(call) = (msg, caps); returns the
    delivered call."""
    got = server.answer(server.receive(handle))
    assert "err" not in got, got
    msg, caps = answer(got)
    reply = server.ask("reply", call=got["call"], msg=msg, caps=caps)
    assert "err" not in reply, reply
    return got


def look_up(rig: Rig, w: EchoWorld, app: App) -> int:
    """app looks the echo service up through init; returns its new handle."""
    rid = app.call(0, packed("lookup", name="echo"))
    serve_one(rig, w.init, w.names, lambda call: (packed("found"), [w.published]))
    found = app.answer(rid)
    assert "err" not in found, found
    return int(found["caps"][0])


def second_client(rig: Rig, w: EchoWorld, name: str) -> tuple[App, int]:
    """Another process that may call echo (it is in its manifest), and its handle of the echo
    endpoint (looked up through init)."""
    app = rig.app(name, manifest=("echo",))
    return app, look_up(rig, w, app)


def echo_world(rig: Rig, contract: Msg | None = None) -> EchoWorld:
    """Build an :class:`EchoWorld` through the kernel's message interface only (the server's
    endpoint has ECHO_CONTRACT, or `contract`)."""
    init = rig.app("init", role="init")
    names = init.endpoint(NAMES_CONTRACT, nameservice=True)
    server = rig.app("server", provides=("echo",))
    echo = server.endpoint(contract or ECHO_CONTRACT)
    rid = server.call(0, packed("register", name="echo"), caps=[echo])
    got = serve_one(rig, init, names, lambda call: (packed("ok"), []))
    published = got["caps"][0]
    assert "err" not in server.answer(rid)
    client = rig.app("client", manifest=("echo",))
    rid = client.call(0, packed("lookup", name="echo"))
    serve_one(rig, init, names, lambda call: (packed("found"), [published]))
    found = client.answer(rid)
    assert "err" not in found, found
    return EchoWorld(init, names, server, echo, published, client, found["caps"][0])
