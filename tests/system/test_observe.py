"""Observing a running system, as real processes: `sealedos ps --json`, the Prometheus
endpoint, `sealedos top` without a terminal, and the Chrome trace written on stop.

Every assertion is about content (names, pids, counters that move, matched events), never
about timing.
"""
from __future__ import annotations

import functools
import json
import socket
import subprocess
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polling
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from host_tools.system import Config, System
from kernel_daemon.trace import Tracer
from launcher import spawn

FRAMES: int = 16
#: memstress keeps faulting this long, so the module's tests see a live, busy process.
BUSY_S: float = 25.0
CLI_TIMEOUT_S: float = 30.0
WAIT_S: float = 45.0
LIVE_STATES = {"running", "blocked on fault", "blocked on call", "blocked on receive"}
#: The pages each of the module's sealed processes maps (memstress --pages 48; refstring
#: maps its highest page + 1).
MAPPED_PAGES: dict[str, int] = {"memstress.1": 48, "refstring.1": 6}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


wait_for = functools.partial(polling.wait_for, timeout_s=WAIT_S)


def sealedos(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `sealedos ARGS` as a subprocess (no terminal) and capture its output."""
    return subprocess.run(spawn.python_cmd(*args), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=CLI_TIMEOUT_S)


@pytest.fixture(scope="module")
def busy() -> Iterator[System]:
    """A system with metrics on, a long memstress and a short refstring."""
    system = System(Config(frames=FRAMES, metrics_port=free_port())).start()
    try:
        system.spawn_app("memstress", ["--pages", "48", "--duration", str(BUSY_S)], "memstress.1")
        system.spawn_app("refstring", ["--pages", "0,1,2,3,0,1,4,5,0,1,2,3"], "refstring.1")
        wait_for("memstress to fault", lambda: (system.process("memstress.1") or {}).get("faults"))
        wait_for("refstring to register", lambda: system.process("refstring.1"))
        yield system
    finally:
        system.stop()


def scrape(port: int) -> dict[str, Any]:
    """GET /metrics and parse it: {family name: family}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample_sum(families: dict[str, Any], family: str, sample: str, **labels: str) -> float:
    """The sum of a family's samples called `sample` whose labels include `labels`."""
    return float(sum(s.value for s in families[family].samples
                     if s.name == sample and all(s.labels.get(k) == v
                                                 for k, v in labels.items())))


# -- ps ------------------------------------------------------------------------------------------
def test_ps_json_reports_the_started_processes(busy: System) -> None:
    out = sealedos("ps", "--json", "--kernel", busy.kernel_addr)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    procs = {p["name"]: p for p in doc["processes"]}
    assert {"memstress.1", "refstring.1"} <= set(procs)
    for name, mapped in MAPPED_PAGES.items():
        p = procs[name]
        assert p["hostpid"] == busy.services[name].pid
        assert p["spid"] > 0
        assert p["minor_faults"] + p["major_faults"] == p["faults"] > 0
        assert p["resident_pages"] <= FRAMES
        assert p["resident_pages"] + p["swapped_pages"] <= mapped
        # neither program calls an endpoint nor serves one
        assert p["ipc_calls_in"] == p["ipc_calls_out"] == 0
    mem = procs["memstress.1"]
    assert mem["state"] in LIVE_STATES
    assert mem["rss_bytes"] > 0 and mem["cpu_percent"] > 0
    assert mem["major_faults"] > 0, "48 pages through 16 frames must page in"
    assert mem["swapped_pages"] > 0, "paged in, so 48 pages through 16 frames are swapped"
    services = {s["name"]: s for s in doc["services"]}
    assert services["kernel"]["state"] == "up"
    assert services["kernel"]["hostpid"] == busy.services["kernel"].pid
    assert services["pager0"]["state"] == "up"
    assert services["pager0"]["hostpid"] == busy.services["pager0"].pid
    assert services["pager0"]["rss_bytes"] > 0        # the process the launcher reported
    assert services["disk0"]["state"] == "up"
    assert services["disk0"]["hostpid"] == busy.services["disk0"].pid


def test_ps_and_stats_human_output(busy: System) -> None:
    ps = sealedos("ps", "--rundir", str(busy.rundir))
    assert ps.returncode == 0, ps.stderr
    assert "memstress.1" in ps.stdout and "pager0" in ps.stdout and "disk0" in ps.stdout
    stats = sealedos("stats", "--json", "--kernel", busy.kernel_addr)
    assert stats.returncode == 0, stats.stderr
    counters = json.loads(stats.stdout)
    assert counters["nframes"] == FRAMES and counters["major_faults"] > 0


def test_no_kernel_is_a_clear_error(tmp_path: Path) -> None:
    for cmd in ("ps", "stats", "top", "metrics"):
        out = sealedos(cmd, "--kernel", f"ipc://{tmp_path}/kernel.sock")
        assert out.returncode == 2
        assert "kernel" in out.stderr and "Traceback" not in out.stderr


# -- metrics -------------------------------------------------------------------------------------
def test_metrics_come_from_an_observer_not_the_kernel(busy: System) -> None:
    kernel = psutil.Process(busy.services["kernel"].pid)
    assert not [c for c in kernel.net_connections("inet") if c.status == psutil.CONN_LISTEN], \
        "the kernel listens on no TCP port"
    exporter = psutil.Process(busy.services["metrics"].pid)
    assert exporter.pid != kernel.pid and "metrics" in exporter.cmdline()
    assert [c.laddr.port for c in exporter.net_connections("inet")
            if c.status == psutil.CONN_LISTEN] == [busy.config.metrics_port]
    once = sealedos("metrics", "--once", "--kernel", busy.kernel_addr)
    assert once.returncode == 0, once.stderr
    families = {f.name: f for f in text_string_to_metric_families(once.stdout)}
    assert families["sealedos_kernel_up"].samples[0].value == 1
    assert families["sealedos_frames"].samples[0].value == FRAMES


def test_metrics_parse_and_fault_counters_move(busy: System) -> None:
    port = busy.config.metrics_port
    first = scrape(port)
    assert first["sealedos_kernel_up"].samples[0].value == 1
    assert first["sealedos_frames"].samples[0].value == FRAMES
    assert sample_sum(first, "sealedos_pager_up", "sealedos_pager_up", mirror="0") == 1
    before = sample_sum(first, "sealedos_faults", "sealedos_faults_total")
    majors = sample_sum(first, "sealedos_faults", "sealedos_faults_total", kind="major")

    def moved() -> dict[str, Any] | None:
        now = scrape(port)
        grew = sample_sum(now, "sealedos_faults", "sealedos_faults_total", kind="major") > majors
        return now if grew else None
    later = wait_for("the major-fault counter to move", moved)
    assert sample_sum(later, "sealedos_faults", "sealedos_faults_total") > before
    assert sample_sum(later, "sealedos_page_ins", "sealedos_page_ins_total") > 0
    assert sample_sum(later, "sealedos_evictions", "sealedos_evictions_total") > 0
    hist = sample_sum(later, "sealedos_fault_seconds", "sealedos_fault_seconds_count",
                      kind="major")
    assert hist > 0
    per_proc = sample_sum(later, "sealedos_process_faults", "sealedos_process_faults_total",
                          name="memstress.1")
    assert per_proc > 0
    assert sample_sum(later, "sealedos_disk_read_seconds", "sealedos_disk_read_seconds_count") > 0


# -- top -----------------------------------------------------------------------------------------
def test_top_runs_without_a_tty(busy: System) -> None:
    out = sealedos("top", "--iterations", "2", "--interval", "0.3", "--kernel", busy.kernel_addr)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("sealedos top") == 2
    assert "memstress.1" in out.stdout and "pager0" in out.stdout
    assert "frames" in out.stdout and "per s:" in out.stdout
    widest = max(len(line) for line in out.stdout.splitlines())
    assert widest <= 80, f"a line of {widest} columns"


# -- trace ---------------------------------------------------------------------------------------
def test_trace_is_valid_json_with_every_fault_matched(tmp_path: Path) -> None:
    trace = tmp_path / "trace.json"
    system = System(Config(frames=8, trace=str(trace))).start()
    try:
        system.spawn_app("memstress", ["--pages", "24", "--passes", "1"], "memstress.1")
        system.spawn_app("refstring", ["--pages", "0,1,2,3,4,5,6,7,8,9,0,1,2"], "refstring.1")
        codes = system.wait_apps(WAIT_S)
        assert codes == {"memstress.1": 0, "refstring.1": 0}, \
            system.log_tail("memstress.1") + system.log_tail("refstring.1")
    finally:
        system.stop()
    events = json.loads(trace.read_text())["traceEvents"]
    begins = Counter((e["cat"], e["id"]) for e in events if e["ph"] == "b")
    ends = Counter((e["cat"], e["id"]) for e in events if e["ph"] == "e")
    faults = [k for k in begins if k[0] == "vm"]
    assert faults, "no fault was traced"
    assert begins == ends, "every begin needs exactly one end"
    assert max(begins.values()) == 1
    for e in events:
        if e["ph"] in "bne":
            assert isinstance(e["ts"], (int, float)) and isinstance(e["tid"], int)
    steps = Counter(e["name"] for e in events if e["ph"] == "n" and e["cat"] == "vm")
    for step in ("kernel received", "pager asked", "disk read", "verified", "installed"):
        assert steps[step] > 0, f"no {step!r} step"
    assert steps["kernel received"] == len(faults)
    by_slice: dict[Any, list[dict[str, Any]]] = {}
    for e in events:
        if e["ph"] in "bne" and e["cat"] == "vm":
            by_slice.setdefault(e["id"], []).append(e)
    for evs in by_slice.values():       # begin first, end last, steps in between
        assert evs[0]["ph"] == "b" and evs[-1]["ph"] == "e"
        assert evs[0]["ts"] <= evs[-1]["ts"]
    named = {e["pid"]: e["args"]["name"] for e in events
             if e["ph"] == "M" and e["name"] == "process_name"}
    assert any("memstress.1" in n for n in named.values())
    assert {e["pid"] for e in events if e["ph"] in "bne"} <= set(named), \
        "every slice sits in a named sealed process"


def test_tracer_closes_every_slice(tmp_path: Path) -> None:
    t = Tracer(str(tmp_path / "t.json"))
    t.begin("vm", "fault", 1, 7)
    t.step("vm", "fault", 1, 7, "kernel received")
    t.end("vm", "fault", 1, 7)
    t.end("vm", "fault", 1, 7)                       # a repeated end is ignored
    t.step("vm", "fault", 1, 7, "installed")          # a step after the end is dropped
    t.begin("vm", "fault", 2, 7)
    t.begin("ipc", "call", 2, 7)
    assert t.end_track(7, outcome="killed") == 2
    t.begin("vm", "fault", 3, 8)                      # still open at flush
    t.flush()
    events = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    begins = sorted((e["cat"], e["id"]) for e in events if e["ph"] == "b")
    ends = sorted((e["cat"], e["id"]) for e in events if e["ph"] == "e")
    assert begins == ends == [("ipc", 2), ("vm", 1), ("vm", 2), ("vm", 3)]
    assert [e["name"] for e in events if e["ph"] == "n"] == ["kernel received"]
    assert t.is_open("vm", 3), "flush closes slices in the file only"
