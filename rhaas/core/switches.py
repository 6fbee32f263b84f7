"""Switches, their ports, and the wiring of NICs to ports (all admin-only).

What a type of switch allows (registration through the API, port names, capabilities) is asked of its
driver class; the one device call here, reading a port back, goes through a driver from the backend.
"""

from __future__ import annotations

import uuid
from typing import Any

import pydantic
from sqlalchemy import select
from sqlalchemy.orm import Session

from rhaas.backends.base import Backend
from rhaas.core.access import (
    Caller,
    check_label,
    get_nic,
    get_node,
    get_port,
    get_switch,
    require_admin,
)
from rhaas.core.networks import queue_action
from rhaas.core.nodes import _brief
from rhaas.db.models import NetworkingAction, Port, Switch
from rhaas.drivers.registry import switch_driver
from rhaas.errors import BadArgumentError, BlockedError, DuplicateError, NotFoundError, ValidationError

REVERT_PORT = "revert_port"


def list_switches(db: Session, caller: Caller) -> list[str]:
    require_admin(caller)
    return list(db.scalars(select(Switch.label).order_by(Switch.label)))


def register_switch(db: Session, caller: Caller, name: str, fields: dict[str, Any]) -> None:
    require_admin(caller)
    check_label("Switch", name)
    type_name = fields.get("type")
    if not isinstance(type_name, str):
        raise ValidationError('A switch needs a string \'type\' (e.g. "ovs" or "mock").')
    cls = switch_driver(type_name)
    if not cls.registrable:
        raise BadArgumentError("The upstream switch of a recursive instance is managed by rhaas itself.")
    try:
        settings = cls.settings_model.model_validate({k: v for k, v in fields.items() if k != "type"})
    except pydantic.ValidationError as exc:
        raise ValidationError(f"Settings are not valid for a {cls.name} switch: {_brief(exc)}") from exc
    if db.scalar(select(Switch.id).where(Switch.label == name)) is not None:
        raise DuplicateError(f"Switch {name} already exists.")
    db.add(Switch(label=name, type=cls.name, settings=settings.model_dump()))


def delete_switch(db: Session, caller: Caller, name: str) -> None:
    require_admin(caller)
    switch = get_switch(db, name)
    if switch.ports:
        raise BlockedError(f"Switch {name} still has ports; delete them first.")
    db.delete(switch)


def show_switch(db: Session, caller: Caller, name: str) -> dict[str, Any]:
    require_admin(caller)
    switch = get_switch(db, name)
    return {
        "capabilities": list(switch_driver(switch.type).capabilities),
        "name": switch.label,
        "ports": [{"label": p.label} for p in switch.ports],
    }


def register_port(db: Session, caller: Caller, switch_name: str, port_name: str) -> None:
    require_admin(caller)
    switch = get_switch(db, switch_name)
    switch_driver(switch.type).validate_port_name(port_name)
    if any(p.label == port_name for p in switch.ports):
        raise DuplicateError(f"Port {port_name} already exists on switch {switch_name}.")
    db.add(Port(label=port_name, switch=switch))


def delete_port(db: Session, caller: Caller, switch_name: str, port_name: str) -> None:
    require_admin(caller)
    port = get_port(db, get_switch(db, switch_name), port_name)
    if port.nic is not None:
        raise BlockedError(f"Port {port_name} is connected to a NIC; detach it first.")
    db.delete(port)


def show_port(db: Session, caller: Caller, switch_name: str, port_name: str) -> dict[str, Any]:
    require_admin(caller)
    port = get_port(db, get_switch(db, switch_name), port_name)
    if port.nic is None:
        return {}
    return {
        "node": port.nic.node.label,
        "nic": port.nic.label,
        "networks": {a.channel: a.network.label for a in port.nic.attachments},
    }


def port_state(
    db: Session, caller: Caller, backend: Backend, switch_name: str, port_name: str
) -> dict[str, Any]:
    """What the port carries, read back from the switch itself (outside any transaction)."""
    require_admin(caller)
    switch = get_switch(db, switch_name)
    get_port(db, switch, port_name)
    driver = backend.switch_driver(switch)
    db.rollback()  # no transaction stays open while the switch answers
    try:
        return driver.get_port(port_name).as_dict()
    finally:
        driver.close()


def connect_nic(db: Session, caller: Caller, switch_name: str, port_name: str, node: str, nic: str) -> None:
    require_admin(caller)
    port = get_port(db, get_switch(db, switch_name), port_name)
    the_nic = get_nic(db, get_node(db, node), nic)
    if port.nic is not None:
        raise DuplicateError(f"Port {port_name} is already connected to a NIC.")
    if the_nic.port is not None:
        raise DuplicateError(f"Nic {nic} on node {node} is already connected to a port.")
    the_nic.port = port


def detach_nic(db: Session, caller: Caller, switch_name: str, port_name: str) -> None:
    require_admin(caller)
    port = get_port(db, get_switch(db, switch_name), port_name)
    if port.nic is None:
        raise NotFoundError(f"Port {port_name} is not connected to a NIC.")
    if port.nic.node.project_id is not None:
        raise BlockedError(f"Node {port.nic.node.label} is in a project; detach it first.")
    port.nic.port = None


def revert_port(db: Session, caller: Caller, switch_name: str, port_name: str) -> str:
    """Queue the removal of every network from the port's NIC; returns the status id."""
    require_admin(caller)
    port = get_port(db, get_switch(db, switch_name), port_name)
    if port.nic is None:
        raise NotFoundError(f"Port {port_name} is not connected to a NIC.")
    action = NetworkingAction(uuid=str(uuid.uuid4()), type=REVERT_PORT, nic=port.nic, channel="")
    return queue_action(db, action)
