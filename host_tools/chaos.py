"""`sealedos chaos`: kill the pager, the disk driver or an app under load, and show that apps
notice nothing but latency.

    sealedos chaos [--kill pager|disk|APP] [--signal KILL|STOP] [--every S] [--duration S]
                   [--json] [--plot FILE.png] [--pagers N] [--frames N] [--memstress N]
                   [--pages N] [--echo-clients N] [--code K+R --count R]

The workload, on a fresh local System: --memstress instances paging heavily (each array
several times the frame pool), one echo server (echo.1) and --echo-clients echoload clients
calling it back to back (they never fault, so their throughput shows whether an outage of
the pager reaches processes that do not wait on it), and --touch-clients touchload
processes that take demand-zero minor faults and TLB hits all the time but never need a
page-in (their faults, in the kernel's fault log, show minor faults served during outages).

The clock starts when the first major fault is served (the memstress arrays are filled and
paging); --duration counts from there.  Every --every seconds the target gets --signal
through psutil: ``pager`` (pager0) or ``pagerN``, ``disk`` (disk0) or ``diskN``, or an app
by name (``memstress.1``, ``echo.1``, ``echoload.1``).  SIGSTOP models a hang and no SIGCONT
is ever sent: the kernel's request timeout (pagers.py) or the supervisor's watchdog
(watchdog.py) must notice it and kill it.  A kill falls due --every seconds after the
previous one *and* once that one has recovered (each kill measures one recovery, never
hits a replacement that is still starting); ``deferred_ms`` says how long kills waited.
A killed app is re-spawned (APP-rK) once the kernel has reclaimed it, so the next kill has a
target; the clients of a killed echo server must see PeerDied (not hang) and carry on with
the new one.

The report (``--json`` prints it as one document):

* ``kills``, ``skipped``, ``restarts`` (services the supervisor brought back), ``events``;
* ``recovery_ms``: per kill, kill -> first major fault begun after it served (an app kill:
  kill -> the kernel has reclaimed it); see chaos_analysis.py for the exact definitions;
* ``latency_us``: major-fault latency {n, p50, p99, max} ``before`` the first kill,
  ``during`` an outage and ``after``;
* ``ipc``: echo calls/s ``before`` vs ``during`` outages, and PeerDied counts;
  ``isolation``: the same for touchload's minor faults per second;
* ``app_errors`` (app incarnations that chaos did not kill and that did not exit cleanly
  with their data verified), ``verified`` (every such app verified its data),
  ``apps`` (each incarnation's verdict);
* ``leaks``: after every app exited, frames not free, disk blocks still used, live
  endpoints and capabilities beyond the baseline taken before the workload started
  (``reclaimed``: all 0);
* ``kernel``: the supervision counters (timeouts, retries, kills, restarts, resync).

``--plot FILE.png`` draws fault latency and IPC throughput over time with a marker at each
kill (chaos_plot.py).  Exit status 0 when there were no app errors, all data verified and
nothing leaked; 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from host_tools import chaos_analysis as ca
from host_tools.system import Config, Service, System
from wire.client import Client
from wire.protocol import Op

POLL_S: float = 0.25
#: How long apps get to finish (verify) after the run, beyond --duration.
FINISH_GRACE_S: float = 120.0
#: How long the kernel gets to reclaim everything after the last app exited.
RECLAIM_WAIT_S: float = 20.0
#: How long the echo server gets to register before the clients start.
ECHO_READY_S: float = 30.0
#: How long the workload gets to start paging (the clock starts at the first major fault).
WARMUP_MAX_S: float = 60.0
#: The supervision counters the report copies from the kernel.
KERNEL_KEYS: tuple[str, ...] = (
    "major_faults", "minor_faults", "page_ins", "page_outs", "pager_timeouts", "pager_retries",
    "pager_transient_errors", "pager_kills", "pager_restarts", "writeback_failures",
    "repairs", "resynced", "resync_failed", "integrity_failures",
    "ec_page_ins", "ec_degraded_reads", "ec_short_writes", "ec_repairs", "ec_unrecoverable")
SIGNALS: dict[str, signal.Signals] = {"KILL": signal.SIGKILL, "STOP": signal.SIGSTOP}


class _ChaosInterrupted(Exception):
    pass


@dataclass
class Kill:
    """One signal sent, and what came of it."""
    t_s: float                      # monotonic time it was sent
    target: str                     # service name of the victim
    pid: int
    recovery_s: float | None = None
    reclaim_ok: bool | None = None  # app kills: the kernel's record shows nothing left


@dataclass
class Lineage:
    """An app and its incarnations (a killed one is re-spawned under a new name)."""
    app: str
    args: list[str]
    names: list[str] = field(default_factory=list)
    killed: set[str] = field(default_factory=set)

    @property
    def current(self) -> str:
        """The newest incarnation's name."""
        return self.names[-1]


class Chaos:
    """One chaos run on a started System: workload, kills, bookkeeping, the report."""

    def __init__(self, system: System, args: argparse.Namespace) -> None:
        self.system = system
        self.args = args
        self.sig = SIGNALS[args.signal]
        self.faults: list[list[Any]] = []
        self.major: list[list[Any]] = []          # the major ones, by end time (log order)
        self.cursor = 0
        self.deferred_s = 0.0
        self.dropped = 0
        self.kills: list[Kill] = []
        self.skipped = 0
        self.lineages: dict[str, Lineage] = {}
        self.pending_reclaim: list[tuple[Kill, Lineage]] = []
        self.procs: dict[str, dict[str, Any]] = {}
        self.t_start = self.t_end = time.monotonic()
        self.baseline: dict[str, Any] = {}

    # -- workload -----------------------------------------------------------------------
    def start_workload(self) -> None:
        """Baseline; the echo server, its clients and the memstress instances; then wait for
        the first major fault, which starts the clock."""
        self.baseline = self.measure_leaks()
        a = self.args
        self._lineage("echo", "echo.1", ["--register", "echo"])
        deadline = time.monotonic() + ECHO_READY_S
        while not (self.system.process("echo.1") or {}).get("report", {}).get("ready"):
            if time.monotonic() > deadline:
                raise RuntimeError("echo server did not start:\n" + self.system.log_tail("echo.1"))
            time.sleep(0.05)
        self.t_end = time.monotonic() + a.duration + WARMUP_MAX_S   # until the clock starts
        for i in range(1, a.echo_clients + 1):
            self._lineage("echoload", f"echoload.{i}", ["--target", "echo"])
        for i in range(1, a.touch_clients + 1):
            self._lineage("touchload", f"touchload.{i}", [])
        for i in range(1, a.memstress + 1):   # memstress's --duration counts after its fill
            self._lineage("memstress", f"memstress.{i}",
                          ["--pages", str(a.pages), "--seed", str(i)])
        deadline = time.monotonic() + WARMUP_MAX_S
        while not self.major:
            if time.monotonic() > deadline:
                raise RuntimeError("no major fault within the warm-up:\n"
                                   + self.system.log_tail("memstress.1"))
            self.poll()
            time.sleep(0.05)
        self.t_start = time.monotonic()
        self.t_end = self.t_start + a.duration

    def _lineage(self, app: str, name: str, args: list[str]) -> None:
        lin = Lineage(app, args)
        self.lineages[name] = lin
        self._spawn(lin, name)

    def _spawn(self, lin: Lineage, name: str) -> None:
        """Start one incarnation; timed apps get the time left in the run (before the clock
        starts: memstress the whole --duration, which it counts from the end of its fill;
        echoload as long as it could take, it stops at the stop file)."""
        extra: list[str] = []
        left_s = f"{max(1.0, self.t_end - time.monotonic()):.1f}"
        if lin.app == "memstress":
            extra = ["--duration", f"{self.args.duration:g}" if not self.major else left_s]
        elif lin.app == "echoload":
            extra = ["--duration", left_s, "--stop-file", str(self.stop_file),
                     "--out", str(self._load_file(name))]
        elif lin.app == "touchload":
            extra = ["--duration", left_s, "--stop-file", str(self.stop_file)]
        lin.names.append(name)
        self.system.spawn_app(lin.app, lin.args + extra, name)

    def _load_file(self, name: str) -> Path:
        """Where echoload `name` writes its throughput (its private directory: a sealed
        process may write nowhere else)."""
        return self.system.private_dir(name) / "load.json"

    @property
    def stop_file(self) -> Path:
        """Created at the end of the run: the echo clients stop when they see it."""
        return self.system.rundir / "chaos.stop"

    def app_names(self) -> list[str]:
        """Every app incarnation started, in order."""
        return [n for lin in self.lineages.values() for n in lin.names]

    # -- targets and kills ---------------------------------------------------------------
    def resolve(self, target: str) -> tuple[str, Lineage | None]:
        """The service name the target means now, and its lineage for an app."""
        if target in ("pager", "disk"):
            target += "0"
        if re.fullmatch(r"(pager|disk)\d+", target):
            if target not in self.system.services:
                raise SystemExit(f"sealedos chaos: there is no {target} "
                                 f"(services: {', '.join(sorted(self.system.services))})")
            return target, None
        lin = self.lineages.get(target)
        if lin is None:
            raise SystemExit(f"sealedos chaos: unknown target {target!r}; apps: "
                             f"{', '.join(self.lineages)} (or pager, disk)")
        return lin.current, lin

    def ready_to_kill(self) -> bool:
        """Has the previous kill recovered, and is the target's current instance up (an app:
        registered with the kernel)?"""
        if self.kills and self.kills[-1].recovery_s is None:
            return False
        name, lin = self.resolve(self.args.kill)
        if lin is not None:
            rec = self.procs.get(name)
            return rec is not None and rec.get("state") not in ("exited", "killed")
        return True

    def kill_once(self) -> None:
        """Send the signal to the target's current instance (skip one already gone)."""
        if self.args.count > 1:
            self._kill_many()
            return
        name, lin = self.resolve(self.args.kill)
        svc: Service = self.system.services[name]
        last_pid = self.kills[-1].pid if self.kills else None
        if svc.proc.poll() is not None or svc.pid == last_pid or (lin and name in lin.killed):
            self.skipped += 1
            return
        try:
            psutil.Process(svc.pid).send_signal(self.sig)
        except psutil.Error:
            self.skipped += 1
            return
        kill = Kill(time.monotonic(), name, svc.pid)
        self.kills.append(kill)
        if lin is not None:
            lin.killed.add(name)
            self.pending_reclaim.append((kill, lin))

    def _kill_many(self) -> None:
        """--count N: signal N services of the target's kind at once (pagers or disks), a
        different set each time (rotating), as one kill (its recovery is one recovery)."""
        kind = re.sub(r"\d+$", "", self.args.kill)
        names = sorted((n for n in self.system.services if re.fullmatch(rf"{kind}\d+", n)),
                       key=lambda n: int(n[len(kind):]))
        start = len(self.kills) * self.args.count
        chosen = [names[(start + i) % len(names)] for i in range(self.args.count)]
        pids = []
        for name in chosen:
            svc = self.system.services[name]
            if svc.proc.poll() is not None:
                continue
            try:
                psutil.Process(svc.pid).send_signal(self.sig)
                pids.append(svc.pid)
            except psutil.Error:
                continue
        if not pids:
            self.skipped += 1
            return
        self.kills.append(Kill(time.monotonic(), "+".join(chosen), pids[0]))

    def settle_app_kills(self) -> None:
        """A killed app the kernel has reclaimed: note when, check its record, re-spawn it."""
        for kill, lin in list(self.pending_reclaim):
            rec = self.procs.get(kill.target)
            if rec is None or rec.get("state") not in ("exited", "killed"):
                continue
            self.pending_reclaim.remove((kill, lin))
            kill.recovery_s = time.monotonic() - kill.t_s
            kill.reclaim_ok = rec.get("resident_pages") == 0 and rec.get("swapped_pages") == 0
            if time.monotonic() < self.t_end - 1.0:
                self._spawn(lin, f"{lin.app}.{lin.names[0].split('.')[-1]}-r{len(lin.names) + 1}")

    # -- observation ------------------------------------------------------------------------
    def poll(self) -> None:
        """Fetch new fault records and the process table."""
        client = self.system.client()
        while True:
            reply = client.call(Op.FAULT_LOG, cursor=self.cursor)
            self.faults.extend(reply["records"])
            self.major.extend(f for f in reply["records"] if f[1] == "major")
            self.dropped += reply["dropped"]
            self.cursor = reply["cursor"]
            if not reply["records"]:
                break
        self.procs = {p["name"]: p for p in client.call(Op.PS)["processes"]}
        for k in self.kills[-3:]:                 # component kills recover at a major fault
            if k.recovery_s is None and not self.is_app(k.target):
                k.recovery_s = ca.recovery_s(self.major, k.t_s)

    def measure_leaks(self) -> dict[str, Any]:
        """What reclamation must bring back: free frames, live processes, live endpoints,
        capabilities held by processes other than init, and each disk's used blocks."""
        k = self.system.stats()["kernel"]
        disks = {}
        for name in sorted(s for s in self.system.services if s.startswith("disk")):
            with Client(self.system.services[name].addr or "", keys=self.system.keys,
                        server=name) as disk:
                disks[name] = disk.call(Op.STATS)["used_blocks"]
        ipc = k["ipc"]
        caps = sum(n for spid, n in ipc.get("handles_by_spid", {}).items()
                   if spid != str(ipc.get("init_spid")))      # init keeps its name table
        return {"free_frames": k["free_frames"], "live_processes": k["live_processes"],
                "endpoints": ipc.get("endpoint_count", len(ipc["endpoints"])),
                "capabilities": caps, "disk_blocks": disks}

    # -- the run ----------------------------------------------------------------------------
    def run(self, live: Live | None) -> None:
        """Kill every --every seconds until --duration; keep the books meanwhile."""
        next_kill = self.t_start + self.args.every
        while (now := time.monotonic()) < self.t_end:
            self.poll()
            if now >= next_kill and self.ready_to_kill():
                self.deferred_s += now - next_kill
                self.kill_once()
                next_kill = now + self.args.every
            self.settle_app_kills()
            if live is not None:
                live.update(self.view())
            time.sleep(POLL_S)

    def finish(self, live: Live | None) -> None:
        """Let the apps finish and verify; kill what chaos stopped; end the echo server;
        wait for the kernel to reclaim everything."""
        self.stop_file.touch()
        for name in self.app_names():     # a stopped app would keep its callers blocked
            if self._stopped_victim(name):
                self._end(name)
        deadline = time.monotonic() + FINISH_GRACE_S
        workers = [n for n in self.app_names() if not n.startswith("echo.")]
        while time.monotonic() < deadline:
            self.poll()
            self.settle_app_kills()
            if live is not None:
                live.update(self.view())
            if all(self.system.services[n].proc.poll() is not None for n in workers):
                break
            time.sleep(POLL_S)
        for name in self.app_names():
            if name.startswith("echo."):         # the echo server never exits by itself
                self._end(name)
        deadline = time.monotonic() + RECLAIM_WAIT_S
        while time.monotonic() < deadline:
            self.poll()
            self.settle_app_kills()
            if not any(self.leaks().values()):
                break
            time.sleep(POLL_S)

    def _end(self, name: str) -> None:
        """SIGKILL an app incarnation that is still there and reap it."""
        svc = self.system.services[name]
        if svc.proc.poll() is None:
            svc.proc.kill()
            svc.proc.wait()

    def _stopped_victim(self, name: str) -> bool:
        return any(k.target == name for k in self.kills) and self.sig == signal.SIGSTOP

    def leaks(self) -> dict[str, int]:
        """What is still held beyond the baseline."""
        now, base = self.measure_leaks(), self.baseline
        return {"frames": base["free_frames"] - now["free_frames"],
                "live_processes": now["live_processes"] - base["live_processes"],
                "endpoints": now["endpoints"] - base["endpoints"],
                "capabilities": now["capabilities"] - base["capabilities"],
                "disk_blocks": sum(now["disk_blocks"].values()) - sum(base["disk_blocks"].values())}

    # -- the report ---------------------------------------------------------------------------
    def recoveries(self) -> list[float | None]:
        """Per kill: recovery in seconds (component kills from the fault records)."""
        for k in self.kills:
            if not self.is_app(k.target):        # app kills were timed when reclaimed
                k.recovery_s = ca.recovery_s(self.major, k.t_s)
        return [k.recovery_s for k in self.kills]

    def is_app(self, name: str) -> bool:
        """Is `name` one of the workload's app incarnations?"""
        return any(name in lin.names for lin in self.lineages.values())

    def app_verdicts(self) -> dict[str, dict[str, Any]]:
        """Each incarnation's outcome as the kernel and its exit status tell it."""
        out = {}
        for name in self.app_names():
            rec = self.procs.get(name, {})
            svc = self.system.services[name]
            killed = any(k.target == name for k in self.kills)
            report = rec.get("report", {})
            out[name] = {"checksum": rec.get("checksum"), "exit_code": svc.proc.poll(),
                         "state": rec.get("state"), "exit_reason": rec.get("exit_reason"),
                         "killed_by_chaos": killed, "error": report.get("error"),
                         "peer_died": report.get("peer_died")}
        return out

    def report(self) -> dict[str, Any]:
        """The whole result as one JSON-able map."""
        recov = self.recoveries()
        windows = ca.outages([k.t_s for k in self.kills], recov, self.t_end)
        kills_s = [k.t_s for k in self.kills]
        apps = self.app_verdicts()
        target_is_echo = self.args.kill.startswith("echo.")
        errors, verified = 0, True
        for name, v in apps.items():
            if v["killed_by_chaos"] or name.startswith("echo."):
                continue                   # the echo server is ended by chaos, not verified
            clean = v["exit_code"] == 0 and v["checksum"] == "verified" and not v["error"]
            if v["peer_died"] and not target_is_echo:
                clean = False
            errors += not clean
            verified &= v["checksum"] == "verified"
        loads = []
        for name in self.app_names():
            path = self._load_file(name)
            if path.exists():
                loads.append(json.loads(path.read_text()))
        times, rates, all_running = ca.ipc_series(loads)
        touch_spids = {self.procs[n]["spid"] for n in self.app_names()
                       if n.startswith("touchload") and n in self.procs}
        touch_minor = [f[0] for f in self.faults if f[1] == "minor" and f[3] in touch_spids]
        leaks = self.leaks()
        kstats = self.system.stats()["kernel"]
        services = self.system.restarts()
        t_start = self.t_start

        def rel(t: float) -> float:
            """Seconds since the run began, to the millisecond."""
            return round(t - t_start, 3)
        self.series = {"faults": [(rel(f[0]), f[1], f[2]) for f in self.faults
                                  if f[0] >= self.t_start - 1],
                       "ipc": [(rel(t), r) for t, r in zip(times, rates, strict=True)],
                       "kills": [rel(k.t_s) for k in self.kills],
                       "outages": [(rel(w.kill_s), rel(w.end_s), w.recovered) for w in windows]}
        return {
            "target": self.kills[0].target if self.kills else self.resolve(self.args.kill)[0],
            "signal": self.args.signal, "every_s": self.args.every,
            "duration_s": self.args.duration,
            "kills": len(self.kills), "skipped": self.skipped,
            "deferred_ms": round(self.deferred_s * 1000),
            "restarts": sum(services.values()), "restarts_by_service": services,
            "recovery_ms": [None if r is None else round(r * 1000, 1) for r in recov],
            "kill_log": [{"t_s": rel(k.t_s), "target": k.target, "pid": k.pid,
                          "recovery_ms": None if k.recovery_s is None
                          else round(k.recovery_s * 1000, 1),
                          **({"reclaim_ok": k.reclaim_ok} if k.reclaim_ok is not None else {})}
                         for k in self.kills],
            "app_errors": errors, "verified": bool(verified and errors == 0),
            "latency_us": ca.latency_windows(self.major, kills_s, windows),
            "minor_latency_us": ca.latency_windows(
                sorted((f for f in self.faults if f[1] == "minor"), key=lambda f: f[0]),
                kills_s, windows),
            "ipc": {"calls_per_s": ca.ipc_rates(times, rates, all_running, kills_s, windows),
                    "calls": sum(d["calls"] for d in loads),
                    "peer_died": sum(d["peer_died"] for d in loads)},
            "isolation": {
                "touchload_minor_faults_per_s": ca.event_rates(touch_minor, self.t_start,
                                                               kills_s, windows)},
            "leaks": leaks, "reclaimed": not any(leaks.values()),
            "apps": apps,
            "kernel": {k: kstats.get(k) for k in KERNEL_KEYS},
            "fault_records": len(self.faults), "fault_records_dropped": self.dropped,
            "events": [[rel(t), who, what] for t, who, what in self.system.events],
        }

    # -- the live display -------------------------------------------------------------------
    def view(self) -> Group:
        """The status panel: the run, the kills, recent faults, each app's progress."""
        now = time.monotonic()
        a = self.args
        recent = [f for f in self.faults if f[0] >= now - 1.0]
        majors = sorted(f[2] for f in recent if f[1] == "major")
        p50 = f"{majors[len(majors) // 2] / 1000:.1f} ms" if majors else "-"
        last = self.kills[-1] if self.kills else None
        recov = last.recovery_s if last else None
        head = Text.assemble(
            ("sealedos chaos ", "bold"), f"SIG{a.signal} {a.kill} every {a.every:g} s  ",
            (f"t={now - self.t_start:5.1f}/{a.duration:g} s", "cyan"))
        info = Text(f"kills {len(self.kills)} (skipped {self.skipped})  restarts "
                    f"{sum(self.system.restarts().values())}  last recovery "
                    f"{'-' if recov is None else f'{recov * 1000:.0f} ms'}   faults/s: major "
                    f"{len(majors)} minor {len(recent) - len(majors)}  major p50 {p50}")
        table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
        for col in ("app", "state", "faults", "progress", "notes"):
            table.add_column(col)
        for name in self.app_names():
            rec = self.procs.get(name, {})
            rep = rec.get("report", {})
            notes = []
            if rep.get("calls") is not None:
                notes.append(f"calls {rep['calls']}")
            if rep.get("peer_died"):
                notes.append(f"PeerDied {rep['peer_died']}")
            if rec.get("checksum"):
                notes.append(rec["checksum"])
            if any(k.target == name for k in self.kills):
                notes.append("[red]killed by chaos[/]")
            table.add_row(name, str(rec.get("state", "starting")),
                          f"{rec.get('minor_faults', 0)}+{rec.get('major_faults', 0)}",
                          f"{100 * float(rep.get('progress', 0) or 0):3.0f}%", " ".join(notes))
        return Group(head, info, table)


def summary_text(result: dict[str, Any]) -> str:
    """The human-readable report."""
    lat = result["latency_us"]

    def fmt(d: dict[str, Any]) -> str:
        """One latency window (µs percentiles) in ms, or (none)."""
        return (f"p50 {d['p50'] / 1000:.2f} ms  p99 {d['p99'] / 1000:.2f} ms  "
                f"max {d['max'] / 1000:.2f} ms  (n={d['n']})") if d.get("n") else "(none)"
    ipc = result["ipc"]["calls_per_s"]
    touch = result["isolation"]["touchload_minor_faults_per_s"]
    rec = [r for r in result["recovery_ms"] if r is not None]
    lines = [
        f"sealedos chaos: SIG{result['signal']} {result['target']} every {result['every_s']:g} s "
        f"for {result['duration_s']:g} s",
        f"  kills {result['kills']} (skipped {result['skipped']}), restarts {result['restarts']} "
        f"{result['restarts_by_service']}",
        f"  recovery ms: {result['recovery_ms']}" + (
            f"  (median {sorted(rec)[len(rec) // 2]:.0f}, max {max(rec):.0f})" if rec else ""),
        f"  major-fault latency before: {fmt(lat['before'])}",
        f"                      during: {fmt(lat['during'])}",
        f"                       after: {fmt(lat['after'])}",
        f"  IPC echo calls/s before {ipc['before']}, during outages {ipc['during']} "
        f"(PeerDied {result['ipc']['peer_died']})",
        f"  touchload minor faults/s before {touch['before']}, during outages {touch['during']}",
        f"  app-visible errors {result['app_errors']}; all data verified: {result['verified']}",
        f"  leaks after exit {result['leaks']}; reclaimed: {result['reclaimed']}",
        "  kernel: " + ", ".join(f"{k} {v}" for k, v in result["kernel"].items()
                                   if v not in (0, None, {})),
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """`sealedos chaos` flags."""
    p = argparse.ArgumentParser(prog="sealedos chaos", description=__doc__.split("\n")[0])
    p.add_argument("--kill", default="pager",
                   help="pager, pagerN, disk, diskN, or an app (memstress.1, echo.1, echoload.1)")
    p.add_argument("--signal", default="KILL", choices=sorted(SIGNALS),
                   help="KILL, or STOP to model a hang (never continued)")
    p.add_argument("--every", type=float, default=2.0, help="seconds between kills")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of workload and kills")
    p.add_argument("--json", action="store_true", help="print the report as one JSON document")
    p.add_argument("--plot", metavar="FILE.png", help="plot fault latency and IPC throughput")
    p.add_argument("--pagers", type=int, default=1, help="mirrored pagers (each with a disk)")
    p.add_argument("--code", metavar="K+R", help="erasure-code pages K+R across the pagers")
    p.add_argument("--count", type=int, default=1,
                   help="with --kill pager or disk: signal this many of them at once")
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--memstress", type=int, default=3, help="memstress instances")
    p.add_argument("--pages", type=int, default=160, help="pages per memstress array")
    p.add_argument("--echo-clients", type=int, default=2, help="echoload clients")
    p.add_argument("--touch-clients", type=int, default=1, help="touchload processes")
    p.add_argument("--disk-size", type=int, default=32, metavar="MiB")
    p.add_argument("--pager-timeout-ms", type=int, default=2000)
    p.add_argument("--pager-retries", type=int, default=5)
    return p


def main(argv: list[str]) -> int:
    """Run the chaos experiment; print (or --json) the report; 0 when nothing was lost."""
    args = build_parser().parse_args(argv)
    if args.every <= 0 or args.duration <= 0:
        raise SystemExit("sealedos chaos: --every and --duration must be positive")
    console = Console(stderr=True)
    if args.count < 1 or (args.count > 1 and args.kill not in ("pager", "disk")):
        raise SystemExit("sealedos chaos: --count N > 1 needs --kill pager or --kill disk")
    if args.count >= args.pagers and args.count > 1:
        raise SystemExit("sealedos chaos: --count must be below --pagers")
    config = Config(frames=args.frames, pagers=args.pagers, disk_size_mib=args.disk_size,
                    code=args.code,
                    pager_timeout_ms=args.pager_timeout_ms, pager_retries=args.pager_retries)

    def interrupted(*_: Any) -> None:
        raise _ChaosInterrupted()
    old = {s: signal.signal(s, interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    system = System(config)
    result: dict[str, Any] | None = None
    chaos: Chaos | None = None
    try:
        system.start()
        chaos = Chaos(system, args)
        chaos.start_workload()
        chaos.resolve(args.kill)                 # a bad target fails before any kill
        with Live(chaos.view(), console=console, refresh_per_second=4,
                  transient=False) if not args.json else _NoLive() as live:
            chaos.run(live if isinstance(live, Live) else None)
            chaos.finish(live if isinstance(live, Live) else None)
        result = chaos.report()
    except _ChaosInterrupted:
        console.print("sealedos chaos: interrupted; stopping everything")
    finally:
        for s in old:
            signal.signal(s, signal.SIG_IGN)
        system.stop()
        for s, h in old.items():
            signal.signal(s, h)
    if result is None or chaos is None:
        return 130
    if args.plot:
        from host_tools.chaos_plot import plot
        plot(chaos.series, result, args.plot)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(summary_text(result))
        if args.plot:
            print(f"  plot: {os.path.abspath(args.plot)}")
    ok = result["app_errors"] == 0 and result["verified"] and result["reclaimed"]
    return 0 if ok else 1


class _NoLive:
    """Stands in for rich's Live when the display is off (--json)."""

    def __enter__(self) -> _NoLive:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


if __name__ == "__main__":
    import sys
    sys.exit(main(sys.argv[1:]))
