"""Wake-ups for long polls: a request held open waits on a key; a thread that changed what it waits for
notifies the key.

Two long polls use it: an agent's ``GET /agent/v1/nodes/<node>/work?wait=`` (key `work_key`, notified by
a route of this process that queued work for the node) and ``GET /v0/networking_action/<id>?wait=`` (key
`ACTIONS`, notified by this process's networking worker when it finishes an action).

Waiters are coroutines on an event loop; notifiers are plain threads (routes run in a thread pool, the
worker is a thread), so a notification crosses into the waiter's loop with ``call_soon_threadsafe``.

A notification is a hint, not a message: it only says "look again now". It is not queued, not sent to
other processes, and lost if nobody listens, so a waiter must listen *before* it looks (see
`Notifier.listening`) and must still look again from time to time for changes made by other processes.
This module knows nothing of HTTP or of the database.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

#: The key networking-action long polls wait on: any action finished here may be theirs.
ACTIONS = "networking-actions"


def work_key(node: str) -> str:
    """The key the agent of ``node`` waits on for work."""
    return f"node-work:{node}"


class Waiter:
    """One held request's wake-up: set from any thread, awaited on the loop that created it."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()

    def _set(self) -> None:
        # RuntimeError: the loop closed after the waiter was listed, so nobody is left to wake.
        with suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True if notified (and the notification is then consumed)."""
        try:
            await asyncio.wait_for(self._event.wait(), max(timeout, 0.0))
        except TimeoutError:
            return False
        self._event.clear()
        return True


class Notifier:
    """Waiters by key. Thread-safe; one per process (held by the API's application state)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, list[Waiter]] = {}

    @contextmanager
    def listening(self, key: str) -> Iterator[Waiter]:
        """A waiter notified of ``key`` while the block runs. Listen, then look, then wait: a change made
        between the look and the wait is not missed. Must be entered on an event loop."""
        waiter = Waiter()
        with self._lock:
            self._waiters.setdefault(key, []).append(waiter)
        try:
            yield waiter
        finally:
            with self._lock:
                waiting = self._waiters.get(key, [])
                waiting.remove(waiter)
                if not waiting:
                    del self._waiters[key]

    def notify(self, key: str) -> None:
        """Wake every waiter of ``key`` (from any thread; a no-op when nobody waits)."""
        with self._lock:
            waiting = list(self._waiters.get(key, ()))
        for waiter in waiting:
            waiter._set()

    def waiting(self, key: str | None = None) -> int:
        """How many waiters hold ``key`` (all keys if None): for tests and diagnostics."""
        with self._lock:
            if key is not None:
                return len(self._waiters.get(key, ()))
            return sum(len(w) for w in self._waiters.values())
