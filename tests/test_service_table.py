"""The service table (launcher/services.toml) against the programs the sealed side can run."""
from __future__ import annotations

from pathlib import Path

import pytest

from apps.run import APPS
from launcher.table import DEFAULT_TABLE, UnknownProgram, load, lookup


def test_every_program_is_in_the_table_with_its_module() -> None:
    table = load()
    assert {name: spec.module for name, spec in table.items()} == APPS
    assert [n for n, s in table.items() if s.role == "init"] == ["init"]


def test_digest_is_the_sha256_of_the_code_file() -> None:
    import hashlib
    spec = lookup(load(), "memstress")
    root = Path(__file__).resolve().parents[1]
    program = (root / "apps" / "memstress.py").read_bytes()
    assert spec.digest() == hashlib.sha256(program).hexdigest()


def test_unknown_programs_and_malformed_rows_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UnknownProgram):
        lookup(load(), "rootkit")
    bad = tmp_path / "t.toml"
    for row in ('[program.x]\nrole = "app"\n', '[program.x]\nmodule = "apps.x"\nrole = "god"\n',
                '[program.x]\nmodule = "apps.x"\nquota = {pages = -1}\n'):
        bad.write_text(row)
        with pytest.raises(ValueError):
            load(bad)
    assert DEFAULT_TABLE.exists()
