"""`sealedos tcb`: the size of the trusted computing base -- the code that runs inside the
kernel (kernel_daemon/ and the wire/ it imports) and the trusted launcher (launcher/).

Counted as source lines of code: lines that hold code, not blank, not a comment and not part
of a docstring (the essays at the hard parts are free).  Physical lines are shown beside.

    sealedos tcb [--json]
"""
from __future__ import annotations

import argparse
import io
import json
import token
import tokenize
from dataclasses import asdict, dataclass
from pathlib import Path

#: The packages of the trusted base.
TRUSTED: tuple[str, ...] = ("kernel_daemon", "wire", "launcher")
#: The goal the README states (source lines of code).
GOAL_SLOC: int = 4000


@dataclass(slots=True)
class FileSize:
    """One module's size."""
    path: str
    sloc: int
    lines: int


def sloc(source: str) -> int:
    """Lines holding code: tokens other than comments, newlines and docstrings."""
    lines: set[int] = set()
    prev = token.INDENT
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in (token.COMMENT, token.NL, token.NEWLINE, token.INDENT, token.DEDENT,
                        token.ENDMARKER):
            if tok.type != token.COMMENT:
                prev = tok.type
            continue
        is_docstring = tok.type == token.STRING and prev in (token.INDENT, token.NEWLINE,
                                                             token.DEDENT)
        prev = tok.type
        if not is_docstring:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return len(lines)


def measure(root: Path) -> list[FileSize]:
    """Every module of the trusted packages under `root`."""
    out = []
    for pkg in TRUSTED:
        for path in sorted((root / pkg).rglob("*.py")):
            text = path.read_text()
            out.append(FileSize(str(path.relative_to(root)), sloc(text), text.count("\n")))
    return out


def main(argv: list[str]) -> int:
    """Print the trusted base's size per module and in total."""
    p = argparse.ArgumentParser(prog="sealedos tcb", description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    root = Path(__file__).resolve().parents[1]
    files = measure(root)
    total = sum(f.sloc for f in files)
    if args.json:
        print(json.dumps({"files": [asdict(f) for f in files], "sloc": total,
                          "lines": sum(f.lines for f in files), "goal_sloc": GOAL_SLOC},
                         indent=2))
        return 0
    print(f"{'module':<34} {'sloc':>6} {'lines':>6}")
    for f in files:
        print(f"{f.path:<34} {f.sloc:>6} {f.lines:>6}")
    print(f"{'trusted base (' + ', '.join(TRUSTED) + ')':<34} {total:>6} "
          f"{sum(f.lines for f in files):>6}")
    print(f"goal: <= {GOAL_SLOC} source lines of code "
          f"({'met' if total <= GOAL_SLOC else f'{total - GOAL_SLOC} over'})")
    return 0
