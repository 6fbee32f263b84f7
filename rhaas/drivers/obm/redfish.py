"""The Redfish OBM driver: power, boot device and NMI through a BMC's Redfish service, with sushy.

What each method asks of the BMC's one ComputerSystem (``/redfish/v1/Systems/<id>``):

    power_on             ComputerSystem.Reset On, if PowerState is not On
    power_off            ComputerSystem.Reset ForceOff (immediate, no ACPI shutdown), if not Off
    power_cycle(False)   PowerCycle (else ForceRestart) if on; On if off
    power_cycle(True)    ForceRestart (else PowerCycle) if on; On if off
    power_status         PowerState: "off" for Off, "on" otherwise (On, PoweringOn, PoweringOff, Paused)
    set_bootdev          PATCH Boot: pxe -> BootSourceOverrideTarget Pxe, disk -> Hdd, enabled
                         "Continuous" (as HIL's IPMI driver asks) or "Once" (``boot_override``), and
                         BootSourceOverrideMode UEFI or Legacy if ``boot_mode`` says; none ->
                         BootSourceOverrideEnabled Disabled
    send_nmi             ComputerSystem.Reset Nmi, only if ResetType@Redfish.AllowableValues lists it

The reset types used are the ones the system lists as allowable; a BMC that lists none is taken to allow
all (as sushy does). Authentication: a Redfish session (POST to the SessionService, then X-Auth-Token),
falling back to HTTP basic authentication when the BMC refuses sessions; one client (and session) per
BMC and credentials is kept for the life of the process and reused by every call, one call at a time. An
expired session is opened again by itself. TLS: ``verify`` true checks the BMC's certificate against the
system's CAs, a path against that CA bundle, false not at all.

Every failure (no answer within ``timeout``, wrong credentials, a refused certificate, an error status,
garbage) raises `OBMError` naming ``host:port``. The password is never logged nor put in a message.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import sushy
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator
from sushy import BootSource, BootSourceOverrideEnabled, BootSourceOverrideMode, PowerState, ResetType
from sushy import exceptions as sushy_errors
from sushy.resources.system.system import System

from rhaas.drivers.obm.base import OBMDriver
from rhaas.errors import OBMError

log = logging.getLogger(__name__)

#: Seconds a request waits for the BMC (to connect, and then to answer) before raising OBMError.
DEFAULT_TIMEOUT = 10.0
#: A host name, an IPv4 address or an IPv6 address (bare or in brackets): nothing that changes a URL.
HOST_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)$"

_TARGETS = {"pxe": BootSource.PXE, "disk": BootSource.HDD}
_ENABLED = {"once": BootSourceOverrideEnabled.ONCE, "continuous": BootSourceOverrideEnabled.CONTINUOUS}
_MODES = {"uefi": BootSourceOverrideMode.UEFI, "legacy": BootSourceOverrideMode.LEGACY}

T = TypeVar("T")


class RedfishSettings(BaseModel):
    """``{"type": "redfish", "host", "user", "password"}`` and optionally the rest."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(min_length=1, max_length=255, pattern=HOST_PATTERN)
    user: str = Field(max_length=255)
    password: str = Field(max_length=255, repr=False)
    #: Default: 443 for https, 80 for http.
    port: int | None = Field(default=None, ge=1, le=65535)
    scheme: Literal["https", "http"] = "https"
    #: Check the BMC's certificate: true (against the system's CAs), false, or a CA bundle's absolute path.
    verify: StrictBool | str = True
    #: The system's Id (or its path) when the BMC has more than one; default: its only one.
    system: str | None = Field(default=None, min_length=1, max_length=255, pattern=r"^[A-Za-z0-9._~/-]+$")
    #: Whether a boot device set with set_bootdev holds for every boot or only the next.
    boot_override: Literal["continuous", "once"] = "continuous"
    #: The boot mode set with the boot device; default: leave the BMC's as it is.
    boot_mode: Literal["uefi", "legacy"] | None = None

    @field_validator("verify")
    @classmethod
    def _ca_bundle_path(cls, value: bool | str) -> bool | str:
        if isinstance(value, str) and (not value.startswith("/") or "\0" in value or len(value) > 4096):
            raise ValueError("verify is true, false, or the absolute path of a CA bundle")
        return value

    @model_validator(mode="after")
    def _default_port(self) -> RedfishSettings:
        if self.port is None:
            self.port = 443 if self.scheme == "https" else 80
        return self

    @property
    def base_url(self) -> str:
        host = self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.port}"


class _Client:
    """A logged-in sushy client of one BMC, and the path of the system it drives."""

    def __init__(self, root: sushy.Sushy, system_path: str) -> None:
        self.root = root
        self.system_path = system_path


_clients: dict[tuple[Any, ...], _Client] = {}
_locks: dict[tuple[Any, ...], threading.Lock] = {}
_guard = threading.Lock()


class RedfishOBM(OBMDriver):
    name = "redfish"
    # HIL has no Redfish driver, so no HIL type URL of its own.
    settings_model = RedfishSettings
    settings: RedfishSettings

    def __init__(self, settings: RedfishSettings, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(settings)
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.timeout = timeout

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    # -- OBMDriver ----------------------------------------------------------------------------------

    def power_on(self) -> None:
        def on(system: System) -> None:
            if not self._is_on(system):
                self._reset(system, ResetType.ON, ResetType.FORCE_ON)

        self._call("power on", on)

    def power_off(self) -> None:
        def off(system: System) -> None:
            if system.power_state != PowerState.OFF:
                self._reset(system, ResetType.FORCE_OFF)

        self._call("power off", off)

    def power_cycle(self, force: bool = False) -> None:
        def cycle(system: System) -> None:
            if not self._is_on(system):
                self._reset(system, ResetType.ON, ResetType.FORCE_ON)
                return
            order = (ResetType.FORCE_RESTART, ResetType.POWER_CYCLE)
            self._reset(system, *(order if force else order[::-1]))

        self._call("reset" if force else "power cycle", cycle)

    def power_status(self) -> str:
        return "on" if self._call("power status", self._is_on) else "off"

    def set_bootdev(self, bootdev: str) -> None:
        self.check_bootdev(bootdev)
        s = self.settings

        def set_boot(system: System) -> None:
            if bootdev == "none":
                system.set_system_boot_options(enabled=BootSourceOverrideEnabled.DISABLED)
                return
            mode = _MODES[s.boot_mode] if s.boot_mode is not None else None
            system.set_system_boot_options(
                target=_TARGETS[bootdev], enabled=_ENABLED[s.boot_override], mode=mode
            )

        self._call(f"set boot device {bootdev}", set_boot)

    def send_nmi(self) -> None:
        def nmi(system: System) -> None:
            why = self._no_nmi(system)
            if why is not None:
                raise OBMError(why)
            if not self._is_on(system):
                raise OBMError(f"Redfish BMC at {self.address}: the node is off, no NMI delivered")
            self._reset(system, ResetType.NMI)  # listed: _no_nmi saw it

        self._call("NMI", nmi)

    def nmi_unavailable(self) -> str | None:
        return self._call("reading the allowed reset types", self._no_nmi)

    # -- Redfish ------------------------------------------------------------------------------------

    def _no_nmi(self, system: System) -> str | None:
        allowed = system.get_allowed_reset_system_values()
        if ResetType.NMI in allowed:
            return None
        return f"Redfish BMC at {self.address} has no NMI: its system allows only {_names(allowed)} resets"

    @staticmethod
    def _is_on(system: System) -> bool:
        state = system.power_state
        if state is None:
            raise ValueError("the system has no PowerState")
        return bool(state != PowerState.OFF)

    def _reset(self, system: System, *choices: ResetType) -> None:
        """Reset the system with the first of ``choices`` that it allows."""
        allowed = system.get_allowed_reset_system_values()
        for reset in choices:
            if reset in allowed:
                system.reset_system(reset)
                return
        wanted = " nor ".join(r.value for r in choices)
        raise OBMError(
            f"Redfish BMC at {self.address} allows no {wanted} reset (it allows {_names(allowed)})."
        )

    def _key(self) -> tuple[Any, ...]:
        s = self.settings
        return (s.base_url, s.user, s.password, s.verify, s.system, self.timeout)

    def _connect(self) -> _Client:
        s = self.settings
        root = sushy.Sushy(
            s.base_url,
            username=s.user,
            password=s.password,
            verify=s.verify,
            read_timeout=self.timeout,
            connect_timeout=self.timeout,
            server_side_retries=1,
            server_side_retries_delay=1,
        )
        if s.system is None:
            path = root.get_system().path  # its only system, or UnknownDefaultError
        elif s.system.startswith("/"):
            path = s.system
        else:
            path = f"{root.get_system_collection().path.rstrip('/')}/{s.system}"
        return _Client(root, path)

    def _call(self, what: str, operation: Callable[[System], T]) -> T:
        """Run ``operation`` on a fresh view of the system, alone on this BMC; failures -> OBMError."""
        key = self._key()
        with _guard:
            lock = _locks.setdefault(key, threading.Lock())
        if not lock.acquire(timeout=2 * self.timeout):
            raise OBMError(
                f"Redfish BMC at {self.address}: {what} not sent, an earlier call still waits for it"
            )
        try:
            client = _clients.get(key)
            try:
                if client is None:
                    client = _clients[key] = self._connect()
                return operation(client.root.get_system(client.system_path))
            except OBMError:
                raise
            except Exception as exc:  # sushy's errors, requests' OSErrors, and whatever garbage raises
                if isinstance(exc, sushy_errors.ConnectionError | sushy_errors.AccessError):
                    _clients.pop(key, None)  # log in again next time
                raise OBMError(f"Redfish BMC at {self.address}: {what} failed: {_explain(exc)}") from exc
        finally:
            lock.release()


def _names(values: Any) -> str:
    names = sorted(getattr(v, "value", str(v)) for v in values)
    return ", ".join(names) or "no"


def _explain(exc: Exception) -> str:
    """What went wrong, for an admin, without a credential (sushy's messages hold none)."""
    text = str(exc)
    if isinstance(exc, sushy_errors.AccessError):
        return f"the BMC refused the credentials (HTTP {exc.status_code})"
    if isinstance(exc, sushy_errors.ConnectionError) and "CERTIFICATE_VERIFY_FAILED" in text:
        return (
            "the BMC's TLS certificate is not trusted (set verify to the path of the CA bundle that "
            f"signed it, or to false): {text}"
        )
    if isinstance(exc, sushy_errors.HTTPError) and exc.detail:
        return f"HTTP {exc.status_code}: {exc.detail}"
    return text or type(exc).__name__
