"""Fast provisioning: the node lifecycle between the FPBL agent, the provisioning API and the BMC.

The states and every move between them are `rhaas.states` (one transition table, drawn there); nothing
here assigns a node's state directly.

Every transition is a committed row: a node's state in ``node_provisioning`` and its jobs in
``provision_job`` (with each phase the agent reported). A node is free to claim only while it is ``ready``
(or not under fast provisioning at all), so a returned node goes back to the pool only once its wipe has
been verified. `tick` moves jobs on that need no agent: it sends the NMI of a new return (a BMC call made
outside any transaction, after the job was claimed with a conditional UPDATE, so several API servers can
share the work), falls back to the reboot path when the return FPBL does not check in by its deadline,
and ends timed-out deploys in ERROR. A restarted server resumes from the rows.

This module knows nothing of HTTP; `rhaas.api.routes.provisioning` and `rhaas.api.routes.agent` call it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import re
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rhaas import states
from rhaas.config import ProvisioningSettings
from rhaas.core.access import (
    Caller,
    get_node,
    node_project,
    require_admin,
    require_project_access,
)
from rhaas.core.images import get_image
from rhaas.core.networks import SYNC_PORT
from rhaas.core.nodes import obm_of
from rhaas.db.models import (
    DONE,
    ERROR,
    PENDING,
    Blob,
    Generation,
    Network,
    NetworkingAction,
    Nic,
    Node,
    NodeProvisioning,
    ProvisionJob,
    utcnow,
)
from rhaas.errors import (
    AuthorizationError,
    BadArgumentError,
    BlockedError,
    IllegalStateError,
    NotFoundError,
    ProjectMismatchError,
    RhaasError,
)
from rhaas.states import BOOTING, DEPLOYED, DEPLOYING, FAILED, READY, RETURNING, STATES  # noqa: F401

log = logging.getLogger(__name__)

Event = states.Event
RUNNING = "RUNNING"
DEPLOY, RETURN = "deploy", "return"
FAST, REBOOT = "fast", "reboot"
#: Seconds between two tries of a power cycle that failed (a BMC that did not answer, an upstream error).
RETRY_SECONDS = 5.0
#: The phase whose ``done`` report proves a return's wipe was read back clean.
WIPE_VERIFIED = "verify-wipe"
#: The deploy phase after which the customer's kernel runs: the agent reports it done, then jumps.
KEXEC = "kexec"
#: The last phase of a return: the FPBL with all its memory is up again.
READY_PHASE = "ready"
_AUTH_FAILED = "Agent authentication failed."
MAC_PATTERN = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")


# --- enrolment and agent authentication ------------------------------------------------------------


def _secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _bump_node_generation(db: Session) -> None:
    """Free-node lists are cached per node generation; a state change here changes what is free."""
    db.execute(update(Generation).where(Generation.name == "node").values(value=Generation.value + 1))


def enroll(
    db: Session, caller: Caller, node_name: str, agent_url: str, settings: ProvisioningSettings
) -> dict[str, str]:
    """Put a node under fast provisioning (admin): a new agent secret, state ``booting``.

    Returns the kernel command-line words that tell the FPBL agent where to check in and as whom; the
    secret is shown only here (it is stored hashed). Enrolling again rotates the secret. With a
    provisioning network configured, the node's NIC is put on it (by `tick`, through the networking
    worker); with a boot URL, `tick` then boots the node from the network (boot device PXE, one power
    cycle), and each network boot's iPXE script (`boot_script`) carries a fresh secret.
    """
    require_admin(caller)
    node = get_node(db, node_name)
    if node.project_id is not None:
        raise BlockedError(f"Node {node_name} is in a project; only a free node can be enrolled.")
    if not agent_url.startswith(("http://", "https://")) or any(c.isspace() for c in agent_url):
        raise BadArgumentError(f"agent_url {agent_url[:100]!r} is not an http(s) URL.")
    vlan = nic = None
    if settings.network is not None:
        network = db.scalar(select(Network).where(Network.label == settings.network))
        if network is None:
            raise NotFoundError(f"The provisioning network {settings.network} does not exist.")
        found = next((n for n in node.nics if n.label == settings.nic), None)
        if found is None or found.port is None:
            raise BadArgumentError(
                f"Node {node_name} has no NIC {settings.nic} on a switch port for the provisioning network."
            )
        vlan, nic = network.network_id, found.label
    secret = secrets.token_urlsafe(32)
    row = db.get(NodeProvisioning, node.id)
    if row is None:
        row = NodeProvisioning(node_id=node.id, secret_sha256="")
        db.add(row)
    elif not states.allows(row.state, Event.ENROL):
        raise BlockedError(f"Node {node_name} is {row.state}; enrol it again once it is ready.")
    states.transition(row, Event.ENROL)
    row.secret_sha256, row.boot_id = _secret_hash(secret), None
    row.vlan, row.nic, row.port_dirty = vlan, nic, vlan is not None
    row.boot_pending = settings.boot_url is not None
    _bump_node_generation(db)
    return {"cmdline": f"rhaas.agent={agent_url} rhaas.node={node.label} rhaas.secret={secret}"}


def _hand_over(row: NodeProvisioning) -> None:
    """The NIC changes hands (FPBL ↔ the project's networks): `tick` tells the switch."""
    if row.vlan is not None:
        row.port_dirty = True


def holds_port(row: NodeProvisioning | None, nic_label: str) -> str | None:
    """The provisioning VLAN NIC ``nic_label`` carries instead of its project's networks, or None.

    The FPBL owns the node in every state but ``deployed``: while it boots, waits, downloads and wipes,
    the NIC is on the provisioning network whatever the project connected (those attachments are
    recorded, and reach the switch once the customer's OS is up)."""
    if row is None or row.vlan is None or row.nic != nic_label or row.state == DEPLOYED:
        return None
    return row.vlan


#: The script a network boot gets when the FPBL should not run: iPXE exits, the firmware boots the disk.
EXIT_SCRIPT = "#!ipxe\necho rhaas: not booting the FPBL: {why}\nexit\n"


def boot_script(db: Session, mac: str, base_url: str, agent_url: str, fpbl_cmdline: str) -> str:
    """The iPXE script for the network boot of the node with NIC ``mac``: the FPBL with a fresh secret.

    Each network boot gets its own secret (the previous one stops working), so the script is worth
    something only to the FPBL it boots. A deployed node (the customer rebooting their OS) or a node not
    under fast provisioning gets a script that exits, and its firmware boots the next device. The
    address comes from the DHCP lease iPXE holds (``${ip}``, ``${netmask}``, ``${gateway}``).
    """
    if not MAC_PATTERN.fullmatch(mac):
        raise BadArgumentError(f"{mac[:40]!r} is not a MAC address (aa:bb:cc:dd:ee:ff).")
    # NICs are registered as HIL takes them (aa:bb:…, AA-BB-…, aabb…); iPXE says aa:bb:cc:dd:ee:ff.
    digits = func.lower(func.replace(func.replace(Nic.macaddr, ":", ""), "-", ""))
    nic = db.scalar(select(Nic).where(digits == mac.replace(":", "").lower()))
    if nic is None:
        raise NotFoundError(f"No node has a NIC with MAC address {mac}.")
    row = db.get(NodeProvisioning, nic.node_id)
    if row is None:
        return EXIT_SCRIPT.format(why=f"node {nic.node.label} is not enrolled")
    if row.state == DEPLOYED:
        return EXIT_SCRIPT.format(why=f"node {nic.node.label} runs its customer's OS")
    secret = secrets.token_urlsafe(32)
    row.secret_sha256, row.boot_id = _secret_hash(secret), None
    words = f"rhaas.agent={agent_url} rhaas.node={nic.node.label} rhaas.secret={secret}"
    net = "rhaas.ip=${ip} rhaas.netmask=${netmask} rhaas.gw=${gateway}"
    return (
        f"#!ipxe\nkernel {base_url}/boot/v1/fpbl/vmlinuz {fpbl_cmdline} {words} {net}\n"
        f"initrd {base_url}/boot/v1/fpbl/initrd\nboot\n"
    )


def agent_row(db: Session, node_name: str, authorization: str | None) -> NodeProvisioning:
    """The provisioning row of the agent calling as ``node_name``; AuthorizationError for anything else.

    Unknown nodes, nodes not enrolled and wrong secrets all get the same answer.
    """
    scheme, _, secret = (authorization or "").partition(" ")
    node = db.scalar(select(Node).where(Node.label == node_name))
    row = db.get(NodeProvisioning, node.id) if node is not None else None
    if scheme.lower() != "bearer" or row is None:
        raise AuthorizationError(_AUTH_FAILED)
    if not hmac.compare_digest(row.secret_sha256, _secret_hash(secret.strip())):
        raise AuthorizationError(_AUTH_FAILED)
    return row


# --- jobs ------------------------------------------------------------------------------------------


def _stamp(job: ProvisionJob, phase: str, state: str, detail: str = "", at: float | None = None) -> None:
    job.phases = [*job.phases, {"phase": phase, "state": state, "at": at or time.time(), "detail": detail}]


def _open_job(
    db: Session, node: Node, kind: str | None = None, for_update: bool = False
) -> ProvisionJob | None:
    """The node's job in progress. ``for_update``: locked until commit, for a caller that stamps it (a
    job's phases are read, appended to and written back: two writers at once would lose one's phase)."""
    query = select(ProvisionJob).where(
        ProvisionJob.node_id == node.id, ProvisionJob.status.in_((PENDING, RUNNING))
    )
    if kind is not None:
        query = query.where(ProvisionJob.kind == kind)
    query = query.order_by(ProvisionJob.id.desc()).limit(1)
    return db.scalars(query.with_for_update() if for_update else query).first()


def _finish(job: ProvisionJob, status: str, error: str | None = None) -> None:
    job.status, job.error, job.finished_at = status, error, utcnow()


def provision(
    db: Session, caller: Caller, node_name: str, image_name: str, settings: ProvisioningSettings
) -> str:
    """Queue a deploy of ``image_name`` on a ready node of the caller's project; returns the job id."""
    node = get_node(db, node_name)
    project = node_project(node)
    if project is None:
        raise ProjectMismatchError(f"Node {node_name} is not in a project.")
    require_project_access(caller, project)
    image = get_image(db, caller, image_name)
    if image.owner is not None and image.owner.label != project:
        raise ProjectMismatchError(f"Image {image_name} belongs to another project than node {node_name}.")
    row = db.get(NodeProvisioning, node.id)
    if row is None:
        raise IllegalStateError(f"Node {node_name} is not under fast provisioning.")
    if not states.allows(row.state, Event.PROVISION):
        raise BlockedError(f"Node {node_name} is {row.state}, not ready: it cannot be provisioned now.")
    job = ProvisionJob(
        uuid=str(uuid.uuid4()),
        node=node,
        kind=DEPLOY,
        image=image,
        project=node.project,
        status=PENDING,
        path=FAST,
        phases=[],
        deadline=utcnow() + dt.timedelta(seconds=settings.deploy_timeout),
    )
    db.add(job)
    states.transition(row, Event.PROVISION)
    _bump_node_generation(db)
    return job.uuid


def start_return(db: Session, node: Node, settings: ProvisioningSettings) -> ProvisionJob | None:
    """Called when a node leaves its project: queue its return (NMI, wipe) unless it is idle already.

    The NMI itself is sent by `tick`, after this transaction commits.
    """
    row = db.get(NodeProvisioning, node.id)
    if row is None or not states.allows(row.state, Event.DETACH):
        return None  # idle already: booting, ready, or returning
    for job in db.scalars(select(ProvisionJob).where(ProvisionJob.node_id == node.id)):
        if job.status in (PENDING, RUNNING):
            _finish(job, ERROR, "Cancelled: the node left its project.")
    timeout = settings.return_timeout if settings.return_path == FAST else settings.reboot_timeout
    job = ProvisionJob(
        uuid=str(uuid.uuid4()),
        node=node,
        kind=RETURN,
        project=node.project,
        status=PENDING,
        path=settings.return_path,
        phases=[],
        deadline=utcnow() + dt.timedelta(seconds=timeout),
    )
    db.add(job)
    states.transition(row, Event.DETACH)
    _hand_over(row)
    _bump_node_generation(db)
    return job


def _blob_ref(blob: Blob | None, base_url: str, node: str) -> dict[str, Any] | None:
    if blob is None:
        return None
    return {
        "url": f"{base_url}/agent/v1/nodes/{node}/blobs/{blob.sha256}",
        "sha256": blob.sha256,
        "size": blob.size,
    }


# --- the agent's calls -----------------------------------------------------------------------------


def checkin(db: Session, row: NodeProvisioning, facts: dict[str, Any]) -> None:
    """The agent says it runs: ``mode`` ready (the full FPBL) or return (the crash kernel after an NMI)."""
    row.checked_in_at = utcnow()
    row.boot_id = str(facts.get("boot_id") or "")[:64] or None
    row.facts = {k: facts[k] for k in ("mode", "kernel", "memory_kb", "disks") if k in facts}
    node = row.node
    job = _open_job(db, node, for_update=True)
    mode = facts.get("mode")
    if job is not None and job.kind == RETURN:
        if mode == "return" or job.status == PENDING:
            job.status = RUNNING
        _stamp(job, "checkin", "done", f"{mode} FPBL checked in")
        if mode == "ready" and _wiped(job):
            _finish(job, DONE)
            states.transition(row, Event.RETURNED)
            _bump_node_generation(db)
        return
    if job is not None and job.kind == DEPLOY and job.status == RUNNING and mode == "ready":
        if _restoring_memory(job):
            # The return FPBL found the image too big for its memory and booted the full FPBL, which
            # is handed the same deploy at its next poll.
            _stamp(job, "checkin", "done", "the full FPBL checked in, with the node's memory")
            return
        # The FPBL booted again, or its agent was restarted, in the middle of a deploy: no kexec happened.
        reported = [p["phase"] for p in job.phases if p["phase"] != "handed-out"]
        where = f" during {reported[-1]}" if reported else ""
        _finish(
            job,
            ERROR,
            f"The FPBL checked in again during the deploy (its agent restarted or the node rebooted{where}):"
            " the customer OS did not start.",
        )
        states.transition(row, Event.DEPLOY_FAILED)
        return
    if mode == "ready" and states.allows(row.state, Event.CHECKIN):
        states.transition(row, Event.CHECKIN)
        _bump_node_generation(db)


def _restoring_memory(job: ProvisionJob) -> bool:
    """Whether the agent's last word on this job was that it boots the full FPBL to restore memory."""
    said = [p for p in job.phases if "progress" not in p]
    return bool(said) and (said[-1]["phase"], said[-1]["state"]) in (("restore-memory", "start"),
                                                                      ("restore-memory", "done"))  # fmt: skip


def _wiped(job: ProvisionJob) -> bool:
    return any(p["phase"] == WIPE_VERIFIED and p["state"] == "done" for p in job.phases)


def work(db: Session, row: NodeProvisioning, base_url: str, settings: ProvisioningSettings) -> dict[str, Any]:
    """What the agent should do next: ``deploy``, ``wipe`` or ``wait``."""
    node = row.node
    job = _open_job(db, node, for_update=True)
    wait = {"action": "wait", "poll_after": settings.agent_poll_seconds}
    if job is None:
        return wait
    if job.kind == RETURN:
        if _wiped(job):
            return wait  # the agent restores memory and boots the full FPBL, which checks in
        job.status = RUNNING
        return {
            "action": "wipe", "job": job.uuid, "policy": settings.wipe_policy,
            "scrub_memory": settings.memory_scrub,
        }  # fmt: skip
    image = job.image
    if image is None:
        _finish(job, ERROR, "The image was deleted before the deploy started.")
        states.transition(row, Event.DEPLOY_FAILED)
        return wait
    if job.status == PENDING:
        job.status = RUNNING
        _stamp(job, "handed-out", "done", f"image {image.label}")
    return {
        "action": "deploy",
        "job": job.uuid,
        "kernel": _blob_ref(image.kernel, base_url, node.label),
        "initrd": _blob_ref(image.initrd, base_url, node.label),
        "disk": _blob_ref(image.disk, base_url, node.label),
        "cmdline": image.cmdline,
    }


def report(db: Session, row: NodeProvisioning, body: dict[str, Any]) -> None:
    """Record a phase the agent reports.

    A deploy ends with ``kexec`` done (the agent's last words before it jumps into the customer's
    kernel): the node is ``deployed``. A return ends with ``ready`` done after a verified wipe (or with
    the full FPBL's check-in). Those final reports may arrive again for an ended job; they change nothing.
    """
    query = select(ProvisionJob).where(ProvisionJob.uuid == str(body["job"]))
    job = db.scalar(query.with_for_update())  # see _open_job: the ticker may stamp it at the same time
    if job is None or job.node_id != row.node_id:
        raise NotFoundError(f"Job {str(body['job'])[:40]} does not exist for node {row.node.label}.")
    phase, state = str(body["phase"]), str(body["state"])
    if job.status == DONE and phase in (KEXEC, READY_PHASE) and state == "done":
        return
    if job.status not in (PENDING, RUNNING):
        raise IllegalStateError(f"Job {job.uuid} has ended ({job.status}).")
    _stamp(job, phase, state, str(body.get("detail", ""))[:2000], float(body["at"]))
    if "progress" in body:
        job.phases[-1]["progress"] = body["progress"]
    if state == "error":
        _finish(job, ERROR, f"{phase}: {str(body.get('detail', ''))[:500]}")
        if job.kind == DEPLOY:
            states.transition(row, Event.DEPLOY_FAILED)
        return
    if job.kind == DEPLOY and phase == KEXEC and state == "done":
        _finish(job, DONE)
        states.transition(row, Event.KEXEC)
        _hand_over(row)
    elif job.kind == RETURN and phase == READY_PHASE and state == "done" and _wiped(job):
        _finish(job, DONE)
        states.transition(row, Event.RETURNED)
        _bump_node_generation(db)


# --- what needs no agent: NMIs, deadlines, fallbacks -----------------------------------------------


def tick(sessions: Any, settings: ProvisioningSettings, wake_worker: Callable[[], None] | None = None) -> int:
    """One pass: NICs that changed hands, network boots, open jobs; returns how many it moved. Safe to
    run in several processes."""
    moved = 0
    with sessions() as db:
        dirty = db.scalars(select(NodeProvisioning.node_id).where(NodeProvisioning.port_dirty)).all()
        db.rollback()
    synced = sum(_sync_port(sessions, node_id) for node_id in dirty)
    if synced and wake_worker is not None:
        wake_worker()
    moved += synced
    with sessions() as db:
        due = (NodeProvisioning.boot_pending, ~NodeProvisioning.port_dirty)
        boots = db.scalars(select(NodeProvisioning.node_id).where(*due)).all()
        db.rollback()
    for node_id in boots:
        moved += _network_boot(sessions, node_id)
    with sessions() as db:
        pending = db.scalars(
            select(ProvisionJob.id).where(ProvisionJob.kind == RETURN, ProvisionJob.status == PENDING)
        ).all()
        expired = db.scalars(
            select(ProvisionJob.id).where(
                ProvisionJob.status.in_((PENDING, RUNNING)), ProvisionJob.deadline < utcnow()
            )
        ).all()
        db.rollback()
    for job_id in pending:
        moved += _start_return(sessions, job_id, settings)
    for job_id in expired:
        moved += _expire(sessions, job_id, settings)
    return moved


def _held_nic(row: NodeProvisioning) -> Nic | None:
    return next((n for n in row.node.nics if n.label == row.nic and n.port is not None), None)


def _port_busy(db: Session, row: NodeProvisioning | None) -> bool:
    """Whether the switch may not yet carry what the node's state says (a sync is due or under way)."""
    if row is None or row.vlan is None:
        return False
    if row.port_dirty:
        return True
    nic = _held_nic(row)
    return nic is not None and _action_pending(db, nic)


def _action_pending(db: Session, nic: Nic) -> bool:
    pending = exists().where(NetworkingAction.nic_id == nic.id, NetworkingAction.status == PENDING)
    return bool(db.scalar(select(pending)))


def _sync_port(sessions: Any, node_id: int) -> int:
    """Queue the networking action that programs a NIC which changed hands, once nothing else is pending
    on it (an action queued earlier may have been planned before the change)."""
    with sessions() as db:
        row = db.get(NodeProvisioning, node_id)
        if row is None or not row.port_dirty:
            return 0
        nic = _held_nic(row)
        if nic is not None and _action_pending(db, nic):
            return 0  # still dirty: tried again at the next tick
        row.port_dirty = False
        if nic is not None:
            db.add(NetworkingAction(uuid=str(uuid.uuid4()), type=SYNC_PORT, nic=nic, channel=""))
        try:
            db.commit()
        except IntegrityError:  # another server queued an action on this NIC meanwhile: next tick
            db.rollback()
            return 0
    return 1


def _network_boot(sessions: Any, node_id: int) -> int:
    """Boot an enrolled node into the FPBL from the network: boot device PXE, one power cycle (BMC calls
    outside any transaction, after the boot was claimed with a conditional UPDATE)."""
    with sessions() as db:
        row = db.get(NodeProvisioning, node_id)
        if row is None or not row.boot_pending or _port_busy(db, row):
            return 0
        claimed = db.execute(
            update(NodeProvisioning)
            .where(NodeProvisioning.node_id == node_id, NodeProvisioning.boot_pending)
            .values(boot_pending=False)
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return 0
        driver, label = obm_of(row.node), row.node.label
        db.commit()
    try:
        _boot_from_network(driver)
        log.info("node %s: network boot into the FPBL (power cycled through %s)", label, driver.name)
    except RhaasError as exc:  # a BMC's DriverError, or an upstream's error on a recursive instance
        with sessions() as db:
            row = db.get(NodeProvisioning, node_id)
            if row is not None and states.allows(row.state, Event.BOOT_FAILED):
                states.transition(row, Event.BOOT_FAILED)
                row.facts = {**row.facts, "error": f"network boot failed: {exc}"[:500]}
                db.commit()
    return 1


def _claim(db: Session, job_id: int, was_status: str, was_path: str, **values: Any) -> bool:
    """Move a job on only if it is still as read (another server may have moved it meanwhile)."""
    claimed = db.execute(
        update(ProvisionJob)
        .where(ProvisionJob.id == job_id, ProvisionJob.status == was_status, ProvisionJob.path == was_path)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return claimed.rowcount == 1  # type: ignore[attr-defined]


def _start_return(sessions: Any, job_id: int, settings: ProvisioningSettings) -> int:
    """Claim a new return and set it going: an NMI (fast path), or a power cycle (reboot path). A
    power cycle that failed is tried again every `RETRY_SECONDS` until the job's deadline."""
    with sessions() as db:
        job = db.get(ProvisionJob, job_id)
        if job is None or _port_busy(db, db.get(NodeProvisioning, job.node_id)):
            return 0  # the NIC goes back to the provisioning network first: the return FPBL needs it
        last = job.phases[-1] if job.phases else None
        if last and last["state"] == "error" and last["at"] > time.time() - RETRY_SECONDS:
            return 0
        if not _claim(db, job_id, PENDING, job.path, status=RUNNING):
            return 0
        path, driver = job.path, obm_of(job.node)
        db.commit()
    if path == REBOOT:
        _power_cycle(sessions, job_id, driver)
        return 1
    try:
        driver.send_nmi()
    except RhaasError as exc:  # a BMC's DriverError, or an upstream's error on a recursive instance
        # No NMI, no fast return: take the reboot path now rather than at the deadline.
        _record(sessions, job_id, "nmi", "error", f"NMI failed: {exc}")
        with sessions() as db:
            deadline = utcnow() + dt.timedelta(seconds=settings.reboot_timeout)
            if not _claim(db, job_id, RUNNING, FAST, path=REBOOT, deadline=deadline):
                return 1
            job = db.get(ProvisionJob, job_id)
            assert job is not None
            _stamp(job, "fallback", "start", "the NMI could not be sent: power cycle, network boot")
            db.commit()
        _power_cycle(sessions, job_id, driver)
        return 1
    _record(sessions, job_id, "nmi", "done", f"NMI sent through {driver.name} at {driver.address}")
    return 1


def _record(sessions: Any, job_id: int, phase: str, outcome: str, detail: str) -> None:
    with sessions() as db:
        job = db.get(ProvisionJob, job_id, with_for_update=True)  # see _open_job
        assert job is not None
        _stamp(job, phase, outcome, detail)
        db.commit()


def _boot_from_network(driver: Any) -> None:
    """Boot device PXE, then a power cycle: the node comes up in the FPBL (BMC calls: no transaction)."""
    driver.set_bootdev("pxe")
    driver.power_cycle(force=True)


def _power_cycle(sessions: Any, job_id: int, driver: Any) -> None:
    """The reboot path: network boot next, then power cycle (outside any transaction), and record it. If
    the BMC (or the upstream) failed, the job goes back to pending: the next tick tries again."""
    try:
        _boot_from_network(driver)
    except RhaasError as exc:  # a BMC's DriverError, or an upstream's error on a recursive instance
        with sessions() as db:
            job = db.get(ProvisionJob, job_id, with_for_update=True)  # see _open_job
            assert job is not None
            _stamp(
                job, "power-cycle", "error", f"power cycle failed (tried again in {RETRY_SECONDS:g} s): {exc}"
            )
            _claim(db, job_id, RUNNING, REBOOT, status=PENDING)
            db.commit()
        return
    _record(
        sessions, job_id, "power-cycle", "done", f"power cycled through {driver.name} at {driver.address}"
    )


def _expire(sessions: Any, job_id: int, settings: ProvisioningSettings) -> int:
    with sessions() as db:
        job = db.get(ProvisionJob, job_id)
        if job is None or job.status not in (PENDING, RUNNING) or job.deadline is None:
            return 0
        if job.deadline >= utcnow():
            return 0
        row = db.get(NodeProvisioning, job.node_id)
        if job.kind == DEPLOY or job.path == REBOOT:
            what = "deploy" if job.kind == DEPLOY else "return by reboot"
            _finish(job, ERROR, f"The {what} did not finish within its deadline.")
            if row is not None:
                states.transition(row, Event.DEADLINE)
            db.commit()
            return 1
        # The return FPBL did not check in after the NMI: the customer may have unloaded the crash kernel.
        deadline = utcnow() + dt.timedelta(seconds=settings.reboot_timeout)
        if not _claim(db, job_id, job.status, FAST, path=REBOOT, status=RUNNING, deadline=deadline):
            return 0
        db.refresh(job)
        _stamp(job, "fallback", "start", "no return FPBL by the deadline: power cycle, network boot")
        driver = obm_of(job.node)
        db.commit()
    _power_cycle(sessions, job_id, driver)
    return 1


# --- views -----------------------------------------------------------------------------------------


def job_view(job: ProvisionJob) -> dict[str, Any]:
    def iso(t: dt.datetime | None) -> str | None:
        return t.isoformat() + "Z" if t is not None else None

    return {
        "id": job.uuid,
        "node": job.node.label,
        "kind": job.kind,
        "image": job.image.label if job.image else None,
        "status": job.status,
        "path": job.path,
        "phases": job.phases,
        "error": job.error,
        "created_at": iso(job.created_at),
        "finished_at": iso(job.finished_at),
    }


def show_job(db: Session, caller: Caller, job_id: str) -> dict[str, Any]:
    job = db.scalar(select(ProvisionJob).where(ProvisionJob.uuid == job_id))
    if job is None:
        raise NotFoundError(f"Provision job {job_id[:40]} does not exist.")
    project = job.project.label if job.project else None
    if not caller.is_admin and (project is None or project not in caller.projects):
        raise AuthorizationError("You do not have access to the project of this job.")
    return job_view(job)


def show_node_provisioning(db: Session, caller: Caller, node_name: str) -> dict[str, Any]:
    """The node's provisioning state and history. Members see the jobs of their own project only."""
    node = get_node(db, node_name)
    project = node_project(node)
    require_project_access(caller, project)
    row = db.get(NodeProvisioning, node.id)
    if row is None:
        raise IllegalStateError(f"Node {node_name} is not under fast provisioning.")
    query = select(ProvisionJob).where(ProvisionJob.node_id == node.id).order_by(ProvisionJob.id)
    jobs = [
        job_view(j)
        for j in db.scalars(query)
        if caller.is_admin or (j.project and j.project.label == project)
    ]
    return {
        "node": node.label,
        "state": row.state,
        "checked_in_at": row.checked_in_at.isoformat() + "Z" if row.checked_in_at else None,
        "facts": row.facts,
        "jobs": jobs,
    }


def deploy_blobs(db: Session, row: NodeProvisioning) -> set[str]:
    """The digests the node's agent may download: those of its open deploy's image, and no others."""
    job = _open_job(db, row.node, DEPLOY)
    if job is None or job.image is None:
        return set()
    image = job.image
    return {b.sha256 for b in (image.kernel, image.initrd, image.disk) if b is not None}
