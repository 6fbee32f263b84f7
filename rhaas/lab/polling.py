"""Waiting for a condition with a deadline: what tests, benchmarks and the demo do instead of sleeping."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(what: str, condition: Callable[[], T], timeout: float, every: float = 0.1) -> T:
    """Call ``condition`` every ``every`` seconds until it returns something true, and return that.

    Raises TimeoutError naming ``what`` if ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(every)
