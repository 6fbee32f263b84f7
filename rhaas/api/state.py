"""The API's application state: one typed object, built once by the app factory (rhaas.api.app).

It is stored as ``app.state.rhaas`` of both apps the factory builds (the customer API and the
provisioning-network app, which share it), and reaches routes through the `State` dependency (rhaas.api.deps);
nothing else is put on ``app.state``, and routes do not read ``app.state`` themselves. It holds the
long-lived objects a route may need, and says how a route wakes this process's background threads. It
must not hold per-request data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette

from rhaas.api.auth import Authenticator
from rhaas.backends.base import Backend
from rhaas.config import Settings
from rhaas.core.images import BlobStore
from rhaas.core.provisioning.tracker import Tracker
from rhaas.notify import Notifier, work_key
from rhaas.worker.networking import NetworkWorker
from rhaas.worker.provisioning import ProvisioningTicker


@dataclass
class AppState:
    settings: Settings
    sessions: sessionmaker[Session]
    authenticator: Authenticator
    blobs: BlobStore
    #: The instance's backend: hardware (VLAN pool, drivers) or upstream.
    backend: Backend
    #: Long polls of this process wait here (agents' work, networking actions).
    notifier: Notifier = field(default_factory=Notifier)
    #: The in-process networking worker, if this server runs one ([worker] in_process).
    worker: NetworkWorker | None = None
    #: The provisioning ticker, if fast provisioning is enabled.
    ticker: ProvisioningTicker | None = None
    #: The provisioning-network app (agents, network boot) sharing this state; None until it is built.
    agent_app: Starlette | None = None
    #: The network boot's plain-HTTP app (``/boot/v1`` only) sharing this state; None until it is built.
    boot_app: Starlette | None = None
    #: The SHA-256 of the agents' listener's certificate, which agents are booted with (None: no key).
    agent_pin: str | None = None
    #: The agents' peer-exchange tracker ([provisioning] peer_exchange): in memory, this process's.
    tracker: Tracker = field(default_factory=Tracker)

    def install(self, app: Starlette) -> None:
        app.state.rhaas = self

    @staticmethod
    def of(app: Starlette) -> AppState:
        """The state `install`-ed on ``app``."""
        state: AppState = app.state.rhaas
        return state

    def wake_worker(self) -> None:
        """A networking action was committed: the in-process worker need not wait for its next poll."""
        if self.worker is not None:
            self.worker.wake()

    def wake_ticker(self) -> None:
        """A provisioning job was committed: the ticker runs a pass now (a return's NMI goes at once)."""
        if self.ticker is not None:
            self.ticker.wake()

    def notify_work(self, node: str) -> None:
        """Work for ``node`` was committed: its agent, if it is waiting on this server, asks now."""
        self.notifier.notify(work_key(node))
