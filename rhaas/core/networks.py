"""Networks: creation rules, access lists, channels, and queuing NIC connect/detach actions.

A network's ``network_id`` comes from the backend's network allocator (`rhaas.backends.base.Backend`: the
VLAN pool of a base instance, the upstream of a recursive one) or, for admins, is given explicitly.
Connecting a NIC only queues a ``NetworkingAction``; the worker (`rhaas.worker`) programs the switch and
writes the ``NetworkAttachment`` when the switch has done it. This module never calls a driver.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rhaas.backends.base import Backend
from rhaas.core.access import (
    Caller,
    check_label,
    get_network,
    get_nic,
    get_node,
    get_project,
    node_project,
    require_admin,
    require_project_access,
)
from rhaas.db.models import PENDING, Network, NetworkingAction, Nic, Node
from rhaas.drivers.registry import switch_driver
from rhaas.errors import (
    AuthorizationError,
    BadArgumentError,
    BlockedError,
    DuplicateError,
    NotFoundError,
    ProjectMismatchError,
)
from rhaas.ports import NATIVE, NATIVELESS_TRUNK, PortState

MODIFY_PORT = "modify_port"
#: Program the port as the database says (who holds the NIC changed); changes no attachment.
SYNC_PORT = "sync_port"


def port_state(channels: Mapping[str, Network]) -> PortState:
    """What a switch port must carry for a NIC attached to ``channels`` (channel → network)."""
    native = channels.get(NATIVE)
    return PortState(
        native=native.network_id if native else None,
        tagged=frozenset(net.network_id for ch, net in channels.items() if ch != NATIVE),
    )


def legal_channels(network: Network) -> list[str]:
    return [NATIVE, f"vlan/{network.network_id}"]


def _owner(network: Network) -> str | None:
    return network.owner.label if network.owner else None


def _access(network: Network) -> list[str]:
    return [p.label for p in network.access]


def _may_use(caller: Caller, network: Network) -> bool:
    """Public networks are visible to all; others to admins and projects on the access list."""
    return not network.access or any(caller.may_access(p) for p in _access(network))


def list_networks(db: Session, caller: Caller) -> dict[str, Any]:
    networks = db.scalars(select(Network).order_by(Network.label)).all()
    result = {}
    for net in networks:
        if caller.is_admin or not net.access:
            result[net.label] = {
                "network_id": net.network_id,
                "projects": _access(net) if net.access else None,
            }
    return result


def create_network(
    db: Session, caller: Caller, backend: Backend, name: str, owner: str, access: str, net_id: str
) -> None:
    check_label("Network", name)
    if owner == "admin":
        require_admin(caller)
        owner_project = None
    else:
        owner_project = get_project(db, owner)
        require_project_access(caller, owner)
        if access != owner:
            raise BadArgumentError("A project-owned network must have its owner as its access project.")
        if net_id != "":
            raise BadArgumentError("A project-owned network cannot have an explicit net_id.")
    access_project = get_project(db, access) if access else None
    if db.scalar(select(Network.id).where(Network.label == name)) is not None:
        raise DuplicateError(f"Network {name} already exists.")
    allocation = backend.allocate_network(db, net_id)
    network = Network(
        label=name,
        owner=owner_project,
        network_id=allocation.network_id,
        allocated=allocation.allocated,
        upstream_label=allocation.upstream_label,
    )
    if access_project is not None:
        network.access.append(access_project)
    db.add(network)


def _require_owner(caller: Caller, network: Network) -> None:
    require_project_access(caller, _owner(network))


def delete_network(db: Session, caller: Caller, backend: Backend, name: str) -> None:
    network = get_network(db, name)
    _require_owner(caller, network)
    if network.attachments:
        raise BlockedError(f"Network {name} is still attached to nodes.")
    if db.scalar(
        select(
            exists().where(NetworkingAction.new_network_id == network.id, NetworkingAction.status == PENDING)
        )
    ):
        raise BlockedError(f"Network {name} has pending networking actions.")
    backend.release_network(db, network)
    db.delete(network)


def show_network(db: Session, caller: Caller, name: str) -> dict[str, Any]:
    network = get_network(db, name)
    if not _may_use(caller, network):
        raise AuthorizationError(f"You do not have access to network {name}.")
    connected: dict[str, list[str]] = {}
    for a in network.attachments:
        node = a.nic.node
        if caller.may_access(node_project(node)):
            connected.setdefault(node.label, []).append(a.nic.label)
    return {
        "access": _access(network) or None,
        "channels": legal_channels(network),
        "connected-nodes": {n: sorted(nics) for n, nics in sorted(connected.items())},
        "name": network.label,
        "owner": _owner(network) or "admin",
    }


def list_attachments(db: Session, caller: Caller, name: str, project: str | None) -> dict[str, Any]:
    network = get_network(db, name)
    owner = _owner(network)
    if project is None:
        require_project_access(caller, owner)
    else:
        get_project(db, project)
        if not caller.may_access(owner) and not (project in _access(network) and caller.may_access(project)):
            raise AuthorizationError(f"You may not list the attachments of network {name}.")
    result = {}
    for a in network.attachments:
        node = a.nic.node
        node_proj = node_project(node)
        if project is None or node_proj == project:
            result[node.label] = {"channel": a.channel, "nic": a.nic.label, "project": node_proj}
    return result


def grant_access(db: Session, caller: Caller, name: str, project: str) -> None:
    network = get_network(db, name)
    _require_owner(caller, network)
    proj = get_project(db, project)
    if proj in network.access:
        raise DuplicateError(f"Project {project} already has access to network {name}.")
    network.access.append(proj)


def revoke_access(db: Session, caller: Caller, name: str, project: str) -> None:
    network = get_network(db, name)
    proj = get_project(db, project)
    if not (caller.may_access(_owner(network)) or caller.may_access(project)):
        raise AuthorizationError(f"You may not change access to network {name}.")
    if proj not in network.access:
        raise NotFoundError(f"Project {project} does not have access to network {name}.")
    if network.owner_id == proj.id:
        raise BlockedError(f"Project {project} owns network {name}; its access cannot be revoked.")
    if any(a.nic.node.project_id == proj.id for a in network.attachments):
        raise BlockedError(f"Project {project} still has nodes on network {name}.")
    network.access.remove(proj)


def queue_action(db: Session, action: NetworkingAction) -> str:
    """Insert a PENDING action; the one-pending-per-NIC index turns a race into a clean 409."""
    db.add(action)
    try:
        db.flush()
    except IntegrityError as exc:
        db.rollback()
        raise BlockedError("The NIC has a pending networking action.") from exc
    return action.uuid


def _nic_for_change(db: Session, caller: Caller, node_name: str, nic_name: str) -> tuple[Node, Nic]:
    node = get_node(db, node_name)
    nic = get_nic(db, node, nic_name)
    if node.project_id is None:
        raise ProjectMismatchError(f"Node {node_name} is not in a project.")
    require_project_access(caller, node_project(node))
    if nic.port is None:
        raise NotFoundError(f"Nic {nic_name} on node {node_name} is not connected to a switch port.")
    if db.scalar(
        select(exists().where(NetworkingAction.nic_id == nic.id, NetworkingAction.status == PENDING))
    ):
        raise BlockedError(f"Nic {nic_name} on node {node_name} has a pending networking action.")
    return node, nic


def connect_network(
    db: Session, caller: Caller, node_name: str, nic_name: str, network_name: str, channel: str | None
) -> str:
    network = get_network(db, network_name)
    node, nic = _nic_for_change(db, caller, node_name, nic_name)
    project = node_project(node)
    if network.access and project not in _access(network):
        raise ProjectMismatchError(f"Project {project} does not have access to network {network_name}.")
    if any(a.network_id == network.id for a in nic.attachments):
        raise BlockedError(f"Nic {nic_name} is already attached to network {network_name}.")
    channel = channel or NATIVE
    if any(a.channel == channel for a in nic.attachments):
        raise BlockedError(f"Channel {channel} on nic {nic_name} is already in use.")
    if channel not in legal_channels(network):
        raise BadArgumentError(
            f"Channel {channel!r} is not legal for network {network_name}; "
            f"use one of: {', '.join(legal_channels(network))}."
        )
    assert nic.port is not None
    capabilities = switch_driver(nic.port.switch.type).capabilities
    needs_native = NATIVELESS_TRUNK not in capabilities and channel != NATIVE
    if needs_native and not any(a.channel == NATIVE for a in nic.attachments):
        raise BlockedError("This switch needs a native network before tagged ones.")
    action = NetworkingAction(
        uuid=str(uuid.uuid4()), type=MODIFY_PORT, nic=nic, new_network=network, channel=channel
    )
    return queue_action(db, action)


def detach_network(db: Session, caller: Caller, node_name: str, nic_name: str, network_name: str) -> str:
    network = get_network(db, network_name)
    node, nic = _nic_for_change(db, caller, node_name, nic_name)
    attachment = next((a for a in nic.attachments if a.network_id == network.id), None)
    if attachment is None:
        raise BadArgumentError(f"Nic {nic_name} is not attached to network {network_name}.")
    assert nic.port is not None
    capabilities = switch_driver(nic.port.switch.type).capabilities
    if NATIVELESS_TRUNK not in capabilities and attachment.channel == NATIVE and len(nic.attachments) > 1:
        raise BlockedError("This switch needs tagged networks removed before the native one.")
    action = NetworkingAction(
        uuid=str(uuid.uuid4()), type=MODIFY_PORT, nic=nic, new_network=None, channel=attachment.channel
    )
    return queue_action(db, action)


def show_action(db: Session, caller: Caller, status_id: str) -> dict[str, Any]:
    action = db.scalar(select(NetworkingAction).where(NetworkingAction.uuid == status_id))
    if action is None:
        raise NotFoundError(f"Networking action {status_id} does not exist.")
    require_project_access(caller, node_project(action.nic.node))
    result: dict[str, Any] = {
        "status": action.status,
        "node": action.nic.node.label,
        "nic": action.nic.label,
        "new_network": action.new_network.label if action.new_network else None,
        "type": action.type,
        "channel": action.channel,
    }
    if action.error:
        result["error"] = action.error
    return result
