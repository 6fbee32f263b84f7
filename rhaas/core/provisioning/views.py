"""Views of fast provisioning: a job, and a node's provisioning state with its history.

What callers see, with the access rules for seeing it (members see their own project's jobs only). Read
only: nothing here changes a row.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from rhaas.core.access import Caller, get_node, node_project, require_project_access
from rhaas.db.models import NodeProvisioning, ProvisionJob
from rhaas.errors import AuthorizationError, IllegalStateError, NotFoundError


def _iso(t: dt.datetime | None) -> str | None:
    return t.isoformat() + "Z" if t is not None else None


def job_view(job: ProvisionJob) -> dict[str, Any]:
    return {
        "id": job.uuid,
        "node": job.node.label,
        "kind": job.kind,
        "image": job.image.label if job.image else None,
        "status": job.status,
        "path": job.path,
        "phases": job.phases,
        "error": job.error,
        "created_at": _iso(job.created_at),
        "finished_at": _iso(job.finished_at),
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
        "checked_in_at": _iso(row.checked_in_at),
        "facts": row.facts,
        "jobs": jobs,
    }
