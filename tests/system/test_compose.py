"""The system as containers, for real: deploy/Dockerfile and deploy/docker-compose.yml run by
the real `docker compose` (v2) on a Docker engine, or on the Podman-backed one that
../shared/tools/compose-engine provides where there is no Docker.

One deployment per module, with an override (written here) that makes the network internal,
drops the published ports, and shortens the apps; a unique project name; `down -v` always.
It checks: the compose file validates; the image builds; the services come up healthy; the
apps make progress; a pager whose main process is SIGKILLed from the host (a crash, which
`restart: on-failure` answers -- `docker kill` would be a user stop) comes back and the kernel
re-admits it; the same for a disk service; every app ends with verified data and the summary
service says so; the load generator profile reports a result.

Skipped, with the reason, when no Docker engine and no compose-engine tool is available or the
engine cannot be started.  Timings are never asserted; every wait has a generous limit.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polling
import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "deploy" / "docker-compose.yml"
ENGINE_TOOL = ROOT.parent / "shared" / "tools" / "compose-engine"
#: Seconds each memstress keeps paging (the compose default is 60).
APP_DURATION_S: int = 20
#: The apps the compose file starts, by kernel process name.
APPS: dict[str, str] = {"memstress.1": "memstress1", "memstress.2": "memstress2",
                        "refstring.1": "refstring"}
#: Compose's own variables the test sets (a developer's shell must not leak into the run).
KNOBS = ("SEALEDOS_IMAGE", "SEALEDOS_LOG", "SEALEDOS_FRAMES", "SEALEDOS_INIT_TOKEN",
         "SEALEDOS_APP_DURATION", "SEALEDOS_LOADGEN_DURATION", "SEALEDOS_KERNEL_PORT",
         "SEALEDOS_METRICS_PORT")
#: Seconds the load generator measures (each of its two runs; the compose default is 10).
LOADGEN_DURATION_S: int = 3
OVERRIDE = """\
# written by tests/system/test_compose.py: a host-internal network, nothing published
networks:
  default:
    internal: true
services:
  kernel:
    ports: !reset []
"""
ENGINE_UP_TIMEOUT_S: float = 900.0
BUILD_TIMEOUT_S: float = 600.0
UP_TIMEOUT_S: float = 240.0
WAIT_S: float = 120.0

pytestmark = pytest.mark.timeout(900)


# -- the engine ---------------------------------------------------------------------------------
def _run(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _engine_works(env: dict[str, str]) -> str | None:
    """None when `docker` reaches an engine and has Compose v2; else why not."""
    if shutil.which("docker", path=env.get("PATH")) is None:
        return "no `docker` command"
    try:
        server = _run(["docker", "version", "--format", "{{.Server.Version}}"], env, 30)
        if server.returncode != 0:
            return f"`docker version` found no engine: {server.stderr.strip()[-300:]}"
        compose = _run(["docker", "compose", "version", "--short"], env, 30)
        if compose.returncode != 0:
            return f"no Docker Compose v2 plugin: {compose.stderr.strip()[-300:]}"
    except subprocess.TimeoutExpired as exc:
        return f"`{' '.join(exc.cmd)}` did not answer in {exc.timeout:g} s"
    return None


def engine_env() -> dict[str, str]:
    """The environment under which `docker compose` works; pytest.skip with the reasons when
    there is no engine: the current one (Docker, or an engine .ci/run brought up), else the
    one ../shared/tools/compose-engine brings up."""
    env = {k: v for k, v in os.environ.items() if k not in KNOBS}
    why = _engine_works(env)
    if why is None:
        return env
    reasons = [f"current environment: {why}"]
    if not ENGINE_TOOL.exists():
        reasons.append(f"no {ENGINE_TOOL}")
    else:
        try:
            up = _run([str(ENGINE_TOOL), "up"], env, ENGINE_UP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            up = None
        if up is None or up.returncode != 0:
            tail = up.stderr.strip()[-500:] if up is not None else "timed out"
            reasons.append(f"{ENGINE_TOOL} up failed: {tail}")
        else:
            for line in up.stdout.splitlines():
                if line.startswith("export ") and "=" in line:
                    key, _, value = line[len("export "):].partition("=")
                    env[key] = value.strip("'\"")
            why = _engine_works(env)
            if why is None:
                return env
            reasons.append(f"after {ENGINE_TOOL} up: {why}")
    pytest.skip("no container engine to run deploy/docker-compose.yml: " + "; ".join(reasons))


# -- the deployment -----------------------------------------------------------------------------
class Deployment:
    """One compose project: `docker compose` with the test's files, project and knobs."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.project = f"sealedos-test-{secrets.token_hex(4)}"
        self.override = workdir / "override.yml"
        self.override.write_text(OVERRIDE)
        self.timings: dict[str, float] = {}
        self.env = dict(env, SEALEDOS_APP_DURATION=str(APP_DURATION_S),
                        SEALEDOS_LOADGEN_DURATION=str(LOADGEN_DURATION_S),
                        SEALEDOS_INIT_TOKEN=secrets.token_hex(16), SEALEDOS_LOG="INFO")

    def compose(self, *args: str, timeout: float = 60.0, check: bool = True,
                files: tuple[Path, ...] | None = None) -> subprocess.CompletedProcess:
        """`docker compose -p PROJECT -f FILE... ARGS`; fail with its output if check."""
        fargs = [a for f in (files or (COMPOSE_FILE, self.override)) for a in ("-f", str(f))]
        cmd = ["docker", "compose", "-p", self.project, *fargs, *args]
        try:
            out = _run(cmd, self.env, timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`{' '.join(cmd)}` took over {timeout:g} s\n{self.logs()}")
        if check and out.returncode != 0:
            pytest.fail(f"`{' '.join(cmd)}` exited {out.returncode}:\n{out.stdout[-3000:]}\n"
                        f"{out.stderr[-3000:]}\n{self.logs()}")
        return out

    def logs(self, *services: str, tail: int = 40) -> str:
        """The last lines of the services' logs (for failure messages)."""
        fargs = ["-f", str(COMPOSE_FILE), "-f", str(self.override)]
        try:
            out = _run(["docker", "compose", "-p", self.project, *fargs, "logs", "--no-color",
                        "--tail", str(tail), *services], self.env, 60)
            return "--- logs ---\n" + out.stdout[-12000:] + out.stderr[-2000:]
        except subprocess.TimeoutExpired:
            return "(logs timed out)"

    def sealedos(self, *args: str) -> Any:
        """`sealedos ARGS --json` inside the kernel container, parsed."""
        out = self.compose("exec", "-T", "kernel", "sealedos", *args, "--json", check=False)
        if out.returncode != 0:
            return None
        return json.loads(out.stdout)

    def stats(self) -> dict[str, Any]:
        """The kernel's counters (`sealedos stats --json`); {} when it does not answer."""
        return self.sealedos("stats") or {}

    def processes(self) -> dict[str, dict[str, Any]]:
        """The kernel's process records by name (`sealedos ps --json`)."""
        doc = self.sealedos("ps") or {}
        return {p["name"]: p for p in doc.get("processes", [])}

    def container(self, service: str) -> str:
        """The id of the service's container (running or not)."""
        cid = self.compose("ps", "-a", "-q", service).stdout.split()
        assert cid, f"no container for {service}\n{self.logs()}"
        return cid[0]

    def inspect(self, service: str) -> dict[str, Any]:
        """{status, exit_code, restarts, pid, health} of the service's container."""
        fmt = ("{{json .State.Status}} {{json .State.ExitCode}} {{json .RestartCount}} "
               "{{json .State.Pid}}")
        out = _run(["docker", "inspect", "-f", fmt, self.container(service)], self.env, 60)
        assert out.returncode == 0, out.stderr
        status, code, restarts, pid = (json.loads(v) for v in out.stdout.split())
        return {"status": status, "exit_code": code, "restarts": restarts, "pid": pid}

    def crash(self, service: str) -> int:
        """SIGKILL the service's main process as seen from the host (a crash, not a user
        stop); return the pid killed."""
        pid = self.inspect(service)["pid"]
        assert pid > 0, f"{service} is not running\n{self.logs(service)}"
        try:
            os.kill(pid, signal.SIGKILL)
        except PermissionError:
            # Docker as a non-root user: the container runs as another uid; kill it from a
            # throwaway container in the host's pid namespace
            image = self.env.get("SEALEDOS_IMAGE", "sealedos:local")
            out = _run(["docker", "run", "--rm", "--pid=host", "--user", "0", "--network", "none",
                        image, "python3", "-c", f"import os; os.kill({pid}, 9)"], self.env, 120)
            assert out.returncode == 0, f"could not kill {service} (pid {pid}): {out.stderr}"
        return pid

    def wait(self, what: str, cond: Callable[[], Any], timeout: float = WAIT_S) -> Any:
        """Poll cond() every second until truthy; fail with the logs after timeout seconds."""
        try:
            return polling.wait_for(what, cond, timeout, poll_s=1.0)
        except AssertionError as exc:
            pytest.fail(f"{exc} ({timeout:g} s)\n{self.logs()}")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Validate, build and start the compose project; always `down -v` at the end."""
    env = engine_env()
    d = Deployment(env, tmp_path_factory.mktemp("compose"))
    timings = d.timings
    d.compose("config", "-q", files=(COMPOSE_FILE,))          # the file users run, unchanged
    d.compose("config", "-q")                                  # ... and with the test override
    try:
        t0 = time.monotonic()
        d.compose("build", "kernel", timeout=BUILD_TIMEOUT_S)
        timings["build"] = time.monotonic() - t0
        t0 = time.monotonic()
        d.compose("up", "-d", timeout=UP_TIMEOUT_S)
        timings["up"] = time.monotonic() - t0
        yield d
    finally:
        d.compose("down", "-v", "--remove-orphans", "-t", "5", timeout=180, check=False)
        print("\ncompose timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))


# -- the tests ----------------------------------------------------------------------------------
def test_crashed_pager_and_disk_come_back_and_apps_verify(deployment: Deployment) -> None:
    d = deployment
    t0 = time.monotonic()

    def progressing() -> bool:
        procs = d.processes()
        return all((procs.get(n, {}).get("report") or {}).get("progress", 0) > 0
                   and procs[n].get("state") not in ("exited", "killed")
                   for n in ("memstress.1", "memstress.2"))
    d.wait("the memstress apps to report progress", progressing)
    stats = d.stats()
    assert [p["up"] for p in stats["pagers"]] == [True, True], stats["pagers"]
    assert stats["pager_restarts"] == 0 and stats["ipc"]["nameservice"]
    joins_before = stats["pagers"][0]["joins"]
    t_progress = time.monotonic() - t0

    # a crash of pager0's main process: restart: brings the container back, the new
    # instance says hello, the kernel re-admits it to slot 0
    d.crash("pager0")
    d.wait("pager0 to be restarted by its restart policy",
           lambda: (lambda s: s["restarts"] >= 1 and s["status"] == "running")(d.inspect("pager0")))

    def readmitted() -> bool:
        s = d.stats()
        slot = (s.get("pagers") or [{}])[0]
        return slot.get("up") and slot.get("joins", 0) > joins_before and s["pager_restarts"] >= 1
    d.wait("the kernel to re-admit pager0", readmitted)
    t_readmitted = time.monotonic() - t0

    # a crash of disk1: it comes back and reopens its device file
    d.crash("disk1")
    d.wait("disk1 to be restarted by its restart policy",
           lambda: (lambda s: s["restarts"] >= 1 and s["status"] == "running")(d.inspect("disk1")))

    # every app finishes with verified data; the summary service says so
    d.wait("the apps and the summary to finish",
           lambda: all(d.inspect(s)["status"] == "exited" for s in [*APPS.values(), "summary"]),
           timeout=APP_DURATION_S + 2 * WAIT_S)
    for service in APPS.values():
        state = d.inspect(service)
        assert state["exit_code"] == 0, f"{service} exited {state['exit_code']}\n{d.logs(service)}"
    procs = d.processes()
    for name in APPS:
        assert procs[name]["checksum"] == "verified", procs[name]
        assert procs[name]["exit_reason"] == "exited with status 0", procs[name]
    assert procs["memstress.1"]["major_faults"] > 0, "memstress never paged"
    summary = d.compose("logs", "--no-color", "summary").stdout
    assert d.inspect("summary")["exit_code"] == 0, summary
    assert summary.count("verified") == len(APPS), summary
    stats = d.stats()
    assert stats["pager_restarts"] >= 1, stats
    # honest pagers: a crash may cost timeouts or errors, never a page that fails verification
    altered = {k: n for k, n in stats["integrity_failures"].items()
               if k not in ("timeout", "error")}
    assert not altered, stats["integrity_failures"]
    # Prometheus metrics are served (published to 127.0.0.1 by the compose file; the test's
    # override publishes nothing, so read them inside the kernel's container)
    metrics = d.compose("exec", "-T", "kernel", "python3", "-c",
                        "import urllib.request; print(urllib.request.urlopen("
                        "'http://127.0.0.1:9100/metrics', timeout=10).read().decode())").stdout
    assert "sealedos_page_ins" in metrics, metrics[:2000]
    print(f"\ncompose: apps progressing after {t_progress:.0f} s, pager0 re-admitted after "
          f"{t_readmitted:.0f} s, apps done after {time.monotonic() - t0:.0f} s; "
          f"build/up: {d.timings}")


def test_loadgen_profile_reports_a_result(deployment: Deployment) -> None:
    d = deployment
    before = d.stats().get("ipc_calls", 0)
    # no --rm: through Podman's Docker API, `run --rm` loses the exit code (always 0)
    name = f"{d.project}-loadgen"
    try:
        out = d.compose("--profile", "loadgen", "run", "-T", "--no-deps", "--name", name,
                        "loadgen", timeout=WAIT_S + 8 * LOADGEN_DURATION_S, check=False)
        code = _run(["docker", "inspect", "-f", "{{.State.ExitCode}}", name], d.env, 60)
    finally:
        _run(["docker", "rm", "-f", name], d.env, 60)
    assert out.returncode == 0 and code.stdout.strip() == "0", \
        f"loadgen exited {out.returncode}/{code.stdout.strip()}:\n{out.stdout}\n{out.stderr}"
    assert "round trips/s" in out.stdout and "ratio kernel/bare" in out.stdout, out.stdout
    assert "tcp://kernel:5555" in out.stdout, out.stdout
    # its calls went through the deployed kernel
    assert d.stats()["ipc_calls"] > before
    print("\n" + out.stdout)
