"""A fake BMC kept in memory, keyed by host: for development, tests and benchmarks.

Fault injection: a host named ``fail…`` refuses every call (as an unreachable BMC would), and ``delay``
seconds are added to every call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

from pydantic import Field

from rhaas.drivers.obm.base import OBMDriver, OBMSettings
from rhaas.errors import OBMError


class MockOBMSettings(OBMSettings):
    delay: float = Field(default=0.0, ge=0, le=60)


@dataclass
class MockMachine:
    power: str = "off"
    bootdev: str = "disk"
    boots: int = 0
    nmis: int = 0
    console: list[str] = field(default_factory=list)


class MockOBM(OBMDriver):
    name = "mock"
    type_urls = ("http://schema.massopencloud.org/haas/v0/obm/mock",)
    settings_model = MockOBMSettings
    settings: MockOBMSettings

    machines: ClassVar[dict[str, MockMachine]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def _machine(self) -> MockMachine:
        if self.settings.delay:
            time.sleep(self.settings.delay)
        if self.settings.host.startswith("fail"):
            raise OBMError(f"mock BMC at {self.address}: no answer (injected)")
        with self._lock:
            return self.machines.setdefault(self.address, MockMachine())

    def _log(self, machine: MockMachine, line: str) -> None:
        machine.console.append(line)

    def power_on(self) -> None:
        m = self._machine()
        if m.power == "off":
            m.power, m.boots = "on", m.boots + 1
            self._log(m, f"boot {m.boots} from {m.bootdev}")

    def power_off(self) -> None:
        m = self._machine()
        m.power = "off"
        self._log(m, "power off")

    def power_cycle(self, force: bool = False) -> None:
        m = self._machine()
        m.power, m.boots = "on", m.boots + 1
        self._log(m, f"{'reset' if force else 'power cycle'}: boot {m.boots} from {m.bootdev}")

    def power_status(self) -> str:
        return self._machine().power

    def set_bootdev(self, bootdev: str) -> None:
        self.check_bootdev(bootdev)
        self._machine().bootdev = bootdev

    def send_nmi(self) -> None:
        m = self._machine()
        if m.power != "on":
            raise OBMError(f"mock BMC at {self.address}: node is off, no NMI delivered")
        m.nmis += 1
        self._log(m, "NMI")

    def console(self) -> Iterator[bytes]:
        m = self._machine()
        return iter([("\n".join(m.console) + "\n").encode()])

    @classmethod
    def forget_all(cls) -> None:
        with cls._lock:
            cls.machines.clear()
