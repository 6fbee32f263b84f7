"""Drivers by name. Modules load lazily so a deployment pays only for the drivers it uses.

A switch's or node's ``type`` may be the short name (``"ovs"``) or one of HIL's type URLs
(``"http://schema.massopencloud.org/haas/v0/switches/ovs"``).
"""

from __future__ import annotations

import importlib
from typing import TypeVar

from rhaas.drivers.obm.base import OBMDriver
from rhaas.drivers.switch.base import SwitchDriver
from rhaas.errors import BadArgumentError

SWITCH_DRIVERS: dict[str, str] = {
    "mock": "rhaas.drivers.switch.mock:MockSwitch",
    "ovs": "rhaas.drivers.switch.ovs:OVSSwitch",
    "upstream": "rhaas.drivers.switch.upstream:UpstreamSwitch",
}
OBM_DRIVERS: dict[str, str] = {
    "mock": "rhaas.drivers.obm.mock:MockOBM",
    "ipmi": "rhaas.drivers.obm.ipmi:IPMIOBM",
    "obmd": "rhaas.drivers.obm.obmd:ObmdOBM",
    "redfish": "rhaas.drivers.obm.redfish:RedfishOBM",
    "upstream": "rhaas.drivers.obm.upstream:UpstreamOBM",
}
#: Registration forms other than HIL's ``{"obm": {"type": …}}``: the body's key → the driver it names.
OBM_FORMS: dict[str, str] = {"obmd": "obmd"}
HIL_SWITCH_URL = "http://schema.massopencloud.org/haas/v0/switches/"
HIL_OBM_URL = "http://schema.massopencloud.org/haas/v0/obm/"

D = TypeVar("D")


def _load(spec: str) -> type:
    module, _, attr = spec.partition(":")
    cls: type = getattr(importlib.import_module(module), attr)
    return cls


def _short_name(type_name: str, url_prefix: str) -> str:
    for prefix in (url_prefix, url_prefix.replace("/haas/", "/hil/")):
        if type_name.startswith(prefix):
            return type_name[len(prefix) :]
    return type_name


def switch_driver(type_name: str) -> type[SwitchDriver]:
    """The switch driver class for a short name or HIL type URL; BadArgumentError if unknown."""
    name = _short_name(type_name, HIL_SWITCH_URL)
    if name not in SWITCH_DRIVERS:
        raise BadArgumentError(
            f"Unknown switch type {type_name!r}; known: {', '.join(sorted(SWITCH_DRIVERS))}."
        )
    cls = _load(SWITCH_DRIVERS[name])
    assert issubclass(cls, SwitchDriver)
    return cls


def obm_driver(type_name: str) -> type[OBMDriver]:
    """The OBM driver class for a short name or HIL type URL; BadArgumentError if unknown."""
    name = _short_name(type_name, HIL_OBM_URL)
    if name not in OBM_DRIVERS:
        raise BadArgumentError(f"Unknown OBM type {type_name!r}; known: {', '.join(sorted(OBM_DRIVERS))}.")
    cls = _load(OBM_DRIVERS[name])
    assert issubclass(cls, OBMDriver)
    return cls
