"""launcher/reach.py's plan: which directories block another uid on the way to the code."""
from __future__ import annotations

import os
from pathlib import Path

from launcher import reach


def test_plan_names_each_blocking_directory_and_the_entries_needed(tmp_path: Path) -> None:
    closed = tmp_path / "home"
    inner = closed / "inner"
    (inner / "py" / "bin").mkdir(parents=True)
    (closed / "other").mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(closed, 0o700)
    os.chmod(inner, 0o700)
    plan = reach.plan([str(inner / "py" / "bin"), str(closed / "other")])
    # pytest's own dirs may block too
    ours = [(d, e) for d, e in plan if d.startswith(str(tmp_path))]
    assert ours == [(str(closed), ["inner", "other"]), (str(inner), ["py"])]


def test_plan_is_empty_when_every_directory_is_traversable(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for d in (tmp_path, tmp_path / "a", tmp_path / "a" / "b"):
        os.chmod(d, 0o755)
    assert [d for d, _ in reach.plan([str(tmp_path / "a" / "b")])
            if d.startswith(str(tmp_path))] == []
