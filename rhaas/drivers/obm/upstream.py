"""The BMC of a recursive instance's node: the upstream's power routes for that node."""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import BaseModel, ConfigDict

from rhaas.backends import upstream
from rhaas.drivers.obm.base import OBMDriver


class UpstreamOBMSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    upstream: str  # the key of the upstream in this process
    node: str  # the node's name upstream


class UpstreamOBM(OBMDriver):
    """Forwards power, boot device, NMI and console to the upstream (enabling its OBM there first).

    Errors come back as UpstreamError (502) or UpstreamUnavailableError (503) naming the upstream.
    """

    name = "upstream"
    settings_model = UpstreamOBMSettings
    settings: UpstreamOBMSettings

    @property
    def address(self) -> str:
        return f"{self.settings.upstream} node {self.settings.node}"

    def _up(self) -> upstream.Upstream:
        return upstream.get(self.settings.upstream)

    def _do(self, what: str, method: str, *args: object) -> object:
        up, node = self._up(), self.settings.node
        return up.call(f"{what} {node}", getattr(up.obm(node).node, method), node, *args)

    def power_on(self) -> None:
        self._do("powering on", "power_on")

    def power_off(self) -> None:
        self._do("powering off", "power_off")

    def power_cycle(self, force: bool = False) -> None:
        self._do("power-cycling", "power_cycle", force)

    def power_status(self) -> str:
        result = self._do("reading power status of", "power_status")
        return str(result["power_status"] if isinstance(result, dict) else result)

    def set_bootdev(self, bootdev: str) -> None:
        self.check_bootdev(bootdev)
        self._do("setting the boot device of", "set_bootdev", bootdev)

    def send_nmi(self) -> None:
        self._do("sending an NMI to", "power_nmi")

    def console(self) -> Iterator[bytes]:
        result = self._do("reading the console of", "show_console")
        if isinstance(result, str | bytes):
            return iter([result.encode() if isinstance(result, str) else result])
        return iter(result)  # type: ignore[call-overload]
