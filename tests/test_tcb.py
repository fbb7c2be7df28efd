"""The trusted base's size: what counts as a source line, and the packages counted."""
from __future__ import annotations

from pathlib import Path

from host_tools.tcb import TRUSTED, measure, sloc

ROOT = Path(__file__).resolve().parents[1]


def test_sloc_skips_blanks_comments_and_docstrings() -> None:
    src = ('"""Module doc\n\nspanning lines."""\n\n# a comment\nx = 1  # trailing\n\n'
           'def f(a: int) -> int:\n    """What f does."""\n    return (a +\n            1)\n'
           's = """not a docstring\nbut a value"""\n')
    assert sloc(src) == 6       # x = 1; def; return over two lines; s = over two lines


def test_every_trusted_module_is_counted() -> None:
    files = {f.path for f in measure(ROOT)}
    for pkg in TRUSTED:
        assert {str(p.relative_to(ROOT)) for p in (ROOT / pkg).rglob("*.py")} <= files
    assert not any(p.startswith(("host_tools", "apps", "pager_service")) for p in files)
