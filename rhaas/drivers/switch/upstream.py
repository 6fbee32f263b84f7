"""The switch of a recursive instance: its upstream. A port is one node's NIC there (``node/nic``)."""

from __future__ import annotations

import re

from rhaas.backends import upstream
from rhaas.drivers.switch.base import PortState, SwitchDriver, SwitchSettings
from rhaas.errors import SwitchError, UpstreamError


class UpstreamSwitchSettings(SwitchSettings):
    upstream: str  # the key of the upstream in this process (its URL and project), never a credential


class UpstreamSwitch(SwitchDriver):
    """Programs a NIC's networks through the upstream's HIL API and reads them back from it."""

    name = "upstream"
    settings_model = UpstreamSwitchSettings
    port_pattern = re.compile(r"^[^/]{1,255}/[^/]{1,255}$")
    settings: UpstreamSwitchSettings

    def _split(self, port: str) -> tuple[str, str]:
        node, _, nic = port.partition("/")
        return node, nic

    def set_port(self, port: str, state: PortState) -> None:
        try:
            upstream.get(self.settings.upstream).set_nic_state(*self._split(port), state)
        except UpstreamError as exc:
            raise SwitchError(f"upstream switch, port {port}: {exc.msg}") from exc

    def get_port(self, port: str) -> PortState:
        try:
            return upstream.get(self.settings.upstream).nic_state(*self._split(port))
        except UpstreamError as exc:
            raise SwitchError(f"upstream switch, port {port}: {exc.msg}") from exc
