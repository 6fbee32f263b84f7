"""Nodes: registration, NICs, metadata, and access to their out-of-band management.

A node's BMC driver comes from the backend (`node_obm`); what a type of BMC allows (registration through
the API, credentials to rotate) is asked of its driver class. Power and console calls are in
`rhaas.core.power`; this module changes rows and never calls a BMC.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pydantic
from sqlalchemy import exists, select
from sqlalchemy.orm import Session, selectinload

from rhaas.backends.base import Backend
from rhaas.backends.hardware import HardwareBackend
from rhaas.core.access import (
    Caller,
    check_label,
    free_node,
    get_nic,
    get_node,
    node_project,
    require_admin,
    require_project_access,
)
from rhaas.db.models import PENDING, Generation, NetworkAttachment, NetworkingAction, Nic, Node, NodeMetadata
from rhaas.drivers.obm.base import OBMDriver
from rhaas.drivers.registry import OBM_FORMS, obm_driver
from rhaas.errors import (
    BadArgumentError,
    BlockedError,
    DuplicateError,
    NotFoundError,
    ValidationError,
)

_MAC = re.compile(r"^[0-9A-Fa-f]{2}([:-]?)[0-9A-Fa-f]{2}(\1[0-9A-Fa-f]{2}){4}$")


#: (engine, free?) → (generation, names): node lists are cached until a trigger moves the generation.
_list_cache: dict[tuple[str, int, bool], tuple[int, list[str]]] = {}


def list_nodes(db: Session, caller: Caller, is_free: str) -> list[str]:
    """``free`` lists nodes in no project; any other value lists all nodes (as HIL does)."""
    free = is_free == "free"
    bind = db.get_bind()
    key = (str(bind.engine.url), id(bind), free)
    generation = db.scalar(select(Generation.value).where(Generation.name == "node"))
    cached = _list_cache.get(key)
    if cached is not None and generation is not None and cached[0] == generation:
        return cached[1]
    query = select(Node.label).order_by(Node.label)
    if free:
        query = query.where(free_node())
    names = list(db.scalars(query))
    if generation is not None:
        _list_cache[key] = (generation, names)
    return names


def validate_obm(
    obm: dict[str, Any] | None, obmd: dict[str, Any] | None = None
) -> tuple[str, dict[str, Any]]:
    """A node's OBM as registered → (driver name, settings). Raises 400 errors naming what is wrong.

    ``obm`` is HIL's in-tree form (``{"type", …settings}``); ``obmd`` HIL master's (``{"uri",
    "admin_token"}``, driven by the ``obmd`` driver). Exactly one of the two is given."""
    if (obm is None) == (obmd is None):
        raise ValidationError(
            "A node is registered with exactly one of 'obm' ({\"type\": …}) and 'obmd' "
            '({"uri": …, "admin_token": …}).'
        )
    if obmd is not None:
        return _validated(OBM_FORMS["obmd"], obmd, "obmd")
    if not isinstance(obm, dict) or not isinstance(obm.get("type"), str):
        raise ValidationError("obm must be an object with a string 'type'.")
    cls = obm_driver(obm["type"])
    if not cls.registrable:
        raise BadArgumentError(
            "Nodes of a recursive instance come from its upstream (pool grow), not registration."
        )
    if cls.registration_form != "obm":
        raise BadArgumentError(
            f"A node of OBM type {cls.name} is registered with {{{cls.registration_form!r}: …}}, not 'obm'."
        )
    return _validated(cls.name, {k: v for k, v in obm.items() if k != "type"}, "obm")


def _validated(type_name: str, fields: dict[str, Any], form: str) -> tuple[str, dict[str, Any]]:
    cls = obm_driver(type_name)
    try:
        settings = cls.settings_model.model_validate(fields)
    except pydantic.ValidationError as exc:
        raise ValidationError(f"{form} settings are not valid for type {cls.name}: {_brief(exc)}") from exc
    return cls.name, settings.model_dump()


def _brief(exc: pydantic.ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())


def register_node(
    db: Session,
    caller: Caller,
    name: str,
    obm: dict[str, Any] | None,
    metadata: dict[str, Any] | None = None,
    *,
    obmd: dict[str, Any] | None = None,
) -> None:
    """Register a node with HIL's ``obm`` form or HIL master's ``obmd`` form (see `validate_obm`)."""
    require_admin(caller)
    check_label("Node", name)
    obm_type, settings = validate_obm(obm, obmd)
    if db.scalar(select(Node.id).where(Node.label == name)) is not None:
        raise DuplicateError(f"Node {name} already exists.")
    node = Node(label=name, obm_type=obm_type, obm_settings=settings, obm_enabled=False)
    for label, value in (metadata or {}).items():
        check_label("Metadata", label)
        node.metadata_items.append(NodeMetadata(label=label, value=json.dumps(value)))
    db.add(node)


def delete_node(db: Session, caller: Caller, name: str) -> None:
    require_admin(caller)
    node = get_node(db, name)
    if node.project_id is not None:
        raise BlockedError(f"Node {name} is in project {node.project.label}; detach it first.")  # type: ignore[union-attr]
    if node.nics:
        raise BlockedError(f"Node {name} still has NICs; delete them first.")
    db.delete(node)


def show_node(db: Session, caller: Caller, name: str) -> dict[str, Any]:
    node = db.scalar(
        select(Node)
        .where(Node.label == name)
        .options(
            selectinload(Node.nics).selectinload(Nic.attachments).selectinload(NetworkAttachment.network),
            selectinload(Node.nics).selectinload(Nic.port),
            selectinload(Node.metadata_items),
            selectinload(Node.project),
        )
    )
    if node is None:
        raise NotFoundError(f"Node {name} does not exist.")
    project = node_project(node)
    if project is not None:
        require_project_access(caller, project)
    nics = []
    for nic in node.nics:
        entry: dict[str, Any] = {
            "label": nic.label,
            "macaddr": nic.macaddr,
            "networks": {a.channel: a.network.label for a in nic.attachments},
        }
        if caller.is_admin:
            entry["port"] = nic.port.label if nic.port else None
            entry["switch"] = nic.port.switch.label if nic.port else None
        nics.append(entry)
    return {
        "metadata": {m.label: m.value for m in node.metadata_items},
        "name": node.label,
        "nics": nics,
        "project": project,
    }


def add_nic(db: Session, caller: Caller, node_name: str, nic_name: str, macaddr: str) -> None:
    require_admin(caller)
    node = get_node(db, node_name)
    check_label("Nic", nic_name)
    if not _MAC.match(macaddr):
        raise BadArgumentError(f"MAC address {macaddr[:40]!r} is not legal (use aa:bb:cc:dd:ee:ff).")
    if any(nic.label == nic_name for nic in node.nics):
        raise DuplicateError(f"Nic {nic_name} already exists on node {node_name}.")
    db.add(Nic(label=nic_name, macaddr=macaddr, node=node))


def remove_nic(db: Session, caller: Caller, node_name: str, nic_name: str) -> None:
    require_admin(caller)
    node = get_node(db, node_name)
    nic = get_nic(db, node, nic_name)
    if node.project_id is not None:
        raise BlockedError(f"Node {node_name} is in a project; detach it before deleting its NICs.")
    pending = exists().where(NetworkingAction.nic_id == nic.id, NetworkingAction.status == PENDING)
    if db.scalar(select(pending)):
        raise BlockedError(f"Nic {nic_name} has a pending networking action.")
    for attachment in list(nic.attachments):
        db.delete(attachment)
    nic.port = None
    db.delete(nic)


def set_metadata(db: Session, caller: Caller, node_name: str, label: str, value: Any) -> None:
    require_admin(caller)
    node = get_node(db, node_name)
    check_label("Metadata", label)
    for item in node.metadata_items:
        if item.label == label:
            item.value = json.dumps(value)
            return
    node.metadata_items.append(NodeMetadata(label=label, value=json.dumps(value)))


def delete_metadata(db: Session, caller: Caller, node_name: str, label: str) -> None:
    require_admin(caller)
    node = get_node(db, node_name)
    for item in node.metadata_items:
        if item.label == label:
            node.metadata_items.remove(item)
            return
    raise NotFoundError(f"Metadata {label} does not exist on node {node_name}.")


def _require_node_control(caller: Caller, node: Node) -> None:
    """Power and OBM belong to the node's project; a free node's to admins only."""
    require_project_access(caller, node_project(node))


def set_obm_enabled(db: Session, caller: Caller, backend: Backend, node_name: str, enabled: bool) -> None:
    """Enable or disable a node's OBM (idempotent). The driver is told every time (obmd hands out a new
    node token on each enable and revokes it on disable, as under HIL) and may give new settings to
    store. The node's row stays locked meanwhile, so that concurrent calls store the token obmd handed
    out last; a driver that fails changes nothing."""
    node = get_node(db, node_name)
    _require_node_control(caller, node)
    db.refresh(node, with_for_update=True)
    driver = backend.obm_driver(node)
    settings = driver.enable() if enabled else driver.disable()
    if settings is not None:
        node.obm_settings = settings.model_dump()
    node.obm_enabled = enabled


def node_obm(db: Session, caller: Caller, backend: Backend, node_name: str) -> OBMDriver:
    """The OBM driver of a node the caller controls and whose OBM is enabled (for power calls)."""
    node = get_node(db, node_name)
    _require_node_control(caller, node)
    if not node.obm_enabled:
        raise BlockedError(
            f"OBM is not enabled on node {node_name}; enable it first (PUT /node/{{node}}/obm)."
        )
    return backend.obm_driver(node)


def obm_of(node: Node) -> OBMDriver:
    """A node's OBM driver as a base instance builds it, with no access check: for rhaas's own work on
    the node (returns, wipes) where no backend is at hand. A node powered through an upstream gets a
    driver that refuses every call: code that may run on a recursive instance uses
    `Backend.obm_driver` instead."""
    return HardwareBackend().obm_driver(node)


def rotate_obm_credentials(db: Session, caller: Caller, node_name: str, user: str, password: str) -> None:
    """rhaas extension (admin): give a node's BMC new credentials, checked by its driver's settings."""
    require_admin(caller)
    node = get_node(db, node_name)
    cls = obm_driver(node.obm_type)
    if not cls.has_credentials:
        why = "is powered through the upstream" if not cls.registrable else f"is driven through {cls.name}"
        raise BadArgumentError(f"Node {node_name} {why}: it has no BMC credentials here.")
    try:
        settings = cls.settings_model.model_validate(
            {**node.obm_settings, "user": user, "password": password}
        )
    except pydantic.ValidationError as exc:
        raise ValidationError(f"obm credentials are not valid for type {cls.name}: {_brief(exc)}") from exc
    node.obm_settings = settings.model_dump()
