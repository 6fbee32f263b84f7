"""The provisioning clock: a thread that moves provisioning jobs on that need no agent.

Each pass (`tick`) programs the NIC of a node that changed hands (FPBL ↔ customer) through a networking
action, boots newly enrolled nodes from the network, sends the NMI of each new return (or power cycles it, on
the reboot path or when its BMC can send no NMI at all, as behind a HIL upstream), and acts on deadlines: the
reboot path for a fast return whose FPBL did not check in, the end of a deploy or a return by reboot that did
not finish. The rules (what is due, what a deadline means) are `rhaas.core.provisioning.clock`'s; this module
holds the transactions and the BMC calls, made outside any transaction after the job was claimed with a
conditional UPDATE, so a ticker in every API server is safe; a restarted server picks up where the rows say.

A node's BMC driver comes from ``obm_for`` (by default `rhaas.core.nodes.obm_of`), the one way this
module reaches a BMC. It must not decide a node's next state itself: `rhaas.states` does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import IntegrityError

from rhaas.config import ProvisioningSettings
from rhaas.core.nodes import obm_of
from rhaas.core.provisioning import clock
from rhaas.core.provisioning.jobs import FAST, REBOOT, RUNNING, stamp
from rhaas.db.models import PENDING, Node, NodeProvisioning, ProvisionJob
from rhaas.drivers.obm.base import OBMDriver
from rhaas.errors import RhaasError
from rhaas.worker.periodic import Periodic

log = logging.getLogger(__name__)

#: How the clock gets a node's BMC driver.
ObmFor = Callable[[Node], OBMDriver]


class ProvisioningTicker(Periodic):
    """The provisioning clock's thread: a `tick` every ``tick_seconds``, or at once when woken (a return
    was just queued)."""

    name = "provisioning-ticker"

    def __init__(
        self,
        sessions: Any,
        settings: ProvisioningSettings,
        wake_worker: Callable[[], None] | None = None,
        obm_for: ObmFor = obm_of,
    ) -> None:
        super().__init__()
        self.sessions, self.settings, self.wake_worker = sessions, settings, wake_worker
        self.obm_for = obm_for

    @property
    def interval(self) -> float:
        return self.settings.tick_seconds

    def pass_once(self) -> int:
        return tick(self.sessions, self.settings, self.wake_worker, self.obm_for)


def tick(
    sessions: Any,
    settings: ProvisioningSettings,
    wake_worker: Callable[[], None] | None = None,
    obm_for: ObmFor = obm_of,
) -> int:
    """One pass: NICs that changed hands, network boots, open jobs; returns how many it moved. Safe to
    run in several processes."""
    moved = 0
    with sessions() as db:
        dirty = clock.dirty_ports(db)
        db.rollback()
    synced = sum(_sync_port(sessions, node_id) for node_id in dirty)
    if synced and wake_worker is not None:
        wake_worker()
    moved += synced
    with sessions() as db:
        boots = clock.boots_due(db)
        db.rollback()
    for node_id in boots:
        moved += _network_boot(sessions, node_id, obm_for)
    with sessions() as db:
        pending = clock.returns_to_start(db)
        expired = clock.expired_jobs(db)
        db.rollback()
    for job_id in pending:
        moved += _start_return(sessions, job_id, settings, obm_for)
    for job_id in expired:
        moved += _expire(sessions, job_id, settings, obm_for)
    return moved


def _sync_port(sessions: Any, node_id: int) -> int:
    with sessions() as db:
        row = db.get(NodeProvisioning, node_id)
        if row is None or not clock.queue_port_sync(db, row):
            return 0
        try:
            db.commit()
        except IntegrityError:  # another server queued an action on this NIC meanwhile: next tick
            db.rollback()
            return 0
    return 1


def _network_boot(sessions: Any, node_id: int, obm_for: ObmFor) -> int:
    """Boot an enrolled node into the FPBL from the network: boot device PXE, one power cycle (BMC calls
    outside any transaction, after the boot was claimed)."""
    with sessions() as db:
        row = db.get(NodeProvisioning, node_id)
        if row is None or not clock.claim_boot(db, row):
            return 0
        driver, label = obm_for(row.node), row.node.label
        db.commit()
    try:
        _boot_from_network(driver)
        log.info("node %s: network boot into the FPBL (power cycled through %s)", label, driver.name)
    except RhaasError as exc:  # a BMC's DriverError, or an upstream's error on a recursive instance
        with sessions() as db:
            row = db.get(NodeProvisioning, node_id)
            if row is not None and clock.boot_failed(row, f"network boot failed: {exc}"):
                db.commit()
    return 1


def _start_return(sessions: Any, job_id: int, settings: ProvisioningSettings, obm_for: ObmFor) -> int:
    """Claim a new return and set it going: an NMI (fast path), or a power cycle (reboot path). A
    power cycle that failed is tried again every `clock.RETRY_SECONDS` until the job's deadline; an NMI
    that failed, `clock.NMI_TRIES` times in all, then the reboot path."""
    with sessions() as db:
        job = db.get(ProvisionJob, job_id)
        if job is None or not clock.return_may_start(db, job):
            return 0
        if not clock.claim(db, job_id, PENDING, job.path, status=RUNNING):
            return 0
        power_cycle, driver = clock.power_cycles_first(job), obm_for(job.node)
        db.commit()
    if power_cycle:
        _power_cycle(sessions, job_id, driver)
        return 1
    no_nmi = _nmi_unavailable(driver)
    if no_nmi is not None:
        # An upstream that cannot send NMIs at all (HIL and its obmd): the reboot path from the start.
        with sessions() as db:
            why = f"no NMI: {no_nmi}: power cycle, network boot"
            if clock.fall_back(db, job_id, RUNNING, settings, why, phase="reboot-path") is None:
                return 1
            db.commit()
        _power_cycle(sessions, job_id, driver)
        return 1
    try:
        driver.send_nmi()
    except RhaasError as exc:  # a BMC's DriverError, or an upstream's error on a recursive instance
        with sessions() as db:
            job = db.get(ProvisionJob, job_id, with_for_update=True)  # see jobs.open_job
            assert job is not None
            stamp(job, "nmi", "error", f"NMI failed: {exc}")
            then = clock.after_failed_nmi(job)
            if then == clock.NMI_AGAIN:  # a BMC that missed one call (a busy machine, a lost UDP packet)
                clock.claim(db, job_id, RUNNING, FAST, status=PENDING)
            db.commit()
        if then != clock.NMI_GIVE_UP:
            return 1
        # No NMI, no fast return: take the reboot path now rather than at the deadline.
        with sessions() as db:
            why = f"the NMI could not be sent ({clock.NMI_TRIES} tries): power cycle, network boot"
            if clock.fall_back(db, job_id, RUNNING, settings, why) is None:
                return 1
            db.commit()
        _power_cycle(sessions, job_id, driver)
        return 1
    record(sessions, job_id, "nmi", "done", f"NMI sent through {driver.name} at {driver.address}")
    return 1


def _nmi_unavailable(driver: OBMDriver) -> str | None:
    """Why the driver can never send an NMI, or None; an upstream that cannot say now (unreachable)
    gets the NMI tried, whose failure falls back as usual."""
    try:
        return driver.nmi_unavailable()
    except RhaasError as exc:
        log.info("could not learn whether %s at %s has NMIs: %s", driver.name, driver.address, exc)
        return None


def record(sessions: Any, job_id: int, phase: str, outcome: str, detail: str) -> None:
    """Stamp a phase on a job in a transaction of its own (the job locked: see `jobs.open_job`)."""
    with sessions() as db:
        job = db.get(ProvisionJob, job_id, with_for_update=True)
        assert job is not None
        stamp(job, phase, outcome, detail)
        db.commit()


def _boot_from_network(driver: OBMDriver) -> None:
    """Boot device PXE, then a power cycle: the node comes up in the FPBL (BMC calls: no transaction)."""
    driver.set_bootdev("pxe")
    driver.power_cycle(force=True)


def _power_cycle(sessions: Any, job_id: int, driver: OBMDriver) -> None:
    """The reboot path: network boot next, then power cycle (outside any transaction), and record it. If
    the BMC (or the upstream) failed, the job goes back to pending: the next tick tries again."""
    try:
        _boot_from_network(driver)
    except RhaasError as exc:  # a BMC's DriverError, or an upstream's error on a recursive instance
        with sessions() as db:
            job = db.get(ProvisionJob, job_id, with_for_update=True)  # see jobs.open_job
            assert job is not None
            retry = f"tried again in {clock.RETRY_SECONDS:g} s"
            stamp(job, "power-cycle", "error", f"power cycle failed ({retry}): {exc}")
            clock.claim(db, job_id, RUNNING, REBOOT, status=PENDING)
            db.commit()
        return
    record(sessions, job_id, "power-cycle", "done", f"power cycled through {driver.name} at {driver.address}")


def _expire(sessions: Any, job_id: int, settings: ProvisioningSettings, obm_for: ObmFor) -> int:
    with sessions() as db:
        job = db.get(ProvisionJob, job_id)
        if job is None or not clock.past_deadline(job):
            return 0
        if clock.fails_at_deadline(job):
            clock.fail_at_deadline(db, job)
            db.commit()
            return 1
        # The return FPBL did not check in after the NMI: the customer may have unloaded the crash kernel.
        why = (
            "no return FPBL by the deadline (the crash kernel was not armed: a firmware boot during the"
            " lease, such as the customer's own reboot, unloads it): power cycle, network boot"
        )
        fallen = clock.fall_back(db, job_id, job.status, settings, why)
        if fallen is None:
            return 0
        driver = obm_for(fallen.node)
        db.commit()
    _power_cycle(sessions, job_id, driver)
    return 1
