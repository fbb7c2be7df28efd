"""Shared fixtures: whole systems as real processes, always stopped, never leaving orphans."""
from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from systems import assert_no_orphans, children

from host_tools.system import Config, System


@pytest.fixture
def make_system(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., System]]:
    """make_system(**Config fields) starts a System; all are stopped at teardown, and the test
    fails if any process it started outlives the stop.  Sealed processes the test itself
    connects find the newest system's keys through the environment, as spawned apps do."""
    before = children()
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
    assert_no_orphans(before)
    for system in systems:
        assert not system.rundir.exists(), f"stale runtime directory {system.rundir}"
