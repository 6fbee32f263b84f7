"""The out-of-band management (BMC) driver interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from rhaas.errors import BadArgumentError, OBMError

#: Boot devices every OBM driver accepts (HIL/obmd's IPMI names).
BOOT_DEVICES = ("pxe", "disk", "none")


class OBMSettings(BaseModel):
    """HIL's in-tree OBM form: ``{"type", "host", "user", "password"}`` plus an optional ``port``."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(min_length=1, max_length=255)
    user: str = Field(max_length=255)
    password: str = Field(max_length=255)
    port: int = Field(default=623, ge=1, le=65535)


class OBMDriver(ABC):
    """The BMC of one node. Methods raise `rhaas.errors.OBMError` naming the BMC when it fails."""

    name: ClassVar[str]
    type_urls: ClassVar[tuple[str, ...]] = ()
    settings_model: ClassVar[type[BaseModel]] = OBMSettings
    #: Whether an admin may register a node with this OBM type through the API. False for a BMC that
    #: rhaas sets up itself (the upstream's power routes, for nodes imported from it).
    registrable: ClassVar[bool] = True
    #: Whether the settings hold credentials of a BMC that an admin may rotate.
    has_credentials: ClassVar[bool] = True
    #: The key of ``PUT /node/<node>``'s body that registers a node of this type: ``"obm"`` (HIL's
    #: in-tree form, ``{"type": …, …settings}``) or ``"obmd"`` (HIL master's, the settings alone).
    registration_form: ClassVar[str] = "obm"

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    @property
    def address(self) -> str:
        """Where the BMC is, for error messages."""
        return f"{self.settings.host}:{self.settings.port}"

    def enable(self) -> BaseModel | None:
        """Called when the node's OBM is enabled (every time, as HIL does): the settings to store from
        now on (e.g. with a session token), or None to keep them. Raises OBMError naming the BMC."""
        return None

    def disable(self) -> BaseModel | None:
        """Called when the node's OBM is disabled (every time): the settings to store, or None."""
        return None

    @abstractmethod
    def power_on(self) -> None: ...

    @abstractmethod
    def power_off(self) -> None: ...

    @abstractmethod
    def power_cycle(self, force: bool = False) -> None:
        """Reboot through firmware: ``force`` resets at once; otherwise a power cycle (on if off)."""

    @abstractmethod
    def power_status(self) -> str:
        """``"on"`` or ``"off"``."""

    @abstractmethod
    def set_bootdev(self, bootdev: str) -> None:
        """Set the next boot device, one of `BOOT_DEVICES`."""

    @abstractmethod
    def send_nmi(self) -> None:
        """Pulse the diagnostic interrupt (an NMI to the running OS)."""

    def nmi_unavailable(self) -> str | None:
        """Why this BMC cannot send an NMI at all (so a return takes the reboot path from the start), or
        None if it can (whether one NMI goes through is `send_nmi`'s business)."""
        return None

    def console(self) -> Iterator[bytes]:
        """Stream the node's serial console. Drivers without one raise OBMError."""
        raise OBMError(f"{self.name} BMC at {self.address} has no console support.")

    @staticmethod
    def check_bootdev(bootdev: str) -> None:
        """Raise BadArgumentError unless ``bootdev`` is one of `BOOT_DEVICES`."""
        if bootdev not in BOOT_DEVICES:
            raise BadArgumentError(
                f"Boot device {bootdev!r} is not legal; use one of: {', '.join(BOOT_DEVICES)}."
            )
