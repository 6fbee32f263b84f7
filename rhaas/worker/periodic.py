"""A worker thread that does one pass now and then: the provisioning ticker, the background reconciler.

`Periodic` runs `pass_once` at once and then every `interval` seconds, or sooner when `wake` is called;
`stop` ends it. A pass that raises is logged and the thread lives on (the next pass tries again).
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class Periodic:
    """Subclasses give `pass_once` and `interval`, and their thread's ``name``."""

    name = "rhaas-periodic"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def interval(self) -> float:
        raise NotImplementedError

    def pass_once(self) -> object:
        raise NotImplementedError

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Run a pass now."""
        self._wake.set()

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.pass_once()
            except Exception:  # a bug or the database away: log, and try again at the next pass
                log.exception("%s: pass failed", self.name)
            self._wake.wait(self.interval)
            self._wake.clear()
