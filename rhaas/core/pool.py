"""The free pool of a recursive instance: nodes it holds in its upstream project.

Growing claims free upstream nodes and imports them (same names and NICs; each NIC becomes a port of the
local "upstream" switch). Shrinking releases idle nodes back upstream. A project that asks for more nodes
than the pool holds makes it grow, within the policy (`rhaas.config.PoolSettings`).

Upstream side effects come first and local rows after: a crash in between leaves a node held upstream
but unknown here, which `reconcile` finds and repairs.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from rhaas.backends.upstream import Upstream
from rhaas.config import PoolSettings, ProvisioningSettings
from rhaas.core.access import Caller, free_node, require_admin
from rhaas.db.models import PENDING, Network, NetworkingAction, Nic, Node, Port, Switch
from rhaas.drivers.switch.base import PortState
from rhaas.errors import AllocationError, BadArgumentError, BlockedError

log = logging.getLogger(__name__)
UPSTREAM_SWITCH = "upstream"
#: The OBM type of a node imported from the upstream (powered through it).
UPSTREAM_OBM = "upstream"


def upstream_of(db: Session) -> Upstream | None:
    """The upstream of this instance, or None for a base instance (set in the sessionmaker's info)."""
    return db.info.get("upstream")


def policy_of(db: Session) -> PoolSettings:
    return db.info.get("pool") or PoolSettings()


def provisioning_of(db: Session) -> ProvisioningSettings:
    """The fast-provisioning settings of this instance (set in the sessionmaker's info)."""
    return db.info.get("provisioning") or ProvisioningSettings()


def ensure_switch(db: Session, up: Upstream) -> Switch:
    switch = db.scalar(select(Switch).where(Switch.label == UPSTREAM_SWITCH))
    if switch is None:
        switch = Switch(label=UPSTREAM_SWITCH, type="upstream", settings={"upstream": up.key})
        db.add(switch)
        db.flush()
    elif switch.settings != {"upstream": up.key}:
        switch.settings = {"upstream": up.key}
    return switch


def import_node(db: Session, up: Upstream, name: str) -> Node:
    """Create the local rows of a node this instance holds upstream."""
    shown = up.show_node(name)
    switch = ensure_switch(db, up)
    node = Node(
        label=name, obm_type=UPSTREAM_OBM, obm_settings={"upstream": up.key, "node": name}, obm_enabled=False
    )
    db.add(node)
    for entry in shown.get("nics", []):
        port = Port(label=f"{name}/{entry['label']}", switch=switch)
        db.add(Nic(label=entry["label"], macaddr=entry["macaddr"], node=node, port=port))
    db.flush()
    return node


def node_counts(db: Session) -> tuple[int, int]:
    """(all nodes, free nodes) of this instance."""
    total = db.scalar(select(func.count(Node.id))) or 0
    free = db.scalar(select(func.count(Node.id)).where(free_node())) or 0
    return total, free


def grow(db: Session, caller: Caller, count: int) -> list[str]:
    """Claim up to ``count`` more nodes from upstream (admin). Returns the names imported."""
    require_admin(caller)
    return _grow(db, count)


def _grow(db: Session, count: int) -> list[str]:
    up = upstream_of(db)
    if up is None:
        raise BadArgumentError("This is a base instance: it has no upstream to take nodes from.")
    if count < 1:
        raise BadArgumentError("count must be at least 1.")
    policy = policy_of(db)
    total, _free = node_counts(db)
    if policy.max_nodes is not None:
        count = min(count, policy.max_nodes - total)
        if count <= 0:
            raise AllocationError(f"The pool is at its limit of {policy.max_nodes} nodes.")
    claimed = up.claim(count, policy.node_filter)
    for name in claimed:
        import_node(db, up, name)
    db.commit()  # the nodes are ours upstream now: record that whatever happens next
    log.info("pool: claimed %s from %s", claimed, up.url)
    return claimed


def shrink(db: Session, caller: Caller, count: int) -> list[str]:
    """Release up to ``count`` idle (free) nodes back upstream (admin). Returns the names released."""
    require_admin(caller)
    up = upstream_of(db)
    if up is None:
        raise BadArgumentError("This is a base instance: it has no upstream to give nodes back to.")
    if count < 1:
        raise BadArgumentError("count must be at least 1.")
    # Only nodes held upstream can go back there (an admin may also register nodes of its own here).
    held = select(Node).where(free_node(), Node.obm_type == UPSTREAM_OBM)
    free = db.scalars(held.order_by(Node.label).limit(count)).all()
    released = []
    for node in free:
        release_node(db, up, node)
        released.append(node.label)
    return released


def release_node(db: Session, up: Upstream, node: Node) -> None:
    up.release(node.label)
    forget_node(db, node)


def forget_node(db: Session, node: Node) -> None:
    """Delete a node's local rows (its NICs, their ports and attachments)."""
    for nic in list(node.nics):
        for attachment in list(nic.attachments):
            db.delete(attachment)
        port = nic.port
        db.delete(nic)
        if port is not None:
            db.delete(port)
    db.delete(node)
    db.flush()


def ensure_free(db: Session, wanted: int) -> None:
    """Make sure ``wanted`` free nodes exist, growing the pool if allowed."""
    _total, free = node_counts(db)
    if free >= wanted:
        return
    up = upstream_of(db)
    if up is None or not policy_of(db).auto_grow:
        raise AllocationError(f"Only {free} free nodes; {wanted} asked for.")
    _grow(db, wanted - free)


def claim_unknown_node(db: Session, name: str) -> Node | None:
    """A project asked for a node by a name this instance does not hold: claim it upstream if allowed."""
    up = upstream_of(db)
    policy = policy_of(db)
    if up is None or not policy.auto_grow or not re.search(policy.node_filter, name):
        return None
    total, _free = node_counts(db)
    if policy.max_nodes is not None and total >= policy.max_nodes:
        raise AllocationError(f"The pool is at its limit of {policy.max_nodes} nodes.")
    if not up.claim_node(name):
        return None
    return import_node(db, up, name)


@dataclass
class Drift:
    """What `reconcile` found between this instance and its upstream."""

    untracked: list[str] = field(default_factory=list)  # held upstream, unknown here
    missing: list[str] = field(default_factory=list)  # known here, no longer held upstream
    network_missing: list[str] = field(default_factory=list)  # our upstream network is gone
    nics_out_of_sync: list[str] = field(default_factory=list)  # "node/nic" carrying other VLANs upstream
    nics_missing_upstream: list[str] = field(default_factory=list)  # "node/nic" registered only here
    fixed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "untracked_upstream_nodes": self.untracked,
            "nodes_gone_upstream": self.missing,
            "networks_gone_upstream": self.network_missing,
            "nics_out_of_sync": self.nics_out_of_sync,
            "nics_missing_upstream": self.nics_missing_upstream,
            "fixed": self.fixed,
        }


def reconcile(db: Session, caller: Caller, fix: bool = False) -> Drift:
    """Compare local state with the upstream and, with ``fix``, repair the drift.

    A NIC is in sync when the upstream port carries exactly the networks its committed attachments say
    (NICs with a pending action are skipped: the worker is on them). Fixing makes the upstream match. A
    NIC registered here that the upstream node lacks is reported, not fixed: only an admin knows whether
    the registration or the upstream is wrong.
    """
    from rhaas.core.networks import port_state  # networks uses this module: import at call time

    require_admin(caller)
    up = upstream_of(db)
    if up is None:
        raise BadArgumentError("This is a base instance: there is no upstream to reconcile with.")
    held = set(up.project_nodes())
    local = {n.label: n for n in db.scalars(select(Node).where(Node.obm_type == "upstream"))}
    drift = Drift(untracked=sorted(held - set(local)), missing=sorted(set(local) - held))
    upstream_networks = set(up.call("listing our networks", up.client.project.networks_in, up.project))
    for net in db.scalars(select(Network).where(Network.upstream_label.is_not(None))):
        if net.upstream_label not in upstream_networks:
            drift.network_missing.append(net.label)
    pending = set(db.scalars(select(NetworkingAction.nic_id).where(NetworkingAction.status == PENDING)))
    desired: dict[tuple[str, str], PortState] = {}
    for name in sorted(held & set(local)):
        upstream_nics = up.nic_states(name)
        for nic in local[name].nics:
            if nic.label not in upstream_nics:
                drift.nics_missing_upstream.append(f"{name}/{nic.label}")
                continue
            if nic.id in pending:
                continue
            want = port_state({a.channel: a.network for a in nic.attachments})
            if upstream_nics[nic.label] != want:
                drift.nics_out_of_sync.append(f"{name}/{nic.label}")
                desired[(name, nic.label)] = want
    if fix:
        for name in drift.untracked:
            import_node(db, up, name)
        for name in drift.missing:
            node = local[name]
            if node.project_id is not None:
                project = node.project.label if node.project else "?"
                raise BlockedError(
                    f"Node {name} was taken away upstream while in project {project}; detach it there first."
                )
            forget_node(db, node)
        for (name, nic_label), want in desired.items():
            up.set_nic_state(name, nic_label, want)
        drift.fixed = True
    return drift
