"""Waiting helpers for tests that drive real sockets and threads (plain module, imported by tests)."""

from __future__ import annotations

import time
from typing import Callable


def wait_until(cond: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``cond`` every 10 ms until it is true; AssertionError naming ``what`` after
    ``timeout`` seconds."""
    t_end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > t_end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)
