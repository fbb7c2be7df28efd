"""The service table (services.toml): what the launcher vouches for when it starts a program.

The launcher never imports a program's code (that would run untrusted code inside the trusted
base): it finds the module's file beside the ``apps`` package and hashes it.
"""
from __future__ import annotations

import hashlib
import importlib.util
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

#: The table shipped with the system (operators may pass their own).
DEFAULT_TABLE: Path = Path(__file__).with_name("services.toml")
ROLES: tuple[str, ...] = ("app", "init")


@dataclass(frozen=True, slots=True)
class ProgramSpec:
    """One program's row: where its code is and what it may do."""
    program: str
    module: str
    role: str = "app"
    manifest: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    quota: dict[str, int] = field(default_factory=dict)

    def code_path(self) -> Path:
        """The file of the program's module (found without importing it)."""
        package, _, leaf = self.module.rpartition(".")
        spec = importlib.util.find_spec(package or self.module)
        if spec is None or not spec.submodule_search_locations:
            raise LookupError(f"program {self.program}: package {package!r} not found")
        return Path(next(iter(spec.submodule_search_locations))) / f"{leaf}.py"

    def digest(self) -> str:
        """The hex sha256 of the code the launcher starts."""
        return hashlib.sha256(self.code_path().read_bytes()).hexdigest()


class UnknownProgram(LookupError):
    """The table has no row for a program: it is never started."""


def load(path: Path = DEFAULT_TABLE) -> dict[str, ProgramSpec]:
    """Read a service table; ValueError names the first malformed row."""
    raw = tomllib.loads(path.read_text())
    out: dict[str, ProgramSpec] = {}
    for name, row in raw.get("program", {}).items():
        if not isinstance(row, dict) or not isinstance(row.get("module"), str):
            raise ValueError(f"{path}: program {name!r} needs a module")
        role = row.get("role", "app")
        if role not in ROLES:
            raise ValueError(f"{path}: program {name!r}: role {role!r} is not one of {ROLES}")
        quota = row.get("quota", {})
        if not all(isinstance(v, int) and v >= 0 for v in quota.values()):
            raise ValueError(f"{path}: program {name!r}: quotas are non-negative integers")
        out[name] = ProgramSpec(name, row["module"], role, tuple(row.get("manifest", ())),
                                tuple(row.get("provides", ())), dict(quota))
    return out


def lookup(table: dict[str, ProgramSpec], program: str) -> ProgramSpec:
    """The row of `program`; UnknownProgram if the table has none."""
    spec = table.get(program)
    if spec is None:
        raise UnknownProgram(f"program {program!r} is not in the service table "
                             f"({', '.join(sorted(table))})")
    return spec
