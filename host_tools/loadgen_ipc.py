"""`sealedos bench ipc`: the IPC load generator -- the kernel's routing path against a bare broker.

    sealedos bench ipc [--clients 16] [--servers 4] [--size 64] [--duration 10]
                       [--slices 4] [--transport ipc|tcp] [--kernel ADDR] [--json]
                       [--security secure|insecure|both] [--plot FILE.png]

The same traffic two ways, in one invocation:

* **kernel**: a whole System (kernel, init, pager, disk), ``--servers`` echo servers (sealed
  processes, apps.echo) and ``--clients`` sealed client processes, client i calling server
  i mod K through the kernel: every message is copied through the kernel, its handle looked
  up, its contract checked, its sender stamped.
* **bare**: the same numbers of client and server processes around a plain pyzmq ROUTER
  broker with no kernel logic (host_tools.bare_broker), at the same CPU priorities: its
  servers and clients at the sealed apps' (host_tools.system.APP_NICE), the broker at the
  kernel's, so that the machine's other load meets both fleets alike.

Both fleets are started and warmed up first; then each measures ``--duration`` seconds in
``--slices`` windows that alternate (kernel, bare, kernel, bare ...), so a change in the
machine's background load hits both alike.  A window starts when the harness creates its go
file; every client records the latency of each round trip.  The report gives, per fleet,
round trips/s (summed over clients), MB/s (payload bytes, both ways), latency p50/p99/p99.9,
the ratio kernel/bare of round trips/s and of p99, each with its spread over the ``--slices``
pairs of adjacent windows (min..max: the repeated runs), and the CPU each role (router: the
kernel or the broker; servers; clients) spent per round trip, from the processes' CPU times
over the windows.  ``--json`` prints ``{"kernel": {...}, "bare": {...}, "ratio": x, ...}``;
``--plot`` draws the latency distributions
and throughputs (matplotlib, Agg).  ``--transport tcp`` puts the kernel and the bare broker on
tcp://127.0.0.1 instead of ipc:// sockets.  ``--kernel ADDR`` runs the kernel fleet against a
kernel already running there -- a compose deployment's (its `loadgen` profile) -- instead of
starting a System: the sealed servers and clients are local processes connected to it, named
apart from earlier runs'; the bare fleet stays local.  Nothing here is a test: figures are
reported, never asserted.

Security: by default CURVE on every connection, the bare broker with the same security as the
kernel.  ``--security both`` runs every measurement twice, CURVE and then NULL
(``--insecure``), and prints the cost of CURVE (secure/insecure round trips/s for each
fleet); ``--json`` then prints ``{"secure": {...}, "insecure": {...}}`` (per transport with
``--transport both``).  Against ``--kernel ADDR`` only that deployment's security is measured
(SEALEDOS_INSECURE=1 for an insecure one).
"""
from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import zmq
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from host_tools import bare_broker
from host_tools.system import APP_NICE, Config, System, _free_port
from launcher import spawn
from wire.keys import insecure_from_env

READY_TIMEOUT_S: float = 120.0
SLICE_GRACE_S: float = 60.0
TICK_S: float = 0.25


@dataclass
class Run:
    """One fleet's results: per-client latency samples, measured seconds, where each window's
    samples end and how long each window was (per client), and CPU seconds by role."""
    name: str
    size: int
    samples: list[np.ndarray]
    windows_s: list[float]
    slice_ends: list[list[int]] = field(default_factory=list)
    slice_s: list[list[float]] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)
    cpu_windows: list[int] = field(default_factory=list)   # the windows cpu_s covers

    def summary(self) -> dict[str, Any]:
        """The five figures of the report, and CPU per round trip by role."""
        lat = np.concatenate(self.samples) if self.samples else np.zeros(1)
        rts = sum(len(s) / w for s, w in zip(self.samples, self.windows_s, strict=True) if w > 0)
        p50, p99, p999 = np.percentile(lat, [50, 99, 99.9])
        total = max(1, sum(self.count(k) for k in self.cpu_windows))
        return {"round_trips_per_s": round(float(rts), 1),
                "mb_per_s": round(float(rts) * self.size * 2 / 1e6, 3),
                "p50_us": round(float(p50), 1), "p99_us": round(float(p99), 1),
                "p999_us": round(float(p999), 1),
                "cpu_us_per_round_trip": {r: round(c * 1e6 / total, 1)
                                          for r, c in self.cpu_s.items()}}

    def count(self, k: int) -> int:
        """Round trips in window k (summed over clients)."""
        return sum(ends[k] - (ends[k - 1] if k else 0) for ends in self.slice_ends)

    def window(self, k: int) -> tuple[float, float]:
        """Window k's round trips/s (summed over clients) and latency p99 (us)."""
        rts, lats = 0.0, []
        for s, ends, lengths in zip(self.samples, self.slice_ends, self.slice_s, strict=True):
            lo = ends[k - 1] if k else 0
            lats.append(s[lo:ends[k]])
            rts += (ends[k] - lo) / lengths[k] if lengths[k] > 0 else 0.0
        lat = np.concatenate(lats) if lats else np.zeros(1)
        return rts, float(np.percentile(lat, 99)) if len(lat) else 0.0


def window_ratios(kernel: Run, bare: Run, slices: int) -> list[dict[str, float]]:
    """Per pair of adjacent windows (kernel k, bare k): kernel/bare round trips/s and p99."""
    out = []
    for k in range(slices):
        (krts, kp99), (brts, bp99) = kernel.window(k), bare.window(k)
        out.append({"ratio": round(krts / brts, 3) if brts else 0.0,
                    "p99_ratio": round(kp99 / bp99, 3) if bp99 else 0.0})
    return out


def cpu_seconds(pids: dict[str, list[int]]) -> dict[str, float] | None:
    """CPU seconds (user + system) used so far by each role's processes, all threads; for
    the router also its main thread alone ("router main": the Python loop; the rest is
    ZeroMQ's I/O thread, where CURVE is done).  None if a process is gone (its CPU with it)."""
    out: dict[str, float] = {}
    for role, group in pids.items():
        total = main = 0.0
        for pid in group:
            try:
                proc = psutil.Process(pid)
                t = proc.cpu_times()
                threads = proc.threads() if role == "router" else []
            except psutil.Error:
                return None
            total += t.user + t.system
            main += sum(th.user_time + th.system_time for th in threads if th.id == pid)
        out[role] = total
        if role == "router":
            out["router main"] = main
    return out


def _wait(what: str, pred: Callable[[], bool], timeout_s: float, why: Callable[[], str]) -> None:
    """Poll pred() until true; RuntimeError naming `what` (and why()) on timeout."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"loadgen: timed out waiting for {what}\n{why()}")
        time.sleep(0.02)


def _client_args(args: argparse.Namespace, go: Path, out: Path) -> list[str]:
    """The bench-mode flags every client of either fleet gets."""
    return ["--size", str(args.size), "--duration", str(args.duration), "--slices",
            str(args.slices), "--go-file", str(go), "--out", str(out)]


def _load(outs: list[Path], name: str, size: int) -> Run:
    """The fleet's results from its clients' --out files."""
    run = Run(name, size, [], [])
    for out in outs:
        data = json.loads(out.read_text())
        run.samples.append(np.asarray(data["lat_us"], dtype=np.float64))
        run.windows_s.append(float(data["window_s"]))
        run.slice_ends.append(list(data["slice_ends"]))
        run.slice_s.append(list(data["slice_s"]))
    return run


# -- the fleets --------------------------------------------------------------------------------
class KernelFleet:
    """Sealed echo servers and clients in one System: traffic through the kernel."""

    name = "kernel"

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.system = System(Config(frames=args.frames, transport=args.transport,
                                    insecure=args.insecure), kernel_addr=args.kernel)
        tag = f"{secrets.token_hex(3)}." if args.kernel else ""   # a shared kernel remembers
        self.servers = [f"echo.{tag}{k}" for k in range(args.servers)]
        self.clients = [f"client.{tag}{i}" for i in range(args.clients)]
        self.go = self.system.rundir / "go"
        # Each sealed client may write only its own private directory.
        self.outs = [self.system.private_dir(c) / "out.json" for c in self.clients]
        self._last = (0, 0.0)
        self._stats: dict[str, Any] = {"kernel": {"ipc_calls": 0}, "processes": []}

    def start(self) -> None:
        """Start the system and the servers, then the clients (they warm up by themselves)."""
        s = self.system
        s.start()
        for name in self.servers:
            s.spawn_app("echo", ["--register", name], name)
        _wait("the echo servers", lambda: all(self._report(n).get("ready") for n in self.servers),
              READY_TIMEOUT_S, lambda: s.log_tail(self.servers[0]))
        for i, name in enumerate(self.clients):
            s.spawn_app("echo", ["--client", "--target", self.servers[i % len(self.servers)],
                                 *_client_args(self.args, self.go, self.outs[i])], name)

    def _records(self) -> dict[str, dict[str, Any]]:
        """The kernel's records of every process, by name (the snapshot is kept: rate() reads
        its call count, so a progress tick costs the kernel one STATS, not two)."""
        self._stats = self.system.stats()
        return {p["name"]: p for p in self._stats["processes"]}

    def _report(self, name: str) -> dict[str, Any]:
        """What process `name` REPORTed so far."""
        return (self.system.process(name) or {}).get("report") or {}

    def _check(self) -> None:
        """Raise if a client (or any bare process) has died."""
        for c in self.clients:
            code = self.system.services[c].proc.poll()
            if code not in (None, 0):
                raise RuntimeError(f"loadgen: {c} exited {code}:\n{self.system.log_tail(c)}")

    def ready(self) -> bool:
        """True once every client has warmed up."""
        self._check()
        recs = self._records()
        return all(((recs.get(c) or {}).get("report") or {}).get("ready") for c in self.clients)

    def go_slice(self, k: int) -> None:
        """Start window k."""
        self._last = (self.system.stats()["kernel"]["ipc_calls"], time.monotonic())
        Path(f"{self.go}.{k}").touch()

    def slice_done(self, k: int) -> bool:
        """True once every client has finished window k."""
        self._check()
        recs = self._records()
        return all(((recs.get(c) or {}).get("report") or {}).get("slice", 0) > k
                   for c in self.clients)

    def rate(self) -> float | None:
        """Round trips/s since the last call (the kernel counts them; the last snapshot)."""
        calls: int = self._stats["kernel"]["ipc_calls"]
        now = time.monotonic()
        r = (calls - self._last[0]) / max(1e-6, now - self._last[1])
        self._last = (calls, now)
        return r

    def results(self) -> Run:
        """Wait for the clients to write their samples; load them."""
        _wait("the sealed clients to finish", lambda: all(
            self.system.services[c].proc.poll() is not None for c in self.clients),
            SLICE_GRACE_S, lambda: self.system.log_tail(self.clients[0]))
        self._check()
        return _load(self.outs, self.name, self.args.size)

    def why(self) -> str:
        """The log lines that explain a failure."""
        return self.system.log_tail(self.clients[0])

    def pids(self) -> dict[str, list[int]]:
        """The fleet's processes by role (the router is the kernel; none with --kernel)."""
        svc = self.system.services
        return {"router": [svc["kernel"].pid] if "kernel" in svc else [],
                "servers": [svc[n].pid for n in self.servers],
                "clients": [svc[n].pid for n in self.clients]}

    def stop(self) -> None:
        """Stop every process of the fleet and remove its files."""
        self.system.stop()


class BareFleet:
    """The same shape around a bare pyzmq ROUTER broker (host_tools.bare_broker)."""

    name = "bare"

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rundir = spawn.make_rundir("sealedos-bare-")
        self.addr = (spawn.ipc_addr(self.rundir, "broker") if args.transport == "ipc"
                     else f"tcp://127.0.0.1:{_free_port()}")
        self.go = self.rundir / "go"
        self.outs = [self.rundir / f"client.{i}.json" for i in range(args.clients)]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.clients: list[subprocess.Popen[bytes]] = []
        # the same transport security as the kernel fleet: CURVE with a throwaway broker key
        self.env = {} if args.insecure else {
            bare_broker.SECRET_ENV: zmq.curve_keypair()[1].decode("ascii")}

    def _start(self, name: str, *argv: str, nice: int = 0) -> subprocess.Popen[bytes]:
        """Start one bare process (`python -m host_tools.bare_broker ARGV`) at CPU priority
        `nice`."""
        cmd = [sys.executable, "-m", "host_tools.bare_broker", *argv, "--addr", self.addr]
        self.procs.append(spawn.spawn(cmd, self.rundir / f"{name}.log", self.env, nice=nice))
        return self.procs[-1]

    def start(self) -> None:
        """Start the broker, the servers and the clients: the broker at the kernel's CPU
        priority, the servers and clients at the sealed apps' (APP_NICE), so that both fleets
        meet the machine's other load alike."""
        a = self.args
        self._start("broker", "broker")
        for k in range(a.servers):
            self._start(f"server.{k}", "server", "--id", str(k), nice=APP_NICE)
        self.clients = [self._start(f"client.{i}", "client", "--id", str(i), "--server",
                                    str(i % a.servers), *_client_args(a, self.go, self.outs[i]),
                                    nice=APP_NICE)
                        for i in range(a.clients)]

    def _check(self) -> None:
        """Raise if a client (or any bare process) has died."""
        if any(p.poll() not in (None, 0) for p in self.procs):
            raise RuntimeError("loadgen: a bare process died:\n" + self.why())

    def ready(self) -> bool:
        """True once every client has warmed up."""
        self._check()
        return all(Path(f"{o}.ready").exists() for o in self.outs)

    def go_slice(self, k: int) -> None:
        """Start window k."""
        Path(f"{self.go}.{k}").touch()

    def slice_done(self, k: int) -> bool:
        """True once every client has finished window k."""
        self._check()
        return all(Path(f"{o}.done.{k}").exists() for o in self.outs)

    def rate(self) -> float | None:
        """Round trips/s since the last call (None: not counted)."""
        return None                      # the bare broker counts nothing

    def results(self) -> Run:
        """Wait for the clients to write their samples; load them."""
        deadline = time.monotonic() + SLICE_GRACE_S
        for c in self.clients:
            c.wait(max(0.1, deadline - time.monotonic()))
        self._check()
        return _load(self.outs, self.name, self.args.size)

    def why(self) -> str:
        """The log lines that explain a failure."""
        logs = [self.rundir / "broker.log", self.rundir / "client.0.log"]
        return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-2000:]}"
                         for p in logs if p.exists())

    def pids(self) -> dict[str, list[int]]:
        """The fleet's processes by role (the router is the bare broker)."""
        n = self.args.servers
        return {"router": [self.procs[0].pid], "servers": [p.pid for p in self.procs[1:1 + n]],
                "clients": [p.pid for p in self.clients]}

    def stop(self) -> None:
        """Stop every process of the fleet and remove its files."""
        spawn.stop_all(self.procs, 1.0)
        spawn.remove_rundir(self.rundir)


Fleet = KernelFleet | BareFleet


def measure(fleets: list[Fleet], args: argparse.Namespace, progress: Progress) -> list[Run]:
    """Start both fleets, then alternate their windows; return their results."""
    task = progress.add_task("starting", total=None)
    for f in fleets:
        progress.update(task, description=f"{f.name}: starting {args.servers} servers and "
                                          f"{args.clients} clients")
        f.start()
    for f in fleets:
        progress.update(task, description=f"{f.name}: clients warming up")
        _wait(f"the {f.name} clients", f.ready, READY_TIMEOUT_S, f.why)
    progress.remove_task(task)
    slice_s = args.duration / args.slices
    bars = {f.name: progress.add_task(f"{f.name}", total=args.duration) for f in fleets}
    cpu: dict[str, dict[str, float]] = {f.name: {} for f in fleets}
    counted: dict[str, list[int]] = {f.name: [] for f in fleets}
    for k in range(args.slices):
        for f in fleets:
            pids = f.pids()
            before = cpu_seconds(pids)
            f.go_slice(k)
            t0 = time.monotonic()
            while not f.slice_done(k):
                time.sleep(TICK_S)
                r = f.rate()
                done = k * slice_s + min(slice_s, time.monotonic() - t0)
                text = f"{f.name}: window {k + 1}/{args.slices}" + (
                    f", {r:,.0f} round trips/s" if r is not None else "")
                progress.update(bars[f.name], completed=done, description=text)
                if time.monotonic() - t0 > slice_s + SLICE_GRACE_S:
                    raise RuntimeError(f"loadgen: {f.name} window {k} did not end\n{f.why()}")
            progress.update(bars[f.name], completed=(k + 1) * slice_s)
            after = cpu_seconds(pids)
            if before is not None and after is not None:   # (clients exit after the last)
                counted[f.name].append(k)
                for role in after:
                    cpu[f.name][role] = cpu[f.name].get(role, 0.0) + after[role] - before[role]
    runs = [f.results() for f in fleets]
    for f, run in zip(fleets, runs, strict=True):
        run.cpu_s, run.cpu_windows = cpu[f.name], counted[f.name]
    return runs


# -- reporting ---------------------------------------------------------------------------------
def print_report(result: dict[str, Any], args: argparse.Namespace, console: Console) -> None:
    """The two fleets side by side, and the ratio."""
    t = Table(title=f"IPC echo: {args.clients} clients, {args.servers} servers, "
                    f"{args.size}-byte payloads, {args.duration:g} s each in {args.slices} "
                    f"alternating windows, {args.kernel or args.transport + '://'}, "
                    f"{'NULL (insecure)' if args.insecure else 'CURVE'}")
    t.add_column("")
    for name in ("round trips/s", "MB/s", "p50 us", "p99 us", "p99.9 us"):
        t.add_column(name, justify="right")
    for run in ("kernel", "bare"):
        r = result[run]
        t.add_row(run, f"{r['round_trips_per_s']:,.0f}", f"{r['mb_per_s']:.2f}",
                  f"{r['p50_us']:.0f}", f"{r['p99_us']:.0f}", f"{r['p999_us']:.0f}")
    console.print(t)
    lo, hi = result["ratio_spread"]
    plo, phi = result["p99_ratio_spread"]
    console.print(f"ratio kernel/bare (round trips/s): [bold]{result['ratio']:.2f}[/bold] "
                  f"(per window pair {lo:.2f}..{hi:.2f}, target >= 0.8); p99 kernel/bare "
                  f"{result['p99_ratio']:.2f} (per window pair {plo:.2f}..{phi:.2f}, target <= 2)")
    roles = ("router", "router main", "servers", "clients")
    cpu = {run: result[run]["cpu_us_per_round_trip"] for run in ("kernel", "bare")}
    console.print("CPU per round trip (us, all processes of a role, all threads): " + "; ".join(
        f"{role} kernel {cpu['kernel'].get(role, 0):.0f} / bare {cpu['bare'].get(role, 0):.0f}"
        for role in roles) + " (the router: the kernel against the bare broker)")
    fleet = {run: sum(v for r, v in cpu[run].items() if r != "router main") for run in cpu}
    if fleet["kernel"]:
        console.print(f"whole fleet: kernel {fleet['kernel']:.0f} us, bare {fleet['bare']:.0f} us "
                      f"of CPU per round trip; bare/kernel {fleet['bare'] / fleet['kernel']:.2f} "
                      f"(the ratio a CPU-bound machine allows)")


def plot(runs: list[Run], result: dict[str, Any], path: str) -> None:
    """Latency distributions (CDF, log scale) and throughputs, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for run in runs:
        lat = np.sort(np.concatenate(run.samples))
        ax1.plot(lat, np.arange(1, len(lat) + 1) / len(lat), label=run.name)
    ax1.set_xscale("log")
    ax1.set_xlabel("round-trip latency (us)")
    ax1.set_ylabel("fraction of calls")
    ax1.set_title("latency distribution")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend()
    names = [r.name for r in runs]
    ax2.bar(names, [result[n]["round_trips_per_s"] for n in names], color=["C0", "C1"])
    ax2.set_ylabel("round trips/s")
    ax2.set_title(f"throughput (ratio kernel/bare {result['ratio']:.2f})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    """`sealedos bench ipc` flags."""
    p = argparse.ArgumentParser(prog="sealedos bench ipc", description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--servers", type=int, default=4)
    p.add_argument("--size", type=int, default=64, help="payload bytes per message")
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per fleet")
    p.add_argument("--slices", type=int, default=4, help="alternating windows per fleet")
    p.add_argument("--transport", choices=("ipc", "tcp", "both"), default="ipc",
                   help="both: ipc:// then tcp://, side by side")
    p.add_argument("--kernel", metavar="ADDR",
                   help="run the kernel fleet against the kernel at ADDR instead of starting one")
    p.add_argument("--frames", type=int, default=256)
    p.add_argument("--security", choices=("secure", "insecure", "both"), default="secure",
                   help="CURVE on every connection, NULL, or both in one run (the cost; "
                        "each run's bare broker has the same security as its kernel)")
    p.add_argument("--json", action="store_true", help="print only the JSON result")
    p.add_argument("--plot", help="write latency/throughput plots to this PNG")
    return p


def run_once(args: argparse.Namespace, console: Console) -> tuple[list[Run], dict[str, Any]]:
    """Both fleets on one transport: their runs and the result map (kernel, bare, ratio)."""
    fleets: list[Fleet] = [KernelFleet(args), BareFleet(args)]
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as progress:
            runs = measure(fleets, args, progress)
    finally:
        for f in fleets:
            f.stop()
    result: dict[str, Any] = {r.name: r.summary() for r in runs}
    k, b = result["kernel"], result["bare"]
    result["ratio"] = round(k["round_trips_per_s"] / b["round_trips_per_s"], 3) \
        if b["round_trips_per_s"] else 0.0
    result["p99_ratio"] = round(k["p99_us"] / b["p99_us"], 3) if b["p99_us"] else 0.0
    windows = window_ratios(runs[0], runs[1], args.slices)
    result["windows"] = windows
    result["ratio_spread"] = [min(w["ratio"] for w in windows), max(w["ratio"] for w in windows)]
    result["p99_ratio_spread"] = [min(w["p99_ratio"] for w in windows),
                                  max(w["p99_ratio"] for w in windows)]
    return runs, result


def main(argv: list[str]) -> int:
    """Run both fleets (on one transport, or on ipc:// then tcp://), report them and the ratio."""
    args = build_parser().parse_args(argv)
    if args.clients < 1 or args.servers < 1 or args.duration <= 0 or args.slices < 1 \
            or not 0 <= args.size <= 60000 or (args.transport == "both" and args.kernel):
        print("sealedos bench ipc: --clients/--servers/--slices >= 1, --duration > 0, "
              "--size 0..60000, --transport both without --kernel", file=sys.stderr)
        return 2
    args.servers = min(args.servers, args.clients)
    console = Console(stderr=True)
    transports = ["ipc", "tcp"] if args.transport == "both" else [args.transport]
    if args.kernel:                       # a deployment's kernel: measure its security only
        securities = ["insecure" if insecure_from_env() else "secure"]
    else:
        securities = ["secure", "insecure"] if args.security == "both" else [args.security]
    results: dict[str, dict[str, Any]] = {}
    for transport in transports:
        for security in securities:
            one = argparse.Namespace(**{**vars(args), "transport": transport,
                                        "insecure": security == "insecure"})
            runs, result = run_once(one, console)
            results.setdefault(transport, {})[security] = result
            if not args.json:
                print_report(result, one, Console())
            if args.plot:
                path = args.plot
                if len(transports) > 1 or len(securities) > 1:
                    path = args.plot.replace(".png", f"-{transport}-{security}.png")
                plot(runs, result, path)
                if not args.json:
                    console.print(f"plot written to {path}")
        if len(securities) > 1 and not args.json:
            print_security_cost(results[transport], transport, Console())
    first = securities[0]
    if len(transports) > 1 and not args.json:
        k = {t: results[t][first]["kernel"]["round_trips_per_s"] for t in transports}
        p50 = {t: results[t][first]["kernel"]["p50_us"] for t in transports}
        Console().print(f"what TCP adds ({first}): kernel round trips/s tcp/ipc = "
                        f"{k['tcp'] / k['ipc']:.2f}, p50 tcp/ipc = {p50['tcp'] / p50['ipc']:.2f}")
    if args.json:
        flat = {t: (r[first] if len(securities) == 1 else r) for t, r in results.items()}
        print(json.dumps(flat[transports[0]] if len(transports) == 1 else flat))
    return 0


def print_security_cost(by_security: dict[str, Any], transport: str, console: Console) -> None:
    """What CURVE costs against NULL on one transport, for the kernel and the bare broker."""
    s, n = by_security["secure"], by_security["insecure"]
    cost = {f: s[f]["round_trips_per_s"] / n[f]["round_trips_per_s"]
            for f in ("kernel", "bare") if n[f]["round_trips_per_s"]}
    p50 = {f: s[f]["p50_us"] / n[f]["p50_us"] for f in ("kernel", "bare") if n[f]["p50_us"]}
    console.print(f"CURVE vs NULL on {transport}://: round trips/s secure/insecure = "
                  + ", ".join(f"{f} {v:.2f}" for f, v in cost.items())
                  + "; p50 secure/insecure = " + ", ".join(f"{f} {v:.2f}" for f, v in p50.items())
                  + f"; ratio kernel/bare secure {s['ratio']:.2f}, insecure {n['ratio']:.2f}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
