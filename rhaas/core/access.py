"""Who is calling, and the authorization checks every core function starts with."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, exists, select
from sqlalchemy.orm import Session

from rhaas.db.models import Base, Network, Nic, Node, NodeProvisioning, Port, Project, Switch, User
from rhaas.errors import AuthorizationError, BadArgumentError, NotFoundError


@dataclass(frozen=True)
class Caller:
    """An authenticated caller. ``projects`` holds project names."""

    name: str
    is_admin: bool = False
    projects: frozenset[str] = field(default_factory=frozenset)

    def may_access(self, project: str | None) -> bool:
        """Admins may access everything; others only their projects (``None`` means admin-only)."""
        return self.is_admin or (project is not None and project in self.projects)


ADMIN = Caller(name="admin", is_admin=True)


def require_admin(caller: Caller) -> None:
    if not caller.is_admin:
        raise AuthorizationError("This operation is administrator-only.")


def require_project_access(caller: Caller, project: str | None) -> None:
    if not caller.may_access(project):
        raise AuthorizationError(
            "You do not have access to the project that owns this." if project else "This is admin-only."
        )


_LABEL = re.compile(r"^[^\x00-\x1f\x7f/\\]{1,255}$")


def check_label(kind: str, label: str) -> None:
    """Names of new objects: 1-255 printable characters, no slashes, not '.' or '..'."""
    if not _LABEL.match(label) or label in (".", "..") or label != label.strip():
        raise BadArgumentError(
            f"{kind} name {label[:80]!r} is not legal: use 1-255 printable characters, no '/' or '\\', "
            "no leading or trailing spaces."
        )


def _get(db: Session, model: type[Base], label: str, kind: str) -> Base:
    obj = db.scalar(select(model).where(model.label == label))  # type: ignore[attr-defined, arg-type]
    if obj is None:
        raise NotFoundError(f"{kind} {label} does not exist.")
    return obj


def get_project(db: Session, label: str) -> Project:
    return _get(db, Project, label, "Project")  # type: ignore[return-value]


def get_node(db: Session, label: str, *, lock: bool = False) -> Node:
    return _get(db, Node, label, "Node")  # type: ignore[return-value]


def get_switch(db: Session, label: str) -> Switch:
    return _get(db, Switch, label, "Switch")  # type: ignore[return-value]


def get_network(db: Session, label: str) -> Network:
    return _get(db, Network, label, "Network")  # type: ignore[return-value]


def get_user(db: Session, label: str) -> User:
    return _get(db, User, label, "User")  # type: ignore[return-value]


def get_nic(db: Session, node: Node, label: str) -> Nic:
    for nic in node.nics:
        if nic.label == label:
            return nic
    raise NotFoundError(f"Nic {label} does not exist on node {node.label}.")


def get_port(db: Session, switch: Switch, label: str) -> Port:
    port = db.scalar(select(Port).where(Port.switch_id == switch.id, Port.label == label))
    if port is None:
        raise NotFoundError(f"Port {label} does not exist on switch {switch.label}.")
    return port


def node_project(node: Node) -> str | None:
    return node.project.label if node.project else None


def free_node() -> ColumnElement[bool]:
    """SQL: the node is free to claim: in no project, and not being deployed, returned or wiped by fast
    provisioning (a returned node is free again only once its wipe is verified)."""
    busy = exists().where(NodeProvisioning.node_id == Node.id, NodeProvisioning.state != "ready")
    return Node.project_id.is_(None) & ~busy
