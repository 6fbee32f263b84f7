"""The background reconciler of a recursive instance: drift with the upstream is repaired, unasked.

Every ``[upstream] reconcile_interval`` seconds (0: never) it runs `rhaas.core.pool.reconcile` with ``fix``,
the code behind ``rhaas pool reconcile --fix``, so what an upstream outage left behind (a change the
upstream applied after this instance gave up on it) is repaired without a manual step. Nodes held or gone
upstream are logged and left to an administrator's ``rhaas pool reconcile --fix``: a pool grow or shrink in
flight looks like that drift for a moment, and a pass must not forget a node being imported. `reconcile`
logs each change it makes; a pass that fails (the upstream away, a node taken away while in a project, which
only an admin can settle) is logged and tried again at the next one. What counts as drift, and how it is
fixed, is core's business, not this module's.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker

from rhaas.backends.base import Backend
from rhaas.backends.upstream import UpstreamBackend
from rhaas.core.access import ADMIN
from rhaas.core.pool import Drift, reconcile
from rhaas.errors import RhaasError, UpstreamUnavailableError
from rhaas.worker.periodic import Periodic

log = logging.getLogger(__name__)


class Reconciler(Periodic):
    """A thread that reconciles with the upstream every ``interval`` seconds, the first pass at once."""

    name = "rhaas-reconcile"

    def __init__(self, sessions: sessionmaker[Session], backend: UpstreamBackend, interval: float) -> None:
        super().__init__()
        self.sessions, self.backend, self._interval = sessions, backend, interval

    @property
    def interval(self) -> float:
        return self._interval

    @staticmethod
    def of(sessions: sessionmaker[Session], backend: Backend, interval: float) -> Reconciler | None:
        """The reconciler of an instance with an upstream, unless ``interval`` is 0; else None."""
        if not isinstance(backend, UpstreamBackend) or interval <= 0:
            return None
        return Reconciler(sessions, backend, interval)

    def pass_once(self) -> Drift | None:
        return self.run_once()

    def run_once(self) -> Drift | None:
        """One pass: the drift found (and fixed), or None if the pass failed (logged)."""
        try:
            with self.sessions() as db:
                drift = reconcile(db, ADMIN, self.backend, fix=True, nodes=False)
                db.commit()
            return drift
        except UpstreamUnavailableError as exc:
            log.warning(
                "background reconcile: the upstream is away (%s); next pass in %g s", exc, self.interval
            )
        except RhaasError as exc:
            log.warning(
                "background reconcile: %s: %s; next pass in %g s", type(exc).__name__, exc, self.interval
            )
        except Exception:  # a bug or the database away: the thread must live on
            log.exception("background reconcile failed")
        return None
