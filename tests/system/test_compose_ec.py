"""The `ec` compose profile for real: deploy/docker-compose.yml + deploy/docker-compose.ec.yml
with --profile ec (kernel --pagers 6 --code 4+2, six pager+disk pairs, each pair its own
containers and volume).  Under load, R=2 pager containers crash at once (their main
processes SIGKILLed from the host, so `restart: on-failure` brings them back), then one is
SIGSTOPped (a hang nothing restarts: the kernel reads around it); every app ends verified.

Skipped, like test_compose.py, when no container engine is available.
"""
from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_compose import (
    APP_DURATION_S,
    APPS,
    BUILD_TIMEOUT_S,
    COMPOSE_FILE,
    UP_TIMEOUT_S,
    WAIT_S,
    Deployment,
    engine_env,
)

EC_FILE = COMPOSE_FILE.parent / "docker-compose.ec.yml"

pytestmark = pytest.mark.timeout(900)


class EcDeployment(Deployment):
    """A Deployment of the base file + the ec overlay + the test override, profile ec."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        super().__init__(dict(env, COMPOSE_PROFILES="ec"), workdir)

    def compose(self, *args: str, timeout: float = 60.0, check: bool = True,
                files: tuple[Path, ...] | None = None):  # type: ignore[no-untyped-def]
        """`docker compose` with the base, ec and override files unless told otherwise."""
        return super().compose(*args, timeout=timeout, check=check,
                               files=files or (COMPOSE_FILE, EC_FILE, self.override))

    def logs(self, *services: str, tail: int = 40) -> str:
        """The last lines of the services' logs."""
        out = self.compose("logs", "--no-color", "--tail", str(tail), *services, check=False,
                           timeout=60)
        return "--- logs ---\n" + out.stdout[-12000:] + out.stderr[-2000:]


@pytest.fixture(scope="module")
def ec_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EcDeployment]:
    """Validate, build and start the ec profile; always `down -v` at the end."""
    d = EcDeployment(engine_env(), tmp_path_factory.mktemp("compose-ec"))
    d.compose("config", "-q", files=(COMPOSE_FILE, EC_FILE))
    try:
        d.compose("build", "kernel", timeout=BUILD_TIMEOUT_S)
        d.compose("up", "-d", timeout=UP_TIMEOUT_S)
        yield d
    finally:
        d.compose("down", "-v", "--remove-orphans", "-t", "5", timeout=180, check=False)


def test_ec_profile_survives_r_crashed_pagers_and_a_hung_one(ec_deployment: EcDeployment) -> None:
    d = ec_deployment

    def progressing() -> bool:
        procs = d.processes()
        return all((procs.get(n, {}).get("report") or {}).get("progress", 0) > 0
                   and procs[n].get("major_faults", 0) > 0 for n in ("memstress.1", "memstress.2"))
    d.wait("the memstress apps to page", progressing)
    stats = d.stats()
    assert stats.get("code") == "4+2" and [p["up"] for p in stats["pagers"]] == [True] * 6

    for service in ("pager1", "pager4"):                 # R = 2 at once
        d.crash(service)
    for service in ("pager1", "pager4"):
        d.wait(f"{service} to be restarted",
               lambda s=service: (lambda i: i["restarts"] >= 1 and i["status"] == "running")(
                   d.inspect(s)))
    d.wait("the kernel to re-admit both",
           lambda: all(p["up"] for p in d.stats()["pagers"]) and d.stats()["pager_restarts"] >= 2)

    hung = d.inspect("pager2")["pid"]
    os.kill(hung, signal.SIGSTOP)                        # a hang: nothing restarts it
    try:
        d.wait("the apps and the summary to finish",
               lambda: all(d.inspect(s)["status"] == "exited" for s in [*APPS.values(), "summary"]),
               timeout=APP_DURATION_S + 3 * WAIT_S)
    finally:
        os.kill(hung, signal.SIGCONT)
    procs = d.processes()
    for name, service in APPS.items():
        assert d.inspect(service)["exit_code"] == 0, d.logs(service)
        assert procs[name]["checksum"] == "verified", procs[name]
    stats = d.stats()
    assert stats["ec_unrecoverable"] == 0 and stats["ec_page_ins"] > 0, stats
    altered = {k: n for k, n in stats["integrity_failures"].items()
               if k not in ("timeout", "error")}
    assert not altered, stats["integrity_failures"]
