"""The backend interface: what core asks of the world beyond the database.

Core never asks which kind of instance it runs in. It asks its backend for a network (``allocate_network``),
gives one back (``release_network``), and gets the driver that programs a switch (``switch_driver``) or
controls a node's BMC (``obm_driver``). A base instance's backend answers with its VLAN pool and hardware
drivers (`rhaas.backends.hardware`); a recursive instance's with its upstream (`rhaas.backends.upstream`).
What a *driver type* can do is a class attribute of the driver (``registrable``, ``has_credentials``,
``capabilities``), not a comparison of names.

One backend is built per process (`rhaas.backends.make_backend`) and handed to whatever needs it: the
API's routes, the networking worker, the provisioning ticker. Nothing finds it through a global.

This module holds the interface only: no HTTP, no vendor, no knowledge of core's rules.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from sqlalchemy.orm import Session

from rhaas.config import PoolSettings
from rhaas.db.models import Network, Node, Switch
from rhaas.drivers.obm.base import OBMDriver
from rhaas.drivers.switch.base import SwitchDriver


@dataclass(frozen=True)
class NetworkAllocation:
    """A network's identity as its allocator handed it out."""

    #: The VLAN id the network's channels carry (``vlan/<network_id>``).
    network_id: str
    #: True if the allocator chose it (and takes it back on release); False for an admin's explicit id.
    allocated: bool
    #: The network's name upstream, for a network that lives there (a recursive instance's).
    upstream_label: str | None = None


class Backend(ABC):
    """The network allocator and the driver factories of one instance.

    ``policy`` bounds the free pool that a backend with an upstream claims nodes into; a base
    instance keeps it only to report it.
    """

    def __init__(self, policy: PoolSettings | None = None) -> None:
        self.policy = policy or PoolSettings()

    def prepare(self, db: Session) -> None:  # noqa: B027 - optional hook
        """Create the rows this backend needs at startup (idempotent; the caller commits)."""

    @abstractmethod
    def allocate_network(self, db: Session, explicit_id: str) -> NetworkAllocation:
        """A new network's identity: chosen by the allocator if ``explicit_id`` is ``""``, else that id
        if this allocator may hand it out. Raises AllocationError when none is left, BadArgumentError or
        BlockedError for an explicit id that is illegal or taken, UpstreamError from an upstream."""

    @abstractmethod
    def release_network(self, db: Session, network: Network) -> None:
        """Give back what `allocate_network` handed out for ``network`` (its row is deleted by core)."""

    @abstractmethod
    def switch_driver(self, switch: Switch) -> SwitchDriver:
        """A driver for ``switch`` (a new object: the caller may keep and reuse it, and closes it)."""

    @abstractmethod
    def obm_driver(self, node: Node) -> OBMDriver:
        """The driver of ``node``'s BMC. No access check: the caller has done it (or acts for rhaas)."""
