"""When the networking worker tries a failed switch change again, and how long it waits first.

A driver with a ``retry_window`` (the upstream switch: an upstream that is away may come back) has its
*transient* failures (unreachable, timed out, a 5xx) retried with a capped exponential backoff until the
window closes, and its definite ones (a refusal) fail at once. Any other driver gets `ATTEMPTS` quick
tries, whatever the error. The clock is a parameter, so a test can drive the decisions without waiting.

This module decides; it neither sleeps nor calls a driver (the worker does both).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: Tries of a change on a driver without a retry window (changes are idempotent).
ATTEMPTS = 3


@dataclass(frozen=True)
class Backoff:
    """Pauses of ``first``, ``first * factor``, ... seconds, never more than ``cap``."""

    first: float = 0.2
    factor: float = 2.0
    cap: float = 5.0

    def pause(self, failures: int) -> float:
        """The pause after the ``failures``-th failure (1, 2, ...)."""
        return float(min(self.first * self.factor ** (failures - 1), self.cap))


@dataclass
class Retry:
    """The retry decisions for one change, from its first attempt on."""

    #: Seconds during which transient failures are retried (0: `ATTEMPTS` tries of any failure).
    window: float
    backoff: Backoff = field(default_factory=Backoff)
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def after_failure(self, transient: bool) -> float | None:
        """Record a failed attempt; the pause before the next one, or None to give up now."""
        self.failures += 1
        if self.window <= 0:
            return 0.2 * self.failures if self.failures < ATTEMPTS else None
        if not transient:
            return None
        left = self.started + self.window - self.clock()
        if left <= 0:
            return None
        return min(self.backoff.pause(self.failures), left)

    def summary(self) -> str:
        """How hard it was tried, for the error message of a change that failed."""
        return f"{self.failures} attempt(s) in {self.clock() - self.started:.1f} s"
