"""Shared fixtures: whole systems as real processes, always stopped, never leaving orphans."""
from __future__ import annotations

from typing import Callable, Iterator

import psutil
import pytest

from host_tools.system import Config, System


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.fixture
def make_system(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., System]]:
    """make_system(**Config fields) starts a System; all are stopped at teardown, and the test
    fails if any process it started outlives the stop.  Sealed processes the test itself
    connects find the newest system's keys through the environment, as spawned apps do."""
    before = _children()
    systems: list[System] = []

    def make(**fields: object) -> System:
        system = System(Config(**fields))   # type: ignore[arg-type]
        systems.append(system)
        system.start()
        for name, value in system.app_env().items():
            monkeypatch.setenv(name, value)
        return system

    yield make
    for system in systems:
        system.stop()
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    for p in left:
        p.kill()
    assert not left, f"orphan processes after stop: {[p.cmdline() for p in left]}"
    for system in systems:
        assert not system.rundir.exists(), f"stale runtime directory {system.rundir}"
