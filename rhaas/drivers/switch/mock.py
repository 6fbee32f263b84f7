"""A fake switch that keeps port state in memory, or in a JSON file shared by several processes.

It is a real driver, shipped for development, tests and benchmarks, with fault injection: ``delay``
seconds per port change and ``fail_ports`` that always fail. With ``journal_file`` it also appends one
JSON line per port change it makes (port, state, process id), so a test can count how often each change
was really applied, across processes.

Faults that come and go while the switch stays registered live in ``faults_file``, a JSON object read at
every port change (a missing or empty file injects nothing)::

    {"fail_ports": ["gi1/0/1"],   # changes to these ports raise SwitchError, as a refusing switch would
     "fail_next": 2,              # the next 2 changes (any port) raise SwitchError; counted down
     "crash_ports": ["gi1/0/2"]}  # changes to these ports raise RuntimeError, as a driver bug would

A ``state_file`` holding something other than the JSON this driver writes is a switch answering garbage:
every call raises SwitchError naming the switch and port.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from rhaas.drivers.statefile import count_down, exclusive, replace_json
from rhaas.drivers.switch.base import SwitchDriver, SwitchSettings
from rhaas.errors import BadArgumentError, SwitchError
from rhaas.ports import PortState


class MockSwitchSettings(SwitchSettings):
    # HIL's mock switch takes these three; they are accepted and ignored.
    hostname: str = ""
    username: str = ""
    password: str = ""
    state_file: str | None = Field(default=None, description="JSON file shared by processes")
    delay: float = Field(default=0.0, ge=0, le=60, description="seconds each port change takes")
    fail_ports: list[str] = Field(default_factory=list, description="ports whose changes fail")
    journal_file: str | None = Field(default=None, description="append a JSON line per port change made")
    faults_file: str | None = Field(default=None, description="JSON file of faults, read at every change")


class MockSwitch(SwitchDriver):
    """Port names are those HIL's mock switch accepts (``gi1/0/11``, ``te1/0/12``, ``gi1/12``, ``te1/3``),
    so that a script written against HIL's mock switch meets the same refusals here."""

    name = "mock"
    type_urls = ("http://schema.massopencloud.org/haas/v0/switches/mock",)
    settings_model = MockSwitchSettings
    port_pattern = re.compile(r"(gi|te)[0-9]+/[0-9]+(/[0-9]+)?")

    @classmethod
    def validate_port_name(cls, port: str) -> None:
        if not cls.port_pattern.fullmatch(port):
            raise BadArgumentError(
                "Invalid port name. Valid port names for this switch are of the form gi1/0/11, "
                "te1/0/12, gi1/12, or te1/3"
            )

    #: In-memory state of every mock switch without a state file: switch name → port → state.
    _memory: ClassVar[dict[str, dict[str, PortState]]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    settings: MockSwitchSettings

    def _where(self, port: str) -> str:
        return f"mock switch {self.switch_name}: port {port}"

    @contextmanager
    def _ports(self, port: str) -> Iterator[dict[str, PortState]]:
        if self.settings.state_file is None:
            with self._lock:
                yield self._memory.setdefault(self.switch_name, {})
            return
        path = Path(self.settings.state_file)
        with exclusive(path):
            text = path.read_text() if path.exists() else ""
            try:
                raw = json.loads(text) if text else {}
                ports = {
                    name: PortState(s["native"], frozenset(s["tagged"]))
                    for name, s in raw.get(self.switch_name, {}).items()
                }
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                raise SwitchError(f"{self._where(port)}: the state file answered garbage ({exc})") from exc
            yield ports
            raw[self.switch_name] = {port: s.as_dict() for port, s in ports.items()}
            replace_json(path, raw)

    def set_port(self, port: str, state: PortState) -> None:
        if self.settings.delay:
            time.sleep(self.settings.delay)
        if port in self.settings.fail_ports:
            raise SwitchError(f"mock switch {self.switch_name}: port {port} refused the change (injected)")
        if self.settings.faults_file is not None:
            self._inject_faults(port)
        with self._ports(port) as ports:
            ports[port] = state
        if self.settings.journal_file is not None:
            # One short O_APPEND write per line: lines from several processes never interleave.
            line = {"switch": self.switch_name, "port": port, **state.as_dict(), "pid": os.getpid()}
            with open(self.settings.journal_file, "a") as journal:
                journal.write(json.dumps(line) + "\n")

    def get_port(self, port: str) -> PortState:
        with self._ports(port) as ports:
            return ports.get(port, PortState())

    def _inject_faults(self, port: str) -> None:
        assert self.settings.faults_file is not None
        path = Path(self.settings.faults_file)
        with exclusive(path):
            text = path.read_text() if path.exists() else ""
            faults = json.loads(text) if text.strip() else {}
            if port in faults.get("crash_ports", ()):
                raise RuntimeError("injected crash, as a driver bug would")
            if port in faults.get("fail_ports", ()):
                raise SwitchError(f"{self._where(port)} refused the change (injected from the faults file)")
            if count_down(path, faults, "fail_next"):
                raise SwitchError(f"{self._where(port)} refused the change (injected, fail_next)")

    @classmethod
    def forget_all(cls) -> None:
        """Drop the in-memory state of every mock switch (tests)."""
        with cls._lock:
            cls._memory.clear()
