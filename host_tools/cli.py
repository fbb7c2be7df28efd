"""`sealedos`: one command, one subcommand per component or tool.

Each subcommand lives in its own module with a `main(argv) -> int`; this file only routes,
importing the module on demand so `sealedos disk` never loads the kernel.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys

from wire import host

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("host_tools.up", "run the whole system locally (disk, pager, kernel, apps)"),
    "kernel": ("kernel_daemon.kernel", "run the kernel daemon in the foreground"),
    "pager": ("pager_service.pager", "run an external pager in the foreground"),
    "disk": ("disk_service.disk", "run the disk service (block driver) in the foreground"),
    "run": ("launcher.run", "start one sealed process against a running kernel"),
    "stats": ("host_tools.observe", "print the running kernel's counters"),
    "ps": ("host_tools.observe", "list sealed processes and services"),
    "health": ("host_tools.health", "is one component up and doing its job (healthchecks)"),
    "summary": ("host_tools.summary", "per-process summary of a running system's apps"),
    "top": ("host_tools.top", "live view of the running system"),
    "metrics": ("host_tools.metrics", "serve the kernel's metrics to Prometheus (an observer)"),
    "bench": ("host_tools.bench", "benchmarks: `bench paging`, `bench ipc`"),
    "chaos": ("host_tools.chaos", "kill components under load and report recovery"),
    "sim": ("host_tools.sim.cli", "deterministic simulation: seeds of randomised faults"),
    "tcb": ("host_tools.tcb", "the size of the trusted base (kernel, wire, launcher)"),
    "keys": ("host_tools.keys_cmd", "generate every principal's CURVE keypair"),
}

#: The commands that hold secrets or data: their processes are non-dumpable from here (each
#: main says so again, for whoever starts it another way).
COMPONENTS: frozenset[str] = frozenset({"kernel", "pager", "disk", "run"})


def usage() -> str:
    """The top-level help text."""
    lines = ["usage: sealedos COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Route `sealedos COMMAND ARGS` to COMMAND's module."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"sealedos: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    if name in COMPONENTS:               # before the heavy imports: the window is only startup
        host.make_nondumpable(name)
    logging.basicConfig(level=os.environ.get("SEALEDOS_LOG", "WARNING").upper(),
                        format=f"%(asctime)s {name}[%(process)d] %(levelname)s %(message)s")
    module = importlib.import_module(COMMANDS[name][0])
    entry = getattr(module, f"main_{name}", None) or module.main
    return int(entry(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
