"""Projects, and nodes moving in and out of them."""

from __future__ import annotations

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from rhaas.backends.base import Backend
from rhaas.config import ProvisioningSettings
from rhaas.core import pool, provisioning
from rhaas.core.access import (
    Caller,
    check_label,
    free_node,
    get_node,
    get_project,
    require_admin,
    require_project_access,
)
from rhaas.db.models import (
    PENDING,
    Image,
    Network,
    NetworkAttachment,
    NetworkingAction,
    Nic,
    Node,
    Project,
    network_projects,
)
from rhaas.errors import AllocationError, BadArgumentError, BlockedError, DuplicateError, NotFoundError


def list_projects(db: Session, caller: Caller) -> list[str]:
    require_admin(caller)
    return list(db.scalars(select(Project.label).order_by(Project.label)))


def create_project(db: Session, caller: Caller, name: str) -> None:
    require_admin(caller)
    check_label("Project", name)
    if db.scalar(select(Project.id).where(Project.label == name)) is not None:
        raise DuplicateError(f"Project {name} already exists.")
    db.add(Project(label=name))


def delete_project(db: Session, caller: Caller, name: str) -> None:
    require_admin(caller)
    project = get_project(db, name)
    if db.scalar(select(exists().where(Node.project_id == project.id))):
        raise BlockedError(f"Project {name} still has nodes.")
    if db.scalar(select(exists().where(Network.owner_id == project.id))):
        raise BlockedError(f"Project {name} still owns networks.")
    if db.scalar(select(exists().where(network_projects.c.project_id == project.id))):
        raise BlockedError(f"Project {name} still has access to networks.")
    if db.scalar(select(exists().where(Image.owner_id == project.id))):
        raise BlockedError(f"Project {name} still owns images.")
    db.delete(project)


def connect_node(db: Session, caller: Caller, backend: Backend, project_name: str, node_name: str) -> None:
    """Claim a free node for a project. Atomic: of concurrent claims for one node, exactly one wins."""
    project = get_project(db, project_name)
    require_project_access(caller, project_name)
    try:
        node = get_node(db, node_name)
    except NotFoundError:
        imported = pool.claim_unknown_node(db, backend, node_name)
        if imported is None:
            raise
        db.commit()  # the node is ours upstream now: record that whatever happens next
        node = imported
    claimed = db.execute(
        update(Node)
        .where(Node.id == node.id, free_node())
        .values(project_id=project.id)
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        raise BlockedError(f"Node {node_name} is already owned by a project.")
    db.expire(node)


def connect_nodes(db: Session, caller: Caller, backend: Backend, project_name: str, count: int) -> list[str]:
    """rhaas extension: claim any ``count`` free nodes (growing a recursive instance's pool if needed)."""
    project = get_project(db, project_name)
    require_project_access(caller, project_name)
    if not 1 <= count <= 1000:
        raise BadArgumentError("count must be between 1 and 1000.")
    pool.ensure_free(db, backend, count)
    db.commit()  # nodes claimed upstream are recorded even if this claim loses a race
    claimed: list[str] = []
    for node in db.scalars(select(Node).where(free_node()).order_by(Node.label)):
        won = db.execute(
            update(Node)
            .where(Node.id == node.id, free_node())
            .values(project_id=project.id)
            .execution_options(synchronize_session=False)
        )
        if won.rowcount == 1:  # type: ignore[attr-defined]
            claimed.append(node.label)
            if len(claimed) == count:
                return claimed
    raise AllocationError(f"Only {len(claimed)} free nodes could be claimed; {count} asked for.")


def detach_node(
    db: Session, caller: Caller, project_name: str, node_name: str, settings: ProvisioningSettings
) -> None:
    """Give a node back to the free pool; under fast provisioning its return (wipe) starts now."""
    project = get_project(db, project_name)
    require_project_access(caller, project_name)
    node = get_node(db, node_name)
    if node.project_id != project.id:
        raise NotFoundError(f"Node {node_name} is not in project {project_name}.")
    if node.obm_enabled:
        raise BlockedError(f"Node {node_name} has its OBM enabled; disable it first.")
    nic_ids = select(Nic.id).where(Nic.node_id == node.id)
    if db.scalar(select(exists().where(NetworkAttachment.nic_id.in_(nic_ids)))):
        raise BlockedError(f"Node {node_name} is still attached to networks; detach them first.")
    pending = exists().where(NetworkingAction.nic_id.in_(nic_ids), NetworkingAction.status == PENDING)
    if db.scalar(select(pending)):
        raise BlockedError(f"Node {node_name} has pending networking actions.")
    if settings.enabled:
        provisioning.start_return(db, node, settings)  # the node is free again only once it is wiped
    released = db.execute(
        update(Node)
        .where(Node.id == node.id, Node.project_id == project.id)
        .values(project_id=None)
        .execution_options(synchronize_session=False)
    )
    if released.rowcount != 1:  # type: ignore[attr-defined]
        raise NotFoundError(f"Node {node_name} is not in project {project_name}.")
    db.expire(node)


def list_project_nodes(db: Session, caller: Caller, project_name: str) -> list[str]:
    project = get_project(db, project_name)
    require_project_access(caller, project_name)
    return list(db.scalars(select(Node.label).where(Node.project_id == project.id).order_by(Node.label)))


def list_project_networks(db: Session, caller: Caller, project_name: str) -> list[str]:
    project = get_project(db, project_name)
    require_project_access(caller, project_name)
    query = (
        select(Network.label)
        .join(network_projects, network_projects.c.network_id == Network.id)
        .where(network_projects.c.project_id == project.id)
        .order_by(Network.label)
    )
    return list(db.scalars(query))
