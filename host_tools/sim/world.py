"""One simulated sealedos: the real Kernel, Pager and DiskService classes in one process.

The world wires them over the simulated network and clock (net.py), admits simulated
sealed processes (workload.py) the way the launcher does (ADMIT with the launcher's secret,
then REGISTER with the issued credential), and runs *steps*: each step is the earliest of
(the next queued event, the earliest due timer of any server), so the kernel's timeouts,
retries, liveness checks and the pagers' hellos and disk pings run exactly as in
production, only on simulated time.  Before each step the seed may inject a fault (FAULTS):
crash (and later restart) a pager or a disk between any two messages, hang one, make a
process die, and -- on the links -- drop, delay, reorder and duplicate frames; a disk may
fail a write or tear it (half written, then the disk dies); timers may fire late; one pager
may be hostile from the start.  With two mirrors only mirror 0 is ever faulty.

After the steps the world heals (every service back up, links perfect), lets every process
read back and verify all its pages and EXIT, and checks invariants.py at quiescence.
Everything is drawn from one seed: the same seed gives the same trace, byte for byte.
"""
from __future__ import annotations

import functools
import heapq
import logging
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from disk_service.device import Device
from disk_service.disk import DiskService
from host_tools.sim import invariants, ipcload
from host_tools.sim.net import LinkFaults, NodeTransport, SimClock, SimNet
from host_tools.sim.workload import SimProcess
from kernel_daemon.kernel import Kernel
from kernel_daemon.policy import POLICIES
from kernel_daemon.prefetch import MODES
from pager_service.hostile import HostileOptions, make_behaviour
from pager_service.pager import Pager, PagerConfig
from wire import entropy
from wire.credential import public_of
from wire.protocol import HOSTILE_MODES, Err, Op, decode, encode, error
from wire.server import Server

#: Every fault kind a schedule may use (the --faults list).
FAULTS: tuple[str, ...] = ("drop", "dup", "reorder", "delay", "crash", "hang", "hostile",
                           "diskerr", "torn", "late", "procdie")
KERNEL_ADDR = "sim://kernel"
#: Seeds the rng that draws a seed's prefetch mode (off, trend, readahead).
PREFETCH_SALT: int = 0x9E7C4
#: Per-step probabilities of the node faults.
CRASH_P, HANG_P, PROCDIE_P = 1 / 500, 1 / 700, 1 / 1500
#: Per-write probabilities of the disk faults.
DISKERR_P, TORN_P = 0.02, 0.005
#: Per-write probability (with "crash") that the disk, or the pager, dies between the
#: write and its acknowledgement.
CRASH_ACK_P: float = 0.01
#: How long quiescence may take (simulated seconds) before it is a violation.
QUIESCE_S: float = 120.0


@dataclass
class SimConfig:
    """One run's shape; everything not given is drawn from the seed."""
    seed: int
    steps: int = 2000
    faults: frozenset[str] = frozenset(FAULTS)
    mirrors: int | None = None
    keep_trace: bool = False
    #: Force mirror 0's pager behaviour (None: drawn from the seed when "hostile" is on).
    hostile: str | None = None
    #: Seal pages (False: the kernel trusts the pager -- a known-bad setup for the tests).
    seal: bool = True
    #: Multiplies every fault probability (1.0: the default mix; 5.0: a storm).
    intensity: float = 1.0


@dataclass
class DiskNode:
    """A disk service slot: its device file survives its instances."""
    name: str
    addr: str
    path: Path
    service: DiskService | None = None
    tr: NodeTransport | None = None
    instances: int = 0


@dataclass
class PagerNode:
    """A pager slot (one mirror) and its current instance."""
    mirror: int
    hostile: str = "none"
    pager: Pager | None = None
    tr: NodeTransport | None = None
    instances: int = 0


@dataclass
class RunResult:
    """What one seed did."""
    seed: int
    ok: bool
    trace_hash: str
    steps: int
    failed_step: int | None
    violations: list[str]
    stopped: list[str]
    sim_seconds: float
    shape: dict[str, Any] = field(default_factory=dict)
    trace: list[str] | None = None
    work: dict[str, int] = field(default_factory=dict)


class SimLauncher:
    """The trusted launcher's part: ADMIT each process, hand it its credential."""

    def __init__(self, net: SimNet, secret: bytes) -> None:
        self.secret = secret
        self.tr = net.transport("launcher")
        self.tr.owner = self
        self.sock = self.tr.connect_dealer(KERNEL_ADDR)
        self.rid = 0
        self.waiting: dict[int, SimProcess] = {}

    def admit(self, proc: SimProcess) -> None:
        """ADMIT proc; REGISTER follows when the credential comes back."""
        self.rid += 1
        self.waiting[self.rid] = proc
        self.tr.send(self.sock, None, encode({
            "op": str(Op.ADMIT), "rid": self.rid, "cred": self.secret, "name": proc.name,
            "program": "sim", "digest": "sim", "role": proc.role, "manifest": [], "provides": [],
            "quota": {}, "hostpid": 0, "started": 0.0}))

    def on_frame(self, sock: Any, peer: bytes | None, frame: bytes) -> None:
        """The kernel's answer to an ADMIT."""
        msg = decode(frame)
        rid = msg.get("re")
        proc = self.waiting.pop(rid, None) if isinstance(rid, int) else None
        if proc is None:
            return
        if "err" in msg:
            proc.report("violation", f"admit of {proc.name} refused: {msg.get('msg')}")
            return
        proc.start(msg["cred"])


class World:
    """Kernel, pagers, disks, launcher and processes of one seed (see the module docstring)."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        entropy_rng = random.Random(cfg.seed ^ 0x5EA1ED)
        entropy.set_source(entropy_rng.randbytes)    # undone by close(), or below on failure
        try:
            self._build(cfg)
        except BaseException:
            entropy.set_source(None)
            raise

    def _build(self, cfg: SimConfig) -> None:
        """Everything of the world but its rng and entropy (see the module docstring)."""
        self.clock = SimClock()
        self.net = SimNet(random.Random(self.rng.getrandbits(64)), self.clock)
        if cfg.keep_trace:
            self.net.trace_lines = []
        self.net.on_error = self._node_raised
        self.faults = cfg.faults
        self.x = cfg.intensity
        self.mirrors = cfg.mirrors or self.rng.choice((1, 2))
        #: With two mirrors only mirror 0 misbehaves, so nothing may be stopped.
        self.mirrors_protect = self.mirrors > 1
        self.verdict = invariants.Verdict()
        self.step_no = 0
        self.failed_step: int | None = None
        self.healing = False
        self.tmp = Path(tempfile.mkdtemp(prefix="sealedos-sim-"))
        self.lateness: dict[str, float] = {}
        nframes = self.rng.randint(4, 12)
        policy = self.rng.choice(sorted(POLICIES))
        # the prefetch mode from a stream of its own: every other draw stays what it was
        prefetch = random.Random(cfg.seed ^ PREFETCH_SALT).choice(MODES)
        self.shape = {"mirrors": self.mirrors, "frames": nframes, "policy": policy,
                      "prefetch": prefetch}
        self._set_links()
        self.kernel_failures = invariants.HandlerFailures()
        logging.getLogger("sealedos.kernel").addHandler(self.kernel_failures)
        launcher_secret = entropy.token_bytes(32)
        ktr = self.net.transport("kernel")
        self.kernel = Kernel(KERNEL_ADDR, nframes, policy, self.mirrors, cfg.seal,
                             launcher_key=public_of(launcher_secret), transport=ktr,
                             clock=self.clock, prefetch=prefetch)
        ktr.owner = self.kernel
        self.kernel_tr = ktr
        self.kernel.on_start()
        self.disks = [DiskNode(f"disk{m}", f"sim://disk{m}", self.tmp / f"disk{m}.img")
                      for m in range(self.mirrors)]
        for d in self.disks:
            self._start_disk(d)
        hostile = "none"
        if "hostile" in self.faults and self.rng.random() < 0.5:
            hostile = self.rng.choice(HOSTILE_MODES)
        if cfg.hostile is not None:
            hostile = cfg.hostile
        self.shape["hostile"] = hostile
        self.pagers = [PagerNode(m, hostile if m == 0 else "none") for m in range(self.mirrors)]
        for p in self.pagers:
            self._start_pager(p)
        self.launcher = SimLauncher(self.net, launcher_secret)
        nprocs = self.rng.randint(2, 4)
        self.shape["procs"] = nprocs
        self.procs: list[SimProcess] = []
        server: SimProcess | None = None
        if self.rng.random() < 0.6:
            server = SimProcess("server", self.net, KERNEL_ADDR,
                                random.Random(self.rng.getrandbits(64)), 0, ops=0,
                                report=self._report, role="init")
            self.procs.append(server)
            self.net.after(0.0, lambda: self.launcher.admit(server))
        self.server = server
        self.shape["ipc"] = server is not None
        for i in range(nprocs):
            npages = self.rng.randint(2, 16)
            proc = SimProcess(f"p{i + 1}", self.net, KERNEL_ADDR,
                              random.Random(self.rng.getrandbits(64)), npages,
                              ops=10 ** 9, report=self._report, server=server)
            self.procs.append(proc)
            self.net.after(self.rng.random() * 0.05, functools.partial(self.launcher.admit, proc))

    def _report(self, kind: str, text: str) -> None:
        """A process's report, judged by invariants.py."""
        invariants.judge_report(self, kind, text)

    # -- configuration ---------------------------------------------------------------------
    def _set_links(self) -> None:
        """Link faults for the faulty mirror's links (0; all of them with one mirror)."""
        f = self.faults
        # A process's two connections are each in order, but one may overtake the other
        # (a SHOOTDOWN on control before the FAULT reply on call: the install race).
        proc_link = LinkFaults(latency_s=0.0001, jitter_s=0.005 if "reorder" in f else 0.0005,
                               fifo=True, spike_p=0.002 * self.x if "delay" in f else 0.0,
                               spike_s=1.0)
        self.net.default_link = proc_link
        bad = LinkFaults(latency_s=0.0002, jitter_s=0.003 if "reorder" in f else 0.0,
                         drop_p=0.01 * self.x if "drop" in f else 0.0,
                         dup_p=0.01 * self.x if "dup" in f else 0.0,
                         fifo="reorder" not in f, spike_p=0.004 * self.x if "delay" in f else 0.0,
                         spike_s=4.0)
        good = LinkFaults(latency_s=0.0002, jitter_s=0.0002, fifo=True)
        for m in range(self.mirrors):
            lf = bad if m == 0 else good
            for a, b in ((f"pager{m}", "kernel"), ("kernel", f"pager{m}"),
                         (f"pager{m}", f"disk{m}"), (f"disk{m}", f"pager{m}")):
                self.net.links[(a, b)] = lf

    def _heal_links(self) -> None:
        """Quiescence: every link delivers, in order, soon."""
        good = LinkFaults(latency_s=0.0002, jitter_s=0.0002, fifo=True)
        for key in self.net.links:
            self.net.links[key] = good

    # -- services ----------------------------------------------------------------------------
    def _start_disk(self, d: DiskNode) -> None:
        d.instances += 1
        tr = self.net.transport(f"{d.name}.{d.instances}")
        d.service = DiskService(Device(d.path, size_mib=1), transport=tr, clock=self.clock)
        d.service.bind_router(d.addr)
        tr.owner = _DiskFaults(self, d, d.service)
        d.tr = tr
        d.service.on_start()
        self.net.record(f"start {tr.name}")

    def _start_pager(self, p: PagerNode) -> None:
        p.instances += 1
        tr = self.net.transport(f"pager{p.mirror}.{p.instances}")
        pager = Pager(PagerConfig(KERNEL_ADDR, f"sim://disk{p.mirror}", p.mirror, insecure=True),
                      transport=tr, clock=self.clock)
        if p.hostile != "none":
            pager.hostile = make_behaviour(p.hostile, pager, HostileOptions(
                snoop_path=self.tmp / f"snoop{p.instances}", stall_ms=4000.0,
                seed=self.rng.getrandbits(32)))
        tr.owner = _PagerFaults(self, p, pager)
        p.pager, p.tr = pager, tr
        pager.on_start()
        self.net.record(f"start {tr.name} ({p.hostile})")

    def crash_disk(self, d: DiskNode, restart_s: float) -> None:
        """Kill the disk instance now; a new one opens the same file restart_s later."""
        if d.service is None or d.tr is None:
            return
        self.net.record(f"crash {d.tr.name}")
        self.net.crash(d.tr)
        d.service.device.close()
        d.service, d.tr = None, None
        self.net.after(restart_s, lambda: self._restart(d))

    def crash_pager(self, p: PagerNode, restart_s: float) -> None:
        """Kill the pager instance now; a new one says hello restart_s later."""
        if p.pager is None or p.tr is None:
            return
        self.net.record(f"crash {p.tr.name}")
        self.net.crash(p.tr)
        p.pager.on_stop()                # releases its hostile behaviour, if any
        p.pager, p.tr = None, None
        self.net.after(restart_s, lambda: self._restart(p))

    def _restart(self, node: DiskNode | PagerNode) -> None:
        if isinstance(node, DiskNode):
            if node.service is None:
                self._start_disk(node)
        elif node.pager is None:
            self._start_pager(node)

    def _servers(self) -> list[tuple[NodeTransport, Server]]:
        """Every live server instance, in a fixed order (timers fire in this order on ties)."""
        out: list[tuple[NodeTransport, Server]] = [(self.kernel_tr, self.kernel)]
        for d in self.disks:
            if d.service is not None and d.tr is not None:
                out.append((d.tr, d.service))
        for p in self.pagers:
            if p.pager is not None and p.tr is not None:
                out.append((p.tr, p.pager))
        return out

    # -- errors ------------------------------------------------------------------------------
    def violate(self, text: str) -> None:
        """Record a broken invariant at the current step."""
        if self.failed_step is None:
            self.failed_step = self.step_no
        self.verdict.violations.append(invariants.Violation(self.step_no, text))
        self.net.record(f"VIOLATION {text[:200]}")

    def _node_raised(self, tr: NodeTransport, exc: Exception) -> None:
        """A node raised out of its loop: the kernel must never; a service dies of it."""
        text = f"{tr.name} raised {type(exc).__name__}: {str(exc)[:300]}"
        if tr is self.kernel_tr:
            self.violate(f"kernel raised out of its loop (invariant 4): {text}")
            return
        self.violate(f"untrusted service crashed on what the system sent it: {text}")

    # -- running -------------------------------------------------------------------------------
    def _inject(self) -> None:
        """Maybe one node fault before this step (the seed decides)."""
        rng, f = self.rng, self.faults
        r = rng.random() / self.x
        if "crash" in f and r < CRASH_P:
            restart_s = rng.choice((0.01, 0.2, 1.0, 3.0))
            if rng.random() < 0.5:
                self.crash_pager(self.pagers[0], restart_s)
            else:
                self.crash_disk(self.disks[0], restart_s)
        elif "hang" in f and r < CRASH_P + HANG_P:
            target_tr = rng.choice([self.pagers[0].tr, self.disks[0].tr])
            if target_tr is not None and target_tr.paused_until <= self.clock.t:
                hang_s = rng.choice((0.3, 1.5, 5.0))
                target_tr.paused_until = self.clock.t + hang_s
                self.net.after(hang_s, lambda: None)      # time reaches the resume
                self.net.record(f"hang {target_tr.name} {hang_s}")
        elif "procdie" in f and r < CRASH_P + HANG_P + PROCDIE_P:
            alive = [p for p in self.procs if p.state in ("running", "serving")]
            if alive:
                rng.choice(alive).die("the schedule killed it")

    def _timer_wake(self, tr: NodeTransport, srv: Server) -> float | None:
        """When this server's next timers run (their deadline, plus lateness if enabled)."""
        d = srv.next_deadline()
        if d is None or tr.paused_until > self.clock.t:
            return None
        return d + self.lateness.get(tr.name, 0.0)

    def step(self) -> bool:
        """Run one event or one server's due timers; False when nothing is left to do."""
        if not self.healing:
            self._inject()
        q = self.net.queue
        t_q = q[0].t if q else float("inf")
        best: tuple[NodeTransport, Server] | None = None
        t_s = float("inf")
        for tr, srv in self._servers():
            w = self._timer_wake(tr, srv)
            if w is not None and w < t_s:
                t_s, best = w, (tr, srv)
        if t_q == float("inf") and best is None:
            return False
        self.step_no += 1
        if t_q <= t_s:
            ev = heapq.heappop(q)
            self.clock.advance_to(ev.t)
            ev.fn()
        else:
            assert best is not None
            tr, srv = best
            self.clock.advance_to(t_s)
            self.net.record(f"timers {tr.name}")
            try:
                srv.fire_due()
            except Exception as exc:  # noqa: BLE001 -- judged like a crash in on_frame
                self._node_raised(tr, exc)
            if "late" in self.faults and not self.healing and self.rng.random() < 0.2:
                self.lateness[tr.name] = self.rng.random() * 0.3
            else:
                self.lateness.pop(tr.name, None)
        invariants.check_step(self)
        return True

    def heal(self) -> None:
        """Stop injecting: restart what is down, fix links, finish work (a hang runs out)."""
        self.healing = True
        self.lateness.clear()
        self._heal_links()
        # A hung node is not woken early: the frames it holds are queued for the end of its
        # hang, and frames sent to it now would overtake them (on a real socket the process
        # reads them in order when it resumes; overtaken, an older WRITE of a slot landed
        # on a newer one and an honest process was stopped: seed 17690967).
        for node in [*self.disks, *self.pagers]:
            self._restart(node)                  # type: ignore[arg-type]
        for proc in self.procs:
            proc.finish()

    def _settled(self) -> bool:
        """Every process gone from the kernel, no pager request left, every handle closed
        (a CLOSE waiting to be asked again is in no backlog: only the disk shows it)."""
        k = self.kernel
        if self.server is not None and self.server.state == "serving" and all(
                p.state in ("exited", "dead") for p in self.procs if p is not self.server):
            ipcload.stop_serving(self.server)
        return all(p.state in ("exited", "dead") for p in self.procs) and not k.procs.by_spid \
            and all(not s.inflight and not s.backlog for s in k.pagers.slots) and \
            all(d.service is not None and not d.service.device.stats().handles
                for d in self.disks)

    def run(self) -> RunResult:
        """Steps, then quiescence, then the verdict."""
        try:
            while self.step_no < self.cfg.steps and self.failed_step is None:
                if not self.step():
                    break
            if self.failed_step is None:
                self.heal()
                deadline = self.clock.t + QUIESCE_S
                while self.failed_step is None and self.clock.t < deadline:
                    if self._settled():
                        break
                    if not self.step():
                        break
                if self.failed_step is None:
                    invariants.check_quiescent(self)
        finally:
            self.close()
        return RunResult(
            seed=self.cfg.seed, ok=self.verdict.ok, trace_hash=self.net.trace.hexdigest()[:16],
            steps=self.step_no, failed_step=self.failed_step,
            violations=[f"step {v.step}: {v.text}" for v in self.verdict.violations],
            stopped=list(self.verdict.stopped), sim_seconds=round(self.clock.t, 3),
            shape=dict(self.shape), trace=self.net.trace_lines,
            work={"reads_checked": sum(p.reads_checked for p in self.procs),
                  "calls": sum(p.calls for p in self.procs),
                  "grants_refused": sum(p.grants_refused for p in self.procs),
                  "install_races": sum(p.install_races for p in self.procs),
                  "writes": sum(p.version for p in self.procs),
                  "page_outs": self.kernel.stats.page_outs,
                  "page_ins": self.kernel.stats.page_ins})

    def close(self) -> None:
        """Release files and the global hooks (entropy source, log handler)."""
        logging.getLogger("sealedos.kernel").removeHandler(self.kernel_failures)
        entropy.set_source(None)
        for d in self.disks:
            if d.service is not None:
                d.service.device.close()
                d.service = None
        for p in self.pagers:
            if p.pager is not None:
                p.pager.on_stop()                # releases its hostile behaviour, if any
        shutil.rmtree(self.tmp, ignore_errors=True)


class _DiskFaults:
    """Stands in front of a disk instance: fails or tears some writes (the seed decides)."""

    def __init__(self, world: World, node: DiskNode, service: DiskService) -> None:
        self.world = world
        self.node = node
        self.service = service

    def on_frame(self, sock: Any, peer: bytes | None, frame: bytes) -> None:
        """Deliver to the disk, unless this WRITE fails (EIO) or tears (half, then death)."""
        w = self.world
        if not w.healing and self.node.name == "disk0" and frame.find(b"write") >= 0:
            try:
                msg = decode(frame)
            except Exception:  # noqa: BLE001 -- not ours to judge: the disk refuses it
                msg = {}
            if msg.get("op") == str(Op.WRITE) and isinstance(msg.get("data"), bytes):
                r = w.rng.random() / w.x
                if "diskerr" in w.faults and r < DISKERR_P:
                    w.net.record(f"disk write error {self.node.name}")
                    self.service.transport.send(
                        sock, peer, encode(error(msg.get("rid"), Err.IO, "sim: write failed")))
                    return
                if "crash" in w.faults and w.rng.random() < CRASH_ACK_P * w.x:
                    w.net.record(f"{self.node.name} dies after writing, before answering")
                    node_tr = self.node.tr
                    assert node_tr is not None
                    node_tr.mute = True
                    self.service.on_frame(sock, peer, frame)
                    w.crash_disk(self.node, w.rng.choice((0.01, 0.5)))
                    return
                if "torn" in w.faults and r < DISKERR_P + TORN_P:
                    data = msg["data"]
                    half = len(data) // 2
                    msg["data"] = data[:half] + bytes(len(data) - half)
                    w.net.record(f"torn write {self.node.name}")
                    node_tr = self.node.tr
                    assert node_tr is not None
                    node_tr.mute = True                      # it dies before it can answer
                    self.service.on_frame(sock, peer, encode(msg))
                    w.crash_disk(self.node, w.rng.choice((0.01, 0.5)))
                    return
        self.service.on_frame(sock, peer, frame)


class _PagerFaults:
    """Stands in front of a pager instance: it may die holding a disk's write acknowledgement."""

    def __init__(self, world: World, node: PagerNode, pager: Pager) -> None:
        self.world = world
        self.node = node
        self.pager = pager

    def on_frame(self, sock: Any, peer: bytes | None, frame: bytes) -> None:
        """Deliver, unless this is the disk's answer to a write and the pager dies first."""
        w = self.world
        if not w.healing and "crash" in w.faults and self.node.mirror == 0 and \
                sock is self.pager.disk and frame.find(b"block") >= 0 and \
                w.rng.random() < CRASH_ACK_P * 5 * w.x:
            w.net.record(f"pager{self.node.mirror} dies between a write and its acknowledgement")
            w.crash_pager(self.node, w.rng.choice((0.01, 0.5, 2.0)))
            return
        self.pager.on_frame(sock, peer, frame)
