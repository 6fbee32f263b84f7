"""What every layer says about a switch port: the VLANs it carries, channel names, switch capabilities.

Drivers program ports, backends forward them upstream, core computes them from attachments and the worker
applies them; they all share these values. Keeping them here, in a module that imports nothing from
rhaas, is what lets `rhaas.drivers` and `rhaas.backends` use them without importing each other.

Values only: no I/O, no database rows, no driver or backend code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: The channel of a NIC's untagged network (HIL's name); a tagged network's channel is ``vlan/<id>``.
NATIVE = "vlan/native"

#: The capability HIL reports for switches that can trunk tagged VLANs without a native one.
NATIVELESS_TRUNK = "nativeless-trunk-mode"


@dataclass(frozen=True)
class PortState:
    """The VLANs a port carries: ``native`` untagged (or None), ``tagged`` as 802.1Q tags."""

    native: str | None = None
    tagged: frozenset[str] = field(default_factory=frozenset)

    def as_dict(self) -> dict[str, object]:
        return {"native": self.native, "tagged": sorted(self.tagged, key=_vlan_key)}


def _vlan_key(vlan: str) -> tuple[int, str]:
    return (int(vlan), vlan) if vlan.isdigit() else (1 << 30, vlan)
