"""The IPMI OBM driver: power, boot device and NMI through a BMC over IPMI-over-LAN (RMCP+, "lanplus").

It speaks IPMI itself through pyghmi's client (no ipmitool process per call). What each method sends
(IPMI 2.0 "Chassis Control", netfn 0 command 2, unless noted):

    power_on             power up (1)
    power_off            power down (0): immediate, no ACPI shutdown
    power_cycle(False)   power cycle (2) if the node is on, power up (1) if it is off
    power_cycle(True)    hard reset (3) if the node is on, power up (1) if it is off
    power_status         Get Chassis Status (command 1): "on" or "off"
    set_bootdev          Set System Boot Options, boot flags: pxe -> "force PXE", disk -> "force hard
                         disk" (both persistent, as HIL's driver asks), none -> clear the override
    send_nmi             pulse diagnostic interrupt (4); ipmitool calls it "chassis power diag"
    console              Serial over LAN (payload type 1): the node's console output from now on

Sessions: pyghmi keeps one logged-in RMCP+ session per BMC and credentials, and process-wide I/O in a
thread of its own; logging in costs several round trips, a command on a live session one. This driver
reuses pyghmi's session for every call to the same (host, port, user) and lets only one call at a time
use it. Every failure (no answer, wrong password, an error completion code, garbage) raises
`OBMError` naming ``host:port``, within ``timeout`` seconds: pyghmi's own retries can take half a
minute when a BMC dies in mid-session, so each call runs in a helper thread the caller stops waiting
for. A command that timed out may still reach the BMC afterwards, as with any BMC; one that was
never sent (an earlier command still held the BMC) is dropped, never sent late.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from pyghmi.ipmi.command import Command
from pyghmi.ipmi.console import Console
from pyghmi.ipmi.private.session import Session

from rhaas.drivers.obm.base import OBMDriver, OBMSettings
from rhaas.errors import OBMError

#: Seconds a call waits for the BMC (login included) before raising OBMError.
DEFAULT_TIMEOUT = 8.0

# Chassis Control directives (IPMI 2.0 table 28-4).
_POWER_DOWN, _POWER_UP, _POWER_CYCLE, _HARD_RESET, _DIAG_INTERRUPT = 0, 1, 2, 3, 4
_NETFN_CHASSIS, _CMD_GET_STATUS, _CMD_CONTROL = 0x00, 0x01, 0x02
# How long a console reader waits in pyghmi's event loop before looking for data again.
_SOL_TICK = 0.2
# rhaas boot devices -> pyghmi's names for the IPMI boot device selectors.
_BOOTDEVS = {"pxe": "network", "disk": "hd", "none": "default"}

T = TypeVar("T")

_locks: dict[tuple[str, int, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def _bmc_lock(key: tuple[str, int, str]) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


class IPMIOBM(OBMDriver):
    name = "ipmi"
    type_urls = ("http://schema.massopencloud.org/haas/v0/obm/ipmi",)
    settings_model = OBMSettings

    def __init__(self, settings: OBMSettings, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(settings)
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.timeout = timeout

    # -- OBMDriver ----------------------------------------------------------------------------------

    def power_on(self) -> None:
        self._call("power on", lambda ipmi: self._control(ipmi, _POWER_UP))

    def power_off(self) -> None:
        self._call("power off", lambda ipmi: self._control(ipmi, _POWER_DOWN))

    def power_cycle(self, force: bool = False) -> None:
        def cycle(ipmi: Command) -> None:
            if not self._is_on(ipmi):
                self._control(ipmi, _POWER_UP)
            else:
                self._control(ipmi, _HARD_RESET if force else _POWER_CYCLE)

        self._call("reset" if force else "power cycle", cycle)

    def power_status(self) -> str:
        return "on" if self._call("power status", self._is_on) else "off"

    def set_bootdev(self, bootdev: str) -> None:
        self.check_bootdev(bootdev)
        self._call(
            f"set boot device {bootdev}", lambda ipmi: ipmi.set_bootdev(_BOOTDEVS[bootdev], persist=True)
        )

    def send_nmi(self) -> None:
        self._call("NMI", lambda ipmi: self._control(ipmi, _DIAG_INTERRUPT))

    def console(self) -> Iterator[bytes]:
        """Stream the node's serial console over SOL, from now on, until the iterator is closed.

        Returns once SOL is active (within ``timeout``); raises OBMError if it cannot be activated
        (wrong credentials, no answer, SOL taken by another client) and, while streaming, if the BMC
        goes away. The stream yields what arrived every fraction of a second, ``b""`` if nothing
        did, so that a reader can stop when it likes. Close it (or use `contextlib.closing`): that
        deactivates SOL so that another client can attach.
        """
        chunks: queue.SimpleQueue[bytes | dict[str, Any]] = queue.SimpleQueue()
        s = self.settings
        # _call logs in (or finds the live session) within the timeout; the console shares it.
        sol = self._call(
            "SOL activation",
            lambda ipmi: Console(s.host, s.user.encode(), s.password.encode(), chunks.put, port=s.port),
        )
        stream = self._stream(sol, chunks)
        next(stream)  # runs up to activation: from here on, closing the stream deactivates SOL
        return stream

    def _stream(self, sol: Console, chunks: queue.SimpleQueue[bytes | dict[str, Any]]) -> Iterator[bytes]:
        try:
            deadline = time.monotonic() + self.timeout
            while not sol.connected:
                self._console_events(chunks)
                if time.monotonic() > deadline:
                    raise OBMError(f"IPMI BMC at {self.address}: SOL not active after {self.timeout} s")
            yield b""
            while True:
                yield self._console_events(chunks)
        finally:
            sol.close()

    def _console_events(self, chunks: queue.SimpleQueue[bytes | dict[str, Any]]) -> bytes:
        # pyghmi delivers SOL data from its event loop, to whichever thread runs it: the reader does.
        Session.wait_for_rsp(timeout=_SOL_TICK)
        data = bytearray()
        while not chunks.empty():
            item = chunks.get()
            if isinstance(item, dict):
                if "error" in item:
                    raise OBMError(f"IPMI BMC at {self.address}: console: {item['error']}")
                continue  # {"info": "Remote system is powered down"} and the like
            data += item
        return bytes(data)

    # -- IPMI ---------------------------------------------------------------------------------------

    @staticmethod
    def _control(ipmi: Command, directive: int) -> None:
        ipmi.xraw_command(netfn=_NETFN_CHASSIS, command=_CMD_CONTROL, data=(directive,))

    @staticmethod
    def _is_on(ipmi: Command) -> bool:
        response = ipmi.xraw_command(netfn=_NETFN_CHASSIS, command=_CMD_GET_STATUS)
        return bool(response["data"][0] & 0x01)

    def _connect(self) -> Command:
        s = self.settings
        # Credentials as bytes: pyghmi files a session being set up under the credentials as given
        # but removes it under their encoded form, so str credentials leave a stale entry behind
        # and the next Command for the same BMC waits on it forever. With bytes both keys match, and
        # pyghmi hands every Command the live session instead of logging in again.
        return Command(bmc=s.host, userid=s.user.encode(), password=s.password.encode(), port=s.port)

    def _call(self, what: str, operation: Callable[[Command], T]) -> T:
        """Run ``operation`` on this BMC's session within ``self.timeout``; failures -> OBMError."""
        lock = _bmc_lock((self.settings.host, self.settings.port, self.settings.user))
        outcome: dict[str, Any] = {}
        # Whether the helper got the BMC or the caller gave up first is decided once, under this
        # lock: a command the caller was told was "not sent" must never be sent later.
        decided = threading.Lock()

        def run() -> None:
            with lock:
                with decided:
                    if outcome.get("abandoned"):
                        return
                    outcome["locked"] = True
                try:
                    outcome["value"] = operation(self._connect())
                except Exception as exc:  # pyghmi raises anything from IpmiException to struct.error
                    outcome["error"] = exc

        started = time.monotonic()
        worker = threading.Thread(target=run, name=f"rhaas-ipmi {self.address}", daemon=True)
        worker.start()
        worker.join(self.timeout)
        with decided:
            if worker.is_alive() and not outcome.get("locked"):
                outcome["abandoned"] = True
        if worker.is_alive():
            waited = time.monotonic() - started
            if outcome.get("locked"):
                msg = f"IPMI BMC at {self.address}: no answer to {what} after {waited:.1f} s"
            else:
                msg = f"IPMI BMC at {self.address}: {what} not sent, an earlier command still waits for it"
            raise OBMError(msg) from TimeoutError(msg)
        if "error" in outcome:
            exc = outcome["error"]
            detail = str(exc) if exc.args and exc.args[0] else "no answer"
            raise OBMError(f"IPMI BMC at {self.address}: {what} failed: {detail}") from exc
        value: T = outcome["value"]
        return value
