"""The switch of a recursive instance: its upstream. A port is one node's NIC there (``node/nic``).

The upstream backend (`rhaas.backends.upstream`) builds this driver and hands it the upstream it talks
to; the driver never looks one up, imports no backend, and its settings never hold a credential.
"""

from __future__ import annotations

import re
from typing import Protocol

from rhaas.drivers.switch.base import SwitchDriver, SwitchSettings
from rhaas.errors import SwitchError, UpstreamError, UpstreamUnavailableError
from rhaas.ports import PortState


class UpstreamNics(Protocol):
    """What this driver needs of the upstream: what a node's NIC carries there, read and set."""

    #: Which upstream this is (its URL and project), as the switch's settings name it.
    key: str
    #: How long a NIC change may take there, outages included ([upstream] action_timeout).
    action_timeout: float

    def nic_state(self, node: str, nic: str) -> PortState: ...

    def set_nic_state(self, node: str, nic: str, state: PortState) -> None: ...


class UpstreamSwitchSettings(SwitchSettings):
    upstream: str  # the key of the upstream (its URL and project), never a credential


class UpstreamSwitch(SwitchDriver):
    """Programs a NIC's networks through the upstream's HIL API and reads them back from it.

    Built without an upstream, or with another one than its settings name (the instance's upstream
    changed since the switch was created), every call raises UpstreamUnavailableError as a SwitchError.
    A SwitchError is ``transient`` when the upstream's failure was (unreachable, timed out, a 5xx), so
    the worker retries it within the upstream's action timeout, and fails a definite refusal at once.
    """

    name = "upstream"
    settings_model = UpstreamSwitchSettings
    port_pattern = re.compile(r"^[^/]{1,255}/[^/]{1,255}$")
    registrable = False
    settings: UpstreamSwitchSettings

    def __init__(
        self, switch_name: str, settings: UpstreamSwitchSettings, upstream: UpstreamNics | None = None
    ) -> None:
        super().__init__(switch_name, settings)
        self.upstream = upstream

    def _up(self) -> UpstreamNics:
        if self.upstream is None or self.upstream.key != self.settings.upstream:
            raise UpstreamUnavailableError(
                f"No upstream {self.settings.upstream} is configured in this process."
            )
        return self.upstream

    @property
    def retry_window(self) -> float:  # type: ignore[override]
        """An upstream that is away may come back: its changes are retried within its action timeout."""
        return self.upstream.action_timeout if self.upstream is not None else 0.0

    def _split(self, port: str) -> tuple[str, str]:
        node, _, nic = port.partition("/")
        return node, nic

    def set_port(self, port: str, state: PortState) -> None:
        try:
            self._up().set_nic_state(*self._split(port), state)
        except UpstreamError as exc:
            raise SwitchError(f"upstream switch, port {port}: {exc.msg}", transient=exc.transient) from exc

    def get_port(self, port: str) -> PortState:
        try:
            return self._up().nic_state(*self._split(port))
        except UpstreamError as exc:
            raise SwitchError(f"upstream switch, port {port}: {exc.msg}", transient=exc.transient) from exc
