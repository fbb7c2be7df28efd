"""`sealedos bench ipc`: the IPC load generator -- the kernel's routing path against a bare broker.

    sealedos bench ipc [--clients 16] [--servers 4] [--size 64] [--duration 10]
                       [--transport ipc|tcp] [--kernel ADDR] [--json] [--plot FILE.png]

Two runs of the same traffic, in one invocation:

1. **kernel**: a whole System (kernel, init, pager, disk), ``--servers`` echo servers (sealed
   processes, apps.echo) and ``--clients`` sealed client processes, client i calling server
   i mod K through the kernel: every message is copied through the kernel, its handle looked
   up, its contract checked, its sender stamped.
2. **bare**: the same number of client and server processes around a plain pyzmq ROUTER
   broker with no kernel logic (apps.bare_broker).

Every client warms up, says it is ready, and starts when the harness creates the go file,
so all of them measure the same window of ``--duration`` seconds.  Each records the latency
of every round trip; the report gives round trips/s (summed over clients), MB/s (payload
bytes both ways) and latency p50/p99/p99.9 for each run, and the ratio kernel/bare of round
trips/s.  ``--json`` prints exactly ``{"kernel": {...}, "bare": {...}, "ratio": x}``;
``--plot`` draws the latency distributions and throughputs (matplotlib, Agg).
``--transport tcp`` puts the kernel (and the bare broker) on tcp://127.0.0.1 instead of
ipc:// sockets.  ``--kernel ADDR`` runs the kernel part against a kernel already running
there -- a compose deployment's, say -- instead of starting a System: the sealed servers and
clients are local processes connected to it (the bare run stays local).
Nothing here is a test: figures are reported, never asserted.
"""
from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kernel_daemon import spawn
from kernel_daemon.system import Config, System, _free_port

READY_TIMEOUT_S: float = 120.0
FINISH_GRACE_S: float = 60.0
TICK_S: float = 0.5
KEYS: tuple[str, ...] = ("round_trips_per_s", "mb_per_s", "p50_us", "p99_us", "p999_us")


@dataclass
class Run:
    """One run's raw results: per-client latency samples and measuring windows."""
    name: str
    size: int
    samples: list[np.ndarray]
    windows_s: list[float]

    def summary(self) -> dict[str, float]:
        """The five figures of the report."""
        lat = np.concatenate(self.samples) if self.samples else np.zeros(1)
        rts = sum(len(s) / w for s, w in zip(self.samples, self.windows_s) if w > 0)
        p50, p99, p999 = np.percentile(lat, [50, 99, 99.9])
        return {"round_trips_per_s": round(float(rts), 1),
                "mb_per_s": round(float(rts) * self.size * 2 / 1e6, 3),
                "p50_us": round(float(p50), 1), "p99_us": round(float(p99), 1),
                "p999_us": round(float(p999), 1)}


def _load(out: Path) -> tuple[np.ndarray, float]:
    """One client's samples and window from its --out file."""
    data = json.loads(out.read_text())
    return np.asarray(data["lat_us"], dtype=np.float64), float(data["end"]) - float(data["start"])


def _measure(progress: Progress, label: str, duration_s: float, go: Path,
             rate: Callable[[], float | None], alive: Callable[[], bool]) -> None:
    """Create the go file and show progress (with the live rate, when known) for duration_s."""
    task = progress.add_task(f"{label}: measuring", total=duration_s)
    go.touch()
    t0 = time.monotonic()
    while (left := duration_s - (time.monotonic() - t0)) > 0:
        time.sleep(min(TICK_S, max(0.0, left)))
        r = rate()
        text = f"{label}: {r:,.0f} round trips/s" if r is not None else f"{label}: measuring"
        progress.update(task, completed=min(duration_s, time.monotonic() - t0), description=text)
        if not alive():
            break
    progress.update(task, completed=duration_s)


def _wait(what: str, pred: Callable[[], bool], timeout_s: float, why: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"loadgen: timed out waiting for {what}\n{why()}")
        time.sleep(0.05)


# -- the kernel run ----------------------------------------------------------------------------
def run_kernel(args: argparse.Namespace, progress: Progress) -> Run:
    """The traffic through the kernel: sealed echo servers and clients in one System."""
    system = System(Config(frames=args.frames, transport=args.transport), kernel_addr=args.kernel)
    task = progress.add_task("kernel: starting the system", total=None)
    # a shared kernel may remember earlier runs' processes: this run's names are its own
    tag = f"{secrets.token_hex(3)}." if args.kernel else ""
    try:
        system.start()
        servers = [f"echo.{tag}{k}" for k in range(args.servers)]
        for name in servers:
            system.spawn_app("echo", ["--register", name], name)
        _wait("the echo servers", lambda: all(
            (system.process(n) or {}).get("report", {}).get("ready") for n in servers),
            READY_TIMEOUT_S, lambda: system.log_tail(servers[0]))
        clients = [f"client.{tag}{i}" for i in range(args.clients)]
        go = system.rundir / "go"
        outs = [system.rundir / f"{c}.json" for c in clients]
        for i, name in enumerate(clients):
            system.spawn_app("echo", ["--client", "--target", servers[i % args.servers],
                                      "--size", str(args.size), "--duration", str(args.duration),
                                      "--go-file", str(go), "--out", str(outs[i])], name)
        progress.update(task, description=f"kernel: {len(servers)} servers, "
                                          f"{len(clients)} clients warming up")

        def ready() -> bool:
            recs = {p["name"]: p for p in system.stats()["processes"]}
            bad = [c for c in clients if system.services[c].proc.poll() not in (None, 0)]
            if bad:
                raise RuntimeError(f"loadgen: {bad[0]} failed:\n{system.log_tail(bad[0])}")
            return all((recs.get(c) or {}).get("report", {}).get("ready") for c in clients)
        _wait("the sealed clients", ready, READY_TIMEOUT_S, lambda: system.log_tail(clients[0]))
        progress.remove_task(task)
        last = {"calls": system.stats()["kernel"]["ipc_calls"], "t": time.monotonic()}

        def rate() -> float:
            calls, now = system.stats()["kernel"]["ipc_calls"], time.monotonic()
            r = (calls - last["calls"]) / max(1e-6, now - last["t"])
            last.update(calls=calls, t=now)
            return r
        _measure(progress, "kernel", args.duration, go, rate,
                 lambda: all(system.services[c].proc.poll() in (None, 0) for c in clients))
        _wait("the sealed clients to finish", lambda: all(
            system.services[c].proc.poll() is not None for c in clients),
            FINISH_GRACE_S, lambda: system.log_tail(clients[0]))
        failed = [c for c in clients if system.services[c].proc.poll() != 0]
        if failed:
            raise RuntimeError(f"loadgen: {failed[0]} exited "
                               f"{system.services[failed[0]].proc.poll()}:\n"
                               f"{system.log_tail(failed[0])}")
        loaded = [_load(o) for o in outs]
        return Run("kernel", args.size, [s for s, _ in loaded], [w for _, w in loaded])
    finally:
        system.stop()


# -- the bare run ------------------------------------------------------------------------------
def run_bare(args: argparse.Namespace, progress: Progress) -> Run:
    """The same traffic through a bare pyzmq ROUTER broker, same process counts."""
    rundir = spawn.make_rundir("sealedos-bare-")
    addr = (spawn.ipc_addr(rundir, "broker") if args.transport == "ipc"
            else f"tcp://127.0.0.1:{_free_port()}")
    procs: list[subprocess.Popen] = []
    task = progress.add_task("bare: starting the broker", total=None)

    def start(name: str, *argv: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "apps.bare_broker", *argv, "--addr", addr]
        procs.append(spawn.spawn(cmd, rundir / f"{name}.log"))
        return procs[-1]
    try:
        start("broker", "broker")
        servers = [start(f"server.{k}", "server", "--id", str(k)) for k in range(args.servers)]
        go = rundir / "go"
        outs = [rundir / f"client.{i}.json" for i in range(args.clients)]
        clients = [start(f"client.{i}", "client", "--id", str(i), "--server",
                         str(i % args.servers), "--size", str(args.size), "--duration",
                         str(args.duration), "--go-file", str(go), "--out", str(outs[i]))
                   for i in range(args.clients)]
        progress.update(task, description=f"bare: {len(servers)} servers, {len(clients)} "
                                          f"clients warming up")

        def ready() -> bool:
            dead = [i for i, c in enumerate(clients) if c.poll() not in (None, 0)]
            if dead or any(p.poll() is not None for p in procs[:1 + len(servers)]):
                raise RuntimeError("loadgen: a bare process died:\n" + _tail(rundir, dead))
            return all(Path(str(o) + ".ready").exists() for o in outs)
        _wait("the bare clients", ready, READY_TIMEOUT_S, lambda: _tail(rundir, [0]))
        progress.remove_task(task)
        _measure(progress, "bare", args.duration, go, lambda: None,
                 lambda: all(c.poll() in (None, 0) for c in clients))
        deadline = time.monotonic() + FINISH_GRACE_S
        for c in clients:
            c.wait(max(0.1, deadline - time.monotonic()))
        loaded = [_load(o) for o in outs]
        return Run("bare", args.size, [s for s, _ in loaded], [w for _, w in loaded])
    finally:
        spawn.stop_all(procs, 1.0)
        spawn.remove_rundir(rundir)


def _tail(rundir: Path, clients: list[int]) -> str:
    logs = [rundir / "broker.log"] + [rundir / f"client.{i}.log" for i in clients[:1]]
    return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-2000:]}"
                     for p in logs if p.exists())


# -- reporting ---------------------------------------------------------------------------------
def print_report(result: dict[str, Any], args: argparse.Namespace, console: Console) -> None:
    """The two runs side by side, and the ratio."""
    t = Table(title=f"IPC echo: {args.clients} clients, {args.servers} servers, "
                    f"{args.size}-byte payloads, {args.duration:g} s, "
                    f"{args.kernel or args.transport + '://'}")
    t.add_column("")
    for name in ("round trips/s", "MB/s", "p50 us", "p99 us", "p99.9 us"):
        t.add_column(name, justify="right")
    for run in ("kernel", "bare"):
        r = result[run]
        t.add_row(run, f"{r['round_trips_per_s']:,.0f}", f"{r['mb_per_s']:.2f}",
                  f"{r['p50_us']:.0f}", f"{r['p99_us']:.0f}", f"{r['p999_us']:.0f}")
    console.print(t)
    console.print(f"ratio kernel/bare (round trips/s): [bold]{result['ratio']:.2f}[/bold]")


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
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per run")
    p.add_argument("--transport", choices=("ipc", "tcp"), default="ipc")
    p.add_argument("--kernel", metavar="ADDR",
                   help="use the kernel running at ADDR instead of starting one")
    p.add_argument("--frames", type=int, default=256)
    p.add_argument("--json", action="store_true", help="print only the JSON result")
    p.add_argument("--plot", help="write latency/throughput plots to this PNG")
    return p


def main(argv: list[str]) -> int:
    """Run both, report both and their ratio."""
    args = build_parser().parse_args(argv)
    if args.clients < 1 or args.servers < 1 or args.duration <= 0 or not 0 <= args.size <= 60000:
        print("sealedos bench ipc: --clients/--servers >= 1, --duration > 0, --size 0..60000",
              file=sys.stderr)
        return 2
    args.servers = min(args.servers, args.clients)
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        runs = [run_kernel(args, progress), run_bare(args, progress)]
    result: dict[str, Any] = {r.name: r.summary() for r in runs}
    bare_rts = result["bare"]["round_trips_per_s"]
    result["ratio"] = round(result["kernel"]["round_trips_per_s"] / bare_rts, 3) if bare_rts else 0.0
    if args.json:
        print(json.dumps(result))
    else:
        print_report(result, args, Console())
    if args.plot:
        plot(runs, result, args.plot)
        if not args.json:
            console.print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
