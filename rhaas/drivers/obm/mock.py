"""A fake BMC kept in memory, keyed by host: for development, tests and benchmarks.

It is a real driver, shipped, with fault injection. A host named ``fail…`` refuses every call (as an
unreachable BMC would), and ``delay`` seconds are added to every call. Faults that come and go while the
node stays registered live in ``faults_file``, a JSON object read at every call (a missing or empty file
injects nothing); several BMCs may share one file::

    {"fail_hosts": ["bmc2"],        # every call to these BMCs raises OBMError, as an unreachable BMC
     "fail_calls": ["send_nmi"],    # these calls raise OBMError on every BMC reading the file
     "fail_next": 2,                # the next 2 calls (any BMC reading the file) raise OBMError; counted down
     "crash_calls": ["power_on"]}   # these calls raise RuntimeError, as a driver bug would

A call is named by its method: ``power_on``, ``power_off``, ``power_cycle``, ``power_status``,
``set_bootdev``, ``send_nmi``, ``console``. A faults file that is not such an object (or names another
call) fails every call with OBMError naming the BMC. It must not hold anything but faults: the machines'
state stays in this process's memory.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from rhaas.drivers.obm.base import OBMDriver, OBMSettings
from rhaas.drivers.statefile import count_down, exclusive
from rhaas.errors import OBMError

#: The calls a faults file may name.
CALLS = frozenset(
    {"power_on", "power_off", "power_cycle", "power_status", "set_bootdev", "send_nmi", "console"}
)


class MockOBMSettings(OBMSettings):
    delay: float = Field(default=0.0, ge=0, le=60)
    faults_file: str | None = Field(default=None, description="JSON file of faults, read at every call")


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

    def _machine(self, call: str) -> MockMachine:
        if self.settings.delay:
            time.sleep(self.settings.delay)
        if self.settings.host.startswith("fail"):
            raise OBMError(f"mock BMC at {self.address}: no answer (injected)")
        if self.settings.faults_file is not None:
            self._inject_faults(call, Path(self.settings.faults_file))
        with self._lock:
            return self.machines.setdefault(self.address, MockMachine())

    def _inject_faults(self, call: str, path: Path) -> None:
        with exclusive(path):
            faults = self._read_faults(path)
            if call in faults.get("crash_calls", ()):
                raise RuntimeError(f"injected crash in {call}, as a driver bug would")
            if self.settings.host in faults.get("fail_hosts", ()):
                raise OBMError(f"mock BMC at {self.address}: no answer (injected from the faults file)")
            if call in faults.get("fail_calls", ()):
                raise OBMError(f"mock BMC at {self.address}: {call} refused (injected from the faults file)")
            if count_down(path, faults, "fail_next"):
                raise OBMError(f"mock BMC at {self.address}: {call} refused (injected, fail_next)")

    def _read_faults(self, path: Path) -> dict[str, Any]:
        text = path.read_text() if path.exists() else ""
        try:
            faults = json.loads(text) if text.strip() else {}
            if not isinstance(faults, dict):
                raise ValueError("not a JSON object")
            for key in ("fail_hosts", "fail_calls", "crash_calls"):
                names = faults.get(key, [])
                if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                    raise ValueError(f"{key} is not a list of names")
            unknown = (set(faults.get("fail_calls", [])) | set(faults.get("crash_calls", []))) - CALLS
            if unknown:
                raise ValueError(f"no such call: {', '.join(sorted(unknown))}")
            if type(faults.get("fail_next", 0)) is not int:
                raise ValueError("fail_next is not a whole number")
        except ValueError as exc:
            raise OBMError(f"mock BMC at {self.address}: the faults file is unreadable ({exc})") from exc
        return faults

    def _log(self, machine: MockMachine, line: str) -> None:
        machine.console.append(line)

    def power_on(self) -> None:
        m = self._machine("power_on")
        if m.power == "off":
            m.power, m.boots = "on", m.boots + 1
            self._log(m, f"boot {m.boots} from {m.bootdev}")

    def power_off(self) -> None:
        m = self._machine("power_off")
        m.power = "off"
        self._log(m, "power off")

    def power_cycle(self, force: bool = False) -> None:
        m = self._machine("power_cycle")
        m.power, m.boots = "on", m.boots + 1
        self._log(m, f"{'reset' if force else 'power cycle'}: boot {m.boots} from {m.bootdev}")

    def power_status(self) -> str:
        return self._machine("power_status").power

    def set_bootdev(self, bootdev: str) -> None:
        self.check_bootdev(bootdev)
        self._machine("set_bootdev").bootdev = bootdev

    def send_nmi(self) -> None:
        m = self._machine("send_nmi")
        if m.power != "on":
            raise OBMError(f"mock BMC at {self.address}: node is off, no NMI delivered")
        m.nmis += 1
        self._log(m, "NMI")

    def console(self) -> Iterator[bytes]:
        m = self._machine("console")
        return iter([("\n".join(m.console) + "\n").encode()])

    @classmethod
    def forget_all(cls) -> None:
        with cls._lock:
            cls.machines.clear()
