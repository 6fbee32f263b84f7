"""The rules of the provisioning clock: what needs doing without an agent, and what a deadline means.

The worker's ticker (`rhaas.worker.provisioning`) runs these in its own transactions and does the BMC
calls between them. Here: which nodes and jobs are due (a NIC that changed hands, a network boot, a new
return, a deadline passed), claiming one with a conditional UPDATE (so several servers can share the
work), a return's first step (an NMI, or a power cycle on the reboot path), how long a failed power
cycle or NMI waits before the next try (`RETRY_SECONDS`; an NMI has `NMI_TRIES`), and what a missed
deadline does: a deploy or a return by reboot fails its node, a fast return falls back to the reboot
path. Nothing here commits, calls a BMC or a switch, or sleeps.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from rhaas import states
from rhaas.config import ProvisioningSettings
from rhaas.core.networks import SYNC_PORT
from rhaas.core.provisioning.jobs import (
    DEPLOY,
    FAST,
    REBOOT,
    RETURN,
    RUNNING,
    cancel_queued,
    deadline_of,
    finish,
    stamp,
)
from rhaas.db.models import ERROR, PENDING, NetworkingAction, Nic, NodeProvisioning, ProvisionJob, utcnow

#: Seconds between two tries of a power cycle or an NMI that failed (a BMC that did not answer, an
#: upstream error).
RETRY_SECONDS = 5.0
#: How many times a fast return sends its NMI before it takes the reboot path. A second NMI is harmless
#: whichever way the first went: the customer's kernel panics into the return FPBL on the first one it
#: gets, and the return FPBL itself ignores NMIs (it boots without ``unknown_nmi_panic``).
NMI_TRIES = 3


# --- what is due -------------------------------------------------------------------------------------


def dirty_ports(db: Session) -> list[int]:
    """Nodes whose NIC changed hands (FPBL ↔ customer) and whose switch port has not been told yet."""
    return list(db.scalars(select(NodeProvisioning.node_id).where(NodeProvisioning.port_dirty)))


def boots_due(db: Session) -> list[int]:
    """Enrolled nodes to boot into the FPBL from the network, their port already synced."""
    due = (NodeProvisioning.boot_pending, ~NodeProvisioning.port_dirty)
    return list(db.scalars(select(NodeProvisioning.node_id).where(*due)))


def returns_to_start(db: Session) -> list[int]:
    """Returns queued and not yet set going (or set back to pending after a failed power cycle)."""
    query = select(ProvisionJob.id).where(ProvisionJob.kind == RETURN, ProvisionJob.status == PENDING)
    return list(db.scalars(query))


def expired_jobs(db: Session) -> list[int]:
    """Open jobs past their deadline."""
    query = select(ProvisionJob.id).where(
        ProvisionJob.status.in_((PENDING, RUNNING)), ProvisionJob.deadline < utcnow()
    )
    return list(db.scalars(query))


def _held_nic(row: NodeProvisioning) -> Nic | None:
    return next((n for n in row.node.nics if n.label == row.nic and n.port is not None), None)


def _action_pending(db: Session, nic: Nic) -> bool:
    pending = exists().where(NetworkingAction.nic_id == nic.id, NetworkingAction.status == PENDING)
    return bool(db.scalar(select(pending)))


def port_busy(db: Session, row: NodeProvisioning | None) -> bool:
    """Whether the switch may not yet carry what the node's state says (a sync is due or under way)."""
    if row is None or row.vlan is None:
        return False
    if row.port_dirty:
        return True
    nic = _held_nic(row)
    return nic is not None and _action_pending(db, nic)


# --- claims and steps --------------------------------------------------------------------------------


def queue_port_sync(db: Session, row: NodeProvisioning) -> bool:
    """Queue the networking action that programs a NIC which changed hands, once nothing else is pending
    on it (an action queued earlier may have been planned before the change). False: not now (still
    dirty, tried again at the next tick). The caller commits; a unique-constraint error there means
    another server queued an action on this NIC meanwhile."""
    if not row.port_dirty:
        return False
    nic = _held_nic(row)
    if nic is not None and _action_pending(db, nic):
        return False
    row.port_dirty = False
    if nic is not None:
        db.add(NetworkingAction(uuid=str(uuid.uuid4()), type=SYNC_PORT, nic=nic, channel=""))
    return True


def claim_boot(db: Session, row: NodeProvisioning) -> bool:
    """Take the node's pending network boot, if its port is ready and no other server took it."""
    if not row.boot_pending or port_busy(db, row):
        return False
    claimed = db.execute(
        update(NodeProvisioning)
        .where(NodeProvisioning.node_id == row.node_id, NodeProvisioning.boot_pending)
        .values(boot_pending=False)
        .execution_options(synchronize_session=False)
    )
    return claimed.rowcount == 1  # type: ignore[attr-defined]


def boot_failed(row: NodeProvisioning, why: str) -> bool:
    """The BMC refused the network boot: a booting node fails (False: the node had moved on)."""
    if not states.allows(row.state, states.Event.BOOT_FAILED):
        return False
    states.transition(row, states.Event.BOOT_FAILED)
    row.facts = {**row.facts, "error": why[:500]}
    return True


def claim(db: Session, job_id: int, was_status: str, was_path: str, **values: Any) -> bool:
    """Move a job on only if it is still as read (another server may have moved it meanwhile)."""
    claimed = db.execute(
        update(ProvisionJob)
        .where(ProvisionJob.id == job_id, ProvisionJob.status == was_status, ProvisionJob.path == was_path)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return claimed.rowcount == 1  # type: ignore[attr-defined]


def return_may_start(db: Session, job: ProvisionJob) -> bool:
    """Whether a pending return may be set going now: its NIC is back on the provisioning network (the
    return FPBL needs it), and a power cycle or an NMI that failed was not tried within `RETRY_SECONDS`."""
    if port_busy(db, db.get(NodeProvisioning, job.node_id)):
        return False
    last = job.phases[-1] if job.phases else None
    return not (last and last["state"] == "error" and last["at"] > time.time() - RETRY_SECONDS)


#: What a fast return does after an NMI that failed (`after_failed_nmi`).
NMI_ARRIVED, NMI_AGAIN, NMI_GIVE_UP = "arrived", "again", "give-up"


def after_failed_nmi(job: ProvisionJob) -> str:
    """What a fast return does once its NMI failed (that failure already stamped): `NMI_ARRIVED` if the
    return FPBL checked in all the same (an answer lost, the NMI delivered: carry on), `NMI_AGAIN` while
    it has had fewer than `NMI_TRIES` tries, else `NMI_GIVE_UP` (the reboot path)."""
    if any(p["phase"] == "checkin" for p in job.phases):
        return NMI_ARRIVED
    failed = sum(1 for p in job.phases if p["phase"] == "nmi" and p["state"] == "error")
    return NMI_AGAIN if failed < NMI_TRIES else NMI_GIVE_UP


def power_cycles_first(job: ProvisionJob) -> bool:
    """A return's first step: a power cycle on the reboot path, an NMI on the fast one."""
    return job.path == REBOOT


def fall_back(
    db: Session,
    job_id: int,
    was_status: str,
    settings: ProvisioningSettings,
    why: str,
    phase: str = "fallback",
) -> ProvisionJob | None:
    """Put a fast return on the reboot path (power cycle, network boot) with a new deadline, stamping
    ``phase`` with ``why``; None if another server moved the job meanwhile."""
    deadline = deadline_of(RETURN, REBOOT, settings)
    if not claim(db, job_id, was_status, FAST, path=REBOOT, status=RUNNING, deadline=deadline):
        return None
    job = db.get(ProvisionJob, job_id, populate_existing=True)
    assert job is not None
    stamp(job, phase, "start", why)
    return job


# --- deadlines ---------------------------------------------------------------------------------------


def past_deadline(job: ProvisionJob) -> bool:
    return job.status in (PENDING, RUNNING) and job.deadline is not None and job.deadline < utcnow()


def fails_at_deadline(job: ProvisionJob) -> bool:
    """A deploy, or a return already on the reboot path (or back in the FPBL by a reset of its own), has
    nothing left to try at its deadline; a fast return (the customer may have unloaded the crash kernel)
    falls back to the reboot path."""
    return job.kind == DEPLOY or job.path != FAST


def fail_at_deadline(db: Session, job: ProvisionJob) -> None:
    """End a job that missed its deadline, and fail its node."""
    row = db.get(NodeProvisioning, job.node_id)
    what = "deploy" if job.kind == DEPLOY else "return by reboot" if job.path == REBOOT else "return"
    finish(job, ERROR, f"The {what} did not finish within its deadline.")
    if row is not None:
        states.transition(row, states.Event.DEADLINE)
        if job.kind == RETURN:
            cancel_queued(db, row.node, f"The return before this rebuild failed: {job.error}")
