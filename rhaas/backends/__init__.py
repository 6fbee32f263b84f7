"""Backends: what a node's switch ports, BMC and networks really are.

Core talks to one interface, `rhaas.backends.base.Backend`: a network allocator and the factories of
switch and OBM drivers. A base instance's backend (`rhaas.backends.hardware`) allocates VLANs from its
pool and drives hardware through `rhaas.drivers`; a recursive instance's (`rhaas.backends.upstream`)
allocates networks upstream and hands the upstream switch and OBM drivers its upstream. The core rules
and the networking worker are the same at every level.

Backends import drivers, never the reverse, and never core.
"""

from __future__ import annotations

from rhaas.backends.base import Backend
from rhaas.backends.hardware import HardwareBackend
from rhaas.backends.upstream import Upstream, UpstreamBackend
from rhaas.config import Settings, parse_vlan_ranges


def make_backend(settings: Settings) -> Backend:
    """The backend these settings describe: upstream if ``[upstream] url`` is set, else hardware.

    Builds objects only: nothing is contacted until a network or a driver is asked for.
    """
    vlan_pool = parse_vlan_ranges(settings.networks.vlans)
    if settings.upstream.url:
        return UpstreamBackend(Upstream(settings.upstream), vlan_pool, settings.pool)
    return HardwareBackend(vlan_pool, settings.pool)
