"""Polling for the tests: wait for a condition a real process will bring about (never a
timing assertion: the timeout only bounds a test that would otherwise hang)."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

POLL_S: float = 0.05


def wait_for(what: str, pred: Callable[[], Any], timeout_s: float,
             poll_s: float = POLL_S) -> Any:
    """Poll pred() every poll_s until it returns something truthy and return that; fail the
    test (AssertionError) with `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll_s)
