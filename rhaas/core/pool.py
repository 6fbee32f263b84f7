"""The free pool of a recursive instance: nodes it holds in its upstream project.

Growing claims free upstream nodes and imports them (same names and NICs; each NIC becomes a port of the
local "upstream" switch). Shrinking releases idle nodes back upstream. A project that asks for more nodes
than the pool holds makes it grow, within the policy (`rhaas.config.PoolSettings`).

Upstream side effects come first and local rows after: a crash in between leaves a node held upstream
but unknown here, which `reconcile` finds and repairs.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from rhaas.backends.base import Backend
from rhaas.backends.upstream import UpstreamBackend
from rhaas.core.access import Caller, free_node, require_admin
from rhaas.core.networks import port_state
from rhaas.core.provisioning import holds_port
from rhaas.db.models import PENDING, Network, NetworkingAction, Node, NodeProvisioning, utcnow
from rhaas.errors import AllocationError, BadArgumentError, BlockedError
from rhaas.ports import PortState

log = logging.getLogger(__name__)


def _upstream(backend: Backend, refusal: str) -> UpstreamBackend:
    """The backend, if it has an upstream (a recursive instance); else BadArgumentError(refusal)."""
    if not isinstance(backend, UpstreamBackend):
        raise BadArgumentError(refusal)
    return backend


def show_pool(db: Session, caller: Caller, backend: Backend) -> dict[str, Any]:
    """The pool's upstream (None on a base instance), its node counts and its policy (admin)."""
    require_admin(caller)
    up = backend.upstream if isinstance(backend, UpstreamBackend) else None
    total, free = node_counts(db)
    return {
        "upstream": {"url": up.url, "project": up.project} if up else None,
        "nodes": total,
        "free": free,
        "policy": backend.policy.model_dump(),
    }


def node_counts(db: Session) -> tuple[int, int]:
    """(all nodes, free nodes) of this instance."""
    total = db.scalar(select(func.count(Node.id))) or 0
    free = db.scalar(select(func.count(Node.id)).where(free_node())) or 0
    return total, free


def grow(db: Session, caller: Caller, backend: Backend, count: int) -> list[str]:
    """Claim up to ``count`` more nodes from upstream (admin). Returns the names imported."""
    require_admin(caller)
    backend = _upstream(backend, "This is a base instance: it has no upstream to take nodes from.")
    return _grow(db, backend, count)


def _grow(db: Session, backend: UpstreamBackend, count: int, exact: bool = False) -> list[str]:
    """Claim up to ``count`` nodes upstream and import them; ``exact``: all ``count`` or none (then
    AllocationError, and the upstream is left as it was)."""
    if count < 1:
        raise BadArgumentError("count must be at least 1.")
    up, policy = backend.upstream, backend.policy
    total, _free = node_counts(db)
    if policy.max_nodes is not None:
        room = policy.max_nodes - total
        if room <= 0 or (exact and room < count):
            raise AllocationError(
                f"The pool is at its limit of {policy.max_nodes} nodes: it cannot take {count} more."
            )
        count = min(count, room)
    claimed = up.claim(count, policy.node_filter, exact=exact)
    for name in claimed:
        backend.import_node(db, name)
    db.commit()  # the nodes are ours upstream now: record that whatever happens next
    log.info("pool: claimed %s from %s", claimed, up.url)
    return claimed


def shrink(db: Session, caller: Caller, backend: Backend, count: int) -> list[str]:
    """Release up to ``count`` idle (free) nodes back upstream (admin). Returns the names released."""
    require_admin(caller)
    backend = _upstream(backend, "This is a base instance: it has no upstream to give nodes back to.")
    if count < 1:
        raise BadArgumentError("count must be at least 1.")
    # Only nodes held upstream can go back there (an admin may also register nodes of its own here).
    held = select(Node).where(free_node(), backend.held_upstream())
    free = db.scalars(held.order_by(Node.label).limit(count)).all()
    released = []
    for node in free:
        release_node(db, backend, node)
        released.append(node.label)
    return released


def release_node(db: Session, backend: UpstreamBackend, node: Node) -> None:
    backend.upstream.release(node.label)
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


def ensure_free(db: Session, backend: Backend, wanted: int) -> None:
    """Make sure ``wanted`` free nodes exist, growing the pool if allowed."""
    _total, free = node_counts(db)
    if free >= wanted:
        return
    if not isinstance(backend, UpstreamBackend) or not backend.policy.auto_grow:
        raise AllocationError(f"Only {free} free nodes; {wanted} asked for.")
    try:
        _grow(db, backend, wanted - free, exact=True)  # a claim the pool cannot serve takes nothing
    except AllocationError as exc:
        raise AllocationError(f"Only {free} free nodes; {wanted} asked for ({exc.msg})") from exc


def claim_unknown_node(db: Session, backend: Backend, name: str) -> Node | None:
    """A project asked for a node by a name this instance does not hold: claim it upstream if allowed."""
    policy = backend.policy
    if (
        not isinstance(backend, UpstreamBackend)
        or not policy.auto_grow
        or not re.search(policy.node_filter, name)
    ):
        return None
    total, _free = node_counts(db)
    if policy.max_nodes is not None and total >= policy.max_nodes:
        # HIL's precedence: a node that does not exist (or could not be claimed anyway) is not found,
        # whatever the pool's limit; only a claimable node is refused for the limit.
        if name not in backend.upstream.free_nodes():
            return None
        raise AllocationError(f"The pool is at its limit of {policy.max_nodes} nodes.")
    if not backend.upstream.claim_node(name):
        return None
    return backend.import_node(db, name)


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


def reconcile(db: Session, caller: Caller, backend: Backend, fix: bool = False, nodes: bool = True) -> Drift:
    """Compare local state with the upstream and, with ``fix``, repair the drift (each change logged).
    ``nodes=False`` repairs NICs only and leaves nodes held or gone upstream to an administrator: a pool
    grow or shrink in flight looks like such drift for a moment (the background reconciler's passes).

    A NIC is in sync when the upstream port carries exactly the networks its committed attachments say,
    or the provisioning network while the FPBL owns its node (`holds_port`: booting, deploying,
    returning); NICs with a pending action are skipped: the worker is on them. Fixing makes the upstream
    match. A NIC registered here that the upstream node lacks is reported, not fixed: only an admin knows
    whether the registration or the upstream is wrong.

    The upstream is read before the database: the worker changes a NIC upstream first and commits here
    after, so a change it makes meanwhile looks, at worst, like drift toward what it already is. A NIC
    whose action started or finished after this pass began is not touched by the fix (the next pass
    judges it). The background reconciler (`rhaas.worker.reconcile`) runs this with ``fix`` too.
    """
    require_admin(caller)
    backend = _upstream(backend, "This is a base instance: there is no upstream to reconcile with.")
    up = backend.upstream
    started = utcnow()
    held = set(up.project_nodes())
    upstream_networks = set(up.call("listing our networks", up.client.project.networks_in, up.project))
    upstream_nics = {name: up.nic_states(name) for name in sorted(held)}
    local = {n.label: n for n in db.scalars(select(Node).where(backend.held_upstream()))}
    drift = Drift(untracked=sorted(held - set(local)), missing=sorted(set(local) - held))
    for net in db.scalars(select(Network).where(Network.upstream_label.is_not(None))):
        if net.upstream_label not in upstream_networks:
            drift.network_missing.append(net.label)
    pending = set(db.scalars(select(NetworkingAction.nic_id).where(NetworkingAction.status == PENDING)))
    desired: dict[tuple[str, str], tuple[int, PortState]] = {}
    for name in sorted(held & set(local)):
        for nic in local[name].nics:
            if nic.label not in upstream_nics[name]:
                drift.nics_missing_upstream.append(f"{name}/{nic.label}")
                continue
            if nic.id in pending:
                continue
            want = port_state({a.channel: a.network for a in nic.attachments})
            fpbl_vlan = holds_port(db.get(NodeProvisioning, local[name].id), nic.label)
            if fpbl_vlan is not None:  # the FPBL owns the node: its NIC is on the provisioning network
                want = PortState(native=fpbl_vlan)
            if upstream_nics[name][nic.label] != want:
                drift.nics_out_of_sync.append(f"{name}/{nic.label}")
                desired[(name, nic.label)] = (nic.id, want)
    if fix:
        if not nodes and (drift.untracked or drift.missing):
            log.info("reconcile: node drift left to an administrator (rhaas pool reconcile --fix): held "
                     "upstream only %s, gone upstream %s", drift.untracked, drift.missing)  # fmt: skip
            drift.untracked, drift.missing = [], []
        _repair(db, backend, drift, local, desired, started)
    return drift


def _repair(
    db: Session,
    backend: UpstreamBackend,
    drift: Drift,
    local: dict[str, Node],
    desired: dict[tuple[str, str], tuple[int, PortState]],
    since: dt.datetime,
) -> None:
    """Repair what `reconcile` found; refuses (changing nothing) a node taken away while in a project."""
    for name in drift.missing:
        node = local[name]
        if node.project_id is not None:
            project = node.project.label if node.project else "?"
            raise BlockedError(
                f"Node {name} was taken away upstream while in project {project}; detach it there first."
            )
    for name in drift.untracked:
        backend.import_node(db, name)
        log.info("reconcile: imported node %s (held upstream, unknown here)", name)
    for name in drift.missing:
        forget_node(db, local[name])
        log.info("reconcile: forgot node %s (no longer held upstream)", name)
    for (name, nic_label), (nic_id, want) in desired.items():
        touched = select(NetworkingAction.id).where(
            NetworkingAction.nic_id == nic_id,
            or_(NetworkingAction.status == PENDING, NetworkingAction.finished_at >= since),
        )
        if db.scalar(touched.limit(1)) is not None:
            log.info("reconcile: %s/%s changed during the pass; left to the next one", name, nic_label)
            continue
        backend.upstream.set_nic_state(name, nic_label, want)
        log.info(
            "reconcile: %s/%s made to carry %s upstream, as committed here", name, nic_label, want.as_dict()
        )
    drift.fixed = True
