"""Waiting for a condition with a deadline (what tests, benchmarks and the demo do instead of sleeping),
and doing one thing for several nodes at once."""

from __future__ import annotations

import threading
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


def in_parallel(names: list[str], action: Callable[[str], T]) -> dict[str, T]:
    """``action(name)`` for every name at once, in a thread each (the lab's nodes share this machine's
    CPUs: side by side, not one after the other); the results by name. The first exception raised is
    raised again here, once every thread has ended. The threads are daemons: if the caller is interrupted
    while it waits (Ctrl-C, a signal made an exception), it cleans up and exits without waiting for them."""
    results: dict[str, T] = {}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            results[name] = action(name)
        except BaseException as exc:  # noqa: BLE001 - raised again below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,), name=f"at-once-{n}", daemon=True) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
