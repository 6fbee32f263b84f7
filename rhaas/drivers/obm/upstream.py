"""The BMC of a recursive instance's node: the upstream's power routes for that node.

The upstream backend (`rhaas.backends.upstream`) builds this driver and hands it the upstream it talks
to; the driver never looks one up, imports no backend, and its settings never hold a credential.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from rhaas.drivers.obm.base import OBMDriver
from rhaas.errors import UpstreamUnavailableError


class UpstreamPower(Protocol):
    """What this driver needs of the upstream: one node's power and console routes there."""

    #: Which upstream this is (its URL and project), as the node's OBM settings name it.
    key: str

    def node_call(self, node: str, what: str, method: str, *args: object) -> object:
        """Call the client's ``node.<method>(node, *args)`` upstream, the node's OBM enabled first."""
        ...

    def set_obm(self, node: str, enabled: bool) -> None:
        """Enable or disable the node's OBM upstream."""
        ...

    def nmi_unavailable(self) -> str | None:
        """Why the upstream cannot send NMIs, or None."""
        ...


class UpstreamOBMSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    upstream: str  # the key of the upstream (its URL and project), never a credential
    node: str  # the node's name upstream


class UpstreamOBM(OBMDriver):
    """Forwards OBM enable/disable, power, boot device, NMI and console to the upstream (enabling its OBM
    there before a power call, as HIL requires). On an upstream without NMI (HIL), `nmi_unavailable` says
    so and `send_nmi` raises UpstreamError without trying.

    Errors come back as UpstreamError (502) or UpstreamUnavailableError (503) naming the upstream;
    built without an upstream, or with another one than its settings name, every call raises
    UpstreamUnavailableError.
    """

    name = "upstream"
    settings_model = UpstreamOBMSettings
    registrable = False
    has_credentials = False
    settings: UpstreamOBMSettings

    def __init__(self, settings: UpstreamOBMSettings, upstream: UpstreamPower | None = None) -> None:
        super().__init__(settings)
        self.upstream = upstream

    @property
    def address(self) -> str:
        return f"{self.settings.upstream} node {self.settings.node}"

    def _upstream(self) -> UpstreamPower:
        if self.upstream is None or self.upstream.key != self.settings.upstream:
            raise UpstreamUnavailableError(
                f"No upstream {self.settings.upstream} is configured in this process."
            )
        return self.upstream

    def _do(self, what: str, method: str, *args: object) -> object:
        return self._upstream().node_call(self.settings.node, what, method, *args)

    def enable(self) -> None:
        """The upstream's OBM of the node follows (HIL's ``PUT /node/<n>/obm``): nothing to store here."""
        self._upstream().set_obm(self.settings.node, True)

    def disable(self) -> None:
        self._upstream().set_obm(self.settings.node, False)

    def nmi_unavailable(self) -> str | None:
        return self._upstream().nmi_unavailable()

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
            return iter([_as_bytes(result)])
        return (_as_bytes(chunk) for chunk in result)  # type: ignore[attr-defined]


def _as_bytes(chunk: str | bytes) -> bytes:
    """The client hands the console over as text; OBMDriver.console promises bytes."""
    return chunk.encode() if isinstance(chunk, str) else chunk
