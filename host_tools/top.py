"""`sealedos top`: a live view of the running system, refreshed every second.

    sealedos top [--kernel ADDR | --rundir DIR] [--interval S] [--iterations N]

Shows the frame pool's occupancy by process (one bar, a colour per process), fault, page and
IPC rates (deltas between two refreshes), recent fault and disk-read latency, each live
process (pages, rates, state, host CPU% and RSS) and the services' health (kernel, pager
slots: up / restarting / starting, disks: up with ping latency / down).  Fits 80 columns.
Quits on q or Ctrl-C; keys are read in cbreak mode when stdin is a terminal, otherwise it
just refreshes (printing one frame after another) until Ctrl-C or --iterations.
"""
from __future__ import annotations

import argparse
import select
import sys
import termios
import time
import tty
from types import TracebackType
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from host_tools.observe import NO_KERNEL_STATUS, cell, styled_state
from host_tools.snapshot import NoKernel, Observer, add_target_args, observer_for

#: Colours of the processes' shares of the frame pool, by spid (cycled).
PALETTE: tuple[str, ...] = ("cyan", "magenta", "green", "yellow", "blue", "red",
                            "bright_cyan", "bright_magenta", "bright_green", "bright_yellow")
#: The widest the view draws itself (it is meant for 80-column terminals).
MAX_WIDTH: int = 80
#: Kernel counters shown as per-second rates: (label, counter).
RATE_COUNTERS: tuple[tuple[str, str], ...] = (
    ("minor", "minor_faults"), ("major", "major_faults"), ("page-in", "page_ins"),
    ("page-out", "page_outs"), ("evict", "evictions"))
DEAD_STATES: frozenset[str] = frozenset({"exited", "killed"})


class Rates:
    """Per-second rates from the deltas between consecutive snapshots."""

    def __init__(self) -> None:
        self.prev: dict[str, Any] | None = None

    def update(self, snap: dict[str, Any]) -> dict[str, Any]:
        """Rates since the previous snapshot: {kernel: {counter: /s}, procs: {spid: {...}}}."""
        prev, self.prev = self.prev, snap
        if prev is None:
            return {"kernel": {}, "procs": {}, "ipc": None}
        dt = max(1e-3, snap["time"] - prev["time"])
        k, pk = snap["kernel"], prev["kernel"]
        kernel = {key: max(0.0, (k.get(key, 0) - pk.get(key, 0)) / dt) for _, key in RATE_COUNTERS}
        before = {p["spid"]: p for p in prev["processes"]}
        procs = {}
        for p in snap["processes"]:
            q = before.get(p["spid"], {})
            procs[p["spid"]] = {
                "faults": max(0.0, (p.get("faults", 0) - q.get("faults", 0)) / dt),
                "major": max(0.0, (p.get("major_faults", 0) - q.get("major_faults", 0)) / dt),
                "ipc": max(0.0, (_calls(p) - _calls(q)) / dt)}
        ipc = max(0.0, sum(_calls(p) for p in snap["processes"])
                  - sum(_calls(p) for p in prev["processes"])) / dt
        return {"kernel": kernel, "procs": procs, "ipc": ipc}


def _calls(rec: dict[str, Any]) -> int:
    """IPC calls made by a process record."""
    return int(rec.get("ipc_calls_out", 0) or 0)


# -- rendering -------------------------------------------------------------------------------
def render(snap: dict[str, Any], rates: dict[str, Any], width: int) -> RenderableType:
    """The whole view for one snapshot, at most `width` columns wide."""
    k = snap["kernel"]
    live = [p for p in snap["processes"] if p.get("state") not in DEAD_STATES]
    live.sort(key=lambda p: (-p.get("resident_pages", 0), p["spid"]))
    head = Text.assemble(("sealedos top", "bold"), f"  {snap['addr']}"[:width - 30],
                         f"  {time.strftime('%H:%M:%S')}  ", ("q quits", "dim"))
    return Group(head, summary_line(k, live, snap), rate_line(rates), latency_line(k),
                 Text(""), frame_bar(k, live, width), frame_legend(k, live, width),
                 process_table(live, rates["procs"]), service_table(snap["services"]))


def summary_line(k: dict[str, Any], live: list[dict[str, Any]], snap: dict[str, Any]) -> Text:
    """Frames, policy, sealing, process counts."""
    dead = len(snap["processes"]) - len(live)
    return Text(f"frames {k.get('nframes')} ({k.get('policy')}), free {k.get('free_frames')}  "
                f"processes {len(live)} live, {dead} gone  "
                f"{'sealed' if k.get('sealed') else 'UNSEALED'}, mirrors {k.get('mirrors')}")


def rate_line(rates: dict[str, Any]) -> Text:
    """Fault, page and IPC rates (blank figures on the first refresh)."""
    kr = rates["kernel"]
    parts = [f"{label} {kr[key]:.0f}" if key in kr else f"{label} -"
             for label, key in RATE_COUNTERS]
    ipc = rates["ipc"]
    parts.append(f"ipc {ipc:.0f}" if ipc is not None else "ipc -")
    return Text.assemble(("per s: ", "bold"), "  ".join(parts))


def latency_line(k: dict[str, Any]) -> Text:
    """Recent fault and disk-read latency percentiles (kernel's last samples)."""
    lat = k.get("fault_latency_us") or {}
    parts = []
    for label, key in (("minor", "minor"), ("major", "major"), ("disk", "disk_read")):
        q = lat.get(key) or {}
        if q.get("n"):
            parts.append(f"{label} {q['p50'] / 1000:.1f}/{q['p99'] / 1000:.1f}")
    return Text.assemble(("latency ms p50/p99: ", "bold"), "  ".join(parts) or "-")


def frame_bar(k: dict[str, Any], live: list[dict[str, Any]], width: int) -> Text:
    """The frame pool as one bar: a coloured run per process, in-flight frames, free frames."""
    nframes = max(1, int(k.get("nframes") or 1))
    cells = max(10, width - 8)
    used = nframes - int(k.get("free_frames") or 0)
    resident = sum(p.get("resident_pages", 0) for p in live)
    runs = [(p.get("resident_pages", 0), colour(p["spid"])) for p in live]
    runs += [(max(0, used - resident), "white"), (nframes - used, "grey30")]
    bar = Text("frames ", style="bold")
    drawn = 0
    acc = 0
    for count, style in runs:
        acc += count
        upto = round(acc * cells / nframes)
        char = "░" if style == "grey30" else ("▒" if style == "white" else "█")
        bar.append(char * (upto - drawn), style=style)
        drawn = upto
    return bar


def frame_legend(k: dict[str, Any], live: list[dict[str, Any]], width: int) -> Text:
    """Who holds how many frames (the bar's key), wrapped between items to fit `width`."""
    nframes = max(1, int(k.get("nframes") or 1))
    held = sum(p.get("resident_pages", 0) for p in live)
    inflight = max(0, nframes - int(k.get("free_frames") or 0) - held)
    items = [(colour(p["spid"]), "█", f"{p.get('name', '?')[:12]} {p.get('resident_pages', 0)} "
              f"({100 * p.get('resident_pages', 0) / nframes:.0f}%)") for p in live[:8]]
    items += [("white", "▒", f"in flight {inflight}"),
              ("grey30", "░", f"free {k.get('free_frames')}")]
    out, used = Text("  "), 2
    for style, mark, label in items:
        size = len(label) + 4
        if used + size > width:
            out.append("\n  ")
            used = 2
        out.append(mark + " ", style=style)
        out.append(label + "  ")
        used += size
    return out


def colour(spid: int) -> str:
    """The colour of a process in the bar and table."""
    return PALETTE[spid % len(PALETTE)]


def process_table(live: list[dict[str, Any]], rates: dict[int, dict[str, float]]) -> Table:
    """Live processes: pages, per-second faults, majors and calls, state, host figures."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=0)
    for header in ("NAME", "SPID", "STATE", "RES", "SWAP", "FLT/s", "MAJ/s", "IPC/s", "CPU%",
                   "RSS"):
        table.add_column(header, justify="left" if header in ("NAME", "STATE") else "right",
                         no_wrap=True, max_width=12 if header == "NAME" else None)
    for p in live:
        r = rates.get(p["spid"])

        def fig(key: str, r: dict[str, float] | None = r) -> str:
            """A per-second rate, or - before the second sample."""
            return f"{r[key]:.0f}" if r else "-"
        table.add_row(Text(p.get("name", "?"), style=colour(p["spid"])), str(p["spid"]),
                      styled_state(p.get("state", "?")), str(p.get("resident_pages", 0)),
                      str(p.get("swapped_pages", 0)), fig("faults"), fig("major"), fig("ipc"),
                      cell(p, "cpu_percent"), cell(p, "rss_bytes"))
    return table


def service_table(services: list[dict[str, Any]]) -> Table:
    """Kernel, pagers and disks: state, host figures and health detail."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=0)
    for header in ("SERVICE", "PID", "STATE", "CPU%", "RSS", "HEALTH"):
        table.add_column(header, justify="right" if header in ("PID", "CPU%", "RSS") else "left",
                         no_wrap=True, max_width=34 if header == "HEALTH" else None)
    for s in services:
        table.add_row(s["name"], cell(s, "hostpid"), styled_state(s.get("state", "?")),
                      cell(s, "cpu_percent"), cell(s, "rss_bytes"), health(s))
    return table


def health(s: dict[str, Any]) -> str:
    """A service's health detail in a few words."""
    if s["kind"] == "pager":
        silent = s.get("silent_ms")
        heard = f"hello {silent} ms ago" if silent is not None else "never joined"
        return f"q {s.get('inflight')}+{s.get('backlog')} {heard} rst {s.get('restarts', 0)}"
    if s["kind"] == "kernel" and s.get("latency_ms") is not None:
        return f"stats answered in {s['latency_ms']:.1f} ms"
    if s["kind"] == "disk" and s.get("latency_ms") is not None:
        return f"ping {s['latency_ms']:.1f} ms {s.get('used_blocks')}/{s.get('nblocks')} blk"
    return str(s.get("detail", ""))[:34]


# -- keys and the loop -------------------------------------------------------------------------
class KeyReader:
    """Single keys from a terminal stdin in cbreak mode (restored on exit); inert otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stdin.isatty()
        self._saved: list[Any] | None = None

    def __enter__(self) -> KeyReader:
        if self.tty:
            self._saved = termios.tcgetattr(sys.stdin.fileno())
            tty.setcbreak(sys.stdin.fileno())
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._saved is not None:
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, self._saved)

    def wait(self, timeout_s: float) -> str | None:
        """Wait up to timeout_s for a key; the key, or None (always None without a tty)."""
        if not self.tty:
            time.sleep(timeout_s)
            return None
        ready, _, _ = select.select([sys.stdin], [], [], timeout_s)
        return sys.stdin.read(1) if ready else None


def build_parser() -> argparse.ArgumentParser:
    """`sealedos top` flags."""
    p = argparse.ArgumentParser(prog="sealedos top", description="live view of the running system")
    add_target_args(p)
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    p.add_argument("--iterations", type=int, default=0, help="stop after N refreshes (0: never)")
    return p


def main(argv: list[str]) -> int:
    """Refresh the view until q, Ctrl-C or --iterations; exit 2 if no kernel answers at first."""
    args = build_parser().parse_args(argv)
    try:
        observer = observer_for(args)
        first = observer.snapshot()
    except NoKernel as exc:
        print(f"sealedos top: {exc}", file=sys.stderr)
        return NO_KERNEL_STATUS
    console = Console()
    width = min(MAX_WIDTH, console.width)
    try:
        with KeyReader() as keys:
            run(observer, first, console, keys, width, args)
    except KeyboardInterrupt:
        pass
    finally:
        observer.close()
    return 0


def run(observer: Observer, snap: dict[str, Any], console: Console, keys: KeyReader,
        width: int, args: argparse.Namespace) -> None:
    """The refresh loop: Live on a terminal, one printed frame per refresh otherwise."""
    rates = Rates()
    view = render(snap, rates.update(snap), width)
    live = Live(view, console=console, auto_refresh=False, transient=False) \
        if console.is_terminal else None
    done = 0
    with live if live is not None else _Nothing():
        while True:
            if live is not None:
                live.update(view, refresh=True)
            else:
                console.print(view, width=width)
            done += 1
            if args.iterations and done >= args.iterations:
                return
            if (keys.wait(args.interval) or "").lower() == "q":
                return
            try:
                snap = observer.snapshot()
                view = render(snap, rates.update(snap), width)
            except NoKernel as exc:
                view = Text(f"sealedos top: {exc} (retrying; q quits)", style="bold red")


class _Nothing:
    """A context manager that does nothing (the non-terminal stand-in for Live)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
