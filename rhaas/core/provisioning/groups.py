"""Provision groups: one fleet-sized request deploying an image on many nodes, and its progress.

A group is the set of deploy jobs one request started (``provision_job.group_uuid``). The request is all
or nothing: every node is checked and queued in one transaction, and the first node that cannot be
provisioned (unknown, not in the project, not ready, the image unknown to the project...) fails the whole
request, with nothing started. A group's nodes are all in one project, whose members (and admins) see it.

Its view aggregates the jobs: how many are done, in flight, failed and queued, and the slowest nodes
still at work (their last phase and how long they have taken), for a customer waiting on hundreds.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from rhaas.config import ProvisioningSettings
from rhaas.core.access import Caller, get_node, node_project
from rhaas.core.provisioning.enrolment import bump_node_generation
from rhaas.core.provisioning.jobs import DEPLOY, QUEUED, RETURN, RUNNING, open_job, provision
from rhaas.db.models import ERROR, PENDING, ProvisionJob, utcnow
from rhaas.errors import AuthorizationError, BadArgumentError, NotFoundError, ProjectMismatchError, RhaasError

DONE = "DONE"
#: How many of the slowest nodes a group's view names.
SLOWEST = 5


def provision_group(
    db: Session, caller: Caller, nodes: list[str], image_name: str, settings: ProvisioningSettings,
    seed: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Queue a deploy of ``image_name`` on every one of ``nodes`` (see `provision`), as one group; returns
    ``{"group_id", "jobs": {node: job id}}``. Raises the first node's error, naming the node: the caller's
    transaction is then rolled back and nothing starts."""
    if not nodes:
        raise BadArgumentError("No nodes given.")
    seen: set[str] = set()
    for name in nodes:
        if name in seen:
            raise BadArgumentError(f"Node {name[:100]} is named twice.")
        seen.add(name)
    projects: dict[str, str] = {}
    for name in nodes:
        project = node_project(get_node(db, name))
        if project is None:
            continue  # provision() says so, in its turn
        if not caller.may_access(project):
            raise AuthorizationError(f"Node {name}: you do not have access to the project that owns it.")
        projects.setdefault(project, name)
    if len(projects) > 1:
        (p1, n1), (p2, n2) = list(projects.items())[:2]
        raise ProjectMismatchError(
            f"The nodes of one request must be in one project: {n1} is in {p1}, {n2} in {p2}."
        )
    group = str(uuid.uuid4())
    jobs: dict[str, str] = {}
    for name in nodes:
        try:
            jobs[name] = provision(db, caller, name, image_name, settings, seed, group=group, bump=False)
        except RhaasError as exc:
            if name in exc.msg:
                raise
            raise type(exc)(f"Node {name}: {exc.msg}", transient=exc.transient) from None
    bump_node_generation(db)  # once: the free-node lists change with the whole transaction
    return {"group_id": group, "jobs": jobs}


def _seconds(start: dt.datetime | None, end: dt.datetime) -> float:
    return round((end - start).total_seconds(), 1) if start is not None else 0.0


def _member(job: ProvisionJob, db: Session, now: dt.datetime) -> dict[str, Any]:
    """One node of a group: its deploy's status and last phase, how long it has taken so far (or took),
    and, while it runs, how long since its last reported event (``in_phase``: since the request, if it
    has reported none). A rebuild's deploy queued behind its node's return shows the return's phase."""
    phases = job.phases
    if job.status == QUEUED:
        back = open_job(db, job.node, RETURN)
        phases = back.phases if back is not None else []
    last = phases[-1] if phases else {}
    elapsed = _seconds(job.created_at, job.finished_at or now)
    in_phase = None
    if job.finished_at is None:
        in_phase = round(max(0.0, time.time() - float(last["at"])), 1) if last else elapsed
    return {
        "node": job.node.label,
        "job": job.uuid,
        "status": job.status,
        "path": job.path,
        "phase": (f"return: {last['phase']}" if job.status == QUEUED else last["phase"]) if last else None,
        "phase_state": last.get("state"),
        "progress": last.get("progress"),
        "elapsed": elapsed,
        "in_phase": in_phase,
        "error": job.error,
    }


def _bucket(member: dict[str, Any]) -> str:
    status = member["status"]
    if status == DONE:
        return "done"
    if status == ERROR:
        return "failed"
    if status == RUNNING or (status == PENDING and member["phase"]):
        return "in_flight"
    return "queued"


def show_group(db: Session, caller: Caller, group_id: str) -> dict[str, Any]:
    """A group's progress: ``{"id", "project", "image", "status", "created_at", "nodes", "counts",
    "slowest", "jobs"}``. ``status`` is RUNNING until every deploy has ended, then DONE, or ERROR if any
    failed. ``slowest`` lists the nodes still at work that have been longest in their current phase (the
    deploys started together: those are the ones holding the fleet up); once all have ended, the ones
    that took longest."""
    query = select(ProvisionJob).where(ProvisionJob.group_uuid == group_id, ProvisionJob.kind == DEPLOY)
    loads = [selectinload(getattr(ProvisionJob, name)) for name in ("node", "image", "project")]
    jobs = list(db.scalars(query.options(*loads).order_by(ProvisionJob.id)))
    if not jobs:
        raise NotFoundError(f"Provision group {group_id[:40]} does not exist.")
    project = jobs[0].project.label if jobs[0].project else None
    if not caller.is_admin and (project is None or project not in caller.projects):
        raise AuthorizationError("You do not have access to the project of this provision group.")
    now = utcnow()
    members = [_member(job, db, now) for job in jobs]
    counts = {"done": 0, "in_flight": 0, "failed": 0, "queued": 0}
    for member in members:
        counts[_bucket(member)] += 1
    working = [m for m in members if m["status"] not in (DONE, ERROR)]
    if working:
        slowest = sorted(working, key=lambda m: (-m["in_phase"], -m["elapsed"]))[:SLOWEST]
    else:
        slowest = sorted(members, key=lambda m: -m["elapsed"])[:SLOWEST]
    ended = not working
    images = {job.image.label for job in jobs if job.image is not None}
    return {
        "id": group_id,
        "project": project,
        "image": images.pop() if len(images) == 1 else None,
        "status": "RUNNING" if not ended else ("ERROR" if counts["failed"] else DONE),
        "created_at": jobs[0].created_at.isoformat() + "Z",
        "nodes": len(members),
        "counts": counts,
        "slowest": slowest,
        "jobs": members,
    }
