"""The upstream HIL-compatible service, as a recursive instance uses it, and the backend built on it.

`Upstream` wraps rhaas's own client library. The recursive instance is a member of one upstream
project; it can touch only what that project holds. Errors are re-raised as `UpstreamError` (502) or
`UpstreamUnavailableError` (503) naming the upstream, never as the upstream's own error classes: an
upstream "node does not exist" is not the downstream caller's fault.

The network model maps one to one: a downstream network is an upstream network owned by the instance's
upstream project, under a generated name, and its ``network_id`` is the upstream network's VLAN id, so
channels (``vlan/native``, ``vlan/<id>``) are the same strings at every level and the tags a customer's
OS sees are the real ones.

`UpstreamBackend` is the backend of a recursive instance: networks come from the upstream, and the nodes
held there are wired and powered through it by the upstream switch and OBM drivers, which it hands this
`Upstream` directly (no registry, no credential in any stored settings). The free pool's rules (when to
claim, what to release) are core's (`rhaas.core.pool`), not this module's.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from rhaas.backends.base import NetworkAllocation
from rhaas.backends.hardware import HardwareBackend
from rhaas.config import PoolSettings, UpstreamSettings
from rhaas.db.models import Network, Nic, Node, Port, Switch
from rhaas.drivers.obm.base import OBMDriver
from rhaas.drivers.obm.upstream import UpstreamOBM
from rhaas.drivers.switch.base import SwitchDriver
from rhaas.drivers.switch.upstream import UpstreamSwitch
from rhaas.errors import (
    AllocationError,
    BadArgumentError,
    BlockedError,
    DuplicateError,
    NotFoundError,
    RhaasError,
    UpstreamError,
    UpstreamUnavailableError,
    ValidationError,
)
from rhaas.ports import NATIVE, PortState

if TYPE_CHECKING:
    from rhaas.client import Client

log = logging.getLogger(__name__)
T = TypeVar("T")
#: The local switch of a recursive instance: its ports are the NICs of the nodes held upstream.
UPSTREAM_SWITCH = "upstream"


class _Busy(Exception):
    """The upstream NIC has a pending networking action: try again shortly."""


class Upstream:
    def __init__(self, settings: UpstreamSettings, client: Client | None = None) -> None:
        if not settings.url:
            raise ValueError("an upstream needs a url")
        self.settings = settings
        #: How long a NIC change may take here, outages included (the upstream switch's retry window).
        self.action_timeout = settings.action_timeout
        self.url = settings.url.rstrip("/")
        self.project = settings.project
        self.key = f"{self.url}#{self.project}"
        self.prefix = settings.network_prefix or f"rhaas-{self.project}-"
        from rhaas.client import Client

        self.client = client or Client(self.url, settings.user, settings.password, timeout=settings.timeout)
        self._vlans: dict[str, str] = {}  # upstream network label → VLAN id
        self._obm_enabled: set[str] = set()
        self._nic_cache: dict[tuple[str, str], dict[str, str]] = {}
        self._long_poll = (
            True  # until the upstream refuses ?wait= (a HIL upstream)  # (node, nic) → channel → label
        )
        self._lock = threading.Lock()

    # -- error mapping --------------------------------------------------------------------------------
    def call(
        self,
        what: str,
        fn: Callable[..., T],
        *args: Any,
        passthrough: tuple[type[RhaasError], ...] = (),
        **kwargs: Any,
    ) -> T:
        """Call the client; re-raise its errors as errors of this upstream (``passthrough`` ones as-is)."""
        try:
            return fn(*args, **kwargs)
        except UpstreamUnavailableError as exc:
            raise UpstreamUnavailableError(f"upstream {self.url} is unreachable ({what}): {exc.msg}") from exc
        except passthrough:
            raise
        except RhaasError as exc:
            kind = type(exc).__name__
            message = f"upstream {self.url} refused {what}: {kind}: {exc.msg}"
            raise UpstreamError(message, transient=exc.transient) from exc

    # -- nodes ----------------------------------------------------------------------------------------
    def project_nodes(self) -> list[str]:
        return list(self.call("listing our nodes", self.client.project.nodes_in, self.project))

    def free_nodes(self) -> list[str]:
        return list(self.call("listing free nodes", self.client.node.list, "free"))

    def show_node(self, node: str) -> dict[str, Any]:
        return dict(self.call(f"showing node {node}", self.client.node.show, node))

    def claim(self, count: int, name_filter: str = ".*", exclude: set[str] | None = None) -> list[str]:
        """Claim up to ``count`` free upstream nodes; returns the names claimed.

        An rhaas upstream serves the whole request with its ``connect_nodes`` extension (growing its own
        pool from its upstream if it must); a plain HIL upstream is asked node by node from its free list.
        """
        if name_filter == ".*" and not exclude:
            try:
                return list(
                    self.call(
                        f"claiming {count} nodes",
                        self.client.project.connect_nodes,
                        self.project,
                        count,
                        passthrough=(NotFoundError, AllocationError),
                    )
                )
            except NotFoundError:
                pass  # not an rhaas upstream: no extension
            except AllocationError as exc:
                raise AllocationError(f"upstream {self.url} has no {count} free nodes: {exc.msg}") from exc
        pattern = re.compile(name_filter)
        claimed: list[str] = []
        for name in self.free_nodes():
            if len(claimed) >= count:
                break
            if not pattern.search(name) or name in (exclude or set()):
                continue
            if self.claim_node(name):
                claimed.append(name)
        return claimed

    def claim_node(self, name: str) -> bool:
        """Claim one named node; False if someone else got it first (or it does not exist)."""
        try:
            self.call(
                f"claiming {name}",
                self.client.project.connect,
                self.project,
                name,
                passthrough=(BlockedError, NotFoundError),
            )
        except (BlockedError, NotFoundError):
            return False
        return True

    def release(self, name: str) -> None:
        """Give a node back upstream: detach its networks, disable its OBM, detach it."""
        node = self.show_node(name)
        for nic in node.get("nics", []):
            if nic.get("networks"):
                self.set_nic_state(name, nic["label"], PortState())
        self.call(f"disabling OBM of {name}", self.client.node.disable_obm, name)
        with self._lock:
            self._obm_enabled.discard(name)
        self.call(f"releasing {name}", self.client.project.detach, self.project, name)

    # -- OBM ------------------------------------------------------------------------------------------
    def obm(self, node: str) -> Client:
        """The client, after making sure the node's OBM is enabled upstream (HIL requires it)."""
        with self._lock:
            enabled = node in self._obm_enabled
        if not enabled:
            self.call(f"enabling OBM of {node}", self.client.node.enable_obm, node)
            with self._lock:
                self._obm_enabled.add(node)
        return self.client

    def node_call(self, node: str, what: str, method: str, *args: object) -> object:
        """Call the client's ``node.<method>(node, *args)`` (a power or console route), the node's OBM
        enabled upstream first."""
        return self.call(f"{what} {node}", getattr(self.obm(node).node, method), node, *args)

    # -- networks -------------------------------------------------------------------------------------
    def create_network(self) -> tuple[str, str]:
        """Create a network owned by our upstream project; returns (upstream label, VLAN id)."""
        for _attempt in range(5):
            label = f"{self.prefix}{uuid.uuid4().hex[:12]}"
            try:
                self.call(
                    "creating a network",
                    self.client.network.create,
                    label,
                    self.project,
                    self.project,
                    "",
                    passthrough=(DuplicateError,),
                )
            except DuplicateError:
                continue
            return label, self.vlan_of(label)
        raise UpstreamError(f"upstream {self.url}: could not find a free network name")

    def delete_network(self, label: str) -> None:
        try:
            self.call(
                f"deleting network {label}", self.client.network.delete, label, passthrough=(NotFoundError,)
            )
        except NotFoundError:
            log.info("upstream network %s was already gone", label)
        with self._lock:
            self._vlans.pop(label, None)

    def vlan_of(self, label: str) -> str:
        with self._lock:
            if label in self._vlans:
                return self._vlans[label]
        shown = self.call(f"showing network {label}", self.client.network.show, label)
        tagged = [c.split("/", 1)[1] for c in shown["channels"] if c.startswith("vlan/") and c != NATIVE]
        if len(tagged) != 1:
            channels = shown["channels"]
            raise UpstreamError(f"upstream {self.url}: network {label} has no VLAN channel: {channels}")
        with self._lock:
            self._vlans[label] = tagged[0]
        return tagged[0]

    def network_for_vlan(self, vlan: str) -> str:
        with self._lock:
            for label, known in self._vlans.items():
                if known == vlan:
                    return label
        for label in self.call("listing our networks", self.client.project.networks_in, self.project):
            if self.vlan_of(label) == vlan:
                return str(label)
        raise UpstreamError(f"upstream {self.url}: no network of project {self.project} carries VLAN {vlan}")

    # -- NIC state: what the upstream switch port of a node's NIC carries ------------------------------
    def nic_networks(self, node: str, nic: str) -> dict[str, str]:
        """channel → upstream network label, for one NIC, read from the upstream."""
        for entry in self.show_node(node).get("nics", []):
            if entry["label"] == nic:
                networks = dict(entry.get("networks", {}))
                with self._lock:
                    self._nic_cache[(node, nic)] = dict(networks)
                return networks
        raise UpstreamError(f"upstream {self.url}: node {node} has no nic {nic}")

    def nic_state(self, node: str, nic: str) -> PortState:
        return self._port_state(self.nic_networks(node, nic))

    def nic_states(self, node: str) -> dict[str, PortState]:
        """NIC label → what its upstream port carries, for every NIC of the node, in one read."""
        states = {}
        for entry in self.show_node(node).get("nics", []):
            networks = dict(entry.get("networks", {}))
            with self._lock:
                self._nic_cache[(node, entry["label"])] = dict(networks)
            states[entry["label"]] = self._port_state(networks)
        return states

    def _port_state(self, networks: dict[str, str]) -> PortState:
        native = networks.get(NATIVE)
        tagged = frozenset(ch.split("/", 1)[1] for ch in networks if ch != NATIVE)
        return PortState(self.vlan_of(native) if native else None, tagged)

    def set_nic_state(self, node: str, nic: str, state: PortState) -> None:
        """Make the NIC carry exactly ``state`` upstream: detach what is extra (tagged before native),
        connect what is missing (native before tagged), waiting for each action upstream.

        What the NIC carried after our last change is remembered, which saves reading it back first;
        if the upstream disagrees (someone else changed it), the change is retried on a fresh read. While
        the upstream NIC has a pending action (say, one we started before a crash), it waits its turn.
        """
        deadline = time.monotonic() + self.settings.action_timeout
        delay = 0.05
        with self._lock:
            known = self._nic_cache.get((node, nic))
        while True:
            try:
                if known is not None:
                    try:
                        self._apply_nic_state(node, nic, dict(known), state)
                        return
                    except UpstreamError:
                        log.info(
                            "upstream %s: %s/%s was not as remembered; reading it back", self.url, node, nic
                        )
                self._apply_nic_state(node, nic, self.nic_networks(node, nic), state)
                return
            except _Busy as busy:
                if time.monotonic() > deadline:
                    raise UpstreamError(f"upstream {self.url}: {node}/{nic} stayed busy: {busy}") from busy
                known = None
                time.sleep(delay)
                delay = min(delay * 1.5, 1.0)

    def _apply_nic_state(self, node: str, nic: str, current: dict[str, str], state: PortState) -> None:
        with self._lock:
            self._nic_cache.pop((node, nic), None)
        wanted: dict[str, str] = {f"vlan/{v}": f"vlan/{v}" for v in state.tagged}
        if state.native is not None:
            wanted[NATIVE] = state.native
        for channel, label in sorted(current.items(), key=lambda kv: kv[0] == NATIVE):
            want = wanted.get(channel)
            if want is None or (channel == NATIVE and self.vlan_of(label) != want):
                what = f"detaching {node}/{nic} from {label}"
                self._wait(self._change(what, self.client.node.detach_network, node, nic, label), what)
                current.pop(channel)
        for channel in sorted(wanted, key=lambda ch: ch != NATIVE):
            if channel in current:
                continue
            vlan = wanted[channel] if channel == NATIVE else channel.split("/", 1)[1]
            label = self.network_for_vlan(vlan)
            what = f"connecting {node}/{nic} to {label} on {channel}"
            self._wait(self._change(what, self.client.node.connect_network, node, nic, label, channel), what)
            current[channel] = label
        with self._lock:
            self._nic_cache[(node, nic)] = current

    def _change(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """Queue a NIC change upstream; `_Busy` if the NIC has a pending action there."""
        try:
            return self.call(what, fn, *args, passthrough=(BlockedError,))
        except BlockedError as exc:
            if "pending" in exc.msg or "already active" in exc.msg:  # rhaas's words, and HIL's
                raise _Busy(exc.msg) from exc
            raise UpstreamError(f"upstream {self.url} refused {what}: BlockedError: {exc.msg}") from exc

    def _wait(self, response: Any, what: str) -> None:
        """Wait for an upstream action: long-poll an rhaas upstream, poll a HIL one with backoff."""
        status_id = response["status_id"]
        deadline = time.monotonic() + self.settings.action_timeout
        delay = 0.005
        while True:
            action = self._show_action(status_id, what, min(5.0, max(deadline - time.monotonic(), 0.0)))
            if action["status"] == "DONE":
                return
            if action["status"] == "ERROR":
                raise UpstreamError(f"upstream {self.url}: {what} failed: {action.get('error', 'ERROR')}")
            if time.monotonic() > deadline:
                raise UpstreamError(
                    f"upstream {self.url}: {what} still pending after {self.settings.action_timeout:.0f} s"
                )
            if not self._long_poll:
                time.sleep(delay)
                delay = min(delay * 1.3, 0.5)

    def _show_action(self, status_id: str, what: str, wait: float) -> dict[str, Any]:
        show = self.client.node.show_networking_action
        if self._long_poll:
            try:
                return dict(self.call(what, show, status_id, wait=wait, passthrough=(ValidationError,)))
            except ValidationError:
                log.info("upstream %s has no long-poll: polling instead", self.url)
                self._long_poll = False
        return dict(self.call(what, show, status_id))


class UpstreamBackend(HardwareBackend):
    """A recursive instance: networks are the upstream's, and the nodes held there are wired through
    the local ``upstream`` switch (ports ``node/nic``) and powered through ``upstream`` OBMs. Switches and
    nodes an admin registers here are hardware, driven as on a base instance."""

    def __init__(
        self, upstream: Upstream, vlan_pool: Iterable[int] = (), policy: PoolSettings | None = None
    ) -> None:
        super().__init__(vlan_pool, policy)
        self.upstream = upstream

    def prepare(self, db: Session) -> None:
        super().prepare(db)
        self.ensure_switch(db)

    def allocate_network(self, db: Session, explicit_id: str) -> NetworkAllocation:
        if explicit_id != "":
            raise BadArgumentError("A recursive instance cannot create networks with an explicit net_id.")
        label, network_id = self.upstream.create_network()
        return NetworkAllocation(network_id, allocated=True, upstream_label=label)

    def release_network(self, db: Session, network: Network) -> None:
        if network.upstream_label is None:  # made while this instance was a base instance
            super().release_network(db, network)
        else:
            self.upstream.delete_network(network.upstream_label)

    def switch_driver(self, switch: Switch) -> SwitchDriver:
        driver = super().switch_driver(switch)
        if isinstance(driver, UpstreamSwitch):
            driver.upstream = self.upstream
        return driver

    def obm_driver(self, node: Node) -> OBMDriver:
        driver = super().obm_driver(node)
        if isinstance(driver, UpstreamOBM):
            driver.upstream = self.upstream
        return driver

    # -- the local rows of what is held upstream ------------------------------------------------------
    def ensure_switch(self, db: Session) -> Switch:
        """The local switch whose ports are the NICs of nodes held upstream (created if missing)."""
        settings = {"upstream": self.upstream.key}
        switch = db.scalar(select(Switch).where(Switch.label == UPSTREAM_SWITCH))
        if switch is None:
            switch = Switch(label=UPSTREAM_SWITCH, type=UpstreamSwitch.name, settings=settings)
            db.add(switch)
            db.flush()
        elif switch.settings != settings:
            switch.settings = settings
        return switch

    def import_node(self, db: Session, name: str) -> Node:
        """Create the local rows of a node this instance holds upstream: same name and NICs, each NIC on
        a port ``node/nic`` of the upstream switch, powered through the upstream."""
        shown = self.upstream.show_node(name)
        switch = self.ensure_switch(db)
        obm = {"upstream": self.upstream.key, "node": name}
        node = Node(label=name, obm_type=UpstreamOBM.name, obm_settings=obm, obm_enabled=False)
        db.add(node)
        for entry in shown.get("nics", []):
            port = Port(label=f"{name}/{entry['label']}", switch=switch)
            db.add(Nic(label=entry["label"], macaddr=entry["macaddr"], node=node, port=port))
        db.flush()
        return node

    @staticmethod
    def held_upstream() -> ColumnElement[bool]:
        """SQL: the node is one held upstream (powered through it), not one an admin registered here."""
        return Node.obm_type == UpstreamOBM.name
