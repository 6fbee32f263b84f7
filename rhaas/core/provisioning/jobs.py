"""Provision jobs: a deploy (an image onto a node) or a return (the node back to ready, wiped).

A job is a ``provision_job`` row: its kind, its path (``fast``: kexec / NMI; ``reboot``: a firmware
boot; ``unexpected-reset``: a fast return the node left by a reset of its own), its status (PENDING →
RUNNING → DONE or ERROR; a rebuild's deploy is QUEUED behind its node's return first), its deadline and
the phases reported so far.
Here: opening one (`provision`, `start_return`), finding the open one, stamping a phase, finishing it,
and how long each kind may take (`timeout_of`). Nothing here sends an NMI or waits for a deadline: the
worker's ticker does, by the rules of `rhaas.core.provisioning.clock`.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from rhaas import states
from rhaas.config import ProvisioningSettings
from rhaas.core.access import Caller, get_node, node_project, require_project_access
from rhaas.core.images import get_image
from rhaas.core.provisioning.enrolment import bump_node_generation, hand_over
from rhaas.db.models import ERROR, PENDING, Node, NodeProvisioning, ProvisionJob, utcnow
from rhaas.errors import BadArgumentError, BlockedError, IllegalStateError, ProjectMismatchError

RUNNING = "RUNNING"
#: A rebuild's deploy, waiting for its node's return (wipe verified) to finish: then PENDING.
QUEUED = "QUEUED"
DEPLOY, RETURN = "deploy", "return"
FAST, REBOOT = "fast", "reboot"
#: The path of a fast return whose node came back to the FPBL without the crash kernel's evidence.
UNEXPECTED_RESET = "unexpected-reset"
#: The phase whose ``done`` report proves a return's wipe was read back clean.
WIPE_VERIFIED = "verify-wipe"
#: The deploy phase after which the customer's kernel runs: the agent reports it done, then jumps.
KEXEC = "kexec"
#: The last phase of a return: the FPBL with all its memory is up again.
READY_PHASE = "ready"


def timeout_of(kind: str, path: str, settings: ProvisioningSettings) -> float:
    """Seconds a job of ``kind`` on ``path`` may take before the ticker acts on it."""
    if kind == DEPLOY:
        return settings.deploy_timeout
    return settings.return_timeout if path == FAST else settings.reboot_timeout


def deadline_of(kind: str, path: str, settings: ProvisioningSettings) -> dt.datetime:
    """The deadline of a job of ``kind`` on ``path`` that starts now."""
    return utcnow() + dt.timedelta(seconds=timeout_of(kind, path, settings))


def stamp(job: ProvisionJob, phase: str, state: str, detail: str = "", at: float | None = None) -> None:
    job.phases = [*job.phases, {"phase": phase, "state": state, "at": at or time.time(), "detail": detail}]


def open_job(
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


def finish(job: ProvisionJob, status: str, error: str | None = None) -> None:
    job.status, job.error, job.finished_at = status, error, utcnow()


def wiped(job: ProvisionJob) -> bool:
    """Whether the agent reported the return's wipe read back clean."""
    return any(p["phase"] == WIPE_VERIFIED and p["state"] == "done" for p in job.phases)


#: What an SSH public key line starts with (OpenSSH's key types, and options-free lines only).
SSH_KEY_TYPES = ("ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-sha2-")


def check_seed(seed: dict[str, Any] | None) -> dict[str, Any] | None:
    """A deploy's first-boot data, checked: SSH public keys one line each, of a known type; text without
    NUL bytes. Returns only what was given (None: nothing). Raises BadArgumentError."""
    if not seed:
        return None
    out = {k: v for k, v in seed.items() if v not in (None, [], "")}
    if "ssh_keys" in out:  # as read from a .pub file: one line, its newline dropped
        out["ssh_keys"] = [key.strip() for key in out["ssh_keys"]]
    for n, key in enumerate(out.get("ssh_keys", [])):
        words = key.strip().split()
        if "\n" in key.strip() or len(words) < 2 or not words[0].startswith(SSH_KEY_TYPES):
            raise BadArgumentError(
                f"ssh_keys[{n}] is not an SSH public key line (TYPE BASE64 [COMMENT], e.g."
                " ssh-ed25519 AAAA…)."
            )
    for name in ("user_data", "network_config", "kernel", "initrd", "cmdline"):
        if "\0" in out.get(name, ""):
            raise BadArgumentError(f"{name} holds a NUL byte.")
    for name in ("kernel", "initrd"):
        if name in out and not out[name].startswith("/"):
            raise BadArgumentError(f"{name} {out[name][:100]!r} is not an absolute path inside the image.")
    return out or None


def provision(
    db: Session, caller: Caller, node_name: str, image_name: str, settings: ProvisioningSettings,
    seed: dict[str, Any] | None = None, group: str | None = None, bump: bool = True,
) -> str:  # fmt: skip
    """Queue a deploy of ``image_name`` on a node of the caller's project; returns the job id.

    A ready node deploys at once. A node that runs an OS already (or whose last job failed) is rebuilt:
    its return (NMI, wipe, verified) starts now, with no firmware boot on the fast path, and the deploy
    waits for it (QUEUED), then starts by itself; the node stays in its project throughout.

    ``seed``: the first-boot data cloud-init finds in the image (SSH keys, user-data, network
    configuration) and overrides of the image's boot entry (see `check_seed`). ``group``: the provision
    group the deploy is part of (`rhaas.core.provisioning.groups`); ``bump=False``: the caller moves the
    node generation itself (once for many nodes)."""
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
    rebuild = states.allows(row.state, states.Event.REBUILD)
    if not rebuild and not states.allows(row.state, states.Event.PROVISION):
        raise BlockedError(
            f"Node {node_name} is {row.state}: it cannot be provisioned now (a node is provisioned when "
            "ready, and rebuilt when deployed or in error)."
        )
    was = row.state
    back = _open_return(db, node, row, settings, states.Event.REBUILD) if rebuild else None
    job = ProvisionJob(
        uuid=str(uuid.uuid4()),
        group_uuid=group,
        node=node,
        kind=DEPLOY,
        image=image,
        project=node.project,
        status=QUEUED if rebuild else PENDING,
        path=FAST,
        phases=[],
        seed=check_seed(seed),
        deadline=None if rebuild else deadline_of(DEPLOY, FAST, settings),
    )
    db.add(job)
    if back is not None:
        stamp(back, "rebuild", "start", f"the node was {was}: returned and wiped first, then deploy "
              f"{job.uuid} of {image_name}")  # fmt: skip
    else:
        states.transition(row, states.Event.PROVISION)
    if bump:
        bump_node_generation(db)
    return job.uuid


def start_queued_deploy(db: Session, row: NodeProvisioning, settings: ProvisioningSettings | None) -> bool:
    """A node's return ended with its wipe verified: start the rebuild's deploy waiting for it, if any
    (its deadline from now; without ``settings``, from its hand-out to the agent)."""
    job = _queued(db, row.node)
    if job is None:
        return False
    job.status = PENDING
    job.deadline = None if settings is None else deadline_of(DEPLOY, FAST, settings)
    states.transition(row, states.Event.PROVISION)
    return True


def cancel_queued(db: Session, node: Node, why: str) -> None:
    """The return a rebuild waits for ended another way (failed, or the node left its project)."""
    job = _queued(db, node)
    if job is not None:
        finish(job, ERROR, why)


def _queued(db: Session, node: Node) -> ProvisionJob | None:
    query = select(ProvisionJob).where(ProvisionJob.node_id == node.id, ProvisionJob.status == QUEUED)
    return db.scalars(query.order_by(ProvisionJob.id.desc()).limit(1)).first()


def start_return(db: Session, node: Node, settings: ProvisioningSettings) -> ProvisionJob | None:
    """Called when a node leaves its project: queue its return (NMI, wipe) unless it is idle already
    (booting, ready, or returning: the states the lifecycle has no ``detach`` from).

    The NMI itself is sent by the worker's ticker, after this transaction commits.
    """
    cancel_queued(db, node, "Cancelled: the node left its project before its rebuild's return ended.")
    row = db.get(NodeProvisioning, node.id)
    if row is None or not states.allows(row.state, states.Event.DETACH):
        return None
    return _open_return(db, node, row, settings, states.Event.DETACH)


def _open_return(
    db: Session, node: Node, row: NodeProvisioning, settings: ProvisioningSettings, event: states.Event
) -> ProvisionJob:
    why = "the node left its project" if event == states.Event.DETACH else "the node is rebuilt"
    for job in db.scalars(select(ProvisionJob).where(ProvisionJob.node_id == node.id)):
        if job.status in (PENDING, RUNNING):
            finish(job, ERROR, f"Cancelled: {why}.")
    job = ProvisionJob(
        uuid=str(uuid.uuid4()),
        node=node,
        kind=RETURN,
        project=node.project,
        status=PENDING,
        path=settings.return_path,
        phases=[],
        deadline=deadline_of(RETURN, settings.return_path, settings),
    )
    db.add(job)
    states.transition(row, event)
    hand_over(row)
    bump_node_generation(db)
    return job
