"""The switch driver interface.

A switch driver programs the VLANs of one port. rhaas always hands it the port's *whole* desired state
(native VLAN and tagged VLANs), so applying a state twice is harmless: a worker that dies mid-action can
simply apply it again on restart.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from rhaas.errors import BadArgumentError
from rhaas.ports import NATIVELESS_TRUNK, PortState

__all__ = ["NATIVELESS_TRUNK", "PortState", "SwitchDriver", "SwitchSettings"]


class SwitchSettings(BaseModel):
    """Base of every driver's settings model: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")


class SwitchDriver(ABC):
    """One switch. Subclasses set the class attributes and implement `set_port` and `get_port`.

    Methods raise `rhaas.errors.SwitchError` (naming the switch) when the device fails (``transient``
    if the failure may pass by itself), and `rhaas.errors.BadArgumentError` for a port name the switch
    cannot have.
    """

    #: Short name used in the API and CLI (``"ovs"``).
    name: ClassVar[str]
    #: HIL's type URLs that also select this driver.
    type_urls: ClassVar[tuple[str, ...]] = ()
    #: Capabilities reported by ``GET /switch/<name>``.
    capabilities: ClassVar[tuple[str, ...]] = (NATIVELESS_TRUNK,)
    #: The settings this driver accepts at registration.
    settings_model: ClassVar[type[SwitchSettings]] = SwitchSettings
    #: Legal port names.
    port_pattern: ClassVar[re.Pattern[str]] = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./:-]{0,63}$")
    #: Whether an admin may register a switch of this type through the API. False for a switch that
    #: rhaas creates and manages itself (a recursive instance's upstream).
    registrable: ClassVar[bool] = True
    #: Seconds during which the networking worker keeps retrying a change that failed with a transient
    #: error (``SwitchError(transient=True)``), with a capped exponential backoff; a definite error then
    #: fails at once. 0: a few quick attempts, whatever the error.
    retry_window: float = 0.0

    def __init__(self, switch_name: str, settings: SwitchSettings) -> None:
        self.switch_name = switch_name
        self.settings = settings

    @classmethod
    def validate_port_name(cls, port: str) -> None:
        """Raise BadArgumentError unless ``port`` is a legal port name on a switch of this type."""
        if not cls.port_pattern.fullmatch(port):
            raise BadArgumentError(f"Port name {port!r} is not legal for a {cls.name} switch.")

    @abstractmethod
    def set_port(self, port: str, state: PortState) -> None:
        """Make ``port`` carry exactly ``state`` (idempotent)."""

    @abstractmethod
    def get_port(self, port: str) -> PortState:
        """Read back what ``port`` carries now, from the device itself."""

    def reset_port(self, port: str) -> None:
        """Remove every VLAN from ``port``."""
        self.set_port(port, PortState())

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Default: nothing to release."""
