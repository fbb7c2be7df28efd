"""Erasure-coded pagers (--pagers 6 --code 4+2) against real processes.

With any R=2 pagers hostile (each mode) or dead at once, no process is stopped and every
checksum verifies; with R+1=3 hostile, the processes faulting on unrecoverable pages are
stopped with "page integrity lost" and no wrong byte reaches an app; no pager nor disk file
holds a known plaintext; a page is SWAPPED only with all K+R fragments stored.
"""
from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Callable

import pytest
from polling import wait_for
from test_chaos import run_chaos

from apps.runtime import PAGE_SIZE, SealedProcess
from host_tools.system import System
from wire.protocol import HOSTILE_MODES

EC = dict(pagers=6, code="4+2", frames=8, disk_size_mib=4, pager_timeout_ms=1500,
          pager_retries=1, stall_ms=5000)
WORK = ["--pages", "32", "--duration", "2"]   # passes long enough for write-backs to land
SECRET = "SEALEDOS-EC-KNOWN-PLAINTEXT-51c2"


def run_memstress(system: System, name: str, args: list[str] = WORK) -> tuple[int | None, dict]:
    """Run one memstress to its end; return (exit code, its kernel record)."""
    system.spawn_app("memstress", args, name)
    code = system.wait_apps(120)[name]
    return code, system.process(name)


@pytest.mark.parametrize("mode", HOSTILE_MODES)
def test_r_hostile_pagers_lose_nothing(make_system: Callable[..., System], mode: str) -> None:
    system = make_system(hostile=mode, hostile_count=2, **EC)
    code, rec = run_memstress(system, "memstress.1")
    kernel = system.stats()["kernel"]
    assert code == 0, (system.log_tail("memstress.1"), kernel)
    assert rec["checksum"] == "verified" and rec["major_faults"] > 0, (rec, kernel)
    assert kernel["ec_page_ins"] >= rec["major_faults"] and kernel["ec_unrecoverable"] == 0
    caught = kernel["integrity_failures"]
    if mode == "snoop":
        assert caught == {}
    else:
        assert sum(caught.values()) >= 1, "the hostile pagers were never caught"


@pytest.mark.parametrize("mode", ["flip", "zero", "garbage", "drop"])
def test_r_plus_1_hostile_stops_only_faulting_processes(make_system: Callable[..., System],
                                                        mode: str) -> None:
    system = make_system(hostile=mode, hostile_count=3, **EC)
    code, rec = run_memstress(system, "victim.1")
    assert rec["checksum"] != "failed", "a wrong byte reached the app"
    assert code == 3, (rec, system.stats()["kernel"])
    assert rec["state"] == "killed" and "page integrity lost" in rec["exit_reason"]
    assert system.stats()["kernel"]["ec_unrecoverable"] >= 1
    code, rec = run_memstress(system, "bystander.1", ["--pages", "4", "--passes", "1"])
    assert code == 0 and rec["checksum"] == "verified"


def test_r_pagers_killed_at_once_lose_nothing(make_system: Callable[..., System]) -> None:
    system = make_system(**EC)
    system.spawn_app("memstress", ["--pages", "32", "--passes", "3"], "memstress.1")
    wait_for("major faults", lambda: (system.process("memstress.1") or {}).get(
        "major_faults", 0) >= 5, 60)
    for name in ("pager1", "pager4"):                # any two at once
        os.kill(system.services[name].proc.pid, signal.SIGKILL)
    assert system.wait_apps(120) == {"memstress.1": 0}, system.log_tail("memstress.1")
    rec = system.process("memstress.1")
    assert rec["checksum"] == "verified"
    kernel = system.stats()["kernel"]
    assert kernel["ec_unrecoverable"] == 0 and kernel["ec_page_ins"] >= rec["major_faults"]
    assert system.restarts().get("pager1", 0) >= 1 and system.restarts().get("pager4", 0) >= 1


def test_no_pager_or_disk_sees_plaintext(make_system: Callable[..., System]) -> None:
    system = make_system(hostile="snoop", hostile_count=6, **EC)
    system.spawn_app("pattern", ["--text", SECRET, "--pages", "8", "--churn", "24"], "pattern.1")
    assert system.wait_apps(60) == {"pattern.1": 0}, system.log_tail("pattern.1")
    assert system.process("pattern.1")["checksum"] == "verified"
    kernel = system.stats()["kernel"]
    assert kernel["ec_page_outs"] >= 8      # sent (acknowledged ones may land after the exit)
    files = [system.snoop_file(m) for m in range(6)] + [system.device_file(m) for m in range(6)]
    for f in files[:6]:
        assert (system.rundir / f).stat().st_size >= 8 * 4096
    assert [f for f in files if SECRET.encode() in (system.rundir / f).read_bytes()] == []


def test_page_swapped_only_with_all_fragments_stored(make_system: Callable[..., System]) -> None:
    """Durability rule: with one pager gone for good, no page becomes SWAPPED (the kernel
    keeps the bytes, HELD, and the app runs on); once it is back, pages are swapped out."""
    system = make_system(**EC)
    gone = system.services["pager5"]
    gone.restart = False
    gone.proc.kill()
    wait_for("pager5 down", lambda: not system.stats()["kernel"]["pagers"][5]["up"], 30)
    system.spawn_app("memstress", ["--pages", "24", "--duration", "10"], "memstress.1")
    wait_for("short writes", lambda: system.stats()["kernel"]["ec_short_writes"] >= 3, 60)
    rec = system.process("memstress.1")
    assert rec["swapped_pages"] == 0 and rec["state"] != "killed", rec
    assert system.stats()["kernel"]["ec_page_ins"] == 0
    gone.restart = True                               # the supervisor brings it back
    wait_for("pages swapped out", lambda: system.process("memstress.1")["swapped_pages"] > 0, 60)
    assert system.wait_apps(120) == {"memstress.1": 0}, system.log_tail("memstress.1")
    assert system.process("memstress.1")["checksum"] == "verified"


def test_chaos_kills_r_pagers_at_once_repeatedly() -> None:
    """`sealedos chaos --pagers 6 --code 4+2 --kill pager --count 2`: nothing lost."""
    report = run_chaos("--pagers", "6", "--code", "4+2", "--kill", "pager", "--count", "2",
                       "--every", "1.5", "--duration", "5", "--memstress", "2", "--pages", "96",
                       "--frames", "32", "--echo-clients", "1")
    assert report["kills"] >= 2 and report["restarts"] >= 2 * report["kills"]
    assert sum(n > 0 for svc, n in report["restarts_by_service"].items()
               if svc.startswith("pager")) >= 4      # a different pair each time
    assert report["app_errors"] == 0 and report["verified"] is True
    assert report["reclaimed"] is True
    assert report["kernel"]["ec_page_ins"] > 0 and report["kernel"]["ec_unrecoverable"] == 0



def distinct_pages(salt: bytes, n: int = 32) -> list[bytes]:
    """n pages of distinct, recognisable bytes."""
    return [hashlib.sha256(salt + b"%d" % i).digest() * (PAGE_SIZE // 32) for i in range(n)]


def write_until_swapped(system: System, proc: SealedProcess, pages: list[bytes]) -> int:
    """Map and write `pages` in `proc` (named "writer"); wait until most are on swap; the
    region's address."""
    addr = proc.map(len(pages))
    for i, page in enumerate(pages):
        proc.write(addr + i * PAGE_SIZE, page)
    wait_for("pages swapped", lambda: system.process("writer")["swapped_pages"] >= 20, 60)
    return addr


def test_fragment_lost_while_a_pager_was_away_is_resynced(
        make_system: Callable[..., System]) -> None:
    """A pager hangs during reads (the kernel decodes from the others, then its late timeouts
    are counted, it is killed and nobody restarts it): the fragments the kernel could not
    rewrite there are marked lost; when the pager is back, resync rebuilds it
    from the others.  Then two OTHER pagers die for good and every page still reads back:
    pager 0's fragments, resynced ones included, are good."""
    system = make_system(**EC)
    pages = distinct_pages(b"")
    with SealedProcess.connect(system.kernel_addr, system.admit("memstress", "writer")) as proc:
        addr = write_until_swapped(system, proc, pages)
        pager0 = system.services["pager0"]
        pager0.restart = False
        os.kill(pager0.pid, signal.SIGSTOP)             # hangs; the kernel will kill it
        for i, page in enumerate(pages):
            assert proc.read(addr + i * PAGE_SIZE, PAGE_SIZE) == page, f"page {i}"
        wait_for("a fragment marked lost",
                 lambda: system.stats()["kernel"]["ec_fragments_lost"] >= 1, 60)
        pager0.restart = True                           # back: resync rebuilds what it lacks

        def resynced() -> bool:
            k = system.stats()["kernel"]
            return k["pagers"][0]["up"] and k["resynced"] >= 1 and k["resync_pending"] == 0
        wait_for("pager 0 to rejoin and be resynced", resynced, 60)
        for name in ("pager1", "pager2"):               # now pager 0's fragments are needed
            system.services[name].restart = False
            os.kill(system.services[name].pid, signal.SIGKILL)
        wait_for("pagers 1, 2 down",
                 lambda: not any(p["up"] for p in system.stats()["kernel"]["pagers"][1:3]), 30)
        for i, page in enumerate(pages):
            assert proc.read(addr + i * PAGE_SIZE, PAGE_SIZE) == page, f"page {i}"
    kernel = system.stats()["kernel"]
    assert kernel["resync_failed"] == 0 and kernel["ec_unrecoverable"] == 0, kernel


def wipe_and_rejoin(system: System, m: int) -> None:
    """Pager m's pair loses its disk for good (a new host): pager and disk killed, the device
    file deleted, both started again on a new, empty one; return once the kernel has noticed
    and its resync says no page lacks a copy any more."""
    passes = system.stats()["kernel"]["resync_passes"]
    pair = [system.services[f"pager{m}"], system.services[f"disk{m}"]]
    for svc in pair:
        svc.restart = False
        os.kill(svc.pid, signal.SIGKILL)
        svc.proc.wait()
    wait_for(f"pager {m} down", lambda: not system.stats()["kernel"]["pagers"][m]["up"], 30)
    system.device_file(m).unlink()
    for svc in pair:
        svc.restart = True

    def rebuilt() -> bool:
        k = system.stats()["kernel"]
        return bool(k["pagers"][m]["up"] and k["handles_lost"] >= 1 and k["pages_short"] == 0
                    and k["resync_pending"] == 0 and k["resync_passes"] > passes)
    wait_for(f"pager {m} back on a new disk and rebuilt", rebuilt, 90)


def survives_a_wiped_pager(system: System, others: tuple[str, ...]) -> None:
    """Fill pages; wipe pager 0's disk and rejoin it; kill `others` for good; every page
    reads back (pager 0's rebuilt copies are needed) and no process is stopped."""
    pages = distinct_pages(b"wipe")
    with SealedProcess.connect(system.kernel_addr, system.admit("memstress", "writer")) as proc:
        addr = write_until_swapped(system, proc, pages)
        wipe_and_rejoin(system, 0)
        for name in others:                            # now pager 0's copies are needed
            system.services[name].restart = False
            os.kill(system.services[name].pid, signal.SIGKILL)
        wait_for(f"{others} down", lambda: not any(
            p["up"] for p in system.stats()["kernel"]["pagers"] if f"pager{p['mirror']}" in
            others), 30)
        for i, page in enumerate(pages):
            assert proc.read(addr + i * PAGE_SIZE, PAGE_SIZE) == page, f"page {i}"
    kernel = system.stats()["kernel"]
    assert kernel["resync_failed"] == 0 and kernel["resynced"] >= 20, kernel
    assert [p["name"] for p in system.stats()["processes"] if p["state"] == "killed"] == []


def test_a_pager_back_with_a_wiped_disk_is_rebuilt(make_system: Callable[..., System]) -> None:
    """4+2: pager 0's pair comes back on an empty disk; the resync rebuilds every fragment
    it held; then two other pagers die and every page still decodes."""
    system = make_system(**EC)
    survives_a_wiped_pager(system, ("pager1", "pager2"))
    assert system.stats()["kernel"]["ec_unrecoverable"] == 0


def test_a_mirror_back_with_a_wiped_disk_is_rebuilt(make_system: Callable[..., System]) -> None:
    """Mirrored: mirror 0 comes back on an empty disk, is sent every page, then mirror 1 dies
    and mirror 0 alone serves every page."""
    system = make_system(pagers=2, frames=8, disk_size_mib=4, pager_timeout_ms=1500,
                         pager_retries=1)
    survives_a_wiped_pager(system, ("pager1",))
