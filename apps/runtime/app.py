"""What every app's main() shares: the --kernel and --name flags, and turning a SealedError
or a failed check the app does not handle itself into a REPORT and an exit status."""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from apps.runtime.errors import SealedError
from apps.runtime.process import SealedProcess
from apps.runtime.syscall import KERNEL_ADDR_ENV


def app_parser(app: str, doc: str | None) -> argparse.ArgumentParser:
    """A flag parser for `sealedos run APP` with --kernel (default $SEALEDOS_KERNEL_ADDR;
    required when that is unset: argparse exits 2 saying so) and --name (default APP)."""
    env = os.environ.get(KERNEL_ADDR_ENV)
    p = argparse.ArgumentParser(prog=f"sealedos run {app}", description=(doc or "").split("\n")[0])
    p.add_argument("--kernel", default=env, required=env is None,
                   help=f"the kernel's address (default ${KERNEL_ADDR_ENV})")
    p.add_argument("--name", default=app, help="this sealed process's name")
    return p


def run_reporting(proc: SealedProcess, body: Callable[[], int]) -> int:
    """body()'s exit status, after which proc exits with it; a SealedError raised by body is
    REPORTed (error, error_msg), an AssertionError (the app's own check of its data) as
    checksum "failed"; either gives status 1."""
    try:
        status = body()
    except SealedError as exc:
        proc.report(error=type(exc).__name__, error_msg=str(exc)[:200])
        status = 1
    except AssertionError as exc:
        proc.report(checksum="failed", error_msg=str(exc)[:200])
        status = 1
    proc.close(status)
    return status
