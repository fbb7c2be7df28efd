"""The deterministic simulation (host_tools/sim): determinism, a bounded sweep, regressions.

The sweep's first seed changes per run and is printed (run pytest with -s to see it, or
read it in the failure message, which carries the one-line replay command).
"""
from __future__ import annotations

import os
import time

import pytest

from host_tools.sim.world import FAULTS, SimConfig, World

#: Seeds that once broke an invariant, with the bug they found (fixed since).
REGRESSION_SEEDS: dict[int, str] = {
    4: "a page grant completing from a timer while the receiver remapped: vm.grant unmapped "
       "the caller's pages, then the receiver's map raised ServiceError out of the kernel loop",
    28: "the same grant race on another schedule (the caller's pages were already unmapped)",
    13: "an OPEN that timed out left the page's mirror without a handle: 'no mirror holds the "
        "page' (kernel-minted handles withheld until a pager acknowledged OPEN)",
    1263675180: "an OPEN delayed past its space's CLOSE made the handle again on the disk: "
                "1 handle and its blocks leaked (no tombstone for closed handles)",
    3931367869: "four OPENs reordered behind their CLOSEs: 4 handles, 9 blocks leaked",
    131958005: "OPENs and WRITEs sent to a hung disk reached its third instance after the "
               "handle's CLOSE, which that instance had answered EBADHANDLE (it never held "
               "the handle, so no tombstone): 1 handle, 4 blocks leaked",
}
#: Seeds of an honest system (one pager, no hostile mode) that once stopped a process with
#: EINTEGRITY -- allowed by invariant 2, but nothing had lost the page -- with the cause.
HONEST_STOP_SEEDS: dict[int, str] = {
    17691446: "the first of two racing OPENs was answered 'created' last, after a page was "
              "stored under the handle: the kernel took it for a wiped disk and dropped the "
              "page's only mirror bit ('no mirror holds the page')",
    17690967: "the simulator woke a hung disk early at quiescence: frames sent after overtook "
              "those it held, and an older WRITE of a slot landed on a newer one",
}
#: How long the bounded sweep runs (seconds of wall time).
SWEEP_S: float = float(os.environ.get("SEALEDOS_SIM_SWEEP_S", "20"))


def test_same_seed_gives_the_same_trace_byte_for_byte() -> None:
    first = World(SimConfig(11, steps=1500)).run()
    again = World(SimConfig(11, steps=1500)).run()
    other = World(SimConfig(12, steps=1500)).run()
    assert first.trace_hash == again.trace_hash
    assert first.steps == again.steps and first.work == again.work
    assert other.trace_hash != first.trace_hash


def test_trace_lines_replay_identically() -> None:
    a = World(SimConfig(5, steps=600, keep_trace=True)).run()
    b = World(SimConfig(5, steps=600, keep_trace=True)).run()
    assert a.trace and a.trace == b.trace
    assert World(SimConfig(5, steps=600)).run().trace_hash == a.trace_hash   # same unkept
    assert any(" timers kernel" in line for line in a.trace)


#: Seeds of fault storms (--intensity X) that once broke an invariant: (seed, X) -> bug.
STORM_REGRESSION_SEEDS: dict[tuple[int, float], str] = {
    (700085, 5.0): "a CLOSE whose retry budget ran out while mirror 0's disk kept dying was "
            "given up: the handle and its blocks stayed allocated on that disk forever",
    (2000779, 5.0): "a SHOOTDOWN of an older residency (delivered late, after UNMAP + MAP + a new "
             "install at another frame) dropped the new page's dirty bit; the kernel then "
             "took the page for demand-zero and the process read zeros where it had written",
    (6000088, 3.0): "the simulator's own bug: an exiting server's abandoned RECEIVE was "
                    "answered with a call from a client the kernel did not know dead yet",
}


@pytest.mark.parametrize("seed,intensity", sorted(STORM_REGRESSION_SEEDS))
def test_storm_regression_seed(seed: int, intensity: float) -> None:
    r = World(SimConfig(seed, intensity=intensity)).run()
    assert r.ok, f"seed {seed} ({STORM_REGRESSION_SEEDS[seed, intensity]}): {r.violations}"


@pytest.mark.parametrize("seed", sorted(REGRESSION_SEEDS))
def test_regression_seed(seed: int) -> None:
    r = World(SimConfig(seed)).run()
    assert r.ok, f"seed {seed} ({REGRESSION_SEEDS[seed]}): {r.violations}"
    if "grant" in REGRESSION_SEEDS[seed]:
        assert r.work["grants_refused"] > 0, "the schedule no longer reaches the grant race"


@pytest.mark.parametrize("seed", sorted(HONEST_STOP_SEEDS))
def test_honest_seed_stops_nobody(seed: int) -> None:
    r = World(SimConfig(seed)).run()
    assert r.ok and r.shape["hostile"] == "none" and r.shape["mirrors"] == 1, r.violations
    assert not r.stopped, f"seed {seed} ({HONEST_STOP_SEEDS[seed]}): {r.stopped}"


def test_a_bounded_sweep_of_fresh_seeds_passes(capsys: pytest.CaptureFixture[str]) -> None:
    first = int.from_bytes(os.urandom(4), "big")
    with capsys.disabled():                      # in CI's log too, not only with -s
        print(f"\nsim sweep: seeds from {first}, {SWEEP_S} s "
              f"(replay one: sealedos sim --seed SEED --seeds 1)")
    t0 = time.perf_counter()
    seed, failed = first, []
    work = {"reads_checked": 0, "page_ins": 0, "calls": 0}
    while time.perf_counter() - t0 < SWEEP_S:
        r = World(SimConfig(seed)).run()
        if not r.ok:
            failed.append(f"seed {seed} failed at step {r.failed_step}: {r.violations[:2]}; "
                          f"replay: sealedos sim --seed {seed} --seeds 1")
        for k in work:
            work[k] += r.work.get(k, 0)
        seed += 1
    assert not failed, "\n".join(failed)
    assert seed - first >= 10, f"only {seed - first} seeds in {SWEEP_S} s"
    # the sweep really paged, verified and called (it is not a sweep of idle systems)
    assert all(v > 0 for v in work.values()), work


def test_mirrored_pagers_with_one_faulty_stop_nobody() -> None:
    for seed in range(30, 42):
        r = World(SimConfig(seed, steps=1500, mirrors=2, hostile="flip")).run()
        assert r.ok, (seed, r.violations)
        assert not r.stopped, (seed, r.stopped)


def test_a_single_hostile_pager_only_stops_processes_with_integrity_errors() -> None:
    stopped = 0
    for seed in range(50, 60):
        r = World(SimConfig(seed, steps=1500, mirrors=1, hostile="swap")).run()
        assert r.ok, (seed, r.violations)
        assert all("EINTEGRITY" in s for s in r.stopped)
        stopped += len(r.stopped)
    assert stopped > 0, "a swapping pager was never caught"


def test_a_known_bad_setup_is_caught_with_its_step() -> None:
    """Unsealed pages and a bit-flipping pager: a process reads a byte it did not write."""
    r = None
    for seed in range(20):
        r = World(SimConfig(seed, steps=2000, mirrors=1, hostile="flip", seal=False,
                            faults=frozenset())).run()
        if not r.ok:
            break
    assert r is not None and not r.ok, "no seed caught a flipping pager without sealing"
    assert r.failed_step is not None and r.failed_step <= r.steps
    assert "read" in r.violations[0] and "we wrote" in r.violations[0]


def test_fault_names_are_all_known_to_the_cli() -> None:
    from host_tools.sim.cli import parse_faults
    assert parse_faults("all") == frozenset(FAULTS)
    assert parse_faults("drop,crash") == {"drop", "crash"}
    with pytest.raises(ValueError, match="bogus"):
        parse_faults("drop,bogus")


def test_the_cli_replays_a_sweep_identically_in_fresh_processes() -> None:
    """Byte for byte across processes, whatever their hash seeds (the replay command)."""
    import subprocess
    import sys

    def sweep(hashseed: str) -> str:
        env = dict(os.environ, PYTHONHASHSEED=hashseed)
        out = subprocess.run([sys.executable, "-m", "host_tools.cli", "sim", "--seed", "3",
                              "--seeds", "4", "--steps", "800"], env=env, capture_output=True,
                             text=True, timeout=120, check=True).stdout
        last = out.strip().splitlines()[-1]
        assert "4 seeds, 0 failed" in last, out
        return last.rsplit("trace hash ", 1)[1]

    assert sweep("1") == sweep("2")
