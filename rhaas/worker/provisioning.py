"""The provisioning ticker: a thread that moves provisioning jobs on that need no agent.

It programs the NIC of a node that changed hands (FPBL ↔ customer) through a networking action, boots
newly enrolled nodes from the network, sends the NMI of each new return and takes the reboot path when
a return FPBL misses its deadline (`rhaas.core.provisioning.tick`). Jobs are claimed with conditional
UPDATEs, so a ticker in every API server is safe; a restarted server picks up where the rows say.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from rhaas.config import ProvisioningSettings
from rhaas.core import provisioning
from rhaas.core.nodes import obm_of
from rhaas.db.models import Node
from rhaas.drivers.obm.base import OBMDriver

log = logging.getLogger(__name__)


class ProvisioningTicker:
    def __init__(
        self,
        sessions: Any,
        settings: ProvisioningSettings,
        wake_worker: Callable[[], None] | None = None,
        obm_for: Callable[[Node], OBMDriver] = obm_of,
    ) -> None:
        self.sessions, self.settings, self.wake_worker = sessions, settings, wake_worker
        self.obm_for = obm_for  # a node's BMC driver: the backend's obm_driver
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="provisioning-ticker", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Run a pass now (a return was just queued)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                provisioning.tick(self.sessions, self.settings, self.wake_worker, self.obm_for)
            except Exception:  # a bug or the database away: log, and try again at the next tick
                log.exception("provisioning tick failed")
            self._wake.wait(self.settings.tick_seconds)
            self._wake.clear()
