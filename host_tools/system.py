"""A whole local sealedos system as OS processes: disks, kernel, pagers, apps — and their
supervisor.

`sealedos up`, the benchmarks, `sealedos chaos` and the tests all start the system through
this one class, so they run exactly the same commands the compose file runs.  Every service
is a child process in a private runtime directory; a supervisor thread restarts a dead pager
or disk service (MINIX's reincarnation server) and, through its watchdog (watchdog.py), kills
and restarts one that is alive but hung; stop() leaves no process and no socket.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apps.runtime import SealedProcess
from host_tools import keys_cmd
from host_tools.watchdog import Watchdog
from kernel_daemon.pagers import CLUSTER_PAGES
from kernel_daemon.prefetch import DEFAULT_MODE, FAULT_AROUND
from launcher import reach, spawn
from launcher.launch import LAUNCHER, Launcher, load_launcher_key
from launcher.principals import Principals, random_uid_base
from wire import keys as wkeys
from wire.client import Client
from wire.host import PRIVATE_DIR_ENV
from wire.keys import KEYS_ENV, Keyring
from wire.protocol import Op, ServiceError

#: Sealed processes run at a lower CPU priority than the services, as user processes below a
#: kernel: with dozens of busy apps on 2 cores, the kernel, pagers and disks still get the CPU
#: they need to answer within their timeouts (an overloaded pager is slow, not dead).
APP_NICE: int = 10
SUPERVISE_MS: int = 100
#: How often the supervisor asks its watchdog which services are hung.
WATCHDOG_MS: int = 500
READY_TIMEOUT_S: float = 20.0
#: What `sealedos metrics` prints once it listens.
METRICS_READY: str = "metrics: serving"
#: The services Config.service_nice applies to.
SERVICE_KINDS: frozenset[str] = frozenset({"kernel", "pager", "disk"})
#: How long a tracing kernel gets to write its trace file after SIGTERM.
TRACE_STOP_GRACE_S: float = 30.0


@dataclass
class Service:
    """One child process the system started, and how to start it again."""
    name: str
    kind: str                      # disk, pager, kernel, metrics, init, app
    cmd: list[str]
    log: Path
    proc: subprocess.Popen[bytes]
    restart: bool
    env: dict[str, str] | None = None
    addr: str | None = None        # where it listens (disks: what pagers and the watchdog use)
    uid: int | None = None         # the principal's uid (None: the launcher's)
    nice: int = 0                  # its CPU priority change (a restart gets the same)
    restarts: int = 0
    started: list[float] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        """The current instance's host pid."""
        return self.proc.pid


@dataclass
class Config:
    """Everything `sealedos up` lets a user choose about the services."""
    frames: int = 128
    policy: str = "clock"
    #: Read swapped pages ahead of faults: off, trend or readahead (kernel_daemon/prefetch.py).
    prefetch: str = DEFAULT_MODE
    #: Most prefetched pages a fault installs beside its own (0: no fault-around).
    fault_around: int = FAULT_AROUND
    #: Most dirty pages one PAGE_OUT request carries (1: one a request; kernel_daemon/pagers.py).
    cluster: int = CLUSTER_PAGES
    disk_size_mib: int = 64
    pagers: int = 1
    hostile: str | None = None
    #: How many pagers (the first ones) --hostile makes hostile.
    hostile_count: int = 1
    #: Erasure-code pages "K+R" across the pagers (pagers must be K+R); None: mirroring.
    code: str | None = None
    no_seal: bool = False
    pager_timeout_ms: int = 2000
    pager_retries: int = 5
    trace: str | None = None
    #: Serve Prometheus metrics on 127.0.0.1:PORT (a `sealedos metrics` observer beside the
    #: kernel; 0: none).
    metrics_port: int = 0
    stall_ms: int = 10000
    kernel_args: list[str] = field(default_factory=list)
    #: How the services listen: "ipc" (ipc://RUNDIR/NAME.sock) or "tcp" (the kernel and the
    #: disks on tcp://127.0.0.1, each on a free port), so benchmarks can show what the network
    #: adds (in the compose deployment every hop is tcp://).
    transport: str = "ipc"
    #: NULL security on every connection (no authentication, no encryption): for measuring
    #: what CURVE costs, never for a real run.
    insecure: bool = False
    #: CPU priority of the kernel, pagers and disks (negative: above other processes; taken
    #: only when the launcher runs as root): hundreds of apps must not starve them.
    service_nice: int = 0


class System:
    """Start, supervise and stop one local sealedos system."""

    def __init__(self, config: Config, rundir: Path | None = None,
                 kernel_addr: str | None = None, keys_dir: Path | None = None) -> None:
        """With kernel_addr, attach to a kernel someone else runs (a compose deployment):
        start() starts no service, only waits for its pagers and name service; spawn_app()
        starts local sealed processes against it, as the launcher whose key is in keys_dir
        (default $SEALEDOS_KEYS); stop() stops only those."""
        if config.transport not in ("ipc", "tcp"):
            raise ValueError(f"transport must be ipc or tcp, not {config.transport!r}")
        self.config = config
        self.rundir = rundir or spawn.make_rundir()
        self.attached = kernel_addr is not None
        self.kernel_addr = kernel_addr or (
            spawn.ipc_addr(self.rundir, "kernel") if config.transport == "ipc"
            else f"tcp://127.0.0.1:{_free_port()}")
        #: Where every principal's key lives (made by start(); attached: the deployment's).
        self.keys_dir = keys_dir or (Path(os.environ[KEYS_ENV]) if self.attached and
                                     os.environ.get(KEYS_ENV) else self.rundir / "keys")
        #: The supervisor speaks as the launcher (CURVE; Keyring(None) when insecure).
        self.keys: Keyring = Keyring(None)
        self.launcher: Launcher | None = None
        self.principals = _principals(self.rundir)
        if self.principals.isolate:
            os.chmod(self.rundir, 0o711)     # principals reach their sockets, list nothing
        self.services: dict[str, Service] = {}
        self.events: list[tuple[float, str, str]] = []     # (time, service, what)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._clients: dict[int, Client] = {}

    # -- starting -----------------------------------------------------------------------
    def start(self) -> System:
        """Start disks, kernel, init and pagers; return once the pagers have joined the kernel
        and init serves names.  Attached: only wait for that."""
        if self.attached:
            self._load_keys()
            self.launcher = Launcher(self.kernel_addr, load_launcher_key(self.keys_dir)[1],
                                     kernel_public=self.kernel_public())
            self.wait_pagers()
            self.wait_nameservice()
            return self
        c = self.config
        self._make_keys()
        launcher_public, launcher_secret = load_launcher_key(self.keys_dir)
        for m in range(c.pagers):
            addr = self._listen_addr(f"disk{m}")
            disk = self._launch("disk", f"disk{m}", [
                "--rundir", str(self.rundir), "--addr", addr, "--principal", f"disk{m}",
                "--file", str(self.device_file(m)), "--size-mib", str(c.disk_size_mib)])
            disk.addr = addr
        kargs = ["--rundir", str(self.rundir), "--addr", self.kernel_addr,
                 "--frames", str(c.frames), "--policy", c.policy, "--pagers", str(c.pagers),
                 "--prefetch", c.prefetch, f"--fault-around={c.fault_around}",
                 f"--cluster={c.cluster}",
                 "--pager-timeout-ms", str(c.pager_timeout_ms),
                 "--pager-retries", str(c.pager_retries),
                 f"--launcher-key={launcher_public}",    # one argv: a z85 key may begin with "-"
                 *c.kernel_args]
        if c.code:
            kargs += ["--code", c.code]
        if c.no_seal:
            kargs.append("--no-seal")
        if c.trace:
            kargs += ["--trace", c.trace]
        self._launch("kernel", "kernel", kargs, restart=False)
        for name in ["kernel"] + [f"disk{m}" for m in range(c.pagers)]:
            self._wait_listening(name)
        if c.metrics_port:
            self._start_metrics(c.metrics_port)
        self.launcher = Launcher(self.kernel_addr, launcher_secret,
                                 kernel_public=self.kernel_public())
        self._start_sealed("init", "init", "init", []).restart = True   # names survive it
        for m in range(c.pagers):
            pargs = ["--rundir", str(self.rundir), "--kernel", self.kernel_addr,
                     "--disk", self.services[f"disk{m}"].addr or "", "--mirror", str(m)]
            if c.hostile and m < c.hostile_count:
                pargs += ["--hostile", c.hostile, "--stall-ms", str(c.stall_ms),
                          "--snoop-file", str(self.snoop_file(m))]
            pager = self._launch("pager", f"pager{m}", pargs)
            self.launcher.report_pager(m, pager.pid)
        self.wait_pagers()
        self.wait_nameservice()
        self._thread = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._thread.start()
        return self

    def _launch(self, kind: str, name: str, args: list[str], restart: bool = True,
                env: dict[str, str] | None = None, principal: str | None = None) -> Service:
        """Start service `name` (`sealedos KIND ARGS`) as `principal` (default: `name`),
        logging to RUNDIR/NAME.log."""
        return self._start(kind, name, spawn.python_cmd(kind, *args), restart,
                           {**self._security_env(), **(env or {})}, principal)

    def _start_metrics(self, port: int) -> None:
        """Start the Prometheus exporter (`sealedos metrics`, an observer outside the
        trusted base) on 127.0.0.1:`port`; return once it listens."""
        svc = self._launch("metrics", "metrics", [
            "--rundir", str(self.rundir), "--kernel", self.kernel_addr, "--port", str(port),
            "--host", "127.0.0.1", "--principal", "observer"], restart=False,
            principal="observer")
        deadline = time.monotonic() + READY_TIMEOUT_S
        while METRICS_READY not in svc.log.read_text(errors="replace"):
            if svc.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the metrics exporter did not start:\n" +
                                   self.log_tail("metrics"))
            time.sleep(0.05)

    # -- keys -----------------------------------------------------------------------------
    def _make_keys(self) -> None:
        """Generate a keypair for every principal into RUNDIR/keys (each secret in its
        principal's private 0700 directory, owned by its uid when root); the supervisor
        keeps the launcher's keyring.  Insecure: only the launcher's (ADMIT needs it)."""
        if self.config.insecure:
            self.keys_dir.mkdir(mode=0o711, exist_ok=True)
            keys_cmd.generate(self.keys_dir, [LAUNCHER])
            return
        self.keys_dir.mkdir(mode=0o755)
        keys_dir = self.keys_dir

        def private_dir(principal: str) -> Path:
            path = keys_cmd.default_private_dir(keys_dir, principal)
            uid = self.principals.uid(principal)
            if uid is not None:
                os.chown(path, uid, uid)
            return path
        keys_cmd.generate(keys_dir, keys_cmd.principals_for(self.config.pagers), private_dir)
        self._load_keys()

    def _load_keys(self) -> None:
        """The launcher's keyring from self.keys_dir (attached: the deployment's)."""
        if not self.config.insecure:
            self.keys = wkeys.keyring(self.keys_dir, "launcher", False)

    def kernel_public(self) -> bytes | None:
        """The kernel's CURVE public key (None when insecure)."""
        return self.keys.publics.get("kernel") if self.keys.secure else None

    def _security_env(self) -> dict[str, str]:
        """What every started service is told about security: its keys directory (each
        reads only its own secret and the publics it needs) or SEALEDOS_INSECURE=1."""
        if self.config.insecure:
            return {wkeys.INSECURE_ENV: "1"}
        return {wkeys.KEYS_ENV: str(self.keys_dir)}

    def keyring(self, principal: str) -> Keyring:
        """`principal`'s keyring in this system (tests and tools speaking as an observer, a
        sealed process ...); Keyring(None) when insecure."""
        if self.config.insecure:
            return Keyring(None)
        return wkeys.keyring(self.keys_dir, principal, False)

    def credential_keyring(self, cred: bytes) -> Keyring:
        """The keyring of a connection that proves credential `cred` (a raw client acting as
        the sealed process the launcher admitted); Keyring(None) when insecure."""
        kernel_public = self.kernel_public()
        if kernel_public is None:
            return Keyring(None)
        return Keyring(wkeys.keypair_of_credential(cred), {"kernel": kernel_public})

    def app_env(self) -> dict[str, str]:
        """The environment a sealed process needs besides its credential: where the kernel's
        public key is (SEALEDOS_KEYS), or SEALEDOS_INSECURE=1."""
        return self._security_env()

    def _start(self, kind: str, name: str, cmd: list[str], restart: bool,
               env: dict[str, str] | None, principal: str | None = None) -> Service:
        """Start `cmd` as service `name` under its principal's uid (default: the one called
        `name`), logging to RUNDIR/NAME.log."""
        log = self.rundir / f"{name}.log"
        uid = self.principals.uid(principal or name)
        nice = self.config.service_nice if kind in SERVICE_KINDS and os.geteuid() == 0 else 0
        svc = Service(name, kind, cmd, log, spawn.spawn(cmd, log, env, nice=nice, uid=uid),
                      restart, env, uid=uid, nice=nice)
        svc.started.append(time.monotonic())
        self.services[name] = svc
        return svc

    def _listen_addr(self, name: str) -> str:
        """Where service `name` listens: RUNDIR/NAME.sock (a disk: RUNDIR/sock/diskN/disk.sock,
        reachable by its pager only), or a free port on 127.0.0.1."""
        if self.config.transport == "ipc":
            if name.startswith("disk"):
                where = self.principals.socket_dir(name, "pager" + name[len("disk"):])
                return spawn.ipc_addr(where, "disk")
            return spawn.ipc_addr(self.rundir, name)
        return f"tcp://127.0.0.1:{_free_port()}"

    def device_file(self, m: int) -> Path:
        """Disk m's device file, in the disk's private directory (0600, the disk's uid)."""
        return self.principals.private_dir(f"disk{m}") / f"disk{m}.img"

    def snoop_file(self, m: int) -> Path:
        """Where a snooping pager m keeps what it saw (its private directory)."""
        return self.principals.private_dir(f"pager{m}") / f"pager{m}-snoop.bin"

    def private_dir(self, name: str) -> Path:
        """The private directory of service or sealed process `name` (created on demand)."""
        kind = self.services[name].kind if name in self.services else "app"
        return self.principals.private_dir(_principal(kind, name))

    def _wait_listening(self, name: str) -> None:
        """Wait until service `name` has bound RUNDIR/NAME.sock (ipc) or answers PING (tcp)."""
        svc = self.services[name]
        try:
            if self.config.transport == "ipc":
                addr = svc.addr or self.kernel_addr
                spawn.wait_for_path(Path(addr[len("ipc://"):]), READY_TIMEOUT_S, svc.proc)
            else:
                self._wait_ping(svc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{name} did not start: {exc}\n{self.log_tail(name)}") from None

    def _wait_ping(self, svc: Service) -> None:
        """Wait until `svc` answers PING at its tcp:// address."""
        addr = svc.addr or self.kernel_addr
        deadline = time.monotonic() + READY_TIMEOUT_S
        with Client(addr, keys=self.keys, server=svc.name) as client:
            while True:
                if svc.proc.poll() is not None:
                    raise RuntimeError(f"exited with {svc.proc.returncode} before answering "
                                       f"at {addr}")
                try:
                    client.call(Op.PING, timeout_ms=200)
                    return
                except ServiceError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"no answer at {addr} within "
                                           f"{READY_TIMEOUT_S} s") from None

    def wait_pagers(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Block until every pager slot has a live instance."""
        deadline = time.monotonic() + timeout_s
        pagers: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            pagers = self.stats()["kernel"]["pagers"]
            if all(p["up"] for p in pagers):
                return
            time.sleep(0.05)
        raise RuntimeError(f"pagers did not join the kernel in time: {pagers}\n" +
                           "\n".join(self.log_tail(f"pager{m}") for m in range(len(pagers))))

    def wait_nameservice(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Block until init serves the name service (handle 0 of every process)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.stats()["kernel"]["ipc"]["nameservice"]:
                return
            init = self.services.get("init")
            if init is not None and init.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("init did not start the name service:\n" + self.log_tail("init"))

    def spawn_app(self, app: str, args: list[str], name: str,
                  env: dict[str, str] | None = None, nice: int = APP_NICE) -> Service:
        """Start one sealed process running `app` against this system's kernel (admitted by
        this system's launcher), under its own uid (principal app-NAME) with its private
        directory in SEALEDOS_PRIVATE_DIR (and TMPDIR: the only place it may write), at CPU
        priority `nice`."""
        return self._start_sealed("app", app, name, args, env, nice=nice)

    def _start_sealed(self, kind: str, program: str, name: str, args: list[str],
                      env: dict[str, str] | None = None, nice: int = 0) -> Service:
        """Admit and start one sealed process under its principal's uid, logging to
        RUNDIR/NAME.log."""
        if self.launcher is None:
            raise RuntimeError("the system is not started")
        log = self.rundir / f"{name}.log"
        principal = _principal(kind, name)
        uid = self.principals.uid(principal)
        private = str(self.principals.private_dir(principal))
        full_env = {PRIVATE_DIR_ENV: private, "TMPDIR": private, **(env or {})}
        child = self.launcher.start(program, name, args, log, full_env, nice=nice, uid=uid,
                                    local=not self.attached or self.kernel_addr.startswith("ipc://"))
        argv = child.args
        cmd = [os.fsdecode(a) for a in argv] if isinstance(argv, (list, tuple)) else [str(argv)]
        svc = Service(name, kind, cmd, log, child, restart=False, env=full_env, uid=uid)
        svc.started.append(time.monotonic())
        with self._lock:
            self.services[name] = svc
        return svc

    def admit(self, program: str, name: str, /, **override: Any) -> bytes:
        """A credential for a sealed process of `program` that the caller runs itself (tests,
        benchmarks: SealedProcess.connect(addr, cred)); the kernel will not watch or signal
        it by host pid.  override: service-table fields for this one process (manifest ...)."""
        if self.launcher is None:
            raise RuntimeError("the system is not started")
        return self.launcher.admit(program, name, **override)

    def connect_sealed(self, program: str, name: str, /, **override: Any) -> SealedProcess:
        """This process becomes a sealed process of `program` called `name` on this system
        (benchmarks): admitted by its launcher, speaking with the kernel's public key."""
        return SealedProcess.connect(self.kernel_addr, self.admit(program, name, **override),
                                     kernel_public=self.kernel_public())

    # -- supervision ----------------------------------------------------------------------
    def _supervise(self) -> None:
        watchdog = Watchdog(self.rundir, self.kernel_addr, self.keys)
        next_watch = time.monotonic() + WATCHDOG_MS / 1000
        try:
            while not self._stop.wait(SUPERVISE_MS / 1000):
                self._restart_dead()
                if time.monotonic() >= next_watch:
                    next_watch = time.monotonic() + WATCHDOG_MS / 1000
                    self._kill_hung(watchdog)
        finally:
            watchdog.close()

    def _kill_hung(self, watchdog: Watchdog) -> None:
        """SIGKILL every restartable service the watchdog finds hung (restarted next tick)."""
        with self._lock:
            candidates = [s for s in self.services.values() if s.restart]
        for svc, why in watchdog.hung(candidates):
            with self._lock:
                if self._stop.is_set() or svc.proc.poll() is not None:
                    continue
                self.events.append((time.monotonic(), svc.name, f"hung: {why}; killed"))
                svc.proc.kill()

    def _restart_dead(self) -> None:
        """Start a new instance of every restartable service whose process has exited."""
        with self._lock:
            for svc in list(self.services.values()):
                code = svc.proc.poll()
                if code is None or not svc.restart or self._stop.is_set():
                    continue
                svc.exit_codes.append(code)
                self.events.append((time.monotonic(), svc.name, f"exited {code}"))
                svc.proc = self._relaunch(svc)
                svc.restarts += 1
                svc.started.append(time.monotonic())
                self.events.append((time.monotonic(), svc.name, "restarted"))

    def _relaunch(self, svc: Service) -> subprocess.Popen[bytes]:
        """A new instance of a restartable service: a service's command again, or init
        admitted afresh (a sealed process needs a new credential)."""
        if svc.kind == "init" and self.launcher is not None:
            return self.launcher.start("init", svc.name, [], svc.log, svc.env, uid=svc.uid)
        child = spawn.spawn(svc.cmd, svc.log, svc.env, nice=svc.nice, uid=svc.uid)
        if svc.kind == "pager" and self.launcher is not None:
            self.launcher.report_pager(int(svc.name.removeprefix("pager")), child.pid)
        return child

    def restarts(self) -> dict[str, int]:
        """How many times each restartable service was brought back."""
        return {s.name: s.restarts for s in self.services.values() if s.restart}

    # -- talking to the kernel -------------------------------------------------------------
    def client(self) -> Client:
        """A connection to the kernel, one per calling thread."""
        tid = threading.get_ident()
        if tid not in self._clients:
            self._clients[tid] = Client(self.kernel_addr, keys=self.keys)
        return self._clients[tid]

    def stats(self) -> dict[str, Any]:
        """The kernel's STATS reply."""
        return self.client().call(Op.STATS)

    def process(self, name: str) -> dict[str, Any] | None:
        """The kernel's newest record of the sealed process called `name`."""
        recs = [p for p in self.stats()["processes"] if p["name"] == name]
        return recs[-1] if recs else None

    def wait_apps(self, timeout_s: float) -> dict[str, int | None]:
        """Wait until every app exits (or the timeout); return their exit codes."""
        deadline = time.monotonic() + timeout_s
        apps = [s for s in self.services.values() if s.kind == "app"]
        while time.monotonic() < deadline and any(s.proc.poll() is None for s in apps):
            time.sleep(0.05)
        return {s.name: s.proc.poll() for s in apps}

    def log_tail(self, name: str, lines: int = 30) -> str:
        """The last lines a service printed."""
        svc = self.services.get(name)
        if svc is None or not svc.log.exists():
            return f"({name}: no log)"
        text = svc.log.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {name} ---\n" + "\n".join(text)

    # -- stopping -------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop every process (apps first, kernel last but one, disks last), remove the rundir."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        if self.launcher is not None:
            self.launcher.close()
        order = {"app": 0, "metrics": 0, "init": 1, "pager": 1, "kernel": 2, "disk": 3}
        with self._lock:
            for svc in sorted(self.services.values(), key=lambda s: order[s.kind]):
                tracing = svc.kind == "kernel" and self.config.trace
                spawn.stop(svc.proc, TRACE_STOP_GRACE_S if tracing else spawn.STOP_GRACE_S)
        spawn.remove_rundir(self.rundir)

    def __enter__(self) -> System:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _principal(kind: str, name: str) -> str:
    """The principal a service or sealed process runs as: its own name (kernel, init, diskN,
    pagerN), or app-NAME for a sealed process."""
    return f"app-{name}" if kind == "app" else name


def _principals(rundir: Path) -> Principals:
    """The book of principals for one run: their own uids when root and the host lets a
    child drop to one (else everyone is the launcher's, said loudly on stderr)."""
    why_not = reach.can_drop_uid() if os.geteuid() == 0 else None
    if why_not is not None:
        print(f"sealedos: launcher: WARNING: every process runs as root: {why_not}; only "
              f"non-dumpable processes and confinement protect them", file=sys.stderr, flush=True)
    return Principals(rundir, uid_base=random_uid_base(),
                      isolate=os.geteuid() == 0 and why_not is None)


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a tcp:// kernel)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
