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

An outage of the device strands nothing either. A failed change is tried again as `rhaas.worker.retry`
decides (an upstream that is away: with backoff, within its action timeout, the lease renewed before
each try). Before an action ends in ERROR, the port is read back: a change that failed to answer but was
applied (an upstream whose API stopped while its networking daemon went on) ends DONE, and otherwise the
NIC's attachments are made to say what the port really carries.
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
from collections.abc import Callable
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
    Network,
    NetworkAttachment,
    NetworkingAction,
    NodeProvisioning,
    Switch,
    utcnow,
)
from rhaas.drivers.switch.base import SwitchDriver
from rhaas.errors import DriverError
from rhaas.notify import ACTIONS, Notifier
from rhaas.ports import NATIVE, PortState
from rhaas.worker.retry import ATTEMPTS, Backoff, Retry

__all__ = ["ATTEMPTS", "NetworkWorker", "Plan", "carried", "plan"]

log = logging.getLogger(__name__)


class _Abandoned(Exception):
    """The worker stops, or lost its lease, while it waits to try a change again: it finishes nothing."""


@dataclass(frozen=True)
class Plan:
    """What applying one action means: the port, its desired state, and the resulting attachments."""

    action_id: int
    switch: Switch
    port: str
    state: PortState
    attachments: dict[str, int]  # channel → network row id, after the action
    #: The FPBL holds the port: it carries the provisioning network, not the attachments.
    held: bool = False


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
    attachments = {ch: n.id for ch, n in channels.items()}
    return Plan(action.id, nic.port.switch, nic.port.label, state, attachments, held=held is not None)


def carried(db: Session, state: PortState) -> dict[str, int]:
    """channel → network row id of the networks a port carrying ``state`` is attached to; a VLAN that
    is no network of this instance has none (it is left out)."""
    vlans = {NATIVE: state.native} if state.native is not None else {}
    vlans.update({f"vlan/{vlan}": vlan for vlan in state.tagged})
    rows = db.execute(select(Network.network_id, Network.id).where(Network.network_id.in_(vlans.values())))
    by_vlan = dict(rows.all())
    return {channel: by_vlan[vlan] for channel, vlan in vlans.items() if vlan in by_vlan}


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
        *,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sessions = sessions
        #: The pauses between tries of a change an upstream failed transiently, and the clock they run on.
        self.backoff = backoff or Backoff()
        self.clock = clock
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
        if not self.renew(action_id):
            return False  # finished or taken over while it waited in this worker's queue
        with self.sessions() as db:
            action = db.get(NetworkingAction, action_id)
            if action is None or action.status != PENDING or action.claimed_by != self.worker_id:
                return False
            the_plan = plan(db, action)
        t0 = time.perf_counter()
        actual: PortState | None = None
        if isinstance(the_plan, str):
            error: str | None = the_plan
        else:
            try:
                error = self._program(the_plan)
            except _Abandoned as why:
                log.info("action %d: left for later: %s", action_id, why)
                return False
            if error is not None:
                error, actual = self._read_back(the_plan, error)
        t1 = time.perf_counter()
        finished = self._commit(
            action_id, the_plan, error, actual, time.monotonic() + self.settings.lease_seconds
        )
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
        """Apply the plan to the switch, tried again as `Retry` says; None, or the last error's message.

        The message always names the switch and the port, whatever the driver raised (drivers should
        raise DriverError, but a bug or a library exception it failed to translate must not leave the
        action unfinished). Raises `_Abandoned` if the worker stops or loses the lease between tries."""
        where = f"switch {the_plan.switch.label}, port {the_plan.port}"
        retry: Retry | None = None
        while True:
            transient = False
            try:
                driver = self._driver(the_plan.switch)
                retry = retry or Retry(driver.retry_window, self.backoff, self.clock)
                driver.set_port(the_plan.port, the_plan.state)
                return None
            except DriverError as exc:
                message = str(exc)
                if the_plan.switch.label not in message or the_plan.port not in message:
                    message = f"{where}: {message}"
                transient = exc.transient
            except Exception as exc:
                log.exception("%s: unexpected driver failure", where)
                message = f"{where}: unexpected failure: {type(exc).__name__}: {exc}"
            retry = retry or Retry(0.0, self.backoff, self.clock)
            pause = retry.after_failure(transient)
            if pause is None:
                if retry.window > 0:
                    kind = "still failing" if transient else "refused"
                    message = f"{message} ({kind} after {retry.summary()})"
                log.warning("switch change failed for good: %s", message)
                return message
            log.warning(
                "switch change failed (attempt %d; next in %.1f s): %s", retry.failures, pause, message
            )
            if self._stop.wait(pause):
                raise _Abandoned("the worker is stopping")
            if not self.renew(the_plan.action_id):
                raise _Abandoned("its lease was taken over")

    def _read_back(self, the_plan: Plan, error: str) -> tuple[str | None, PortState | None]:
        """Before an action ends in ERROR: what the port really carries. (None, None) if the change is
        there after all (the action is DONE); else the error and the port's state, or (error, None) if
        the port cannot be read either."""
        where = f"switch {the_plan.switch.label}, port {the_plan.port}"
        try:
            actual = self._driver(the_plan.switch).get_port(the_plan.port)
        except Exception as exc:
            log.warning("%s: cannot read the port back after a failed change: %s", where, exc)
            return f"{error}; the port could not be read back: {exc}", None
        if actual == the_plan.state:
            log.warning("%s: the change reported a failure but is in place: done (%s)", where, error)
            return None, None
        return error, actual

    def _commit(
        self,
        action_id: int,
        the_plan: Plan | str,
        error: str | None,
        actual: PortState | None,
        lease_end: float,
    ) -> bool:
        """`_finish`, retried while the database is unreachable and the lease lasts: the switch has
        been programmed, so the outcome is recorded as soon as the database is back."""
        pause = 0.1
        while True:
            try:
                return self._finish(action_id, the_plan, error, actual)
            except DBAPIError as exc:
                if self._stop.is_set() or time.monotonic() + pause > lease_end:
                    raise
                log.warning("action %d: cannot record its outcome yet (%s); retrying", action_id, exc)
            self._stop.wait(pause)
            pause = min(pause * 2, 1.0)

    def _finish(
        self, action_id: int, the_plan: Plan | str, error: str | None, actual: PortState | None = None
    ) -> bool:
        """Record the outcome. DONE: the NIC's attachments become the plan's. ERROR with ``actual`` (the
        port read back) on a port the FPBL does not hold: they become what the port really carries."""
        with self.sessions() as db, db.begin():
            result = db.execute(
                self._held(action_id).values(
                    status=ERROR if error else DONE, error=error, finished_at=utcnow(), claimed_until=None
                )
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return False  # our lease was taken over; the new holder finishes it
            if not isinstance(the_plan, Plan):
                return True
            if error is None:
                attachments = the_plan.attachments
            elif actual is not None and not the_plan.held:
                attachments = carried(db, actual)
            else:
                return True  # what the port carries is unknown (or the FPBL's): the attachments stay
            nic_id = db.get(NetworkingAction, action_id).nic_id  # type: ignore[union-attr]
            query = select(NetworkAttachment.channel, NetworkAttachment.network_id)
            before = dict(db.execute(query.where(NetworkAttachment.nic_id == nic_id)).all())
            if before == attachments:
                return True
            if error is not None:
                log.warning(
                    "action %d failed; the NIC's attachments now say what its port carries", action_id
                )
            db.execute(delete(NetworkAttachment).where(NetworkAttachment.nic_id == nic_id))
            db.add_all(
                NetworkAttachment(nic_id=nic_id, network_id=net, channel=ch)
                for ch, net in attachments.items()
            )
        return True
