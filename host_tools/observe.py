"""`sealedos stats` and `sealedos ps`: the running system's counters and process table.

    sealedos stats [--kernel ADDR | --rundir DIR] [--json]
    sealedos ps    [--kernel ADDR | --rundir DIR] [--json] [--live]

ps lists every sealed process the kernel knows (live ones, then exited ones) with its host
pid, host RSS and CPU% (when it runs on this host; CPU% is over its whole life, as in ps(1)),
resident and swapped pages, minor/major faults, IPC calls in/out and state; then the
services: the kernel, its pager slots and the disk services beside it.  Exit status 2 when
no kernel answers.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from host_tools.snapshot import NoKernel, add_target_args, fmt_bytes, observer_for

NO_KERNEL_STATUS: int = 2
#: Width of the tables when stdout is not a terminal (a file or a pipe is not 80 columns).
PIPE_WIDTH: int = 132
#: Columns of the process table: (header, record key).
PROC_COLUMNS: tuple[tuple[str, str], ...] = (
    ("SPID", "spid"), ("PID", "hostpid"), ("RSS", "rss_bytes"), ("CPU%", "cpu_percent"),
    ("RES", "resident_pages"), ("SWAP", "swapped_pages"), ("MINFLT", "minor_faults"),
    ("MAJFLT", "major_faults"), ("IPCIN", "ipc_calls_in"), ("IPCOUT", "ipc_calls_out"))
STATE_STYLES: dict[str, str] = {
    "running": "green", "up": "green", "blocked on fault": "yellow", "blocked on call": "cyan",
    "blocked on receive": "cyan", "restarting": "bold yellow", "starting": "yellow",
    "down": "bold red", "killed": "red", "exited": "dim"}


def build_parser(prog: str, what: str) -> argparse.ArgumentParser:
    """The flags shared by stats and ps."""
    p = argparse.ArgumentParser(prog=prog, description=what)
    add_target_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON document")
    return p


def take_snapshot(args: argparse.Namespace, prog: str) -> dict[str, Any] | None:
    """A snapshot of the system args point at; None (after an error line) if no kernel answers."""
    try:
        observer = observer_for(args)
        try:
            return observer.snapshot()
        finally:
            observer.close()
    except NoKernel as exc:
        print(f"{prog}: {exc}\n{prog}: start a system with `sealedos up`, or point at one with "
              "--kernel ADDR, --rundir DIR or SEALEDOS_KERNEL_ADDR", file=sys.stderr)
        return None


# -- stats -----------------------------------------------------------------------------------
def main_stats(argv: list[str]) -> int:
    """`sealedos stats`: print the kernel's counters (a table, or --json)."""
    args = build_parser("sealedos stats", "print the running kernel's counters").parse_args(argv)
    snap = take_snapshot(args, "sealedos stats")
    if snap is None:
        return NO_KERNEL_STATUS
    if args.json:
        print(json.dumps(snap["kernel"], indent=2, sort_keys=True, default=str))
        return 0
    table = Table(title=f"sealedos kernel at {snap['addr']}", show_header=True)
    table.add_column("counter")
    table.add_column("value", justify="right")
    for key, value in flatten(snap["kernel"]):
        table.add_row(key, str(value))
    make_console().print(table)
    return 0


def flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested maps and lists as (dotted.key, scalar) pairs, in key order."""
    if isinstance(value, dict):
        out: list[tuple[str, Any]] = []
        for k in sorted(value, key=str):
            out += flatten(value[k], f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(value, list):
        out = []
        for i, v in enumerate(value):
            out += flatten(v, f"{prefix}[{i}]")
        return out
    return [(prefix, value)]


# -- ps --------------------------------------------------------------------------------------
def main_ps(argv: list[str]) -> int:
    """`sealedos ps`: every sealed process and service (rich tables, or --json)."""
    p = build_parser("sealedos ps", "list sealed processes and services")
    p.add_argument("--live", action="store_true", help="leave out exited processes")
    args = p.parse_args(argv)
    snap = take_snapshot(args, "sealedos ps")
    if snap is None:
        return NO_KERNEL_STATUS
    procs = [r for r in snap["processes"] if not args.live or r.get("state") not in
             ("exited", "killed")]
    if args.json:
        print(json.dumps({"addr": snap["addr"], "processes": procs,
                          "services": snap["services"]}, indent=2, sort_keys=True, default=str))
        return 0
    console = make_console()
    console.print(process_table(procs))
    console.print(service_table(snap["services"]))
    return 0


def process_table(procs: list[dict[str, Any]]) -> Table:
    """The sealed processes as a rich table."""
    table = Table(title="sealed processes", title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False, padding=0)
    table.add_column("NAME", no_wrap=True, max_width=16)
    for header, _ in PROC_COLUMNS:
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("STATE", no_wrap=True)
    for rec in procs:
        cells = [cell(rec, key) for _, key in PROC_COLUMNS]
        table.add_row(rec.get("name", "?"), *cells, styled_state(rec.get("state", "?")))
    return table


def service_table(services: list[dict[str, Any]]) -> Table:
    """The kernel, pager slots and disk services as a rich table."""
    table = Table(title="services", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  padding=0)
    for header in ("SERVICE", "PID", "RSS", "CPU%", "STATE", "DETAIL"):
        table.add_column(header, justify="right" if header in ("PID", "RSS", "CPU%") else "left",
                         no_wrap=header != "DETAIL")
    for row in services:
        detail = row.get("detail", "")
        if row.get("latency_ms") is not None:
            detail = f"answered in {row['latency_ms']:.1f} ms, {detail}"
        if row.get("restarts"):
            detail = f"restarts {row['restarts']}, {detail}"
        table.add_row(row["name"], cell(row, "hostpid"), cell(row, "rss_bytes"),
                      cell(row, "cpu_percent"), styled_state(row.get("state", "?")), detail)
    return table


def make_console() -> Console:
    """A console for stdout: the terminal's width, or PIPE_WIDTH when not a terminal."""
    return Console(width=None if sys.stdout.isatty() else PIPE_WIDTH)


def cell(rec: dict[str, Any], key: str) -> str:
    """One table cell: bytes humanised, missing values as '-'."""
    value = rec.get(key)
    if value is None:
        return "-"
    if key == "rss_bytes":
        return fmt_bytes(value)
    if key == "cpu_percent":
        return f"{value:.1f}"
    return str(value)


def styled_state(state: str) -> str:
    """A state with its colour markup."""
    style = STATE_STYLES.get(state)
    return f"[{style}]{state}[/]" if style else state


def main(argv: list[str]) -> int:
    """`python -m host_tools.observe stats|ps ARGS` (the CLI calls main_stats/main_ps)."""
    if argv and argv[0] == "stats":
        return main_stats(argv[1:])
    return main_ps(argv[1:] if argv and argv[0] == "ps" else argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
