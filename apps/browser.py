"""browser: a browser process talking to plugin processes; a dead plugin is only a dead plugin.

    sealedos run browser --plugins plugin.1,plugin.2,plugin.3 [--rounds 50] [--interval-ms 20]

The browser looks every plugin up with init (its manifest allows ``plugin.*`` and nothing
else), then for ``--rounds`` rounds asks each live plugin to render a document.  A plugin
that dies (crash, SIGKILL) makes exactly its own calls fail with PeerDied: the browser marks
it dead, stops calling it, and carries on with the others -- the fault is contained in the
plugin's process, as in the design discussion.  Progress and the final tally are REPORTed:
``round``, ``ok.NAME`` (renders that succeeded), ``dead`` (comma-separated), and
``checksum: verified`` when every live plugin answered every round correctly.
"""
from __future__ import annotations

import argparse
import sys
import time

from apps.plugin import render
from apps.runtime import SealedProcess
from apps.runtime.app import app_parser, run_reporting
from apps.runtime.errors import PeerDied

#: How long the browser waits for a plugin to register (plugins may start after it).
LOOKUP_WAIT_S: float = 10.0


def browse(proc: SealedProcess, plugins: list[str], rounds: int, interval_s: float) -> int:
    """Run the rounds; REPORT progress and the tally; return the exit status."""
    handles = {name: proc.lookup(name, LOOKUP_WAIT_S) for name in plugins}
    ok = dict.fromkeys(plugins, 0)
    dead: list[str] = []
    wrong = 0
    for r in range(rounds):
        for name, h in list(handles.items()):
            doc = f"page {r} for {name}"
            try:
                reply, _ = proc.call(h, {"kind": "render", "doc": doc})
            except PeerDied:
                dead.append(name)
                del handles[name]
                proc.cap_close(h)
                continue
            if reply != render(name, doc):
                wrong += 1
            else:
                ok[name] += 1
        proc.report(round=r + 1, dead=",".join(dead), wrong=wrong,
                    **{f"ok.{n}": c for n, c in ok.items()})
        if not handles:
            break
        time.sleep(interval_s)
    verdict = "verified" if wrong == 0 and handles else "failed"
    proc.report(checksum=verdict)
    return 0 if verdict == "verified" else 1


def build_parser() -> argparse.ArgumentParser:
    """`sealedos run browser` flags."""
    p = app_parser("browser", __doc__)
    p.add_argument("--plugins", default="plugin.1,plugin.2,plugin.3")
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--interval-ms", type=int, default=20)
    return p


def main(argv: list[str]) -> int:
    """`sealedos run browser ...`"""
    args = build_parser().parse_args(argv)
    plugins = [p for p in args.plugins.split(",") if p]
    with SealedProcess.connect(args.kernel) as proc:
        interval_s = args.interval_ms / 1000.0
        return run_reporting(proc, lambda: browse(proc, plugins, args.rounds, interval_s))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
