"""`sealedos up`: run the whole system locally, show progress, print the per-process summary.

    sealedos up [--frames N] [--policy P] [--prefetch off|trend|readahead] [--fault-around N]
                [--cluster N] [--disk-size MiB]
                [--duration S] [--json]
                [--pagers 2 | --pagers 6 --code 4+2] [--hostile MODE [--hostile-count R]]
                [--no-seal] [--trace FILE] [--metrics-port P] [APP [ARGS] ...]

APPs are `apps` programs (memstress, refstring, ...) each followed by its own flags; the
same name twice starts two instances (memstress.1, memstress.2).  With no APP, a few
memstress instances run.  Ctrl-C or SIGTERM stops everything: no orphan, no stale socket.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import time
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from host_tools.system import Config, System
from kernel_daemon.pagers import CLUSTER_PAGES
from kernel_daemon.policy import POLICIES
from kernel_daemon.prefetch import DEFAULT_MODE, FAULT_AROUND, MODES
from wire.protocol import HOSTILE_MODES

DEFAULT_APPS: list[list[str]] = [["memstress"]] * 3
EXIT_GRACE_S: float = 30.0
#: Servers (init's name service aside) never exit: once every app still running has waited
#: in RECEIVE this long with nothing else running, the run is over.
IDLE_SERVERS_S: float = 2.0
SUMMARY_KEYS: tuple[str, ...] = ("minor_faults", "major_faults", "page_ins", "page_outs",
                                 "evictions", "resident_pages", "checksum")
#: Their column headers in the summary table (short: nine columns in 80).
SUMMARY_HEADERS: dict[str, str] = {"minor_faults": "minor", "major_faults": "major",
                                   "page_ins": "page-in", "page_outs": "page-out",
                                   "evictions": "evicted", "resident_pages": "resident",
                                   "checksum": "data"}
#: The exit reason of a process that ended normally (not repeated below the table).
NORMAL_EXIT: str = "exited with status 0"


class _Interrupted(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    """`sealedos up` flags (service flags take the same environment defaults as the services)."""
    env = os.environ.get
    p = argparse.ArgumentParser(prog="sealedos up", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=int(env("SEALEDOS_FRAMES", "128")))
    p.add_argument("--policy", choices=sorted(POLICIES), default=env("SEALEDOS_POLICY", "clock"))
    p.add_argument("--prefetch", choices=MODES, default=env("SEALEDOS_PREFETCH", DEFAULT_MODE),
                   help="read swapped pages ahead of faults (kernel_daemon/prefetch.py)")
    p.add_argument("--fault-around", type=int,
                   default=int(env("SEALEDOS_FAULT_AROUND", str(FAULT_AROUND))), metavar="N",
                   help="most prefetched pages a fault installs beside its own (0: none)")
    p.add_argument("--cluster", type=int,
                   default=int(env("SEALEDOS_CLUSTER", str(CLUSTER_PAGES))), metavar="N",
                   help="most dirty pages one page-out request carries (1: one a request)")
    p.add_argument("--disk-size", type=int, default=int(env("SEALEDOS_DISK_SIZE_MIB", "64")),
                   metavar="MiB")
    p.add_argument("--duration", type=float, default=0.0,
                   help="seconds the apps keep working (0: each does its default amount)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON document")
    p.add_argument("--pagers", type=int, default=1, help="mirrored pagers, each with its own disk")
    p.add_argument("--hostile", choices=HOSTILE_MODES, help="make the first pager hostile")
    p.add_argument("--hostile-count", type=int, default=1, metavar="R",
                   help="with --hostile: make the first R pagers hostile")
    p.add_argument("--code", metavar="K+R",
                   help="erasure-code pages across the pagers (--pagers K+R) instead of mirroring")
    p.add_argument("--no-seal", action="store_true", help="plaintext pages (trusted pager)")
    p.add_argument("--pager-timeout-ms", type=int, default=2000)
    p.add_argument("--pager-retries", type=int, default=5)
    p.add_argument("--stall-ms", type=int, default=10000, help="delay of --hostile stall")
    p.add_argument("--trace", help="write a Chrome/Perfetto trace of faults and calls here")
    p.add_argument("--metrics-port", type=int, default=0)
    p.add_argument("--insecure", action="store_true",
                   help="NULL security on every connection (measurement only: no keys, "
                        "no encryption)")
    p.add_argument("apps", nargs=argparse.REMAINDER, help="APP [ARGS] ... (default: memstress x3)")
    return p


def split_apps(tokens: list[str], known: set[str]) -> list[list[str]]:
    """Cut `refstring --pages 1,2 memstress` into [[refstring, --pages, 1,2], [memstress]]."""
    groups: list[list[str]] = []
    for tok in tokens:
        if tok in known and (not groups or not groups[-1][-1].startswith("--")
                             or "=" in groups[-1][-1]):
            groups.append([tok])
        elif not groups:
            raise SystemExit(f"sealedos up: unknown app {tok!r}; known: {', '.join(sorted(known))}")
        else:
            groups[-1].append(tok)
    return groups


def main(argv: list[str]) -> int:
    """Run the system until the apps finish (or --duration, or Ctrl-C); print the summary."""
    from apps.run import APPS
    args = build_parser().parse_args(argv)
    groups = split_apps(args.apps, set(APPS)) or DEFAULT_APPS
    config = Config(frames=args.frames, policy=args.policy, prefetch=args.prefetch,
                    fault_around=max(0, args.fault_around), cluster=args.cluster,
                    disk_size_mib=args.disk_size,
                    pagers=args.pagers, hostile=args.hostile, no_seal=args.no_seal,
                    hostile_count=args.hostile_count, code=args.code,
                    pager_timeout_ms=args.pager_timeout_ms, pager_retries=args.pager_retries,
                    trace=os.path.abspath(args.trace) if args.trace else None,
                    metrics_port=args.metrics_port, stall_ms=args.stall_ms,
                    insecure=args.insecure)
    console = Console(stderr=True)

    def interrupted(*_: Any) -> None:
        raise _Interrupted()
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    system = System(config)
    try:
        system.start()
        names = start_apps(system, groups, args.duration)
        console.print(f"sealedos: kernel at {system.kernel_addr}; {len(names)} sealed processes")
        watch(system, names, args.duration, console, quiet=args.json)
        summary = collect(system, names)
    except _Interrupted:
        console.print("sealedos: interrupted; stopping everything")
        summary = collect(system, [], tolerate=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        system.stop()
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print_summary(summary, Console())
    failed = [n for n, p in summary["processes"].items() if p.get("checksum") == "failed"]
    return 1 if failed else 0


def start_apps(system: System, groups: list[list[str]], duration: float) -> list[str]:
    """Start one sealed process per group; name them APP.1, APP.2, ..."""
    counts: dict[str, int] = {}
    names = []
    for app, *rest in groups:
        counts[app] = counts.get(app, 0) + 1
        name = f"{app}.{counts[app]}"
        extra = ["--duration", str(duration)] if duration and app == "memstress" \
            and "--duration" not in rest else []
        system.spawn_app(app, rest + extra, name)
        names.append(name)
    return names


def watch(system: System, names: list[str], duration: float, console: Console,
          quiet: bool) -> None:
    """Show each app's progress until every app has exited (or only idle servers are left)."""
    limit = (duration + EXIT_GRACE_S) if duration else None
    t0 = time.monotonic()
    idle_since: float | None = None
    with Progress(TextColumn("{task.description:<14}"), BarColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
                  disable=quiet, transient=False) as bar:
        tasks = {n: bar.add_task(n, total=1.0, info="") for n in names}
        while True:
            procs = {p["name"]: p for p in system.stats()["processes"]}
            running = [n for n in names if system.services[n].proc.poll() is None]
            for n in names:
                p = procs.get(n, {})
                done = n not in running
                frac = 1.0 if done else float(p.get("report", {}).get("progress", 0.0) or 0.0)
                info = (f"faults {p.get('minor_faults', 0)}+{p.get('major_faults', 0)} "
                        f"{p.get('state', '')}")
                bar.update(tasks[n], completed=frac, info=info)
            if not running:
                return
            idle = all(procs.get(n, {}).get("state") == "blocked on receive" for n in running)
            idle_since = (idle_since or time.monotonic()) if idle and len(running) < len(names) \
                else None
            if idle_since is not None and time.monotonic() - idle_since > IDLE_SERVERS_S:
                return
            if limit is not None and time.monotonic() - t0 > limit:
                for n in running:
                    system.services[n].proc.terminate()
                return
            time.sleep(0.25)


def collect(system: System, names: list[str], tolerate: bool = False) -> dict[str, Any]:
    """The summary: per-process counters by app name, the kernel's counters, service restarts."""
    try:
        stats = system.stats()
    except Exception:
        if not tolerate:
            raise
        return {"processes": {}, "kernel": {}, "services": system.restarts()}
    by_name: dict[str, Any] = {}
    for rec in stats["processes"]:
        by_name[rec["name"]] = rec
    procs = {}
    for n in names or list(by_name):
        rec = by_name.get(n)
        svc = system.services.get(n)
        code = svc.proc.poll() if svc else None
        if rec is None:
            procs[n] = {"checksum": None, "exit_code": code, "state": "never registered"}
            continue
        rec = dict(rec)
        rec["exit_code"] = code
        procs[n] = rec
    return {"processes": procs, "kernel": stats["kernel"], "services": system.restarts()}


def print_summary(summary: dict[str, Any], console: Console) -> None:
    """The per-process table and the kernel's headline counters."""
    table = Table(title="sealedos: per-process summary", box=box.SIMPLE_HEAD,
                  show_edge=False, padding=(0, 0))  # columns one space apart: 80 wide
    table.add_column("process", no_wrap=True)
    for key in SUMMARY_KEYS:
        table.add_column(SUMMARY_HEADERS.get(key, key), justify="right")
    table.add_column("state", no_wrap=True)
    reasons: list[str] = []
    for name, p in summary["processes"].items():
        verdict = p.get("checksum")
        style = {"verified": "green", "failed": "bold red"}.get(verdict or "", "")
        cells = [str(p.get(k, "")) for k in SUMMARY_KEYS[:-1]]
        cells.append(f"[{style}]{verdict}[/]" if style else str(verdict or "-"))
        reason = p.get("exit_reason") or ""
        if reason and reason != NORMAL_EXIT:
            reasons.append(f"  {name}: {reason}")
        table.add_row(name, *cells, str(p.get("state", "")))
    console.print(table)
    for line in reasons:                             # below the table: they may be long
        console.print(line, highlight=False)
    k = summary["kernel"]
    if not k:
        return
    console.print(
        f"kernel: {k['nframes']} frames ({k['policy']}), faults minor {k['minor_faults']} "
        f"major {k['major_faults']}, page-ins {k['page_ins']}, page-outs {k['page_outs']}, "
        f"evictions {k['evictions']}, sealed {k['sealed']}, " +
        (f"{k['mirrors']} pagers erasure-coded {k['code']} (degraded reads "
         f"{k['ec_degraded_reads']}, fragments rewritten {k['ec_repairs']})" if k.get("code")
         else f"mirrors {k['mirrors']}"))
    fails = k.get("integrity_failures") or {}
    if fails:
        console.print("[bold yellow]integrity failures caught by the kernel:[/] "
                      + ", ".join(f"{kind} {n}" for kind, n in sorted(fails.items())))
    restarts = {n: r for n, r in summary["services"].items() if r}
    if restarts or k.get("pager_timeouts"):
        console.print(f"pager timeouts {k.get('pager_timeouts', 0)}, "
                      f"kills {k.get('pager_kills', 0)}, "
                      f"restarts {restarts or 0}, repairs {k.get('repairs', 0)}")
