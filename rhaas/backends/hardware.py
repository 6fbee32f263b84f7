"""The backend of a base instance: networks from the VLAN pool, switches and BMCs through their drivers.

Drivers come from the registry (`rhaas.drivers.registry`) by the ``type`` stored with each switch and
node, with the settings stored beside it. A row whose driver needs an upstream (left behind by an
instance that was recursive before) gets a driver without one, which refuses every call with
UpstreamUnavailableError.

It must not hold rules about who may do what (core does) or open connections before a driver is used.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from rhaas.backends import vlans
from rhaas.backends.base import Backend, NetworkAllocation
from rhaas.config import PoolSettings
from rhaas.db.models import Network, Node, Switch
from rhaas.drivers.obm.base import OBMDriver
from rhaas.drivers.registry import obm_driver, switch_driver
from rhaas.drivers.switch.base import SwitchDriver
from rhaas.errors import BlockedError


class HardwareBackend(Backend):
    """``vlan_pool``: the VLAN numbers networks are allocated from, added to the ``vlan`` table by
    `prepare` (numbers already there stay as they are)."""

    def __init__(self, vlan_pool: Iterable[int] = (), policy: PoolSettings | None = None) -> None:
        super().__init__(policy)
        self.vlan_pool = list(vlan_pool)

    def prepare(self, db: Session) -> None:
        vlans.populate(db, self.vlan_pool)

    def allocate_network(self, db: Session, explicit_id: str) -> NetworkAllocation:
        if explicit_id == "":
            return NetworkAllocation(str(vlans.allocate(db)), allocated=True)
        network_id = str(vlans.claim_explicit(db, explicit_id))
        if db.scalar(select(exists().where(Network.network_id == network_id))):
            raise BlockedError(f"VLAN {network_id} is already used by another network.")
        return NetworkAllocation(network_id, allocated=False)

    def release_network(self, db: Session, network: Network) -> None:
        if network.allocated:
            vlans.release(db, int(network.network_id))
        else:
            vlans.release_explicit(db, network.network_id)

    def switch_driver(self, switch: Switch) -> SwitchDriver:
        cls = switch_driver(switch.type)
        return cls(switch.label, cls.settings_model.model_validate(switch.settings))

    def obm_driver(self, node: Node) -> OBMDriver:
        cls = obm_driver(node.obm_type)
        return cls(cls.settings_model.model_validate(node.obm_settings))
