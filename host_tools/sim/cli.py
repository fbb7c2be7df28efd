"""`sealedos sim`: run seeds of the deterministic simulation and report.

    sealedos sim [--seeds N] [--seed S] [--steps K] [--faults LIST] [--mirrors M]
                 [--seconds T] [--json] [--trace]

Seeds S, S+1, ... S+N-1 (S defaults to one drawn from the OS and printed, so every sweep
covers new schedules and any of them can be replayed).  ``--seconds T`` sweeps for T
seconds instead of N seeds (what CI runs).  Each failing seed prints the one-line command
that replays it and the step at which an invariant broke (``--shrink``: and a smaller one).
The trace hash is printed per seed (one seed, or ``--verbose``) and for the whole sweep: a
replay must print the same one.

The same seed gives the same trace byte for byte in any process: nothing in the run reads
the host clock or host entropy, and nothing hash-randomised reaches a message.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from typing import Any

from host_tools.sim.world import FAULTS, RunResult, SimConfig, World


def build_parser() -> argparse.ArgumentParser:
    """The `sealedos sim` flags."""
    p = argparse.ArgumentParser(prog="sealedos sim",
                                description="deterministic simulation under randomised faults")
    p.add_argument("--seeds", type=int, default=100, help="how many seeds (default 100)")
    p.add_argument("--seed", type=int, default=None, help="first seed (default: random, printed)")
    p.add_argument("--steps", type=int, default=2000, help="steps per seed before quiescence")
    p.add_argument("--faults", default="all",
                   help=f"comma-separated subset of {','.join(FAULTS)}, 'all' or 'none'")
    p.add_argument("--mirrors", type=int, choices=(1, 2), default=None,
                   help="pager mirrors (default: drawn from the seed)")
    p.add_argument("--intensity", type=float, default=1.0,
                   help="multiply every fault probability (default 1; 5 = a storm)")
    p.add_argument("--seconds", type=float, default=None,
                   help="sweep for this long instead of --seeds")
    p.add_argument("--json", action="store_true", help="one JSON object per seed, then a summary")
    p.add_argument("--trace", action="store_true", help="print the event trace (one seed)")
    p.add_argument("--verbose", action="store_true", help="a line per seed, passing ones too")
    p.add_argument("--shrink", action="store_true",
                   help="shrink each failing seed: fewest steps, fewest fault kinds")
    return p


def parse_faults(text: str) -> frozenset[str]:
    """The --faults value as a set; ValueError naming an unknown fault."""
    if text == "all":
        return frozenset(FAULTS)
    if text in ("none", ""):
        return frozenset()
    names = frozenset(t.strip() for t in text.split(",") if t.strip())
    unknown = names - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown fault(s) {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(FAULTS)}")
    return names


def replay_command(r: RunResult, args: argparse.Namespace) -> str:
    """The one-line command that replays seed r.seed exactly."""
    cmd = f"sealedos sim --seed {r.seed} --seeds 1 --steps {args.steps} --faults {args.faults}"
    if args.mirrors:
        cmd += f" --mirrors {args.mirrors}"
    if args.intensity != 1.0:
        cmd += f" --intensity {args.intensity}"
    return cmd


def run_one(seed: int, args: argparse.Namespace, faults: frozenset[str]) -> RunResult:
    """Run one seed with the command line's shape."""
    return World(SimConfig(seed, steps=args.steps, faults=faults, mirrors=args.mirrors,
                           keep_trace=args.trace, intensity=args.intensity)).run()


def main(argv: list[str]) -> int:
    """Run the sweep; exit status 1 if any seed broke an invariant."""
    args = build_parser().parse_args(argv)
    try:
        faults = parse_faults(args.faults)
    except ValueError as exc:
        print(f"sealedos sim: {exc}", file=sys.stderr)
        return 2
    if not args.verbose:          # the kernel's own warnings would drown the verdicts
        logging.getLogger("sealedos").setLevel(logging.CRITICAL)
    first = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    if not args.json:
        print(f"sim: seeds from {first}, {args.steps} steps each, faults {args.faults}",
              flush=True)
    t0 = time.perf_counter()
    sweep_hash = hashlib.sha256()
    failed: list[RunResult] = []
    n = 0
    while True:
        if args.seconds is not None:
            if time.perf_counter() - t0 >= args.seconds:
                break
        elif n >= args.seeds:
            break
        r = run_one(first + n, args, faults)
        sweep_hash.update(r.trace_hash.encode())
        n += 1
        _report(r, args)
        if not r.ok:
            failed.append(r)
            if args.shrink:
                print(f"  shrunk: {shrink(r, args, faults)}", flush=True)
    elapsed = time.perf_counter() - t0
    summary: dict[str, Any] = {"seeds": n, "first_seed": first, "failed": [r.seed for r in failed],
                               "seconds": round(elapsed, 2),
                               "trace_hash": sweep_hash.hexdigest()[:16],
                               "seeds_per_minute": round(n / elapsed * 60, 1) if elapsed else None}
    if args.json:
        print(json.dumps({"summary": summary}))
    else:
        print(f"sim: {n} seeds, {len(failed)} failed, {summary['seeds_per_minute']} seeds/min "
              f"({args.steps} steps each), trace hash {summary['trace_hash']}")
    return 1 if failed else 0


def shrink(r: RunResult, args: argparse.Namespace, faults: frozenset[str]) -> str:
    """A smaller schedule that still fails: the steps up to the failure (the run up to a
    step does not depend on how many steps follow), then without each fault kind the
    failure does not need.  Returns its replay command."""
    steps = min(args.steps, r.failed_step or args.steps)
    kept = set(faults)
    for name in sorted(faults):
        trial = frozenset(kept - {name})
        out = World(SimConfig(r.seed, steps=steps, faults=trial, mirrors=args.mirrors,
                              intensity=args.intensity)).run()
        if not out.ok:
            kept = set(trial)
            steps = min(steps, out.failed_step or steps)
    listed = ",".join(sorted(kept)) or "none"
    cmd = f"sealedos sim --seed {r.seed} --seeds 1 --steps {steps} --faults {listed}"
    cmd += f" --mirrors {args.mirrors}" if args.mirrors else ""
    return cmd + (f" --intensity {args.intensity}" if args.intensity != 1.0 else "")


def _report(r: RunResult, args: argparse.Namespace) -> None:
    """Print one seed's outcome (failures always; passes with --verbose or --json)."""
    if args.json:
        out = {"seed": r.seed, "ok": r.ok, "trace_hash": r.trace_hash, "steps": r.steps,
               "failed_step": r.failed_step, "violations": r.violations, "stopped": r.stopped,
               "sim_seconds": r.sim_seconds, "shape": r.shape, "work": r.work}
        if not r.ok:
            out["replay"] = replay_command(r, args)
        print(json.dumps(out), flush=True)
    elif not r.ok:
        print(f"seed {r.seed} FAILED at step {r.failed_step} (trace {r.trace_hash}, {r.shape}):",
              flush=True)
        for v in r.violations[:5]:
            print(f"  {v}")
        print(f"  replay: {replay_command(r, args)}", flush=True)
    elif args.verbose or (args.seeds == 1 and args.seconds is None):
        print(f"seed {r.seed} ok: trace {r.trace_hash}, {r.steps} steps, {r.sim_seconds} s "
              f"simulated, {r.shape}, {r.work}", flush=True)
    if args.trace and r.trace is not None:
        for line in r.trace:
            print(line)
