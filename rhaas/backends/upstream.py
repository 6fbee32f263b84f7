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
#: The upstream's extensions this module uses, each only when the upstream lists it in its
#: ``/active_extensions`` (a HIL lists none of them, and answers their routes with an HTML 404).
CONNECT_NODES = "rhaas.ext.connect_nodes"
POWER_NMI = "rhaas.ext.power_nmi"
LONG_POLL = "rhaas.ext.long_poll"


def route_refused(exc: RhaasError) -> bool:
    """Whether an error says the upstream has no such route or argument (so: not that extension): an
    HTML 404/405 (HIL), rhaas's JSON 404 ``No such route`` or 405, or HIL's 400 for an unknown argument."""
    if isinstance(exc, UpstreamError) and exc.http_status in (404, 405):
        return True
    return isinstance(exc, ValidationError) or (isinstance(exc, NotFoundError) and "route" in exc.msg)


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
        self._nic_cache: dict[tuple[str, str], dict[str, str]] = {}  # (node, nic) → channel → label
        self._extensions: frozenset[str] | None = None  # what /active_extensions listed, once read
        self._listing_note = ""  # why the listing is empty, when it was refused
        self._refused: dict[str, str] = {}  # extension → the refusal that turned it off for good
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

    # -- extensions -----------------------------------------------------------------------------------
    def extensions(self) -> frozenset[str]:
        """The upstream's active extensions, read once. HIL lists them to admins only: a refusal means
        none (plain HIL calls), an unreachable upstream raises UpstreamUnavailableError."""
        with self._lock:
            if self._extensions is not None:
                return self._extensions
        try:
            listed = self.call("listing its extensions", self.client.extensions.list_active)
            note = ""
        except UpstreamUnavailableError:
            raise
        except UpstreamError as exc:
            listed, note = [], f" (its /active_extensions was refused: {exc.msg})"
        found = frozenset(str(name) for name in listed or [])
        log.info("upstream %s: active extensions %s%s", self.url, sorted(found), note)
        with self._lock:
            self._extensions, self._listing_note = found, note
        return found

    def lacks(self, extension: str) -> str | None:
        """Why the upstream cannot serve ``extension`` (it does not list it, or refused it once), or None."""
        listed = self.extensions()
        with self._lock:
            if extension in self._refused:
                return f"upstream {self.url} refused {extension}: {self._refused[extension]}"
            if extension not in listed:
                return f"upstream {self.url} does not list {extension}{self._listing_note}"
        return None

    def refuse(self, extension: str, exc: RhaasError) -> None:
        """Record that the upstream refused an extension it listed: it is not tried again."""
        log.warning("upstream %s refused %s (not tried again): %s", self.url, extension, exc.msg)
        with self._lock:
            self._refused[extension] = f"{type(exc).__name__}: {exc.msg}"

    # -- nodes ----------------------------------------------------------------------------------------
    def project_nodes(self) -> list[str]:
        return list(self.call("listing our nodes", self.client.project.nodes_in, self.project))

    def free_nodes(self) -> list[str]:
        return list(self.call("listing free nodes", self.client.node.list, "free"))

    def show_node(self, node: str) -> dict[str, Any]:
        return dict(self.call(f"showing node {node}", self.client.node.show, node))

    def claim(
        self, count: int, name_filter: str = ".*", exclude: set[str] | None = None, *, exact: bool = False
    ) -> list[str]:
        """Claim up to ``count`` free upstream nodes (``exact``: all ``count`` or none); returns their names.

        An upstream listing ``rhaas.ext.connect_nodes`` serves an unfiltered request in one call (growing
        its own pool from its upstream if it must); otherwise, or if it refuses that call, free nodes are
        claimed one by one. With ``exact``, a shortfall gives back what was claimed and raises
        AllocationError: the upstream is left as it was.
        """
        if name_filter == ".*" and not exclude and self.lacks(CONNECT_NODES) is None:
            try:
                return list(self.client.project.connect_nodes(self.project, count))
            except UpstreamUnavailableError as exc:
                raise UpstreamUnavailableError(
                    f"upstream {self.url} is unreachable (claiming {count} nodes): {exc.msg}"
                ) from exc
            except AllocationError as exc:  # the upstream claims all or nothing
                if exact:
                    raise AllocationError(
                        f"upstream {self.url} has no {count} free nodes: {exc.msg}"
                    ) from exc
            except RhaasError as exc:
                self.refuse(CONNECT_NODES, exc)
        pattern = re.compile(name_filter)
        claimed: list[str] = []
        for name in self.free_nodes():
            if len(claimed) >= count:
                break
            if not pattern.search(name) or name in (exclude or set()):
                continue
            if self.claim_node(name):
                claimed.append(name)
        if exact and len(claimed) < count:
            self.give_back(claimed)
            raise AllocationError(
                f"upstream {self.url} had only {len(claimed)} free nodes to claim; {count} asked for."
            )
        return claimed

    def give_back(self, names: list[str]) -> None:
        """Detach nodes just claimed (no networks, no OBM yet) from our upstream project, best effort: one
        that stays is found by reconcile (held upstream, unknown here)."""
        for name in names:
            try:
                self.call(f"giving back {name}", self.client.project.detach, self.project, name)
            except UpstreamError as exc:
                log.warning("upstream %s: could not give back %s: %s", self.url, name, exc.msg)

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

    def set_obm(self, node: str, enabled: bool) -> None:
        """Enable or disable the node's OBM upstream (a downstream ``PUT /node/<n>/obm``)."""
        method = self.client.node.enable_obm if enabled else self.client.node.disable_obm
        self.call(f"{'enabling' if enabled else 'disabling'} OBM of {node}", method, node)
        with self._lock:
            if enabled:
                self._obm_enabled.add(node)
            else:
                self._obm_enabled.discard(node)

    def nmi_unavailable(self) -> str | None:
        """Why the upstream cannot send an NMI (HIL and its obmd have no such call), or None."""
        return self.lacks(POWER_NMI)

    def node_call(self, node: str, what: str, method: str, *args: object) -> object:
        """Call the client's ``node.<method>(node, *args)`` (a power or console route), the node's OBM
        enabled upstream first. An NMI is not even tried on an upstream without one."""
        if method == "power_nmi":
            why = self.nmi_unavailable()
            if why is not None:
                raise UpstreamError(f"{why}: it cannot send an NMI to {node}")
        try:
            return self.call(f"{what} {node}", getattr(self.obm(node).node, method), node, *args)
        except UpstreamError as exc:
            cause = exc.__cause__
            if method == "power_nmi" and isinstance(cause, RhaasError) and route_refused(cause):
                self.refuse(POWER_NMI, cause)
            raise

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
            if self.lacks(LONG_POLL) is not None:
                time.sleep(delay)
                delay = min(delay * 1.3, 0.5)

    def _show_action(self, status_id: str, what: str, wait: float) -> dict[str, Any]:
        show = self.client.node.show_networking_action
        if self.lacks(LONG_POLL) is None:
            try:
                return dict(self.call(what, show, status_id, wait=wait, passthrough=(ValidationError,)))
            except ValidationError as exc:
                self.refuse(LONG_POLL, exc)
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
