"""The networking worker: drains PENDING networking actions and programs the switches.

Each action is claimed with a lease (``claimed_by``/``claimed_until``; on PostgreSQL the candidate rows
are read with ``FOR UPDATE SKIP LOCKED``), applied outside any transaction, and finished with a
conditional UPDATE that only the lease holder can make. The lease is renewed just before the switch is
programmed, so an action that waited in a claimed batch is never applied by two live workers. The driver
is always handed the port's whole desired state, so a worker killed between the switch change and the
commit leaves nothing half-done: the lease runs out, another worker (or the restarted one) applies the
same state again and commits. Independent NICs are applied concurrently on a thread pool.

A database outage strands nothing: an action whose outcome could not be committed is committed once the
database is back (retried while the lease lasts), and an action this worker claimed but could not start
is claimable again by this same worker in its next batch, not only after the lease.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import Update, delete, or_, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from rhaas.backends.base import Backend
from rhaas.config import WorkerSettings
from rhaas.core.networks import SYNC_PORT, port_state
from rhaas.core.provisioning import holds_port
from rhaas.core.switches import REVERT_PORT
from rhaas.db.models import (
    DONE,
    ERROR,
    PENDING,
    NetworkAttachment,
    NetworkingAction,
    NodeProvisioning,
    Switch,
    utcnow,
)
from rhaas.drivers.switch.base import SwitchDriver
from rhaas.errors import DriverError
from rhaas.notify import ACTIONS, Notifier
from rhaas.ports import PortState

log = logging.getLogger(__name__)

#: How often a failed switch change is tried before the action ends in ERROR (changes are idempotent).
ATTEMPTS = 3


@dataclass(frozen=True)
class Plan:
    """What applying one action means: the port, its desired state, and the resulting attachments."""

    action_id: int
    switch: Switch
    port: str
    state: PortState
    attachments: dict[str, int]  # channel → network row id, after the action


def plan(db: Session, action: NetworkingAction) -> Plan | str:
    """The port state an action leads to, or an error message if it cannot be applied."""
    nic = action.nic
    if nic.port is None:
        return f"Nic {nic.label} on node {nic.node.label} is no longer connected to a switch port."
    channels = {a.channel: a.network for a in nic.attachments}
    if action.type == REVERT_PORT:
        channels = {}
    elif action.type == SYNC_PORT:
        pass
    elif action.new_network is not None:
        channels[action.channel] = action.new_network
    else:
        channels.pop(action.channel, None)
    state = port_state(channels)
    held = holds_port(db.get(NodeProvisioning, nic.node_id), nic.label)
    if held is not None:  # the FPBL owns the node: the NIC stays on the provisioning network
        state = PortState(native=held)
    return Plan(action.id, nic.port.switch, nic.port.label, state, {ch: n.id for ch, n in channels.items()})


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class NetworkWorker:
    """Applies networking actions; run it in a thread of the API server or as its own process.

    Switch drivers come from ``backend`` (one per switch configuration, kept for the worker's life).
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        backend: Backend,
        settings: WorkerSettings | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.sessions = sessions
        self.backend = backend
        self.settings = settings or WorkerSettings()
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = threading.Event()
        #: Notified (key `ACTIONS`) whenever this worker finishes an action: long-polling readers wait on it.
        self.notifier = notifier if notifier is not None else Notifier()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(self.settings.threads, thread_name_prefix="rhaas-net")
        self._drivers: dict[str, SwitchDriver] = {}
        self._drivers_lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        self.release_dead_claims()
        self._thread = threading.Thread(target=self.run_forever, name="rhaas-network-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._pool.shutdown(wait=True)
        for driver in self._drivers.values():
            driver.close()

    def wake(self) -> None:
        """Tell the worker there is new work (saves waiting for the next poll)."""
        self._wake.set()

    def run_forever(self) -> None:
        while not self._stop.is_set():
            try:
                done = self.run_once()
            except Exception:  # the loop must survive a database outage; it logs and retries
                log.exception("networking worker: batch failed")
                done = 0
            if not done:
                self._wake.wait(self.settings.poll_interval)
                self._wake.clear()

    def run_once(self) -> int:
        """Claim a batch of actions and apply them concurrently; returns how many were finished."""
        ids = self.claim(self.settings.threads * 4)
        return sum(1 for finished in self._pool.map(self._apply_logged, ids) if finished)

    def _apply_logged(self, action_id: int) -> bool:
        # Every action of a batch ends here before the next claim, so an action still claimed by this
        # worker at that point is one nobody is applying (see `claim`).
        try:
            return self.apply(action_id)
        except Exception:
            log.exception("networking worker: action %d failed; it is retried in the next batch", action_id)
            return False

    # -- claiming -------------------------------------------------------------------------------------
    def release_dead_claims(self) -> int:
        """Free the claims of workers on this host whose process is gone (a crashed or killed server),
        so a restart resumes their actions at once instead of after the lease."""
        host = socket.gethostname()
        released = 0
        with self.sessions() as db, db.begin():
            rows = db.execute(
                select(NetworkingAction.id, NetworkingAction.claimed_by).where(
                    NetworkingAction.status == PENDING, NetworkingAction.claimed_by.like(f"{host}:%")
                )
            ).all()
            for action_id, claimed_by in rows:
                if claimed_by is None or _process_alive(int(claimed_by.split(":")[1])):
                    continue
                result = db.execute(
                    update(NetworkingAction)
                    .where(NetworkingAction.id == action_id, NetworkingAction.claimed_by == claimed_by)
                    .values(claimed_by=None, claimed_until=None)
                )
                released += result.rowcount  # type: ignore[attr-defined]
        if released:
            log.info("networking worker: resumed %d actions of a dead worker", released)
        return released

    def claim(self, limit: int) -> list[int]:
        """Lease up to ``limit`` PENDING actions: unclaimed ones, expired leases, and this worker's own
        (whose application failed, say in a database outage: `run_once` has finished every action of
        the previous batch before it claims again)."""
        now = utcnow()
        lease_end = now + dt.timedelta(seconds=self.settings.lease_seconds)
        claimable = (
            NetworkingAction.status == PENDING,
            or_(
                NetworkingAction.claimed_until.is_(None),
                NetworkingAction.claimed_until < now,
                NetworkingAction.claimed_by == self.worker_id,
            ),
        )
        with self.sessions() as db, db.begin():
            query = select(NetworkingAction.id).where(*claimable).order_by(NetworkingAction.id).limit(limit)
            if db.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            claimed = []
            for action_id in db.scalars(query).all():
                result = db.execute(
                    update(NetworkingAction)
                    .where(NetworkingAction.id == action_id, *claimable)
                    .values(claimed_by=self.worker_id, claimed_until=lease_end)
                )
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    claimed.append(action_id)
        return claimed

    # -- applying -------------------------------------------------------------------------------------
    def _driver(self, switch: Switch) -> SwitchDriver:
        key = json.dumps([switch.label, switch.type, switch.settings], sort_keys=True)
        with self._drivers_lock:
            if key not in self._drivers:
                self._drivers[key] = self.backend.switch_driver(switch)
            return self._drivers[key]

    def renew(self, action_id: int) -> bool:
        """Start the lease afresh, if this worker still holds it.

        A batch is claimed at once but applied a few at a time, so the last actions of a batch could
        otherwise wait out their lease in this worker's queue while another worker takes them over, and
        both would program the switch. An expired lease nobody took over is still ours; one taken over is
        not, and the UPDATE (row-locked) makes the two outcomes exclusive."""
        lease_end = utcnow() + dt.timedelta(seconds=self.settings.lease_seconds)
        with self.sessions() as db, db.begin():
            result = db.execute(self._held(action_id).values(claimed_until=lease_end))
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def _held(self, action_id: int) -> Update:
        """An UPDATE of the action that matches only while it is PENDING and leased to this worker."""
        return update(NetworkingAction).where(
            NetworkingAction.id == action_id,
            NetworkingAction.status == PENDING,
            NetworkingAction.claimed_by == self.worker_id,
        )

    def apply(self, action_id: int) -> bool:
        lease_end = time.monotonic() + self.settings.lease_seconds
        if not self.renew(action_id):
            return False  # finished or taken over while it waited in this worker's queue
        with self.sessions() as db:
            action = db.get(NetworkingAction, action_id)
            if action is None or action.status != PENDING or action.claimed_by != self.worker_id:
                return False
            the_plan = plan(db, action)
        t0 = time.perf_counter()
        error = the_plan if isinstance(the_plan, str) else self._program(the_plan)
        t1 = time.perf_counter()
        finished = self._commit(action_id, the_plan, error, lease_end)
        if finished:
            self.notifier.notify(ACTIONS)
        log.debug(
            "action %d: switch %.1f ms, commit %.1f ms",
            action_id,
            (t1 - t0) * 1e3,
            (time.perf_counter() - t1) * 1e3,
        )
        return finished

    def _program(self, the_plan: Plan) -> str | None:
        """Apply the plan to the switch, trying `ATTEMPTS` times; None, or the last error's message.

        The message always names the switch and the port, whatever the driver raised (drivers should
        raise DriverError, but a bug or a library exception it failed to translate must not leave the
        action unfinished)."""
        where = f"switch {the_plan.switch.label}, port {the_plan.port}"
        for attempt in range(1, ATTEMPTS + 1):
            try:
                self._driver(the_plan.switch).set_port(the_plan.port, the_plan.state)
                return None
            except DriverError as exc:
                message = str(exc)
                if the_plan.switch.label not in message or the_plan.port not in message:
                    message = f"{where}: {message}"
            except Exception as exc:
                log.exception("%s: unexpected driver failure", where)
                message = f"{where}: unexpected failure: {type(exc).__name__}: {exc}"
            log.warning("switch change failed (attempt %d/%d): %s", attempt, ATTEMPTS, message)
            if attempt < ATTEMPTS:
                time.sleep(0.2 * attempt)
        return message

    def _commit(self, action_id: int, the_plan: Plan | str, error: str | None, lease_end: float) -> bool:
        """`_finish`, retried while the database is unreachable and the lease lasts: the switch has
        been programmed, so the outcome is recorded as soon as the database is back."""
        pause = 0.1
        while True:
            try:
                return self._finish(action_id, the_plan, error)
            except DBAPIError as exc:
                if self._stop.is_set() or time.monotonic() + pause > lease_end:
                    raise
                log.warning("action %d: cannot record its outcome yet (%s); retrying", action_id, exc)
            self._stop.wait(pause)
            pause = min(pause * 2, 1.0)

    def _finish(self, action_id: int, the_plan: Plan | str, error: str | None) -> bool:
        with self.sessions() as db, db.begin():
            result = db.execute(
                self._held(action_id).values(
                    status=ERROR if error else DONE, error=error, finished_at=utcnow(), claimed_until=None
                )
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return False  # our lease was taken over; the new holder finishes it
            if error is None:
                assert isinstance(the_plan, Plan)
                nic_id = db.get(NetworkingAction, action_id).nic_id  # type: ignore[union-attr]
                db.execute(delete(NetworkAttachment).where(NetworkAttachment.nic_id == nic_id))
                db.add_all(
                    NetworkAttachment(nic_id=nic_id, network_id=net, channel=ch)
                    for ch, net in the_plan.attachments.items()
                )
        return True
