"""One look at a running system, for `sealedos ps`, `stats` and `top`: the kernel's counters
and process table, its pager slots, the disk services found beside it, and host figures
(RSS, CPU%) for every process that runs on this host.

Finding the kernel: --kernel ADDR, else --rundir DIR (ipc://DIR/kernel.sock), else the
environment (SEALEDOS_KERNEL_ADDR, then SEALEDOS_RUNDIR), else the newest
/tmp/sealedos-*/kernel.sock (what `sealedos up` creates).  The kernel does not know the disk
services; they are found as RUNDIR/disk*.sock when the kernel listens in a runtime directory,
and asked directly (ping + stats).

Keys: the observer speaks with the ``observer`` principal's key (--principal: another
principal's, e.g. a container's own) from --keys DIR, else
SEALEDOS_KEYS, else RUNDIR/keys of the runtime directory found (what `sealedos up` makes);
--insecure (or SEALEDOS_INSECURE=1) talks NULL to an insecure system.
"""
from __future__ import annotations

import argparse
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from kernel_daemon.hostproc import same_process
from wire import keys as wkeys
from wire.client import Client
from wire.keys import Keyring, KeysMissing
from wire.protocol import Op, ServiceError

#: How long the kernel has to answer before we say no kernel answers.
KERNEL_TIMEOUT_MS: int = 2000
#: How long a disk service has to answer a ping.
DISK_TIMEOUT_MS: int = 300
#: Where `sealedos up` makes its runtime directories.
RUNDIR_GLOB: tuple[str, str] = ("/tmp", "sealedos-*")


class NoKernel(Exception):
    """No kernel could be found or none answered."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where the kernel listens, and the runtime directory beside it (if known)."""
    addr: str
    rundir: Path | None
    keys: Keyring = field(default_factory=lambda: Keyring(None))


def add_target_args(p: argparse.ArgumentParser) -> None:
    """Add --kernel and --rundir (how to find the kernel) to a subcommand's parser."""
    p.add_argument("--kernel", default=None, metavar="ADDR",
                   help="kernel address (default: env SEALEDOS_KERNEL_ADDR, or the newest "
                        "`sealedos up` runtime directory)")
    p.add_argument("--rundir", default=None, metavar="DIR",
                   help="runtime directory: the kernel is ipc://DIR/kernel.sock "
                        "(env SEALEDOS_RUNDIR)")
    p.add_argument("--keys", default=os.environ.get(wkeys.KEYS_ENV), metavar="DIR",
                   help=f"keys directory (env {wkeys.KEYS_ENV}; default RUNDIR/keys)")
    p.add_argument("--insecure", action="store_true", default=wkeys.insecure_from_env(),
                   help="talk NULL to a system started --insecure")
    p.add_argument("--principal", default=os.environ.get("SEALEDOS_PRINCIPAL", "observer"),
                   help="whose key to speak with (default observer; in a container, its own)")


def resolve_target(kernel: str | None, rundir: str | None, keys: str | None = None,
                   insecure: bool = False, principal: str = "observer") -> Target:
    """Pick the kernel address and the observer's keys by the rules in the module
    docstring; NoKernel if none (or no keys for it)."""
    target = _resolve_addr(kernel, rundir)
    if insecure:
        return target
    keys_dir = Path(keys) if keys else (target.rundir / "keys" if target.rundir else None)
    try:
        ring = wkeys.keyring(keys_dir, principal, False)
    except KeysMissing as exc:
        raise NoKernel(f"{exc} (give --keys DIR, or --insecure for an insecure system)") from None
    return Target(target.addr, target.rundir, ring)


def _resolve_addr(kernel: str | None, rundir: str | None) -> Target:
    """The kernel address and its runtime directory (no keys yet)."""
    env = os.environ
    if kernel:
        addr = kernel
    elif rundir:
        addr = f"ipc://{rundir}/kernel.sock"
    elif env.get("SEALEDOS_KERNEL_ADDR"):
        addr = env["SEALEDOS_KERNEL_ADDR"]
    elif env.get("SEALEDOS_RUNDIR"):
        addr = f"ipc://{env['SEALEDOS_RUNDIR']}/kernel.sock"
    else:
        found = discover_kernel_sockets()
        if not found:
            raise NoKernel("no kernel address given and no running `sealedos up` found under "
                           f"{RUNDIR_GLOB[0]}")
        addr = f"ipc://{found[0]}"
    if addr.startswith("ipc://"):
        path = Path(addr[len("ipc://"):])
        if not path.exists():
            raise NoKernel(f"no kernel socket at {path}")
        return Target(addr, path.parent)
    return Target(addr, Path(rundir) if rundir else None)


def discover_kernel_sockets() -> list[Path]:
    """Kernel sockets of local runtime directories we own, newest first."""
    base, pattern = RUNDIR_GLOB
    socks = []
    for d in Path(base).glob(pattern):
        sock = d / "kernel.sock"
        try:
            if d.stat().st_uid == os.getuid() and sock.exists():
                socks.append((sock.stat().st_mtime, sock))
        except OSError:
            continue
    return [s for _, s in sorted(socks, reverse=True)]


class HostSampler:
    """RSS and CPU% of local processes; CPU% is over the time since the previous sample of
    the same process, or over its whole life on the first sample (like ps(1)).

    Which host process a row is, is said explicitly, never guessed from command lines: a
    sealed process or pager by the (pid, start time) the trusted launcher gave the kernel
    (a reused pid has another start time), the kernel and the disks by the pid they answer
    PING with themselves."""

    def __init__(self) -> None:
        self.host = socket.gethostname()
        self._procs: dict[int, psutil.Process] = {}

    def sample(self, pid: object, host: str | None = None,
               started: float | None = None) -> dict[str, Any]:
        """{rss_bytes, cpu_percent} of host process `pid` on this host (when `started` is
        given: only if it is still the process started then), else {}."""
        if not isinstance(pid, int) or pid <= 0 or (host and host != self.host):
            return {}
        try:
            proc = self._procs.get(pid)
            if proc is None or not proc.is_running():
                found = psutil.Process(pid) if started is None else same_process(pid, started)
                if found is None:
                    return {}
                proc = self._procs[pid] = found
                times = _field(proc.cpu_times)
                life_s = max(1e-3, time.time() - proc.create_time())
                cpu = None if times is None else 100.0 * (times.user + times.system) / life_s
                _field(lambda: proc.cpu_percent(None))  # start the next interval here
            else:
                cpu = _field(lambda: proc.cpu_percent(None))
            mem = _field(proc.memory_info)
        except psutil.Error:
            self._procs.pop(pid, None)
            return {}
        row: dict[str, Any] = {}
        if mem is not None:
            row["rss_bytes"] = mem.rss
        if cpu is not None:
            row["cpu_percent"] = round(cpu, 1)
        return row


def _field(read: Any) -> Any:
    """One psutil reading, or None when the host denies it (another uid's non-dumpable
    process: its /proc files are root's); a vanished process still raises."""
    try:
        return read()
    except psutil.AccessDenied:
        return None


@dataclass
class Observer:
    """A connection to one kernel (and the disks beside it) that takes snapshots."""
    target: Target
    sampler: HostSampler = field(default_factory=HostSampler)
    _kernel: Client | None = None
    _kernel_pid: int | None = None
    _disks: dict[str, Client] = field(default_factory=dict)

    def kernel_call(self, op: Op) -> dict[str, Any]:
        """One request to the kernel; NoKernel when it does not answer in time."""
        if self._kernel is None:
            self._kernel = Client(self.target.addr, keys=self.target.keys)
        try:
            return self._kernel.call(op, timeout_ms=KERNEL_TIMEOUT_MS)
        except ServiceError as exc:
            self._kernel.close()
            self._kernel = None               # a fresh connection next time
            raise NoKernel(f"no kernel answers at {self.target.addr}: {exc.msg}") from None

    def snapshot(self) -> dict[str, Any]:
        """{time, addr, kernel: counters, processes: [...], services: [...]} as of now."""
        if self._kernel_pid is None:
            self._kernel_pid = self.kernel_call(Op.PING).get("pid")
        t0 = time.perf_counter()
        stats = self.kernel_call(Op.STATS)
        rtt_ms = (time.perf_counter() - t0) * 1000
        kernel = stats["kernel"]
        procs = []
        for rec in stats["processes"]:
            rec = dict(rec)
            if rec.get("state") not in ("exited", "killed"):
                rec.update(self.sampler.sample(rec.get("hostpid"), rec.get("host"),
                                               float(rec.get("host_started") or 0.0)))
            procs.append(rec)
        local = self.target.addr.startswith("ipc://")
        services = [{"kind": "kernel", "name": "kernel", "hostpid": self._kernel_pid,
                     "state": "up", "latency_ms": round(rtt_ms, 2), "detail": self.target.addr,
                     **(self.sampler.sample(self._kernel_pid) if local else {})}]
        services += [self._pager_row(h, local) for h in kernel.get("pagers", [])]
        services += self._disk_rows()
        return {"time": time.time(), "addr": self.target.addr, "kernel": kernel,
                "processes": procs, "services": services}

    def _pager_row(self, h: dict[str, Any], local: bool) -> dict[str, Any]:
        """One pager slot as a service row: up, restarting (lost its instance) or starting;
        with host figures when the kernel is local and its launcher said which process the
        instance is (its `hostpid` is only what the instance claims)."""
        state = "up" if h.get("up") else ("restarting" if h.get("joins") else "starting")
        row = {"kind": "pager", "name": f"pager{h.get('mirror')}", "hostpid": h.get("hostpid"),
               "host": h.get("host"), "state": state, "restarts": max(0, h.get("joins", 0) - 1),
               "inflight": h.get("inflight"), "backlog": h.get("backlog"),
               "silent_ms": h.get("silent_ms"),
               "detail": f"inflight {h.get('inflight')} backlog {h.get('backlog')}"}
        launched_pid, launched_s = h.get("launched") or (0, 0.0)
        if local and launched_pid:
            row.update(self.sampler.sample(launched_pid, None, float(launched_s)))
        return row

    def _disk_rows(self) -> list[dict[str, Any]]:
        """Every RUNDIR/disk*.sock and RUNDIR/sock/disk*/disk.sock, pinged: up with its
        latency and usage, or down."""
        rundir = self.target.rundir
        if rundir is None:
            return []
        rows: list[dict[str, Any]] = []
        found = [(s.name[:-len(".sock")], s) for s in rundir.glob("disk*.sock")]
        found += [(s.parent.name, s) for s in rundir.glob("sock/disk*/disk.sock")]
        for name, sock in sorted(found):
            client = self._disks.setdefault(
                name, Client(f"ipc://{sock}", keys=self.target.keys, server=name))
            t0 = time.perf_counter()
            try:
                pid = client.call(Op.PING, timeout_ms=DISK_TIMEOUT_MS).get("pid")
                latency_ms = (time.perf_counter() - t0) * 1000
                st = client.call(Op.STATS, timeout_ms=DISK_TIMEOUT_MS)
            except ServiceError:
                rows.append({"kind": "disk", "name": name, "hostpid": None, "state": "down",
                             "detail": f"no answer in {DISK_TIMEOUT_MS} ms"})
                continue
            used, total = st.get("used_blocks", 0), st.get("nblocks", 0)
            rows.append({"kind": "disk", "name": name, "hostpid": pid, "state": "up",
                         "latency_ms": round(latency_ms, 2), "used_blocks": used,
                         "nblocks": total, "detail": f"{used}/{total} blocks",
                         **self.sampler.sample(pid)})
        return rows

    def close(self) -> None:
        """Close every connection."""
        for c in [self._kernel, *self._disks.values()]:
            if c is not None:
                c.close()
        self._kernel = None
        self._disks.clear()


def fmt_bytes(n: Any) -> str:
    """1536000 -> '1.5M' (binary units); '-' when unknown."""
    if not isinstance(n, (int, float)):
        return "-"
    for unit in ("B", "K", "M", "G"):
        if abs(n) < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return "-"


def observer_for(args: argparse.Namespace) -> Observer:
    """An Observer of the system add_target_args' flags point at; NoKernel if none (or no
    keys for it)."""
    return Observer(resolve_target(args.kernel, args.rundir, args.keys, args.insecure,
                                   args.principal))
