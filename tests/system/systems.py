"""One way to run a whole system in a test: started, stopped, and checked for orphans."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psutil

from host_tools.system import Config, System


def children() -> set[int]:
    """The pids of every descendant of this test process."""
    return {p.pid for p in psutil.Process().children(recursive=True)}


def assert_no_orphans(before: set[int]) -> None:
    """Kill and fail on every descendant that was not there `before`."""
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    for p in left:
        p.kill()
    assert not left, f"orphan processes after stop: {[p.cmdline() for p in left]}"


@contextlib.contextmanager
def running_system(**fields: object) -> Iterator[System]:
    """A System (Config fields) for a module's tests: stopped at the end, which must leave no
    process and no runtime directory behind."""
    before = children()
    system = System(Config(**fields)).start()    # type: ignore[arg-type]
    try:
        yield system
    finally:
        system.stop()
        assert_no_orphans(before)
        assert not system.rundir.exists(), f"stale runtime directory {system.rundir}"
