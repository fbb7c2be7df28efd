"""The untrusted pager: every hostile mode against the real kernel, with one pager and mirrored.

With one pager, no wrong byte may reach an app (its checksum is never "failed") and exactly the
faulting process is stopped with "page integrity lost"; the system goes on serving others.
With two pagers, every checksum verifies and no process is stopped.  Sealing hides page
contents from pagers and disks: a known plaintext is found with --no-seal, never with sealing.
"""
from __future__ import annotations

from collections.abc import Callable

import pytest

from host_tools.system import System
from wire.protocol import HOSTILE_MODES

TIMEOUTS = dict(pager_timeout_ms=1500, pager_retries=1, stall_ms=5000)
WORK = ["--pages", "24", "--passes", "1"]
SECRET = "SEALEDOS-KNOWN-PLAINTEXT-7f3a"


def run_memstress(system: System, name: str, args: list[str] = WORK) -> tuple[int | None, dict]:
    """Run one memstress to its end; return (exit code, its kernel record)."""
    system.spawn_app("memstress", args, name)
    code = system.wait_apps(120)[name]
    return code, system.process(name)


@pytest.mark.parametrize("mode", [m for m in HOSTILE_MODES if m != "snoop"])
def test_one_hostile_pager_stops_only_the_faulting_process(make_system: Callable[..., System],
                                                           mode: str) -> None:
    system = make_system(frames=8, disk_size_mib=8, hostile=mode, **TIMEOUTS)
    code, rec = run_memstress(system, "victim.1")
    assert rec["checksum"] != "failed", "a wrong byte reached the app"
    assert code == 3, (rec, system.stats()["kernel"], system.log_tail("pager0"))
    assert rec["state"] == "killed" and "page integrity lost" in rec["exit_reason"]
    assert "PageIntegrityError" in system.log_tail("victim.1")
    caught = system.stats()["kernel"]["integrity_failures"]
    assert sum(caught.values()) >= 1
    # the system keeps serving: a process that needs no page-in runs to a verified end
    code, rec = run_memstress(system, "bystander.1", ["--pages", "4", "--passes", "1"])
    assert code == 0 and rec["checksum"] == "verified"


@pytest.mark.parametrize("mode", HOSTILE_MODES)
def test_mirrored_pagers_lose_nothing_whatever_one_does(make_system: Callable[..., System],
                                                        mode: str) -> None:
    system = make_system(frames=8, disk_size_mib=8, hostile=mode, pagers=2, **TIMEOUTS)
    code, rec = run_memstress(system, "memstress.1")
    assert code == 0, system.log_tail("memstress.1")
    assert rec["checksum"] == "verified" and rec["major_faults"] > 0
    caught = system.stats()["kernel"]["integrity_failures"]
    if mode == "snoop":
        assert caught == {}
    else:
        assert sum(caught.values()) >= 1, "the hostile pager was never caught"


def test_snooping_pager_sees_only_ciphertext(make_system: Callable[..., System]) -> None:
    system = make_system(frames=8, disk_size_mib=8, hostile="snoop", pagers=2)
    assert leaked(system) == []


def test_snooping_pager_sees_plaintext_without_sealing(make_system: Callable[..., System]) -> None:
    system = make_system(frames=8, disk_size_mib=8, hostile="snoop", pagers=2, no_seal=True)
    found = leaked(system)
    assert found == ["pager0-snoop.bin", "disk0.img", "disk1.img"]


def leaked(system: System) -> list[str]:
    """Write SECRET through the pattern app, force it to swap; return the files holding it."""
    system.spawn_app("pattern", ["--text", SECRET, "--pages", "8", "--churn", "24"], "pattern.1")
    assert system.wait_apps(60) == {"pattern.1": 0}, system.log_tail("pattern.1")
    assert system.process("pattern.1")["checksum"] == "verified"
    assert system.stats()["kernel"]["page_outs"] >= 8
    files = [system.snoop_file(0), system.device_file(0), system.device_file(1)]
    assert files[0].stat().st_size >= 8 * 4096
    return [f.name for f in files if SECRET.encode() in f.read_bytes()]
