"""The mock switch passes the conformance suite in memory and with a shared state file."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from switch_conformance import ACCESS, NATIVE_TRUNK, TRUNK, SwitchConformance

from rhaas.drivers.switch.base import PortState
from rhaas.drivers.switch.mock import MockSwitch, MockSwitchSettings
from rhaas.errors import SwitchError
from rhaas.lab.polling import wait_for

PORTS = ["gi1/0/1", "gi1/0/2"]
FAILING = "gi1/0/9"


def make(name: str = "sw0", **settings: object) -> MockSwitch:
    return MockSwitch(name, MockSwitchSettings.model_validate({"fail_ports": [FAILING], **settings}))


@pytest.fixture
def ports() -> list[str]:
    return PORTS


@pytest.fixture
def failing_port() -> str:
    return FAILING


class TestMockInMemory(SwitchConformance):
    # The mock checks names only in validate_port_name (when the API registers a port).
    checks_port_names_on_call = False

    @pytest.fixture
    def driver(self) -> MockSwitch:
        return make()


class TestMockStateFile(SwitchConformance):
    checks_port_names_on_call = False

    @pytest.fixture
    def driver(self, tmp_path: Path) -> MockSwitch:
        return make(state_file=str(tmp_path / "switches.json"))


def test_state_file_is_shared_between_instances(tmp_path: Path) -> None:
    state_file = str(tmp_path / "switches.json")
    make(state_file=state_file).set_port(PORTS[0], NATIVE_TRUNK)
    make("sw1", state_file=state_file).set_port(PORTS[0], TRUNK)
    assert make(state_file=state_file).get_port(PORTS[0]) == NATIVE_TRUNK
    assert make("sw1", state_file=state_file).get_port(PORTS[0]) == TRUNK


def test_in_memory_switches_are_separate() -> None:
    make("sw0").set_port(PORTS[0], ACCESS)
    assert make("sw1").get_port(PORTS[0]) == PortState()
    assert make("sw0").get_port(PORTS[0]) == ACCESS


def test_failing_port_keeps_its_state() -> None:
    driver = make()
    with pytest.raises(SwitchError, match="injected"):
        driver.set_port(FAILING, ACCESS)
    assert driver.get_port(FAILING) == PortState()
    with pytest.raises(SwitchError):
        driver.reset_port(FAILING)


def test_delay_is_injected() -> None:
    driver = make(delay=0.05)
    started = time.monotonic()
    driver.set_port(PORTS[0], ACCESS)
    assert time.monotonic() - started >= 0.05
    assert driver.get_port(PORTS[0]) == ACCESS


def test_journal_records_each_change_made(tmp_path: Path) -> None:
    import json
    import os

    journal = tmp_path / "journal.jsonl"
    driver = make(state_file=str(tmp_path / "switches.json"), journal_file=str(journal))
    driver.set_port(PORTS[0], NATIVE_TRUNK)
    driver.set_port(PORTS[0], NATIVE_TRUNK)  # applied twice: the journal says so
    with pytest.raises(SwitchError):
        driver.set_port(FAILING, ACCESS)  # refused: no line
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    expected = {"switch": "sw0", "port": PORTS[0], **NATIVE_TRUNK.as_dict(), "pid": os.getpid()}
    assert lines == [expected, expected]


def wrote(state_file: Path) -> bool:
    return make(state_file=str(state_file)).get_port(PORTS[0]).native is not None


def test_state_file_survives_a_writer_killed_at_any_moment(tmp_path: Path) -> None:
    """A worker SIGKILLed while the switch writes its state file leaves the previous state, never a
    truncated file that every later change would take for garbage (and fail on)."""
    import signal
    import subprocess
    import sys

    state_file = tmp_path / "switches.json"
    make(state_file=str(state_file)).set_port(PORTS[1], TRUNK)
    writer = (
        "import sys\n"
        "from rhaas.drivers.switch.base import PortState\n"
        "from rhaas.drivers.switch.mock import MockSwitch, MockSwitchSettings\n"
        f"d = MockSwitch('sw0', MockSwitchSettings(state_file={str(state_file)!r}))\n"
        "d.set_port('warm', PortState())\n"
        "print('ready', flush=True)\n"
        "i = 0\n"
        "while True:\n"
        "    i += 1\n"
        f"    d.set_port({PORTS[0]!r}, PortState(native=str(i % 4000 + 1)))\n"
    )
    for _ in range(15):
        proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
            wait_for("the writer's first change", lambda: wrote(state_file), 10, every=0)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
        # Every read and change after the kill works, and the other port kept its state.
        assert make(state_file=str(state_file)).get_port(PORTS[1]) == TRUNK
        make(state_file=str(state_file)).set_port(PORTS[0], PortState())
