"""`sealedos bench WHAT`: the benchmarks.  Each reports figures with their ratio to a bare
baseline measured in the same run; none is a test (tests never assert timings)."""
from __future__ import annotations

import importlib
import sys

#: benchmark -> module with main(argv)
BENCHES: dict[str, str] = {
    "paging": "host_tools.bench_paging",
    "ipc": "host_tools.loadgen_ipc",
    "abuse": "host_tools.bench_abuse",
    "route": "host_tools.bench_route",
    "scan": "host_tools.bench_scan",
}


def main(argv: list[str]) -> int:
    """Route `sealedos bench WHAT ARGS` to WHAT's module."""
    if not argv or argv[0] not in BENCHES:
        print(f"usage: sealedos bench {{{','.join(BENCHES)}}} [ARGS]", file=sys.stderr)
        return 2
    return int(importlib.import_module(BENCHES[argv[0]]).main(argv[1:]) or 0)
