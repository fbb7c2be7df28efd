"""Host isolation: the host OS is the emulated hardware, and the attacks it allows all fail.

Every attack runs as a real process against the real services:

* a confined sealed process (apps/sidechannel.py) tries every way around the kernel to another
  sealed process -- files in /tmp, /dev/shm and the victim's private directory, sockets,
  signals, /proc/PID/mem and environ, ptrace, process_vm_readv, exec, System V shared memory,
  the disk's device file -- and each one fails; the victim's data verifies and the services
  keep serving;
* a host process of the *same uid* as a service or sealed process cannot read its memory or
  its environment (every one is non-dumpable), not even the kernel's;
* when root, every principal has its own uid, device files are 0600 and the disk's, and a
  disk's socket directory admits its pager only.
"""
from __future__ import annotations

import ctypes
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from polling import wait_for

from host_tools.system import System
from launcher import spawn

APP_TIMEOUT_S = 90.0
#: A uid no principal of the system uses: a stand-alone kernel runs as it in one test.
LONE_UID = 299_999
#: A host process that tries to read another's environment and memory; prints one verdict each.
READER = """
import sys
pid = sys.argv[1]
for what in ("environ", "mem"):
    try:
        with open(f"/proc/{pid}/{what}", "rb") as f:
            if what == "mem":
                f.seek(0x400000)
            data = f.read(64)
        print(f"{what}=OPEN:{len(data)}")
    except OSError as exc:
        print(f"{what}=blocked:{type(exc).__name__}")
"""


def host_landlock_abi() -> int:
    """The Landlock ABI this host offers (0: none)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return max(0, libc.syscall(444, None, 0, 1))


def reported(system: System, name: str, key: str) -> object:
    """The value `name` REPORTed under `key`, once it has."""
    rec = system.process(name)
    return rec["report"].get(key) if rec else None


def read_as(uid: int | None, pid: int, log: Path) -> dict[str, str]:
    """Run READER against `pid` as `uid` (None: this test's own); its verdicts by file."""
    proc = spawn.spawn([sys.executable, "-c", READER, str(pid)], log, uid=uid)
    try:
        assert proc.wait(60) == 0, log.read_text()
    finally:
        spawn.stop(proc)
    lines = [line.split("=", 1) for line in log.read_text().splitlines() if "=" in line]
    return {k: v for k, v in lines}


def connect_as(uid: int | None, path: str, log: Path) -> int:
    """Exit status of a process of `uid` that connects a unix socket to `path` (0: it could)."""
    code = "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])"
    proc = spawn.spawn([sys.executable, "-c", code, path], log, uid=uid)
    try:
        return proc.wait(60)
    finally:
        spawn.stop(proc)


def open_as(uid: int | None, path: Path, log: Path) -> int:
    """Exit status of a process of `uid` that opens `path` for reading (0: it could)."""
    proc = spawn.spawn([sys.executable, "-c", "import sys; open(sys.argv[1], 'rb').read(1)",
                        str(path)], log, uid=uid)
    try:
        return proc.wait(60)
    finally:
        spawn.stop(proc)


def test_a_sealed_process_cannot_reach_another_around_the_kernel(
        make_system: Callable[..., System]) -> None:
    system = make_system(frames=16, disk_size_mib=8)
    stop_file = system.rundir / "victim.stop"
    system.spawn_app("sidechannel", ["--role", "victim", "--pages", "8",
                                     "--stop-file", str(stop_file)], "victim")
    wait_for("the victim to be ready", lambda: reported(system, "victim", "ready"),
                          APP_TIMEOUT_S)
    victim_pid = reported(system, "victim", "hostpid")
    assert victim_pid == system.services["victim"].pid
    victim_dir = system.private_dir("victim")
    system.spawn_app("sidechannel", [
        "--role", "attacker", "--victim-pid", str(victim_pid), "--victim-dir", str(victim_dir),
        "--kernel-pid", str(system.services["kernel"].pid),
        "--device-file", str(system.device_file(0))], "attacker")
    wait_for("the attacker to finish", lambda: system.services["attacker"].proc.poll() is not None,
             APP_TIMEOUT_S)
    rec = system.process("attacker")["report"]
    assert rec is not None and rec.get("channels", 0) >= 21, system.log_tail("attacker")
    outcomes = {k[len("ch_"):]: v for k, v in rec.items() if k.startswith("ch_")}
    assert len(outcomes) == rec["channels"]
    opened = {k: v for k, v in outcomes.items() if not str(v).startswith("blocked")}
    assert opened == {}, f"side channels open: {opened}"
    assert rec["open_channels"] == ""
    assert system.services["attacker"].proc.returncode == 0, system.log_tail("attacker")
    # Before it connected, only a unix socket (the kernel's transport) was allowed.
    assert set(filter(None, rec["early_open_channels"].split(","))) <= {"unix_socket"}, rec
    if host_landlock_abi() >= 1:
        assert rec["landlock_abi"] >= 1 and rec["seccomp"] is True and rec["no_new_sockets"] is True
    # Nothing the attacker tried left a trace, and the victim was never stopped.
    attacker_pid = system.services["attacker"].pid
    assert not Path(f"/tmp/sealedos-sidechannel-{attacker_pid}").exists()
    assert not Path(f"/dev/shm/sealedos-sidechannel-{attacker_pid}").exists()
    assert not (victim_dir / "planted").exists()
    assert psutil.Process(victim_pid).status() != psutil.STATUS_STOPPED
    # The victim's pages and its private file verify; the services keep serving.
    stop_file.touch()
    wait_for("the victim to finish", lambda: system.services["victim"].proc.poll() is not None,
             APP_TIMEOUT_S)
    assert system.services["victim"].proc.returncode == 0, system.log_tail("victim")
    assert reported(system, "victim", "checksum") == "verified"
    system.spawn_app("memstress", ["--pages", "24", "--passes", "1"], "bystander")
    assert system.wait_apps(APP_TIMEOUT_S)["bystander"] == 0, system.log_tail("bystander")
    assert system.process("bystander")["checksum"] == "verified"


def test_no_same_uid_process_reads_a_service_or_sealed_process(
        make_system: Callable[..., System]) -> None:
    system = make_system(frames=16, disk_size_mib=8)
    stop_file = system.rundir / "victim.stop"
    system.spawn_app("sidechannel", ["--role", "victim", "--stop-file", str(stop_file)], "victim")
    wait_for("the victim to be ready", lambda: reported(system, "victim", "ready"), APP_TIMEOUT_S)
    for name, svc in system.services.items():
        if svc.uid is None and os.geteuid() == 0:
            continue                     # root reads anything: the kernel is checked below
        verdict = read_as(svc.uid, svc.pid, system.rundir / f"reader-{name}.out")
        blocked = "blocked:PermissionError"
        assert verdict == {"environ": blocked, "mem": blocked}, (name, verdict)
        if svc.uid is not None:          # non-dumpable: its /proc files are root's, not its own
            assert os.stat(f"/proc/{svc.pid}/environ").st_uid == 0, name
    stop_file.touch()
    assert system.wait_apps(APP_TIMEOUT_S)["victim"] == 0, system.log_tail("victim")


def test_the_kernel_is_non_dumpable_from_its_start(tmp_path: Path) -> None:
    """A kernel run by an unprivileged uid: a process of that same uid cannot read it."""
    uid = LONE_UID if os.geteuid() == 0 else None
    rundir = spawn.make_rundir()
    os.chmod(rundir, 0o777)              # the lone kernel's uid binds its socket here
    kernel = spawn.spawn(spawn.python_cmd("kernel", "--rundir", str(rundir), "--frames", "4",
                                          "--insecure"),
                         rundir / "kernel.log", {"SEALEDOS_INIT_TOKEN": "not-for-you"}, uid=uid)
    try:
        spawn.wait_for_path(rundir / "kernel.sock", 30, kernel)
        verdict = read_as(uid, kernel.pid, tmp_path / "reader.out")
        assert verdict == {"environ": "blocked:PermissionError", "mem": "blocked:PermissionError"}
    finally:
        spawn.stop(kernel)
        spawn.remove_rundir(rundir)


@pytest.mark.skipif(os.geteuid() != 0, reason="principals get their own uids only under root")
def test_each_principal_has_its_own_uid_and_files(make_system: Callable[..., System]) -> None:
    system = make_system(frames=16, disk_size_mib=8, pagers=2)
    system.spawn_app("memstress", ["--pages", "4", "--passes", "1"], "one")
    system.spawn_app("memstress", ["--pages", "4", "--passes", "1"], "two")
    uids = {name: svc.uid for name, svc in system.services.items()}
    assert uids["kernel"] is None and psutil.Process(system.services["kernel"].pid).uids().real == 0
    others = [u for name, u in uids.items() if name != "kernel"]
    assert None not in others and 0 not in others and len(set(others)) == len(others), uids
    for name in ("disk0", "disk1", "pager0", "pager1", "init"):
        assert psutil.Process(system.services[name].pid).uids().real == uids[name]
    for m in range(2):
        device = system.device_file(m).stat()
        assert stat.S_IMODE(device.st_mode) == 0o600
        assert device.st_uid == uids[f"disk{m}"]
        sock = system.services[f"disk{m}"].addr[len("ipc://"):]
        sock_dir = Path(sock).parent.stat()
        assert stat.S_IMODE(sock_dir.st_mode) == 0o710
        assert (sock_dir.st_uid, sock_dir.st_gid) == (uids[f"disk{m}"], uids[f"pager{m}"])
    # Disk 0's socket admits its pager's uid, and neither the other pager nor a sealed process.
    sock0 = system.services["disk0"].addr[len("ipc://"):]
    logs = system.rundir
    assert connect_as(uids["pager0"], sock0, logs / "probe-pager0.log") == 0
    assert connect_as(uids["pager1"], sock0, logs / "probe-pager1.log") != 0
    assert connect_as(uids["one"], sock0, logs / "probe-one.log") != 0
    assert "PermissionError" in (logs / "probe-pager1.log").read_text()
    # Only disk 0 opens its device file: not its own pager, nor another disk.
    assert open_as(uids["disk0"], system.device_file(0), logs / "open-disk0.log") == 0
    assert open_as(uids["pager0"], system.device_file(0), logs / "open-pager0.log") != 0
    assert open_as(uids["disk1"], system.device_file(0), logs / "open-disk1.log") != 0
    assert system.wait_apps(APP_TIMEOUT_S) == {"one": 0, "two": 0}


def test_the_probes_see_an_open_channel(tmp_path: Path) -> None:
    """The attacker's probes, run here unconfined (as the test's own uid), report OPEN: a
    "blocked" in the attack above is the confinement's doing, not a probe that cannot fail."""
    from apps import sidechannel as sc
    target = spawn.spawn(["sleep", "60"], tmp_path / "sleep.log")
    try:
        probes = {
            "tmp_file": lambda: sc._write_file(str(tmp_path / "side")),
            "tcp_socket": lambda: sc._socket(sc.socket.AF_INET, sc.socket.SOCK_STREAM, None),
            "socketpair": sc._socketpair,
            "signal": lambda: sc._kill(target.pid, 0),
            "exec": sc._exec,
            "sysv_shm": sc._sysv_shm,
            "read_file": lambda: sc._read_file("/proc/self/status"),
            "flock": sc._flock,
            "fcntl_lock": sc._fcntl_lock,
            "inotify": sc._inotify,
        }
        if os.geteuid() == 0:            # another process's memory: root may read it
            probes["mem"] = lambda: sc._read_mem(target.pid)
        results = {name: sc.attempt(fn) for name, fn in probes.items()}
        assert all(r.startswith("OPEN") for r in results.values()), results
    finally:
        spawn.stop(target)
